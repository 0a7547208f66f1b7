"""Writing final results: first write wins, and the waiters hear of it in the same step.

One small script per result (single key, so Redis Cluster is fine) makes "store if
absent, then publish what was stored" atomic; a request processed twice after a crash
can never be answered with two different values.
"""

from __future__ import annotations

from typing import Any

from cascadeq.keys import Keys
from cascadeq.messages import Result

_STORE_ONCE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[1]) end
  return 1
end
return 0
"""


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
