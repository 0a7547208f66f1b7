"""Effects first, acknowledgements after, and only for entries whose effects all landed.

A non-transactional pipeline runs every command even when one is refused (out of
memory, a script error), so the XACKs go in a second round trip, per batch, for the
entries whose effects succeeded. The rest stay pending and are delivered again.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from cascadeq.log import get_logger

log = get_logger("cascadeq.effects")


@dataclass
class Effects:
    r: redis.Redis
    group: str
    pipe: Any = None
    _spans: list[tuple[str, bytes, int, int]] = field(default_factory=list)
    replies: list[Any] = field(default_factory=list)  # every command's reply, after commit

    def __post_init__(self) -> None:
        self.pipe = self.r.pipeline(transaction=False)

    @contextmanager
    def entry(self, stream: str, entry_id: bytes) -> Iterator[Any]:
        """Commands queued inside the block are this entry's effects."""
        start = len(self.pipe)
        yield self.pipe
        self._spans.append((stream, entry_id, start, len(self.pipe)))

    @contextmanager
    def shared(self, entries: list[tuple[str, bytes]]) -> Iterator[Any]:
        """Commands queued inside the block are an effect of every one of these entries."""
        start = len(self.pipe)
        yield self.pipe
        self._spans += [(stream, eid, start, len(self.pipe)) for stream, eid in entries]

    def commit(self) -> int:
        """Run the effects, then ack what succeeded; returns how many entries failed."""
        replies = self.pipe.execute(raise_on_error=False) if len(self.pipe) else []
        self.replies = replies
        errors: dict[tuple[str, bytes], Exception | None] = {}
        for stream, entry_id, start, end in self._spans:  # an entry may have several spans
            found = next((x for x in replies[start:end] if isinstance(x, Exception)), None)
            errors[(stream, entry_id)] = errors.get((stream, entry_id)) or found
        done: dict[str, list[bytes]] = {}
        failed = 0
        for (stream, entry_id), error in errors.items():
            if error is not None:
                failed += 1
                log.error("effect_failed", stream=stream, entry=entry_id.decode(), error=str(error))
            else:
                done.setdefault(stream, []).append(entry_id)
        if done:
            acks = self.r.pipeline(transaction=False)
            for stream, ids in done.items():
                acks.xack(stream, self.group, *ids)
            acks.execute()
        return failed
