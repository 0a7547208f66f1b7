"""The project's Lua scripts, each in its own ``.lua`` file with its keys and arguments
documented at the top, run by SHA (EVALSHA) and loaded on a NOSCRIPT reply."""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from typing import Any

import redis


class Script:
    """One script: its text, its SHA, and calls that survive a server that lost it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = resources.files(__package__).joinpath(f"{name}.lua").read_text("utf-8")
        self.sha = hashlib.sha1(self.text.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, r: redis.Redis, keys: list[Any], args: list[Any]) -> Any:
        try:
            return r.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return r.eval(self.text, len(keys), *keys, *args)

    def queue(self, pipe: Any, keys: list[Any], args: list[Any]) -> None:
        """Add an EVALSHA to a pipeline; see ``retry_missing`` for a NOSCRIPT reply."""
        # execute_command, not pipe.evalsha: redis-py's cluster pipeline refuses the method
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    def retry_missing(self, r: redis.Redis, reply: Any, keys: list[Any], args: list[Any]) -> Any:
        """The reply of a queued call, run again with the script's text if Redis lacked it."""
        if isinstance(reply, redis.exceptions.NoScriptError):
            return r.eval(self.text, len(keys), *keys, *args)
        return reply


@cache
def load(name: str) -> Script:
    return Script(name)
