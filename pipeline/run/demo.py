"""``qbnn demo``: train on the bundled digits, then run the shipped demo pipeline.

No network, no arguments: data come from scikit-learn's bundled digits; the Bayesian CNN is
built from real Bayesian-Torch layers; a deterministic twin is the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
import yaml

from ..common import require
from . import digits

__all__ = ["demo_config_text", "prepare_demo"]


def demo_config_text() -> str:
    """The shipped demo ``pipeline.yaml`` (package data; ``examples/demo.yaml`` is a copy)."""
    return resources.files("qbnn.pipeline").joinpath("configs/demo.yaml").read_text()


def _quick(text: str) -> str:
    """The reduced setting used by tests: smaller validation and benchmark grids."""
    cfg = yaml.safe_load(text)
    cfg["validate"].update({"num_samples": 16, "bootstrap": 20, "mc_repeats": 1})
    cfg["bench"].update({"batches": [4], "samples": [1, 4], "repeats": 2, "warmup": 1})
    cfg["quantize"]["calibration"].update({"size": 64})
    return yaml.safe_dump(cfg, sort_keys=False)


def prepare_demo(
    out_root: str | Path = "artifacts",
    *,
    quick: bool = False,
    seed: int = 0,
    retrain: bool = False,
    log: Callable[[str], None] = print,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Write data, trained weights and ``pipeline.yaml`` into ``<out_root>/demo-inputs``.

    Existing weights are reused unless ``retrain`` (so a re-run can skip unchanged stages).
    ``progress(model, epoch, epochs)`` is called after every training epoch (``bnn``, ``det``).
    Returns the config path.
    """
    require(("torch", "bayesian_torch"), "qbnn demo")
    import torch

    inputs = Path(out_root) / "demo-inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    data = digits.load_split(seed)
    arrays = {
        "calib.npz": {"x": data.x_train[:256]},
        "test.npz": {"x": data.x_test, "y": data.y_test},
        "ood.npz": {"x": data.x_ood},
    }
    for name, content in arrays.items():  # npz embeds timestamps: rewrite only when asked
        if retrain or not (inputs / name).is_file():
            np.savez(inputs / name, **content)
    epochs = 30  # ~4 s per model; fewer epochs leave a model too weak for stable gates
    for name, factory in (("bnn.pt", digits.bayes_cnn), ("det.pt", digits.det_cnn)):
        if (inputs / name).is_file() and not retrain:
            continue
        log(f"training {name.removesuffix('.pt')} on {len(data.x_train)} digits ({epochs} epochs)")
        torch.manual_seed(seed)  # the initial weights too, so the demo repeats run to run
        key = name.removesuffix(".pt")
        tick = None if progress is None else (lambda done, total, k=key: progress(k, done, total))
        model = digits.train(
            factory(), data.x_train, data.y_train, epochs=epochs, seed=seed, progress=tick
        )
        torch.save(model.state_dict(), inputs / name)
    text = demo_config_text()
    (inputs / "pipeline.yaml").write_text(_quick(text) if quick else text)
    return inputs / "pipeline.yaml"
