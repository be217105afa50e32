"""Quantization backends: Intel Neural Compressor (default) and ONNX Runtime.

Both are imported lazily (INC pulls transformers: ~3 s) with an install hint.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from qbnn.runtimes.contract import NUM_SAMPLES
from qbnn.runtimes.errors import QuantizationError, first_line
from qbnn.runtimes.loading import set_metadata

from .calibration import make_reader
from .config import Backend, CalibMethod, QType, QuantConfig, QuantFormat

__all__ = [
    "BACKENDS",
    "inc_static_config",
    "inc_vnni_notice",
    "quiet_backend",
    "restore_contract",
    "run_backend",
]

BackendFn = Callable[..., None]
BACKENDS: dict[Backend, BackendFn] = {}

#: INC's notice, logged for every static config it builds on a CPU without VNNI (2-4 times per
#: quantize) unless INC itself is given ``reduce_range=True``
INC_VNNI_NOTICE = "VNNI is not supported"
log = logging.getLogger("qbnn.quantize")


def _register(name: Backend):
    def deco(fn: BackendFn) -> BackendFn:
        BACKENDS[name] = fn
        return fn

    return deco


def _extra(cfg: QuantConfig) -> dict:
    return {"WeightSymmetric": True, "ActivationSymmetric": cfg.activation_type == QType.INT8}


def inc_static_config(cfg: QuantConfig, reader, exclude: list[str], **overrides):
    """INC ``StaticQuantConfig`` equivalent to ``cfg`` (``overrides`` replace fields)."""
    try:
        from onnx_neural_compressor.quantization import (
            CalibrationMethod,
            QuantType,
            config,
        )
        from onnx_neural_compressor.quantization import QuantFormat as IQF
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise QuantizationError(
            "Intel Neural Compressor for ONNX is missing: pip install onnx-neural-compressor "
            f"prettytable ({exc})"
        ) from exc
    qt = {QType.INT8: QuantType.QInt8, QType.UINT8: QuantType.QUInt8}
    methods = {CalibMethod.MINMAX: CalibrationMethod.MinMax,
               CalibMethod.ENTROPY: CalibrationMethod.Entropy,
               CalibMethod.PERCENTILE: CalibrationMethod.Percentile}  # fmt: skip
    kwargs = dict(
        calibration_data_reader=reader,
        quant_format=IQF.QDQ if cfg.format == QuantFormat.QDQ else IQF.QOperator,
        per_channel=cfg.per_channel,
        weight_type=qt[cfg.weight_type],
        activation_type=qt[cfg.activation_type],
        calibrate_method=methods[cfg.calibration.method],
        op_types_to_quantize=cfg.quantized_op_types,
        nodes_to_exclude=exclude,
        extra_options=_extra(cfg),
        calibration_sampling_size=cfg.calibration.size,
    )
    kwargs.update(overrides)
    if isinstance(kwargs["calibrate_method"], CalibMethod):
        kwargs["calibrate_method"] = methods[kwargs["calibrate_method"]]
    return config.StaticQuantConfig(**kwargs)


@_register(Backend.INC)
def _inc(cfg: QuantConfig, src: Path, dst: Path, reader, exclude: list[str]) -> None:
    from onnx_neural_compressor.quantization import quantize

    quantize(str(src), str(dst), inc_static_config(cfg, reader, exclude))


@_register(Backend.ORT)
def _ort(cfg: QuantConfig, src: Path, dst: Path, reader, exclude: list[str]) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize_static
    from onnxruntime.quantization import QuantFormat as OQF

    qt = {QType.INT8: QuantType.QInt8, QType.UINT8: QuantType.QUInt8}
    quantize_static(
        str(src), str(dst), reader,
        quant_format=OQF.QDQ if cfg.format == QuantFormat.QDQ else OQF.QOperator,
        op_types_to_quantize=cfg.quantized_op_types, per_channel=cfg.per_channel,
        weight_type=qt[cfg.weight_type], activation_type=qt[cfg.activation_type],
        nodes_to_exclude=exclude,
        calibrate_method={CalibMethod.MINMAX: CalibrationMethod.MinMax,
                          CalibMethod.ENTROPY: CalibrationMethod.Entropy,
                          CalibMethod.PERCENTILE: CalibrationMethod.Percentile}[
                              cfg.calibration.method],
        extra_options=_extra(cfg),
    )  # fmt: skip


class _Dropped(logging.Filter):
    """Drops (and counts) the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix, self.count = prefix, 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith(self.prefix):
            self.count += 1
            return False
        return True


@contextlib.contextmanager
def inc_vnni_notice(reduce_range: bool):
    """Keep INC's ``VNNI is not supported and reduce_range=False, reduce_range=True is
    recommended`` off the output within; when INC raised it, say once in qbnn's words what
    applies. With ``reduce_range`` (qbnn's default) qbnn halves the int8 weight grids itself
    after INC (:mod:`qbnn.pipeline.quantize.weightrange`; INC's own flag leaves the weights in
    [-127, 127]), which is what the notice asks for: an INFO line. Without it, a warning."""
    inc_log = logging.getLogger("onnx_neural_compressor")
    notice = _Dropped(INC_VNNI_NOTICE)
    inc_log.addFilter(notice)
    try:
        yield
    finally:
        inc_log.removeFilter(notice)
    if notice.count and reduce_range:
        log.info(
            "this CPU has no VNNI: qbnn puts int8 conv/GEMM weights on a 7-bit grid "
            "(reduce_range: true) so ONNX Runtime's int16 pair sums cannot saturate"
        )
    elif notice.count:
        log.warning(
            "this CPU has no VNNI and reduce_range is off: int8 convolutions and GEMMs may "
            "saturate ONNX Runtime's int16 pair sums (outputs several steps off); set "
            "reduce_range: true in the quantization config"
        )


@contextlib.contextmanager
def quiet_backend(name: str):
    """Silence a backend's prints/logs; turn its failures (and ``exit()``) into
    :class:`QuantizationError`."""
    import onnxruntime as ort

    if name.startswith("inc"):
        import onnx_neural_compressor.logger  # noqa: F401  (its import resets the level)
    buf = io.StringIO()
    inc_log = logging.getLogger("onnx_neural_compressor")
    level = inc_log.level
    inc_log.setLevel(logging.WARNING)
    ort.set_default_logger_severity(3)  # sessions the backends open: no initializer notices
    try:
        with contextlib.redirect_stdout(buf):
            yield
    except SystemExit as exc:  # INC calls exit() when tuning finds nothing, among others
        tail = buf.getvalue().strip().splitlines()[-3:]
        raise QuantizationError(f"{name} quantization gave up: {' '.join(tail)}") from exc
    except QuantizationError:
        raise
    except Exception as exc:
        msg = first_line(exc)
        raise QuantizationError(f"{name} quantization failed: {msg}") from exc
    finally:
        inc_log.setLevel(level)
        ort.set_default_logger_severity(2)


def run_backend(
    cfg: QuantConfig,
    src: Path,
    dst: Path,
    x: np.ndarray,
    *,
    samples: int | None,
    exclude: list[str],
) -> None:
    """Quantize ``src`` into ``dst`` with the configured backend; quiet unless it fails.
    ``samples``: the ``num_samples`` calibration feeds (``None``: the graph has no such input)."""
    reader = make_reader(x, batch_size=cfg.calibration.batch_size, num_samples=samples)
    with quiet_backend(cfg.backend.value):
        BACKENDS[cfg.backend](cfg, src, dst, reader, exclude)


def restore_contract(model: onnx.ModelProto, src_meta: dict[str, str]) -> None:
    """INC drops inputs that have initializers and may drop nothing else (a format-1
    ``num_samples``); restore the contract's ``num_samples`` input and the ``qbnn.*`` metadata
    (in place)."""
    inits = {i.name for i in model.graph.initializer}
    if NUM_SAMPLES in inits and not any(i.name == NUM_SAMPLES for i in model.graph.input):
        model.graph.input.append(helper.make_tensor_value_info(NUM_SAMPLES, TensorProto.INT64, []))
    set_metadata(model, src_meta, overwrite=False)
