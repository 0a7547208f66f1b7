"""The router role: ingress stream -> routing policy -> per-model streams."""

from cascadeq.router.policy import Decision, RouteError, choose
from cascadeq.router.service import Router

__all__ = ["Decision", "RouteError", "Router", "choose"]
