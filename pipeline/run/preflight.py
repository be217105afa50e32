"""Checks before ``qbnn run`` writes anything: the model sources load and the data fit them.

A run that would fail at ``validate`` after export and quantize have run (a data file of the
wrong shape, a factory whose module or trainer library is missing) fails here instead, in one
line naming the config key.
"""

from __future__ import annotations

from pathlib import Path

from qbnn.runtimes.errors import ConfigError, ModelLoadError
from qbnn.runtimes.loading import load_onnx
from qbnn.runtimes.session import model_info

from ..common import MissingDependencyError, importable, install_hint, load_npz, missing_module
from ..common import require as require_modules
from .config import ModelSource, RunConfig, Stage

__all__ = ["preflight"]

#: data key -> (the stage that reads it, the keys it must hold)
_DATA = {
    "calib": (Stage.QUANTIZE, ("x",)),
    "test": (Stage.VALIDATE, ("x", "y")),
    "ood": (Stage.VALIDATE, ("x",)),
}


def _resolve(base: Path, value: str, key: str) -> Path:
    p = Path(value)
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise ConfigError(f"'{key}' points to {p}, which does not exist")
    return p


def _check_factory(src: ModelSource, key: str, base: Path) -> None:
    require_modules(("torch",), f"'{key}.factory' ({src.factory})")
    from qbnn.exporters.usermodels import import_factory

    try:
        with importable(base):
            import_factory(src.factory)
    except ModelLoadError as exc:
        hint = install_hint(missing_module(exc))
        if hint is None:
            raise
        raise MissingDependencyError(f"'{key}.factory' ({src.factory}) needs {hint}") from exc


def _input_check(src: ModelSource, key: str, base: Path):
    """``(accepts(shape) -> bool, description of the expected input)`` of one model source."""
    if src.factory:
        _check_factory(src, key, base)
        want = tuple(src.input_shape)
        return (lambda shape: tuple(shape[1:]) == want), f"[N, {', '.join(map(str, want))}]"
    info = model_info(load_onnx(_resolve(base, src.onnx, f"{key}.onnx")))
    dims = ", ".join(map(str, info.feature_shape))
    return info.accepts, f"[N, {dims}] (the input of {src.onnx})"


def preflight(cfg: RunConfig, base: Path) -> None:
    """Raise the first problem a stage of ``cfg`` would hit on its inputs, before any work.

    Checks: every factory imports (trainer libraries included); every data file a selected
    stage reads exists, holds its keys, and its ``x`` fits the model (and the baseline).
    """
    sources = {"model": cfg.model}
    if cfg.baseline is not None:
        sources["baseline"] = cfg.baseline
    checks = {key: _input_check(src, key, base) for key, src in sources.items()}
    for name, (stage, keys) in _DATA.items():
        value = getattr(cfg.data, name)
        if not value or stage not in cfg.stages:
            continue
        x = load_npz(_resolve(base, value, f"data.{name}"), require=keys)["x"]
        users = ["model"] if name == "calib" else list(checks)
        for key in users:
            accepts, expected = checks[key]
            if not accepts(x.shape):
                where = f"'{key}.input_shape'" if sources[key].factory else f"'{key}.onnx'"
                raise ConfigError(
                    f"'data.{name}' ({value}): x has shape {list(x.shape)}, but {key} takes "
                    f"{expected}; fix 'data.{name}' or {where}"
                )
