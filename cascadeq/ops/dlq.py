"""Operator commands on the dead-letter stream: look, replay what can run again, purge.

A dead letter (its record: cascadeq/protocol/deadletter.py) is the raw entry, as far as it
was kept, plus where it came from and why. Replay is one script, so it is all or
nothing: it re-reads the record, puts ``h``/``x`` back on the stream they came from,
clears the error result dead-lettering wrote (so the new attempt can answer), and only
then deletes the record. Two operators replaying one record queue it once.

The ``print_*`` functions are the `cascadeq dlq` subcommands: one connection each, their
output on stdout (ids, JSON) and their tallies on stderr.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from cascadeq.config.settings import Settings
from cascadeq.infra.connection import connect
from cascadeq.protocol import lua, wire
from cascadeq.protocol.deadletter import DeadLetter, parse
from cascadeq.protocol.errors import EXIT_FAILED, ConfigError
from cascadeq.protocol.keys import Keys
from cascadeq.protocol.messages import Result
from cascadeq.protocol.results import is_pending

_ENTRY_ID_RE = re.compile(r"(?:[0-9]{1,4}/)?[0-9]{1,20}-[0-9]{1,20}")
PAGE = 100


class DeadLetterError(ConfigError):
    """A dead letter that is missing or cannot be replayed; one line for the operator."""


def _text(value: bytes | None) -> str:
    return "" if value is None else value.decode(errors="replace")


def count(r: redis.Redis, keys: Keys) -> int:
    """Dead letters over every ingress shard (each keeps its own, in its slot)."""
    return sum(int(r.xlen(dlq)) for dlq in keys.dead_letters)


def list_letters(r: redis.Redis, keys: Keys, limit: int) -> list[DeadLetter]:
    """The oldest ``limit`` dead letters of every shard, oldest first (entry ids are
    times, so the shards' records interleave by when they were written)."""
    rows: list[tuple[tuple[int, ...], DeadLetter]] = []
    for shard, dlq in enumerate(keys.dead_letters):
        got: Any = r.xrange(dlq, count=limit)
        for eid, fields in got:
            letter = parse(eid, fields)
            when = tuple(int(p) for p in eid.split(b"-"))
            rows.append((when, replace(letter, id=_qualified(keys, shard, letter.id))))
    rows.sort(key=lambda row: row[0])
    return [letter for _, letter in rows[:limit]]


def _qualified(keys: Keys, shard: int, entry_id: str) -> str:
    """With ingress shards a record is named ``<shard>/<entry id>``: each shard's stream
    numbers its own entries, so two shards write the same id in the same millisecond."""
    return entry_id if keys.shards == 1 else f"{shard}/{entry_id}"


def show(r: redis.Redis, keys: Keys, entry_id: str) -> DeadLetter:
    if not _ENTRY_ID_RE.fullmatch(entry_id):
        raise DeadLetterError(
            f"{entry_id!r} is not a stream entry id (write it as 1700000000000-0, or"
            " 2/1700000000000-0 with ingress shards)"
        )
    return _find(r, keys, entry_id)[0]


def _find(r: redis.Redis, keys: Keys, entry_id: str) -> tuple[DeadLetter, str]:
    """The dead letter and the shard's dead-letter stream it is in. ``<shard>/<id>`` names
    one shard's; a bare id is looked for in each shard in turn."""
    shard, _, bare = entry_id.rpartition("/")
    streams = [keys.dead_letter_of(int(shard))] if shard else keys.dead_letters
    for dlq in streams:
        rows: Any = r.xrange(dlq, bare, bare)
        if rows:
            return parse(*rows[0]), dlq
    raise DeadLetterError(
        f"no dead letter {entry_id} in {', '.join(keys.dead_letters)} (replayed or purged already?)"
    )


def replay(r: redis.Redis, keys: Keys, entry_id: str, pending_ttl_s: int) -> str:
    """Put one dead letter back on its stream; returns the new entry id there.

    The request's error result becomes the "not ready" placeholder again (for
    ``pending_ttl_s``), so the new attempt can answer and pollers see it as pending.
    """
    if not _ENTRY_ID_RE.fullmatch(entry_id):
        show(r, keys, entry_id)  # raises, saying how to write one
    letter, dlq = _find(r, keys, entry_id)
    entry_id = letter.id  # the bare id, as the shard's stream numbers it
    _check_replayable(letter, keys)
    script_keys = [dlq, letter.stream, keys.backlog(letter.stream)]
    seen = b""
    rid = letter.request_id
    if rid is not None:
        seen = _result_to_clear(r, keys, rid, entry_id)
        script_keys.append(keys.result(rid))
    replay = lua.load("dlq_replay")  # its keys and arguments are documented in the file
    reply: Any = replay(r, script_keys, [entry_id, seen, pending_ttl_s])
    status, detail = int(reply[0]), _text(reply[1])
    if not status:
        raise DeadLetterError(f"dead letter {entry_id} not replayed: {_REFUSED[detail]}")
    return detail


_REFUSED = {
    "gone": "it was replayed or purged meanwhile",
    "incomplete": "it lacks the h or x field",
    "answered": "its request was answered meanwhile",
}


def _check_replayable(letter: DeadLetter, keys: Keys) -> None:
    if letter.missing:
        raise DeadLetterError(
            f"dead letter {letter.id} cannot be replayed: it lacks the "
            f"{' and '.join(letter.missing)} field(s) ({letter.code}: the entry was kept "
            "without them); inspect it with `cascadeq dlq show` and purge it"
        )
    if not keys.owns_stream(letter.stream):
        raise DeadLetterError(
            f"dead letter {letter.id} names stream {letter.stream!r}, which is not an "
            f"ingress or model stream under prefix {keys.prefix!r}; not replayed"
        )


def _result_to_clear(r: redis.Redis, keys: Keys, rid: str, entry_id: str) -> bytes:
    """The stored error result replay may clear; refuses when the request has an answer."""
    raw: Any = r.get(keys.result(rid))
    if raw is None or is_pending(raw):
        return b"" if raw is None else bytes(raw)
    try:
        stored = Result.loads(raw)
    except wire.WireError:
        return bytes(raw)  # not a result: nothing worth keeping
    if stored.ok:
        raise DeadLetterError(
            f"dead letter {entry_id}: request {rid} already has an ok result; a replay "
            "could not change it (the first result wins); purge the record instead"
        )
    return bytes(raw)


@dataclass
class ReplayReport:
    replayed: list[tuple[str, str]] = field(default_factory=list)  # (record id, new entry)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (record id, why)


def replay_all(r: redis.Redis, keys: Keys, pending_ttl_s: int) -> ReplayReport:
    """Replay every record present at the start; ones dead-lettered again are not revisited."""
    report = ReplayReport()
    for shard, dlq in enumerate(keys.dead_letters):
        _replay_stream(r, keys, shard, dlq, pending_ttl_s, report)
    return report


def _replay_stream(
    r: redis.Redis, keys: Keys, shard: int, dlq: str, pending_ttl_s: int, report: ReplayReport
) -> None:
    last = _last_id(r, dlq)
    start = "-"
    while last is not None:
        rows: Any = r.xrange(dlq, start, last, count=PAGE)
        for eid, _ in rows:
            name = _qualified(keys, shard, eid.decode())
            try:
                report.replayed.append((name, replay(r, keys, name, pending_ttl_s)))
            except DeadLetterError as exc:
                report.skipped.append((name, str(exc)))
        if len(rows) < PAGE:
            break
        start = "(" + rows[-1][0].decode()


def _last_id(r: redis.Redis, dlq: str) -> str | None:
    rows: Any = r.xrevrange(dlq, count=1)
    return rows[0][0].decode() if rows else None


def purge(r: redis.Redis, keys: Keys) -> int:
    """Delete every record present now, on every shard; one dead-lettered meanwhile is kept."""
    removed = 0
    for dlq in keys.dead_letters:
        last = _last_id(r, dlq)
        if last is not None:
            ms, _, seq = last.partition("-")
            removed += int(r.xtrim(dlq, minid=f"{ms}-{int(seq) + 1}", approximate=False))
    return removed


@contextlib.contextmanager
def _session(settings: Settings) -> Iterator[tuple[redis.Redis, Keys]]:
    r = connect(settings.require_redis_url(), name="cq-dlq")
    try:
        yield r, settings.keys()
    finally:
        r.close()


def print_list(settings: Settings, limit: int, *, as_json: bool) -> int:
    """The oldest ``limit`` letters, one a line (or a JSON array), the total on stderr."""
    with _session(settings) as (r, keys):
        letters = list_letters(r, keys, limit)
        if as_json:
            print(json.dumps([d.summary() for d in letters]))
            return 0
        total = count(r, keys)
    print(f"{total} dead letter(s); showing the oldest {len(letters)}", file=sys.stderr)
    for d in letters:
        print(f"{d.id}\t{d.code}\t{d.request_id or '-'}\t{d.stream}\t{d.reason}")
    return 0


def print_show(settings: Settings, entry_id: str) -> int:
    with _session(settings) as (r, keys):
        print(json.dumps(show(r, keys, entry_id).detail(), indent=2, default=str))
    return 0


def print_replay(settings: Settings, entry_id: str | None) -> int:
    """One letter (None: all of them); EXIT_FAILED if any was skipped."""
    with _session(settings) as (r, keys):
        if entry_id is not None:
            print(replay(r, keys, entry_id, settings.pending_ttl_s))
            return 0
        report = replay_all(r, keys, settings.pending_ttl_s)
    for old, new in report.replayed:
        print(f"{old} -> {new}")
    for old, why in report.skipped:
        print(f"skipped {old}: {why}", file=sys.stderr)
    print(f"{len(report.replayed)} replayed, {len(report.skipped)} skipped", file=sys.stderr)
    return EXIT_FAILED if report.skipped else 0


def print_purge(settings: Settings, *, confirmed: bool) -> int:
    """Without ``confirmed``, only say how many would go (EXIT_FAILED)."""
    with _session(settings) as (r, keys):
        total = count(r, keys)
        if not confirmed:
            print(f"{total} dead letter(s) would be deleted; run again with --yes", file=sys.stderr)
            return EXIT_FAILED
        print(f"deleted {purge(r, keys)} dead letter(s)", file=sys.stderr)
    return 0
