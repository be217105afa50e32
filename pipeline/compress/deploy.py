"""Deploy a precision plan or shared weights into a compiled model (the compiled-model
contract is kept: same inputs, outputs and ``qbnn.*`` metadata, plus ``qbnn.compression``).

Plan flow: find layers -> prune channels (removed or zeroed, :mod:`.prune`) -> probe MACs and
activation ranges on calibration data -> layers with 8-bit weights and activations and no
fixed ranges through INC static int8 (``pipeline.quantize``; every other Conv/Gemm/MatMul is
excluded) -> other layers: weights on their b-bit grid in ONNX integer types
(DequantizeLinear, opset 21) and activations through Clip/Q/DQ -> metadata -> atomic write.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from qbnn.runtimes.contract import ContractMeta, MetaKey
from qbnn.runtimes.errors import ConfigError
from qbnn.runtimes.loading import load_onnx, set_metadata

from ..common import atomic_path, load_npz
from .drawn import drawn_step, probe_drawn, quantize_drawn_input, round_drawn
from .layers import HEAVY_OPS, Layer, find_layers, layer_posterior
from .lowbit import ensure_opset, insert_activation_qdq, replace_with_dq, weight_grid
from .nested import insert_nested_activation
from .plan import LayerPlan, Plan
from .probe import Probe, probe_model
from .prune import prune_channels
from .share import ShareConfig, deploy_codebook, share_layer
from .sigma import code_scales, snr_prune, zero_scales

__all__ = ["COMPRESSION_KEY", "CompressResult", "LayerReport", "deploy_plan", "deploy_share"]

COMPRESSION_KEY = MetaKey.COMPRESSION.value  # compress's record (JSON) in the metadata


@dataclass(frozen=True)
class LayerReport:
    """One layer as deployed: ``route`` is ``inc`` (static int8 kernels), ``dq`` (b-bit
    storage, fp32 op: size only), ``codebook`` (shared values + indices), ``fp32`` or
    ``kept_fp32`` (INC's erasure guard kept it); ``unique`` distinct weight values over the
    layer's tensors, ``entropy`` bits per weight of their histogram, ``bytes`` of its stored
    weights."""

    name: str
    weight_bits: int
    act_bits: int
    route: str
    pruned_fraction: float
    prune_mode: str
    unique: int
    entropy: float
    bytes: int
    macs_share: float
    note: str = ""


@dataclass(frozen=True)
class CompressResult:
    """Totals of a compressed model (``compress.json`` keys, see ``report.py``)."""

    path: Path
    mode: str
    relative_bops: float | None
    size_bytes: int
    fp32_bytes: int
    layers: tuple[LayerReport, ...]
    plan: Plan | None = None
    share: ShareConfig | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def unique_weights(self) -> int:
        """Distinct weight values summed over layers."""
        return sum(lay.unique for lay in self.layers)

    @property
    def max_unique_per_layer(self) -> int:
        return max((lay.unique for lay in self.layers), default=0)


def _entropy(values: np.ndarray) -> tuple[int, float]:
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return int(counts.size), float(-(p * np.log2(p)).sum())


def _calib(calib) -> np.ndarray:
    x = calib if isinstance(calib, np.ndarray) else load_npz(calib, require=("x",))["x"]
    return np.ascontiguousarray(x, np.float32)


def _arr(model: onnx.ModelProto, name: str) -> np.ndarray:
    init = next(i for i in model.graph.initializer if i.name == name)
    return numpy_helper.to_array(init)


def _heavy_readers(model: onnx.ModelProto, names: set[str]) -> set[str]:
    return {n.name for n in model.graph.node if n.op_type in HEAVY_OPS and set(n.input) & names}


def _run_inc(model, layers, inc_layers, x, quant_config, tmp: Path) -> tuple:
    """INC static int8 for ``inc_layers`` only; returns (model, quantized node names)."""
    from ..quantize import QuantConfig, QuantFormat, quantize_model

    tensors = {t for lay in inc_layers for t in lay.weights + lay.scales}
    wanted = _heavy_readers(model, tensors)
    others = sorted(n.name for n in model.graph.node if n.op_type in HEAVY_OPS)
    exclude = [n for n in others if n not in wanted]
    base = quant_config or QuantConfig()
    if base.format == QuantFormat.AUTO:  # the routes below read QOperator nodes (QLinearConv)
        base = replace(base, format=QuantFormat.QOPERATOR)
    cfg = replace(base, exclude_nodes=(*base.exclude_nodes, *exclude), posterior_int8=False)
    src, dst = tmp / "pruned.onnx", tmp / "inc.onnx"
    onnx.save_model(model, str(src))
    res = quantize_model(src, dst, cfg, calib=x)
    out = onnx.load(str(dst))
    present = {n.name for n in out.graph.node}
    quantized = {n for n in wanted if n not in present} - set(res.kept_fp32)
    return out, quantized


def deploy_plan(
    src: str | Path,
    dst: str | Path,
    plan: Plan,
    *,
    calib: np.ndarray | str | Path,
    num_samples: int = 8,
    quant_config=None,
) -> CompressResult:
    """Compile ``plan`` into ``src`` (an fp32 compiled model), writing ``dst``.

    ``calib``: ``[N, *feature_shape]`` float32 (or ``.npz`` with ``x``), run with
    ``num_samples`` MC samples for activation ranges, MACs and INC calibration.
    Raises :class:`ConfigError` for a plan that names unknown layers, out-of-range channels,
    or activation bits on a layer whose op does not read its weight directly.
    """
    model = load_onnx(src)
    x = _calib(calib)
    layers = find_layers(model)
    plan.check_layers(list(layers))
    nodes = [n for lay in layers.values() for n in lay.nodes + lay.scale_nodes]
    nodes += [n for lay in layers.values() for _, n in lay.drawn]
    n_out = {k: _arr(model, v.weights[0]).shape[v.out_axis] for k, v in layers.items()}
    base = _probe(model, layers, x, num_samples)
    modes, snr_pruned = {}, {}
    for lay in layers.values():
        lp = plan.layer(lay.name)
        snr_pruned[lay.name] = snr_prune(model, lay, lp.prune_snr)
        if lp.prune_channels:
            modes[lay.name] = prune_channels(model, lay, lp.prune_channels)
    probe = _probe(model, layers, x, num_samples) if modes else base
    inc_layers = [lay for lay in layers.values() if plan.layer(lay.name).via_inc and not lay.drawn]
    quantized: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="qbnn-compress-") as tmp:
        if inc_layers:
            model, quantized = _run_inc(model, layers, inc_layers, x, quant_config, Path(tmp))
    reports, bits, stored = [], {}, False
    for lay in layers.values():
        lp = plan.layer(lay.name)
        pruned = len(lp.prune_channels) / n_out[lay.name]
        rep, node_bits = _deploy_layer(
            model, lay, lp, probe, quantized, modes.get(lay.name, ""), pruned
        )
        if snr_pruned[lay.name]:
            rep = replace(rep, note=f"{snr_pruned[lay.name]:.1%} of weights pruned by SNR; "
                          + rep.note)  # fmt: skip
        reports.append(rep)
        bits.update(node_bits)
        stored |= rep.route in ("inc", "dq", "drawn") and rep.weight_bits <= 8
    coded = any(plan.layer(n).sigma_bits < 32 for n in layers)
    if coded or any(r.route in ("dq", "drawn") for r in reports):
        ensure_opset(model)  # 4-bit DequantizeLinear
    total = sum(base.macs.values()) or 1.0
    for n in {n for lay in layers.values() for n in lay.scale_nodes} & quantized:
        bits[n] = (8, 8)  # a variance-path op INC quantized with its layer
    # SNR-pruned weights (mu = sigma = 0) are 0 in every draw: their MACs count as removed
    dense = {n: 1 - snr_pruned[lay.name] for lay in layers.values()
             for n in lay.nodes + lay.scale_nodes + [d for _, d in lay.drawn]}  # fmt: skip
    used = {n: probe.macs[n] * dense.get(n, 1.0) for n in nodes}
    # no op reads a weight, stored or drawn: BOPs are not defined for the plan
    rel = _bops(base, used, bits) if nodes else None
    reports = [replace(r, macs_share=_share(layers[r.name], probe, total)) for r in reports]
    return _write(model, src, dst, "plan", rel, reports, plan=plan, stored=stored)


def _probe(model, layers: dict[str, Layer], x: np.ndarray, num_samples: int) -> Probe:
    """MACs and input ranges of every layer op: ops reading stored weights and scales, and
    the Scan-body ops reading drawn weights (:mod:`.drawn`)."""
    nodes = [n for lay in layers.values() for n in lay.nodes + lay.scale_nodes]
    out = probe_model(model, nodes, x, num_samples)
    drawn = [lay for lay in layers.values() if lay.drawn]
    if drawn:
        d = probe_drawn(model, drawn, x, num_samples)
        out = Probe({**out.macs, **d.macs}, {**out.ranges, **d.ranges})
    return out


def _bops(base: Probe, used: dict[str, float], bits: dict[str, tuple[int, int]]) -> float:
    total = sum(base.macs.values())
    if total <= 0:
        return 1.0
    return sum(used[n] * bits.get(n, (32, 32))[0] * bits.get(n, (32, 32))[1] for n in used) / (
        total * 1024
    )


def _share(lay: Layer, probe: Probe, total: float) -> float:
    ops = lay.nodes + lay.scale_nodes + [n for _, n in lay.drawn]
    return sum(probe.macs.get(n, 0.0) for n in ops) / total


def _deploy_layer(model, lay: Layer, lp: LayerPlan, probe: Probe, quantized, prune_mode: str,
                  pruned: float):  # fmt: skip
    """Apply one layer's plan in place; returns (LayerReport, {node: (w_bits, a_bits)})."""
    if lay.drawn:
        return _deploy_drawn(model, lay, lp, probe, prune_mode, pruned)
    if lp.via_inc:
        done = all(n in quantized for n in lay.nodes) and bool(lay.nodes)
        route = "inc" if done else "kept_fp32"
        wb = 8 if done else 32
        vals = [_inc_codes(model, w) for w in lay.weights]
        vals = [v for v in vals if v is not None] or [_arr(model, w) for w in lay.weights]
        unique, ent = _entropy(np.concatenate([v.ravel() for v in vals]))
        nbytes = sum(v.size * v.itemsize for v in vals)
        why = (
            "INC kept it in fp32 (erasure guard)"
            if lay.nodes
            else ("its op reads a weight drawn at run time: static int8 cannot quantize it")
        )
        rep = LayerReport(lay.name, wb, wb, route, pruned, prune_mode, unique, ent, nbytes, 0.0,
                          "" if done else why)  # fmt: skip
        return rep, {n: (wb, wb) for n in lay.nodes}
    if lp.weight_bits == 32 and lp.act_bits == 32:
        vals = np.concatenate([_arr(model, w).ravel() for w in lay.weights])
        unique, ent = _entropy(vals)
        nbytes = vals.nbytes + code_scales(model, lay, lp.sigma_bits)
        rep = LayerReport(lay.name, 32, 32, "fp32", pruned, prune_mode, unique, ent,
                          nbytes, 0.0)  # fmt: skip
        return rep, {}
    nbytes, codes_all = 0, []
    if lp.weight_bits < 32:
        shrunk = _match_variance(model, lay, lp) if lp.match_variance else {}
        for w in lay.weights:
            arr = shrunk.get(w, _arr(model, w))
            codes, scale = weight_grid(arr, lp.weight_bits, lay.out_axis, lp.weight_range)
            nbytes += replace_with_dq(model, w, codes, scale, lay.out_axis)
            codes_all.append(codes.ravel())
    else:
        codes_all = [_arr(model, w).ravel() for w in lay.weights]
        nbytes = sum(c.nbytes for c in codes_all)
    if lp.weight_bits == 0:
        zero_scales(model, lay)
    nbytes += code_scales(model, lay, lp.sigma_bits)
    if lp.act_bits < 32:
        if not lay.nodes:
            raise ConfigError(
                f"layers.{lay.name}.act_bits: {lp.act_bits} needs an op that reads the layer's "
                "weight (stored, or drawn and fed to a Scan); compress found none in this "
                "graph: use act_bits: 32 here"
            )
        for n in lay.nodes:
            lo, hi = lp.act_range or probe.ranges[n]
            if lp.act_rounding == "nested":
                insert_nested_activation(model, n, lp.act_bits, lo, hi)
            else:
                insert_activation_qdq(model, n, lp.act_bits, lo, hi)
    unique, ent = _entropy(np.concatenate(codes_all))
    note = "" if lp.weight_bits == 0 else "b-bit storage; the op runs in fp32 (size, not speed)"
    rep = LayerReport(lay.name, lp.weight_bits, lp.act_bits, "dq", pruned, prune_mode, unique,
                      ent, nbytes, 0.0, note)  # fmt: skip
    return rep, {n: (lp.weight_bits, lp.act_bits) for n in lay.nodes}


def _set_init(model, name: str, value: np.ndarray) -> None:
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _deploy_drawn(model, lay: Layer, lp: LayerPlan, probe: Probe, prune_mode: str,
                  pruned: float):  # fmt: skip
    """A layer whose weights are drawn at run time (:mod:`.drawn`): mu on its b-bit grid
    (stored), sigma shrunk for the rounding noise (``match_variance``) and coded
    (``sigma_bits``), every draw rounded to the b-bit grid, activations Q/DQ in the body."""
    mu, sigma = layer_posterior(model, lay)
    wb, ab = lp.weight_bits, lp.act_bits
    if wb == 0:
        zero_scales(model, lay)
    elif wb < 32:
        step = drawn_step(mu, sigma, wb, lay.out_axis)
        if lp.match_variance and lay.scale_kind == "sigma":
            shape = [1] * mu.ndim
            shape[lay.out_axis] = -1
            noise = lp.match_variance * step.reshape(shape).astype(np.float64) ** 2 / 12
            shrunk = np.sqrt(np.maximum(sigma.astype(np.float64) ** 2 - noise, 0))
            _set_init(model, lay.scales[0], shrunk)
        round_drawn(model, lay, wb, step)
    codes_all, nbytes = [], 0
    for w in lay.weights:
        arr = _arr(model, w)
        if wb < 32:
            codes, scale = weight_grid(arr, wb, lay.out_axis, lp.weight_range)
            nbytes += replace_with_dq(model, w, codes, scale, lay.out_axis)
            codes_all.append(codes.ravel())
        else:
            codes_all.append(arr.ravel())
            nbytes += arr.nbytes
    nbytes += code_scales(model, lay, lp.sigma_bits)
    if ab < 32:
        for _, n in lay.drawn:
            lo, hi = lp.act_range or probe.ranges[n]
            quantize_drawn_input(model, n, ab, lo, hi)
    unique, ent = _entropy(np.concatenate(codes_all))
    note = "drawn weights rounded at run time; the op runs in fp32 on grid values"
    rep = LayerReport(lay.name, wb, ab, "drawn" if wb < 32 or ab < 32 else "fp32", pruned,
                      prune_mode, unique, ent, nbytes, 0.0, note)  # fmt: skip
    return rep, {n: (wb, ab) for _, n in lay.drawn}


def _match_variance(model, lay: Layer, lp: LayerPlan) -> dict[str, np.ndarray]:
    """Draws with deviations shrunk before rounding (see ``LayerPlan.match_variance``):
    ``w' = mu + c (w - mu)``, ``c**2 = max(0, 1 - m step**2 / (12 sigma**2))`` per weight with
    ``m = match_variance``; ``{}`` for layers that are not K >= 2 draws."""
    if lay.role != "draws" or len(lay.weights) < 2 or lp.weight_bits in (0, 32):
        return {}
    draws = np.stack([_arr(model, w).astype(np.float32) for w in lay.weights])
    mu, sigma = draws.mean(0), draws.std(0, ddof=1)
    _, step = weight_grid(mu, lp.weight_bits, lay.out_axis, lp.weight_range)
    shape = [1] * mu.ndim
    if step.ndim:
        shape[lay.out_axis] = -1
    noise = lp.match_variance * step.reshape(shape).astype(np.float64) ** 2 / 12
    c = np.sqrt(np.clip(1 - noise / np.maximum(sigma.astype(np.float64) ** 2, 1e-30), 0, 1))
    out = mu + c.astype(np.float32) * (draws - mu)
    return {w: out[i] for i, w in enumerate(lay.weights)}


def _inc_codes(model: onnx.ModelProto, weight: str) -> np.ndarray | None:
    for i in model.graph.initializer:
        if i.name.startswith(weight) and i.name.endswith("_quantized"):
            return numpy_helper.to_array(i)
    return None


def deploy_share(src: str | Path, dst: str | Path, cfg: ShareConfig | None = None,
                 *, layers: list[str] | None = None) -> tuple[CompressResult, dict]:  # fmt: skip
    """Share each layer's weights (:mod:`.share`) and store them as codebook + indices.

    ``layers``: the layers to share (default: all). Returns the result and
    ``{layer: SharedLayer}`` (the shared values, for checks against a torch model)."""
    cfg = cfg or ShareConfig()
    model = load_onnx(src)
    found = find_layers(model)
    names = layers or list(found)
    Plan(layers={}).check_layers(list(found))
    for n in names:
        if n not in found:
            raise ConfigError(f"--layers: no layer '{n}'; the model's layers: {', '.join(found)}")
    shared, reports = {}, []
    for name, lay in found.items():
        if name not in names:
            vals = np.concatenate([_arr(model, w).ravel() for w in lay.weights])
            u, e = _entropy(vals)
            reports.append(LayerReport(name, 32, 32, "fp32", 0.0, "", u, e, vals.nbytes, 0.0))
            continue
        pruned = snr_prune(model, lay, cfg.snr)
        s = share_layer(model, lay, cfg)
        shared[name] = s
        nbytes = deploy_codebook(model, lay, s)
        nbytes += code_scales(model, lay, cfg.sigma_bits)
        u, e = _entropy(np.concatenate([i.ravel() for i in s.indices]))
        bits = 4 if s.codebook.size <= 16 else 8
        note = f"{s.beyond_k_sigma:.1%} of weights moved beyond {cfg.k} sigma"
        if s.already_shared:
            note = "already shared (nothing moved)"
        if pruned:
            note += f"; {pruned:.1%} pruned by SNR < {cfg.snr:g}"
        if lay.scales and cfg.sigma_bits < 32:
            note += f"; sigma on a {cfg.sigma_bits}-bit log grid"
        reports.append(LayerReport(name, bits, 32, "codebook", 0.0, "", u, e, nbytes, 0.0, note))
    ensure_opset(model)
    return _write(model, src, dst, "share", None, reports, share=cfg, stored=True), shared


def _write(model, src, dst, mode, rel, reports, *, plan=None, share=None, stored=False):
    record = {"mode": mode, "relative_bops": rel}
    if plan is not None:
        record["plan"] = plan.to_dict()
    if share is not None:
        record["share"] = {"k": share.k, "max_unique": share.max_unique,
                           "sigma_bits": share.sigma_bits, "snr": share.snr}  # fmt: skip
    meta = ContractMeta(compression=record, precision="int8" if stored else None)
    del model.graph.value_info[:]  # shapes ONNX Runtime re-infers; only file size
    set_metadata(model, meta.to_props())
    with atomic_path(dst) as tmp:
        onnx.save_model(model, str(tmp))
    return CompressResult(
        Path(dst), mode, rel, Path(dst).stat().st_size, Path(src).stat().st_size,
        tuple(reports), plan, share,
    )  # fmt: skip
