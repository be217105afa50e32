"""Torch-free MC inference on compiled models through ONNX Runtime execution providers."""

from .contract import Task
from .errors import QbnnError
from .predictor import PlainOutput, Prediction, Predictor, PredictorOptions
from .providers import available_providers, known_providers, resolve_provider
from .session import GraphOptLevel, ModelInfo, SessionOptions, model_info, open_session

__all__ = [
    "GraphOptLevel",
    "ModelInfo",
    "PlainOutput",
    "Prediction",
    "Predictor",
    "PredictorOptions",
    "QbnnError",
    "SessionOptions",
    "Task",
    "available_providers",
    "known_providers",
    "model_info",
    "open_session",
    "resolve_provider",
]
