"""The worker role: micro-batches from per-model streams, ONNX Runtime, escalation, results."""

from workers.batcher import Bad, Batcher, Item
from workers.runner import ModelLoadError, OnnxRunner
from workers.service import ModelWorker

__all__ = ["Bad", "Batcher", "Item", "ModelLoadError", "ModelWorker", "OnnxRunner"]
