"""One entry's surprise stays its own: it never ends a loop nor holds its neighbours.

Routers and workers handle entries in batches that share one effects pipeline. Whatever
handling one entry raises (a bug, a forged value no check foresaw) drops the commands
that entry had queued and gives it a fallback effect instead (an error result, a dead
letter); if even that fails, the entry is left pending, so a reclaim retries it alone
after the visibility timeout and dead-letters it after ``max_deliveries``. Redis errors
are not surprises: they propagate, and the serving loop backs off (cascadeq/process.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import redis

from cascadeq.effects import Effects
from cascadeq.log import get_logger

log = get_logger("cascadeq.isolation")

Act = Callable[[Any], None]  # queues an entry's effects on the pipeline it is given
Fallback = Callable[[Any, Exception], None]


def drop_since(effects: Effects, start: int) -> None:
    """Forget the commands queued after position ``start``: a failed attempt's leftovers."""
    del effects.pipe.command_stack[start:]


def guarded(
    effects: Effects, stream: str, entry_id: bytes, act: Act, fallback: Fallback | None
) -> bool:
    """Run ``act`` as this entry's effects; on a surprise, ``fallback`` replaces them.

    True when ``act`` succeeded. With no fallback, or one that fails too, the entry gets
    no effect at all and stays pending.
    """
    start = len(effects.pipe)
    try:
        with effects.entry(stream, entry_id) as pipe:
            act(pipe)
        return True
    except redis.RedisError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point: nothing one entry does escapes
        drop_since(effects, start)
        error = exc
    if fallback is not None:
        try:
            with effects.entry(stream, entry_id) as pipe:
                fallback(pipe, error)
            return False
        except redis.RedisError:
            raise
        except Exception:  # noqa: BLE001
            drop_since(effects, start)
    log.error(
        "entry_left_pending",
        stream=stream,
        entry=entry_id.decode(errors="replace"),
        error=repr(error),
        exc_info=True,
    )
    return False


def bookkeeping(what: str, fn: Callable[[], object]) -> None:
    """Metrics, counters and logs: worth a warning when they fail, never a dead loop."""
    try:
        fn()
    except redis.RedisError:
        raise
    except Exception as exc:  # noqa: BLE001
        with contextlib.suppress(Exception):  # not even the log may end the loop
            log.error("bookkeeping_failed", what=what, error=repr(exc))


def backstop(role: str, what: str, fn: Callable[[], object]) -> None:
    """The last line: a batch that raised anyway is left pending, not the process killed.

    Its entries are reclaimed after the visibility timeout and retried one at a time,
    so whichever of them caused this fails alone then.
    """
    try:
        fn()
    except redis.RedisError:
        raise
    except Exception:
        log.exception("batch_failed", role=role, what=what)
