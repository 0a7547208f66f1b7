"""Which model runs a request first. A pure function of the header and the catalog."""

from __future__ import annotations

from dataclasses import dataclass

from cascadeq.catalog import Catalog
from cascadeq.messages import Header


class RouteError(ValueError):
    """A request no model can serve; becomes an error result."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Decision:
    model: str
    stage: int  # index in the task's cascade; 0 for a pinned model
    rule: str  # which rule fired, recorded in the result's path


def choose(header: Header, catalog: Catalog) -> Decision:
    if header.model is not None:
        if header.model not in catalog.models:
            raise RouteError("unknown_model", f"model {header.model!r} is not in the catalog")
        return Decision(header.model, 0, "pinned")
    assert header.task is not None  # Header.loads guarantees a task or a model
    task = catalog.tasks.get(header.task)
    if task is None:
        raise RouteError("unknown_task", f"task {header.task!r} is not in the catalog")
    return Decision(task.cascade[0].model, 0, "cascade")
