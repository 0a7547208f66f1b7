"""The worker role: micro-batches from per-model streams, ONNX Runtime, escalation, results."""

from cascadeq.workers.batcher import Bad, Batcher, Item
from cascadeq.workers.runner import ModelLoadError, OnnxRunner
from cascadeq.workers.service import ModelWorker

__all__ = ["Bad", "Batcher", "Item", "ModelLoadError", "ModelWorker", "OnnxRunner"]
