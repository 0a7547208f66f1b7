"""One entry's surprise stays its own: it never ends a loop nor holds its neighbours.

Routers and workers isolate each request and entry themselves (an error result of its
own, or the entry left pending in the batch's commit, so a reclaim retries it alone and
dead-letters it after ``max_deliveries``). These are the two outer guards they share:
bookkeeping that must never end a loop, and the backstop around a whole batch. Redis
errors are not surprises: they propagate, and the serving loop backs off
(cascadeq/infra/process.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import redis

from cascadeq.infra.log import get_logger

log = get_logger("cascadeq.infra.isolation")


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
