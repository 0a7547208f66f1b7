"""Refusing what cannot go on, the same way in routers and workers.

A request that cannot go on gets an error result under its id, where one can be read,
and a dead letter; an entry none of whose requests can go on is acknowledged with them
(its requests leave the stream's counter). Both ride in the batch's commit, so a bad
item fails alone, with its own error, in the same round trip as the rest of the batch.
Each role says how it stores a result (``answer``: its figures differ) and what it logs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cascadeq.infra.commit import Commit
from cascadeq.protocol.bundle import BadItem
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import Result, error_result

#: answer(result, reply_to, entry number): store one result as the role does.
Answer = Callable[[Result, str | None, int], None]


def refuse_request(
    commit: Commit,
    keys: Keys,
    answer: Answer,
    log: Any,
    bad: BadItem,
    *,
    stream: str,
    entry_id: bytes,
    entry: int,
    fields: dict[bytes, bytes],
    **context: Any,
) -> None:
    """One request of an entry: its error result and its dead letter (``fields``: the
    request as the record keeps it); the entry's other requests go on."""
    rid, reply_to = bad.salvage()
    log.warning(
        "request_refused",
        **context,
        entry=entry_id.decode(),
        request_id=rid,
        code=bad.code,
        reason=bad.message,
    )
    if rid is not None:
        answered = bad.header if bad.header is not None else rid
        answer(error_result(answered, bad.code, bad.message), reply_to, entry)
    commit.dead_letter(
        keys.dead_letter,
        fields,
        stream=stream,
        entry_id=entry_id,
        code=bad.code,
        reason=bad.message,
        entry=entry,
    )


def refuse_entry(
    commit: Commit,
    keys: Keys,
    answer: Answer,
    log: Any,
    *,
    stream: str,
    group: str,
    entry_id: bytes,
    fields: dict[bytes, bytes],
    code: str,
    reason: str,
    salvaged: list[BadItem],
    **context: Any,
) -> int:
    """A whole entry: registered for acknowledgement, an error result for each id found
    in it, one dead letter; returns its entry number in the commit."""
    entry = commit.entry(stream, group, entry_id, max(1, len(salvaged)), keys.backlog(stream))
    log.warning("entry_refused", **context, entry=entry_id.decode(), code=code, reason=reason)
    for item in salvaged:
        rid, reply_to = item.salvage()
        if rid is not None:
            answer(error_result(rid, code, reason), reply_to, entry)
    commit.dead_letter(
        keys.dead_letter,
        fields,
        stream=stream,
        entry_id=entry_id,
        code=code,
        reason=reason,
        entry=entry,
    )
    return entry
