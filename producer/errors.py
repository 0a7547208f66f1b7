"""The exceptions a backend service sees; each says why."""

from __future__ import annotations

from cascadeq.protocol.messages import Result


class CascadeqError(Exception):
    """Base of every error the client raises."""


class Rejected(CascadeqError):
    """The request was refused at submit and was not queued."""

    def __init__(
        self,
        reason: str,
        code: str = "rejected",
        accepted: list[str] | None = None,
        ids: list[str] | None = None,
        *,
        retry_after_s: float | None = None,
        tenant: str | None = None,
        limit: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.code = code
        self.accepted = accepted or []  # submit_many: ids queued before the refusal
        self.ids = ids or []  # duplicate_id: the ids already in use or repeated
        #: queue_full and quota: seconds after which a retry may fit (estimated)
        self.retry_after_s = retry_after_s
        self.tenant, self.limit = tenant, limit  # quota: whose limit, "rate" or "in_flight"


class UnknownRequest(CascadeqError, LookupError):
    """No such request: never submitted, or its result (or placeholder) expired."""

    def __init__(self, request_id: str, kept_s: int) -> None:
        super().__init__(
            f"unknown id {request_id} (never submitted, or its result expired after {kept_s} s)"
        )
        self.request_id = request_id
        self.kept_s = kept_s


class Timeout(CascadeqError):
    """No result arrived in time; the request may still complete later."""

    def __init__(
        self, message: str, done: dict[str, Result] | None = None, missing: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.done = done or {}
        self.missing = missing or []


class RequestFailed(CascadeqError):
    """The request ended with a status other than ok (error, expired, rejected)."""

    def __init__(self, result: Result) -> None:
        err = result.error or {}
        super().__init__(
            f"request {result.id} ended {result.status}: "
            f"{err.get('code', '?')}: {err.get('message', '')}"
        )
        self.result = result


class ConnectionFailed(CascadeqError):
    """Redis could not be reached (refused, timed out, dropped) even after the retries.

    Nothing is known about a request whose submit raised this: it may or may not be
    queued. Submitting it again under the same ``request_id`` is the safe retry.
    """

    def __init__(self, url: str, cause: BaseException) -> None:
        super().__init__(f"cannot reach Redis at {redact(url)}: {cause}")
        self.url = redact(url)


def redact(url: str) -> str:
    """The URL without its password, fit for a log line or an error message."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}://{user + ':***' if user else '***'}@{host}"
