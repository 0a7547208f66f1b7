"""The producer role: the client library backend services use to submit and wait."""

from cascadeq.producer.aio import AsyncProducer
from cascadeq.producer.cancel import Cancelled
from cascadeq.producer.client import Producer
from cascadeq.producer.errors import (
    CascadeqError,
    ConnectionFailed,
    Rejected,
    RequestFailed,
    Timeout,
    UnknownRequest,
)
from cascadeq.producer.requests import Request
from cascadeq.protocol.messages import Result

__all__ = [
    "AsyncProducer",
    "Cancelled",
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
