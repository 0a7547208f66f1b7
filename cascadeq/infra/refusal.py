"""Refusing what cannot go on, the same way in routers and workers.

A request that cannot go on gets an error result under its id, where one can be read,
and a dead letter; an entry none of whose requests can go on is acknowledged with them
(its requests leave the stream's counter). Both ride in the batch's commit, so a bad
item fails alone, with its own error, in the same round trip as the rest of the batch.
Each role says how it stores a result (``answer``: its figures differ) and what it logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cascadeq.infra.commit import Commit
from cascadeq.protocol.bundle import BadItem
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import Result, error_result

Fields = dict[bytes, bytes]

#: answer(result, reply_to, entry number): store one result as the role does.
Answer = Callable[[Result, str | None, int], None]


@dataclass(frozen=True)
class Refuser:
    """A batch's refusals: its commit, how its role answers, what its role logs."""

    commit: Commit
    keys: Keys
    answer: Answer
    log: Any
    context: dict[str, Any] = field(default_factory=dict)  # leads each log line

    def request(
        self, bad: BadItem, *, stream: str, entry_id: bytes, entry: int, fields: Fields
    ) -> None:
        """One request of an entry: its error result and its dead letter (``fields``: the
        request as the record keeps it); the entry's other requests go on."""
        rid, reply_to = bad.salvage()
        self.log.warning(
            "request_refused",
            **self.context,
            entry=entry_id.decode(),
            request_id=rid,
            code=bad.code,
            reason=bad.message,
        )
        if rid is not None:
            answered = bad.header if bad.header is not None else rid
            self.answer(error_result(answered, bad.code, bad.message), reply_to, entry)
        self._dead_letter(fields, stream, entry_id, bad.code, bad.message, entry)

    def entry(
        self,
        *,
        stream: str,
        group: str,
        entry_id: bytes,
        fields: Fields,
        code: str,
        reason: str,
        salvaged: list[BadItem],
    ) -> int:
        """A whole entry: registered for acknowledgement, an error result for each id
        found in it, one dead letter; returns its entry number in the commit."""
        counter = self.keys.backlog(stream)
        entry = self.commit.entry(stream, group, entry_id, max(1, len(salvaged)), counter)
        self.log.warning(
            "entry_refused", **self.context, entry=entry_id.decode(), code=code, reason=reason
        )
        for item in salvaged:
            rid, reply_to = item.salvage()
            if rid is not None:
                self.answer(error_result(rid, code, reason), reply_to, entry)
        self._dead_letter(fields, stream, entry_id, code, reason, entry)
        return entry

    def _dead_letter(
        self, fields: Fields, stream: str, entry_id: bytes, code: str, reason: str, entry: int
    ) -> None:
        self.commit.dead_letter(
            self.keys.dead_letter_of(self.keys.shard_of_stream(stream)),  # the entry's slot
            fields,
            stream=stream,
            entry_id=entry_id,
            code=code,
            reason=reason,
            entry=entry,
        )
