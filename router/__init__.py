"""The router role: ingress stream -> routing policy -> per-model streams."""

from router.policy import Decision, RouteError, choose
from router.service import Router

__all__ = ["Decision", "RouteError", "Router", "choose"]
