"""The ``quantize`` stage: static int8 with INC (or ONNX Runtime), posterior intact.

``quantize_model(src, dst, QuantConfig(...), calib=...) -> QuantizeResult``. Modules: ``config``
(the documented schema), ``backends`` (INC / ONNX Runtime), ``calibration`` (MC-sample data
reader, which rows of the file calibrate), ``guard`` (erasure checks), ``predictive`` (fp32
vs int8 ``mean_probs`` per class), ``advice`` (refusals naming fixes tried first),
``weightonly`` (8-bit posterior storage), ``autotune`` (INC accuracy-aware tuning) and
``quantizer`` (the flow).
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
