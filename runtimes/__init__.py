"""Torch-free MC inference on compiled models: ONNX Runtime EPs and native OpenVINO."""

from .contract import ContractMeta, Task
from .errors import QbnnError
from .options import GraphOptLevel, Precision, SessionOptions
from .predictor import PlainOutput, Prediction, Predictor, PredictorOptions
from .providers import available_providers, known_providers, resolve_provider
from .session import ModelInfo, OpenModel, model_info, open_model, open_session
from .split import SplitReport, split_report

__all__ = [
    "ContractMeta",
    "GraphOptLevel",
    "ModelInfo",
    "OpenModel",
    "PlainOutput",
    "Precision",
    "Prediction",
    "Predictor",
    "PredictorOptions",
    "QbnnError",
    "SessionOptions",
    "SplitReport",
    "Task",
    "available_providers",
    "known_providers",
    "model_info",
    "open_model",
    "open_session",
    "resolve_provider",
    "split_report",
]
