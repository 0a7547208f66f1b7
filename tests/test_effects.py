from __future__ import annotations

import redis

from cascadeq import streams
from cascadeq.effects import Effects
from cascadeq.settings import Settings


def test_only_entries_whose_effects_all_landed_are_acknowledged(
    r: redis.Redis, settings: Settings
) -> None:
    stream, group = f"{settings.prefix}:s", "g"
    streams.ensure_group(r, stream, group)
    ids = [r.xadd(stream, {b"n": str(i).encode()}) for i in range(3)]
    r.xreadgroup(group, "c", {stream: ">"})
    r.xadd(f"{settings.prefix}:wrongtype", {b"a": b"1"})
    effects = Effects(r, group)
    with effects.entry(stream, ids[0]) as pipe:
        pipe.set(f"{settings.prefix}:ok0", 1)
    with effects.entry(stream, ids[1]) as pipe:
        pipe.set(f"{settings.prefix}:ok1", 1)
        pipe.incr(f"{settings.prefix}:wrongtype")  # refused by Redis: WRONGTYPE
    with effects.entry(stream, ids[2]):
        pass  # an entry with no effect to make is simply acknowledged
    assert effects.commit() == 1
    pending = r.xpending_range(stream, group, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [ids[1]]
    assert r.get(f"{settings.prefix}:ok1") == b"1"  # landed, and will be repeated: idempotent
