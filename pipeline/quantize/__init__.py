"""The ``quantize`` stage: static int8 with INC (or ONNX Runtime), posterior intact.

``quantize_model(src, dst, QuantConfig(...), calib=...) -> QuantizeResult``. Modules: ``config``
(the documented schema), ``backends`` (INC / ONNX Runtime), ``calibration`` (MC-sample data
reader), ``guard`` (erasure checks), ``weightonly`` (8-bit posterior storage), ``autotune``
(INC accuracy-aware tuning) and ``quantizer`` (the flow).
"""

from .config import (
    AutotuneConfig,
    Backend,
    CalibMethod,
    CalibrationConfig,
    GuardConfig,
    OnErasure,
    QType,
    QuantConfig,
    QuantFormat,
    TuneMetric,
)
from .quantizer import QuantizeResult, quantize, quantize_model

__all__ = [
    "AutotuneConfig",
    "Backend",
    "CalibMethod",
    "CalibrationConfig",
    "GuardConfig",
    "OnErasure",
    "QType",
    "QuantConfig",
    "QuantFormat",
    "QuantizeResult",
    "TuneMetric",
    "quantize",
    "quantize_model",
]
