"""The producer role: the client library backend services use to submit and wait."""

from cascadeq.messages import Result
from producer.aio import AsyncProducer
from producer.client import Producer
from producer.errors import (
    CascadeqError,
    ConnectionFailed,
    Rejected,
    RequestFailed,
    Timeout,
    UnknownRequest,
)
from producer.requests import Request

__all__ = [
    "AsyncProducer",
    "CascadeqError",
    "ConnectionFailed",
    "Producer",
    "Rejected",
    "Request",
    "RequestFailed",
    "Result",
    "Timeout",
    "UnknownRequest",
]
