"""INC accuracy-aware tuning on uncertainty quality (accuracy, NLL or ECE of MC predictions).

INC's ``autotune`` tries configs in order and keeps the first whose score (higher is better)
is >= baseline * (1 - tolerable_loss). NLL and ECE are mapped to ``exp(-NLL)`` (geometric-mean
likelihood) and ``1 - ECE`` so that a relative tolerance means what it says.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from qbnn.runtimes import Predictor
from qbnn.runtimes.errors import ConfigError

from ..common import load_npz
from ..validate import metrics
from .backends import inc_static_config, quiet_backend, restore_contract
from .calibration import make_reader
from .config import Backend, CalibMethod, QuantConfig, TuneMetric

__all__ = ["autotune_model", "candidate_overrides", "score"]


def score(metric: TuneMetric, probs: np.ndarray, labels: np.ndarray) -> float:
    """Higher-is-better score of ``probs [N, C]`` against ``labels [N]``."""
    if metric == TuneMetric.ACCURACY:
        return metrics.accuracy(probs, labels)
    if metric == TuneMetric.NLL:
        return float(np.exp(-metrics.nll(probs, labels)))
    return 1.0 - metrics.ece(probs, labels)


def candidate_overrides(cfg: QuantConfig) -> list[dict]:
    """The config set tried in order: the user's config, then progressively safer variants."""
    other = [m for m in CalibMethod if m != cfg.calibration.method]
    cands: list[dict] = [{}, {"per_channel": not cfg.per_channel}]
    cands += [{"calibrate_method": m} for m in other]
    heavy = [o for o in cfg.quantized_op_types if o != "Conv"]
    if "Conv" in cfg.quantized_op_types and heavy:
        cands.append({"op_types_to_quantize": heavy})
    return cands


def _with_num_samples(path: str, tmp: Path) -> Path:
    """A trial model copied for the Predictor, with a format-1 ``num_samples`` input (which INC
    drops with its initializer) put back; format-2 inputs survive INC as they are."""
    model = onnx.load(path)
    restore_contract(model, {})
    out = tmp / f"trial{len(list(tmp.iterdir()))}.onnx"
    onnx.save_model(model, str(out))
    return out


def autotune_model(
    cfg: QuantConfig, src: Path, x: np.ndarray, *, samples: int | None, exclude: list[str]
) -> onnx.ModelProto:
    """Run INC's autotune over :func:`candidate_overrides`; returns the accepted model.
    ``samples``: the ``num_samples`` calibration feeds (``None``: the graph has no such input)."""
    tune = cfg.autotune
    if tune is None or cfg.backend != Backend.INC:
        raise ConfigError("autotune needs backend 'inc' and an 'autotune' section")
    if not tune.data:
        raise ConfigError("autotune.data must name a labelled .npz (keys x, y)")
    val = load_npz(tune.data, require=("x", "y"))
    from onnx_neural_compressor.quantization import tuning

    def make(**over):  # the calibration reader goes to autotune itself, not into the configs
        return inc_static_config(cfg, None, exclude, **over)

    with tempfile.TemporaryDirectory(prefix="qbnn-tune-") as tmp:

        def eval_fn(model_path: str) -> float:
            path = _with_num_samples(model_path, Path(tmp))
            pred = Predictor(path, provider="cpu", seed=cfg.guard.seed)
            s = tune.num_samples if pred.info.takes_num_samples else None
            out = pred.predict(val["x"], s)  # the predictor casts to the input dtype
            return score(tune.metric, out.mean_probs, val["y"])

        tcfg = tuning.TuningConfig(
            config_set=[make(**o) for o in candidate_overrides(cfg)],
            tolerable_loss=tune.tolerable_loss,
            max_trials=tune.max_trials,
        )
        reader = make_reader(x, batch_size=cfg.calibration.batch_size, num_samples=samples)
        with quiet_backend("inc autotune"):
            best = tuning.autotune(str(src), tcfg, eval_fn=eval_fn, calibration_data_reader=reader)
    if best is None:
        raise ConfigError("INC autotune returned no model")  # pragma: no cover
    return best
