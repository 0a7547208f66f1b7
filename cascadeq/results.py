"""Writing final results: first write wins, and the waiters hear of it in the same step.

One small script per result (single key, so Redis Cluster is fine) makes "store if
absent (or only the submit placeholder is there), then publish what was stored" atomic;
a request processed twice after a crash can never be answered with two different values.
"""

from __future__ import annotations

from typing import Any

from cascadeq.keys import Keys
from cascadeq.messages import Result

#: What submit stores under a result key until the real result lands: "submitted, not
#: answered yet". 0xc1 is the one byte msgpack never uses, so no Result can equal it.
PENDING = b"\xc1"
PENDING_LUA = f"'\\{PENDING[0]}'"  # the same byte as a Lua string literal

#: Store if the key is absent or holds PENDING; a real result is never overwritten.
_STORE_ONCE = f"""
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= {PENDING_LUA} then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[1]) end
return 1
"""


def is_pending(raw: object) -> bool:
    """True for the placeholder submit leaves: the request exists but has no result yet."""
    return raw == PENDING


def queue_result(pipe: Any, keys: Keys, result: Result, reply_to: str | None, ttl_s: int) -> None:
    """Add the store-and-notify step for one result to a pipeline."""
    channel = keys.reply_channel(reply_to) if reply_to else ""
    pipe.eval(_STORE_ONCE, 1, keys.result(result.id), result.dumps(), ttl_s, channel)


DEAD_LETTER_MAXLEN = 100_000


def queue_dead_letter(
    pipe: Any,
    keys: Keys,
    fields: dict[bytes, bytes],
    *,
    stream: str,
    entry_id: bytes,
    code: str,
    reason: str,
) -> None:
    """Keep the raw entry for an operator; the dead-letter stream is capped, not unbounded."""
    record = dict(fields)
    record.update(
        {
            b"stream": stream.encode(),
            b"entry": entry_id,
            b"code": code.encode(),
            b"reason": reason.encode()[:2000],
        }
    )
    pipe.xadd(keys.dead_letter, record, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
