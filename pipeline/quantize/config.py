"""The quantization config: a documented schema that maps onto INC's ``StaticQuantConfig``.

YAML example (every key optional; see ``pipeline/configs/inc_*.yaml``)::

    backend: inc              # inc (Intel Neural Compressor) | ort (onnxruntime quantize_static)
    format: auto              # auto (default: the format of the provider `auto` runs the int8
                              # graph on: qdq where that is OpenVINO, else qoperator)
                              # | qoperator (QLinear* ops) | qdq (QuantizeLinear/DequantizeLinear)
    per_channel: true
    weight_type: int8         # int8 | uint8
    activation_type: uint8    # uint8 | int8
    op_types: [MatMul, Gemm, Conv]
    exclude_op_types: []      # op types kept in fp32
    exclude_nodes: []         # fnmatch patterns of node names kept in fp32
    posterior_int8: true      # store leftover fp32 posterior tensors (mu, sigma) in 8 bits
    reduce_range: true        # 7-bit int8 weights: no int16 saturation on CPUs without VNNI
    calibration: {method: minmax, size: 256, batch_size: 32, num_samples: 8}
    guard: {min_spread_ratio: 0.5, max_spread_ratio: 2.0, min_noise_to_step: 0.5,
            on_erasure: keep_fp32, seed: 0, max_mean_gap: 0.05, rows: 256}
    autotune: {metric: ece, tolerable_loss: 0.02, max_trials: 6, data: val.npz, num_samples: 16}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from qbnn.runtimes.errors import ConfigError

from ..common import coerce_enums

__all__ = [
    "AutotuneConfig",
    "Backend",
    "CalibMethod",
    "CalibrationConfig",
    "GuardConfig",
    "OnErasure",
    "QuantConfig",
    "QuantFormat",
    "QType",
    "TuneMetric",
]


class Backend(StrEnum):
    INC = "inc"
    ORT = "ort"


class QuantFormat(StrEnum):
    QOPERATOR = "qoperator"
    QDQ = "qdq"
    #: the format the provider ``auto`` runs the int8 graph on is fastest with: QDQ where that
    #: is OpenVINO, QOperator elsewhere (``qbnn.runtimes.autorule.int8_format``)
    AUTO = "auto"


class QType(StrEnum):
    INT8 = "int8"
    UINT8 = "uint8"


class CalibMethod(StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


class OnErasure(StrEnum):
    KEEP_FP32 = "keep_fp32"
    FAIL = "fail"


class TuneMetric(StrEnum):
    ACCURACY = "accuracy"
    NLL = "nll"
    ECE = "ece"


@dataclass(frozen=True, kw_only=True)
class CalibrationConfig:
    """Calibration: ``size`` inputs in batches of ``batch_size``, each run with
    ``num_samples`` MC samples (>= 8) so activation ranges include the posterior noise.
    The ``size`` rows are a sample drawn with ``seed`` over the whole file (all rows when the
    file has fewer), never just its first rows."""

    method: CalibMethod = CalibMethod.MINMAX
    size: int = 256
    batch_size: int = 32
    num_samples: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        coerce_enums(self)
        if self.size < 1 or self.batch_size < 1:
            raise ConfigError(
                f"calibration.size and batch_size must be >= 1; got {self.size}, {self.batch_size}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"calibration.seed must be an integer >= 0; got {self.seed!r}")
        if self.num_samples < 8:
            raise ConfigError(
                f"calibration.num_samples must be >= 8 so ranges cover the noise; got "
                f"{self.num_samples}"
            )


@dataclass(frozen=True, kw_only=True)
class GuardConfig:
    """Never erase the posterior.

    Per layer: the noise std at a stochastic layer's output must be at least
    ``min_noise_to_step`` int8 quantization steps of the activation that quantizes it.
    Globally: the int8/fp32 ratio of the logit spread over MC samples on calibration data must
    lie in ``[min_spread_ratio, max_spread_ratio]``: below, the noise was rounded away; above,
    int8 rounding noise dominates a posterior narrower than the int8 resolution.
    ``on_erasure``: ``keep_fp32`` re-quantizes with the flagged layers' consumers in fp32;
    ``fail`` raises, naming the layers. Either way a refusal names the fixes that were tried on
    the same rows and pass (``posterior_int8: false``, the layers to exclude).
    Predictive: on up to ``rows`` rows of the calibration file (stratified by its labels ``y``
    when present), fp32 vs int8 ``mean_probs``; the stage fails when, for some class, their
    mean total-variation distance exceeds ``max_mean_gap`` (0 turns the check off).
    """

    min_spread_ratio: float = 0.5
    max_spread_ratio: float = 2.0
    min_noise_to_step: float = 0.5
    on_erasure: OnErasure = OnErasure.KEEP_FP32
    seed: int = 0
    max_mean_gap: float = 0.05
    rows: int = 256

    def __post_init__(self) -> None:
        coerce_enums(self)
        if (
            not 0.0 <= self.min_spread_ratio <= 1.0 <= self.max_spread_ratio
            or self.min_noise_to_step < 0
        ):
            raise ConfigError(
                f"guard needs 0 <= min_spread_ratio <= 1 <= max_spread_ratio and "
                f"min_noise_to_step >= 0; got {self.min_spread_ratio}, {self.max_spread_ratio}, "
                f"{self.min_noise_to_step}"
            )
        if not 0.0 <= self.max_mean_gap <= 1.0 or isinstance(self.max_mean_gap, bool):
            raise ConfigError(
                f"guard.max_mean_gap must be in [0, 1] (0 turns the predictive check off); "
                f"got {self.max_mean_gap!r}"
            )
        if isinstance(self.rows, bool) or not isinstance(self.rows, int) or self.rows < 1:
            raise ConfigError(f"guard.rows must be a positive integer; got {self.rows!r}")


@dataclass(frozen=True, kw_only=True)
class AutotuneConfig:
    """INC accuracy-aware tuning on the model's own MC predictions over labelled ``data``.

    ``metric``: accuracy, nll or ece, mapped to INC's higher-is-better score as accuracy,
    exp(-NLL) and 1 - ECE; a trial passes when score >= baseline * (1 - tolerable_loss).
    """

    metric: TuneMetric = TuneMetric.ACCURACY
    tolerable_loss: float = 0.01
    max_trials: int = 8
    data: str = ""
    num_samples: int = 16

    def __post_init__(self) -> None:
        coerce_enums(self)
        if not 0.0 <= self.tolerable_loss < 1.0 or self.max_trials < 1 or self.num_samples < 1:
            raise ConfigError(
                f"autotune needs 0 <= tolerable_loss < 1, max_trials >= 1, num_samples >= 1; "
                f"got {self.tolerable_loss}, {self.max_trials}, {self.num_samples}"
            )


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """Static int8 post-training quantization of a compiled model (see module docstring)."""

    backend: Backend = Backend.INC
    #: ``auto`` by default, so the defaults reach the fastest int8 variant: QDQ where ``auto``
    #: runs the int8 graph on OpenVINO (``frozen:8`` ResNet-20: 2.11x Bayesian-Torch vs 1.64x
    #: for QOperator on the CPU EP, DESIGN.md section 9), QOperator elsewhere
    format: QuantFormat = QuantFormat.AUTO
    per_channel: bool = True
    weight_type: QType = QType.INT8
    activation_type: QType = QType.UINT8
    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Conv")
    exclude_op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    posterior_int8: bool = True
    #: 7-bit weight grids (|w_q| <= 64) for int8 convolutions and GEMMs, and 63 for the sample
    #: loop's per-sample weights: ONNX Runtime's u8 x s8 kernels saturate int16 pair sums on CPUs
    #: without VNNI (see ``weightrange.py``); costs one bit of weight resolution
    reduce_range: bool = True
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    autotune: AutotuneConfig | None = None

    def __post_init__(self) -> None:
        coerce_enums(self)
        if not self.quantized_op_types:
            raise ConfigError(
                f"no op type left to quantize: op_types {list(self.op_types)} minus "
                f"exclude_op_types {list(self.exclude_op_types)}"
            )
        object.__setattr__(self, "op_types", tuple(self.op_types))

    @property
    def quantized_op_types(self) -> list[str]:
        """``op_types`` minus ``exclude_op_types``."""
        return [o for o in self.op_types if o not in self.exclude_op_types]
