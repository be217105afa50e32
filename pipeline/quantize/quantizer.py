"""``quantize(src, dst, config)``: static int8 with INC (or ONNX Runtime), posterior intact.

Flow: validate inputs -> quantize with the backend (calibration runs every MC-sample path) ->
repair INC's output (restores the ``num_samples`` input it drops, inlines external data) ->
store the remaining fp32 posterior tensors in 8 bits -> erasure guard (per quantizer, then
globally); flagged layers are re-quantized with their consumers in fp32, or the stage fails
naming them -> metadata (``qbnn.precision=int8`` + the config) -> atomic write.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qbnn.runtimes.autorule import int8_format
from qbnn.runtimes.contract import NUM_SAMPLES, ContractMeta
from qbnn.runtimes.errors import ConfigError, QuantizationError
from qbnn.runtimes.loading import load_onnx, set_metadata
from qbnn.runtimes.seeding import RANDOM_OPS
from qbnn.runtimes.session import model_info

from ..common import atomic_path, to_dict
from .advice import Trial, candidate_fixes, fixes_text, try_fixes
from .backends import inc_vnni_notice, restore_contract, run_backend
from .calibration import CalibrationRows, calibration_file, calibration_inputs
from .census import Census, already_quantized, take_census
from .config import OnErasure, QuantConfig, QuantFormat
from .guard import (
    ErasedQuantizer,
    SpreadCheck,
    erased_quantizers,
    noise_path_layers,
    spread_check,
)
from .predictive import PredictiveCheck, guard_predictive, predictive_message
from .sampleloop import find_loop_convs, quantize_loop
from .speed import SpeedCheck, measure_speed
from .weightonly import store_weights_int8
from .weightrange import reduce_weight_range

__all__ = ["QuantizeResult", "quantize", "quantize_model"]

log = logging.getLogger("qbnn.quantize")
MAX_ROUNDS = 3


@dataclass(frozen=True)
class QuantizeResult:
    """What the stage did: output path, sizes, fp32-kept layers and the guard's numbers."""

    path: Path
    fp32_bytes: int
    int8_bytes: int
    kept_fp32: tuple[str, ...]
    erased: tuple[ErasedQuantizer, ...]
    spread: SpreadCheck | None
    int8_weights: tuple[str, ...]
    census: Census | None = None  # what is int8 now and what stayed fp32 (and why)
    calibration: CalibrationRows | None = None  # which rows of the file calibrated
    speed: SpeedCheck | None = None  # int8 vs fp32 per call here (``speed_check=True``)
    format: str = ""  # the int8 format used (``auto`` resolved): qoperator or qdq
    predictive: PredictiveCheck | None = None  # fp32 vs int8 mean_probs per class

    @property
    def precision(self) -> str:
        """``int8`` when anything is computed or stored in 8 bits, else ``fp32``."""
        return self.census.precision if self.census is not None else "int8"

    @property
    def size_ratio(self) -> float:
        return self.int8_bytes / self.fp32_bytes


def _biasless_gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every bias-less ``Gemm(A, W)`` (alpha 1, no transA) is ``MatMul(A, W')``.

    INC 1.0 builds an invalid QGemm for a Gemm without ``C`` (its convert step takes the last
    parent for the bias and drops B's scale and zero point; ONNX Runtime then refuses the
    model). Bias-free ``nn.Linear`` layers export exactly that; MatMul quantizes correctly.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    for n in out.graph.node:
        attrs = {a.name: a for a in n.attribute}
        if (
            n.op_type != "Gemm"
            or (len(n.input) > 2 and n.input[2])
            or n.input[1] not in inits
            or attrs.get("transA", helper.make_attribute("t", 0)).i
            or attrs.get("alpha", helper.make_attribute("a", 1.0)).f != 1.0
        ):
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        if attrs.get("transB", helper.make_attribute("t", 0)).i:
            w = w.T
        name = f"{n.input[1]}_qbnn_kn"
        out.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), name))
        n.op_type = "MatMul"
        n.input[1] = name
        del n.input[2:]
        del n.attribute[:]
    return out


def _im2col_nodes(src: onnx.ModelProto) -> set[str]:
    """Depthwise Convs with one-hot kernels: the exporter's im2col for per-sample weights.

    They only rearrange values; quantizing them adds rounding and Q/DQ work for no gain
    (measured: a 5x slower weight-mode ResNet-20), so they stay fp32.
    """
    inits = {i.name: i for i in src.graph.initializer}
    out = set()
    for n in src.graph.node:
        if n.op_type != "Conv" or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]])
        flat = w.reshape(w.shape[0], -1)
        one_hot = w.ndim >= 3 and w.shape[1] == 1 and np.all((flat == 0) | (flat == 1))
        if one_hot and np.all(flat.sum(1) == 1):
            out.add(n.name)
    return out


def _sampling_nodes(src: onnx.ModelProto) -> set[str]:
    """MatMul/Gemm/Conv nodes that *draw parameters*: one input derives from random ops but not
    from the data input (``eps @ L.T`` of a Laplace factor, ``Q1 (E * M) Q2.T``, SWAG's low-rank
    term, a head applying sampled weights).

    Static quantization would turn the standard-normal noise into an int8 activation with a
    calibrated range (clipping its tails) or emit batched QLinearMatMuls ONNX Runtime cannot
    run; these nodes stay fp32 and their factors are stored in int8 by ``posterior_int8``.
    Noise that depends on the data (LRT, dropout masks) is not affected.
    """
    data = {i.name for i in src.graph.input if i.name != NUM_SAMPLES}
    noisy: set[str] = set()
    for n in src.graph.node:
        ins = set(n.input)
        if n.op_type in RANDOM_OPS or ins & noisy:
            noisy.update(n.output)
        if ins & data:
            data.update(n.output)
    drawn = noisy - data
    heavy = {"MatMul", "Gemm", "Conv"}
    names = {n.name for n in src.graph.node if n.op_type in heavy and set(n.input) & drawn}
    # ONNX Runtime's pre-quantization optimizer fuses MatMul + Add into "<name>/MatMulAddFusion"
    return names | {f"{n}/MatMulAddFusion" for n in names}


def _excluded_nodes(src: onnx.ModelProto, cfg: QuantConfig, extra: set[str]) -> list[str]:
    names = [n.name for n in src.graph.node]
    pats = list(cfg.exclude_nodes)
    matched = {n for n in names if any(fnmatch(n, p) for p in pats)}
    return sorted(matched | extra | _im2col_nodes(src) | _sampling_nodes(src))


def quantize(
    src: str | Path,
    dst: str | Path,
    config: QuantConfig | None = None,
    *,
    calib: np.ndarray | str | Path,
) -> Path:
    """Quantize compiled model ``src`` to int8 at ``dst``; see :func:`quantize_model`."""
    return quantize_model(src, dst, config, calib=calib).path


def quantize_model(
    src: str | Path,
    dst: str | Path,
    config: QuantConfig | None = None,
    *,
    calib: np.ndarray | str | Path,
    speed_check: bool = False,
) -> QuantizeResult:
    """Static int8 quantization of ``src`` (a qbnn or plain ONNX model) into ``dst``.

    ``calib``: ``[N, *feature_shape]`` float32 inputs or an ``.npz`` with key ``x``.
    ``speed_check``: time the int8 result against ``src`` on the first calibration batch at the
    calibration S (:func:`~qbnn.pipeline.quantize.speed.measure_speed`; ``result.speed``).
    Raises :class:`QuantizationError` when the posterior would be erased and
    ``guard.on_erasure == fail`` (or keeping layers in fp32 did not help), or when int8 moves
    ``mean_probs`` beyond ``guard.max_mean_gap``; the message names the fixes that pass on the
    same rows (:mod:`~qbnn.pipeline.quantize.advice`).
    """
    cfg = config or QuantConfig()
    with inc_vnni_notice(cfg.reduce_range):
        return _quantize_model(src, dst, cfg, calib, speed_check)


def _quantize_model(src, dst, cfg: QuantConfig, calib, speed_check: bool) -> QuantizeResult:
    src_model = load_onnx(src)
    done = already_quantized(src_model)
    if done:
        raise QuantizationError(
            f"{src} is already quantized ({done}); quantize its fp32 export instead"
        )
    if cfg.format == QuantFormat.AUTO:  # the int8 format of the provider auto will pick
        cfg = replace(cfg, format=QuantFormat(int8_format(src_model)))
    info = model_info(src_model)
    if info.multilabel and cfg.autotune is not None:
        raise ConfigError(
            "autotune scores candidates by top-1 accuracy / NLL over one categorical, which "
            f"does not fit the multi-label model {src}: drop the 'autotune' section"
        )
    data = calibration_file(calib, info)
    run = _guarded(Path(src), src_model, info, cfg, data)
    if run.problem is not None:
        raise QuantizationError(_refusal(run, Path(src), src_model, info, cfg, data))
    int8, kept = run.int8, run.kept
    for e in run.erased:
        log.info(
            "quantizer below %.2f steps of noise: %s", cfg.guard.min_noise_to_step, e.describe()
        )
    census = take_census(int8, _fp32_reasons(src_model, cfg, kept))
    _finish(int8, cfg, kept, census)
    with atomic_path(dst) as tmp:
        onnx.save_model(int8, str(tmp))
    speed = None
    if speed_check and census.precision == "int8":
        c = cfg.calibration
        speed = measure_speed(src, dst, run.x[: c.batch_size], samples=c.num_samples)
    return QuantizeResult(
        Path(dst),
        Path(src).stat().st_size,
        Path(dst).stat().st_size,
        tuple(sorted(kept)),
        tuple(run.erased),
        run.spread,
        tuple(run.weights),
        census,
        run.rows,
        speed,
        cfg.format.value,
        run.predictive,
    )


@dataclass
class _Run:
    """One guarded quantization: the int8 graph, the guard's numbers, and ``problem`` (the
    refusal's first sentence) when a guard failed; ``layers``: what the per-layer guard found."""

    int8: onnx.ModelProto
    weights: list
    erased: list
    spread: SpreadCheck | None
    kept: set[str]
    rows: CalibrationRows
    x: np.ndarray
    predictive: PredictiveCheck | None = None
    problem: str | None = None
    layers: tuple[str, ...] = ()

    def account(self) -> str:
        """Short numbers for a tried fix: ``spread ratio 0.80, largest class gap 0.010``."""
        parts = [] if self.spread is None else [f"spread ratio {self.spread.ratio:.2f}"]
        if self.predictive is not None:
            parts.append(f"largest class mean_probs gap {self.predictive.worst.mean_tv:.3f}")
        return ", ".join(parts) or "passes"


def _guarded(src: Path, src_model, info, cfg: QuantConfig, data, rounds=MAX_ROUNDS, quiet=False):
    """Quantize and guard; with ``on_erasure: keep_fp32`` up to ``rounds`` rounds, each keeping
    the flagged layers in fp32. Returns a :class:`_Run` (``problem`` set when a guard fails)."""
    x, rows = calibration_inputs(data, cfg.calibration, quiet)
    kept: set[str] = set()
    for i in range(rounds):
        int8, weights = _quantize_once(src, src_model, info, cfg, x, kept)
        erased = _guard_layers(int8, info, cfg, x)
        spread = _guard_global(src_model, int8, info, cfg, x)
        run = _Run(int8, weights, erased, spread, set(kept), rows, x)
        if spread is None or _spread_ok(spread, cfg):
            break
        new = {layer for e in erased for layer in e.consumers} - kept
        if not new:  # per-sample int8 weights in the sample loop are the first suspects
            new = {c.name for c in find_loop_convs(src_model)} - kept
        if not new:
            new = set(noise_path_layers(src_model)) - kept
        if cfg.guard.on_erasure == OnErasure.FAIL or not new or i == rounds - 1:
            run.problem = _erasure_message(spread, erased, kept, cfg)
            run.layers = tuple(sorted(kept | new))
            return run
        log.warning("int8 spread ratio %.2f: keeping %s in fp32", spread.ratio, sorted(new))
        kept |= new
    run.predictive = guard_predictive(
        src_model, int8, info, cfg.guard, cfg.calibration.num_samples, data
    )
    failing = run.predictive.failing(cfg.guard.max_mean_gap) if run.predictive else []
    if failing and cfg.guard.max_mean_gap > 0:
        run.problem = predictive_message(failing, spread, cfg.guard.max_mean_gap)
    return run


def _refusal(run: _Run, src: Path, src_model, info, cfg: QuantConfig, data) -> str:
    """The refusal: what failed, then the candidate fixes tried on the same rows."""
    total = len(data["x"]) if run.predictive is not None else None
    fixes = candidate_fixes(cfg, run.layers, total)

    def attempt(c: QuantConfig) -> Trial:
        one = replace(c, guard=replace(c.guard, on_erasure=OnErasure.FAIL))
        tried = _guarded(src, src_model, info, one, data, rounds=1, quiet=True)
        return Trial(tried.problem is None, tried.account())

    return f"{run.problem}. {fixes_text(try_fixes(fixes, attempt))}"


def _calibration_samples(info, cfg: QuantConfig) -> int | None:
    """The ``num_samples`` calibration feeds: the calibration S for a sampled graph, the
    model's default for an exact one (every member runs whatever S is), ``None`` for a graph
    without that input."""
    if not info.takes_num_samples:
        return None
    return cfg.calibration.num_samples if info.stochastic else info.default_samples


def _quantize_once(src: Path, src_model, info, cfg, x, kept) -> tuple[onnx.ModelProto, list]:
    exclude = _excluded_nodes(src_model, cfg, kept)
    samples = _calibration_samples(info, cfg)
    with tempfile.TemporaryDirectory(prefix="qbnn-quant-") as tmp:
        prepared, out = Path(tmp) / "model.onnx", Path(tmp) / "model.int8.onnx"
        onnx.save_model(_biasless_gemm_to_matmul(src_model), str(prepared))
        if cfg.autotune is not None:
            from .autotune import autotune_model

            model = autotune_model(cfg, prepared, x, samples=samples, exclude=exclude)
        else:
            run_backend(cfg, prepared, out, x, samples=samples, exclude=exclude)
            model = onnx.load(str(out))  # pulls INC's external data back in
    restore_contract(model, info.meta)
    if cfg.reduce_range:
        halved = reduce_weight_range(model)
        log.info("7-bit weight grids (reduce_range) for %d int8 weights", len(halved))
    weights = store_weights_int8(model) if cfg.posterior_int8 else []
    model, looped = quantize_loop(
        model,
        x,
        num_samples=cfg.calibration.num_samples,
        batch_size=cfg.calibration.batch_size,
        exclude=[*cfg.exclude_nodes, *kept],
        session_factory=_cpu_session,
        weight_qmax=63 if cfg.reduce_range else 127,
    )
    if looped:
        log.info("per-sample int8 weights (QLinearConv) in the sample loop: %s", looped)
    return model, weights


def _cpu_session(model_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _guard_layers(int8, info, cfg, x) -> list[ErasedQuantizer]:
    if not info.stochastic or cfg.guard.min_noise_to_step <= 0:
        return []
    probe = x[: min(len(x), 32)]
    return erased_quantizers(
        int8, probe, cfg.calibration.num_samples, cfg.guard.min_noise_to_step, cfg.guard.seed
    )


def _guard_global(src_model, int8, info, cfg, x) -> SpreadCheck | None:
    """Spread check for models with a posterior (random ops, ensembles, frozen draws)."""
    has_posterior = info.stochastic or info.posterior == "ensemble" or "frozen" in info.sampling
    if not info.is_qbnn or not info.takes_num_samples or not has_posterior:
        return None
    s = max(16, cfg.calibration.num_samples)
    return spread_check(src_model, int8, x[: min(len(x), 48)], info.task, s, cfg.guard.seed)


def _spread_ok(spread: SpreadCheck, cfg: QuantConfig) -> bool:
    return cfg.guard.min_spread_ratio <= spread.ratio <= cfg.guard.max_spread_ratio


def _erasure_message(spread: SpreadCheck, erased, kept, cfg: QuantConfig) -> str:
    where = "; ".join(e.describe() for e in erased[:6]) or "no single quantizer below threshold"
    return (
        f"int8 does not keep the posterior: logit spread over MC samples "
        f"{spread.spread_int8:.3g} vs fp32 {spread.spread_fp32:.3g}, ratio {spread.ratio:.2f} "
        f"outside [{cfg.guard.min_spread_ratio}, {cfg.guard.max_spread_ratio}] (mean MI "
        f"{spread.mi_int8:.3g} vs {spread.mi_fp32:.3g}). Noise is below the int8 resolution "
        f"at: {where}. Layers kept in fp32 so far: "
        f"{sorted(kept) or 'none'} (guard.on_erasure={cfg.guard.on_erasure.value})"
    )


def _fp32_reasons(src: onnx.ModelProto, cfg: QuantConfig, kept: set[str]) -> dict[str, str]:
    """Why each node the stage kept out of static quantization stays fp32 (for the census)."""
    reasons = {n: "kept fp32 by the erasure guard (its noise would round away)" for n in kept}
    quantized = set(cfg.quantized_op_types)
    for n in src.graph.node:
        if n.name in reasons:
            continue
        if any(fnmatch(n.name, p) for p in cfg.exclude_nodes):
            reasons[n.name] = "listed in exclude_nodes"
        elif n.op_type not in quantized:
            reasons[n.name] = f"op type {n.op_type} not in op_types (or in exclude_op_types)"
    for name in _sampling_nodes(src):
        reasons.setdefault(name, "draws parameters from noise (its factors are stored in 8 bits)")
    for name in _im2col_nodes(src):
        reasons.setdefault(name, "im2col rearrangement (exact in fp32; int8 only adds rounding)")
    return reasons


def _finish(model: onnx.ModelProto, cfg: QuantConfig, kept: set[str], census: Census) -> None:
    """``qbnn.precision`` says what the graph holds: ``int8`` only when some op computes or
    some tensor is stored in 8 bits; the census goes into ``qbnn.quantization``."""
    record = to_dict(cfg)
    record["kept_fp32"] = sorted(kept)
    record["census"] = census.to_dict()
    set_metadata(model, ContractMeta(precision=census.precision, quantization=record).to_props())
