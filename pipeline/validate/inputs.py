"""Input checks of the ``validate`` stage: the model list, the data files, and whether the
models and the data fit together. Every problem raises a typed error naming the bad value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qbnn.runtimes import Predictor, Task
from qbnn.runtimes.errors import ConfigError, ModelLoadError, RuntimeInputError

from ..common import load_npz

__all__ = [
    "ModelEntry",
    "check_labels",
    "check_models",
    "check_targets",
    "load_arrays",
    "model_entries",
]


@dataclass(frozen=True)
class ModelEntry:
    """A model to validate. ``role``: ``reference``, ``candidate`` or ``baseline``."""

    name: str
    path: Path
    role: str


def model_entries(
    models: Sequence[str | Path] | Mapping[str, str | Path],
    baseline: str | Path | tuple[str, str | Path] | None = None,
) -> list[ModelEntry]:
    """Name the models (file stem unless a mapping gives names) and check they exist."""
    if isinstance(models, (str, Path)):
        raise ConfigError(
            f"models must be a list of paths or a {{name: path}} mapping, got the single path "
            f"{str(models)!r}; wrap it in a list"
        )
    pairs = (
        [(str(k), v) for k, v in models.items()]
        if isinstance(models, Mapping)
        else [(Path(p).stem, p) for p in models]
    )
    if not pairs:
        raise ConfigError("validate needs at least one model (the reference); got none")
    entries = [
        ModelEntry(name, Path(path), "reference" if i == 0 else "candidate")
        for i, (name, path) in enumerate(pairs)
    ]
    if baseline is not None:
        name, path = baseline if isinstance(baseline, tuple) else (Path(baseline).stem, baseline)
        entries.append(ModelEntry(str(name), Path(path), "baseline"))
    seen: dict[str, Path] = {}
    for e in entries:
        if e.name in seen:
            raise ConfigError(
                f"two models are named '{e.name}' ({seen[e.name]} and {e.path}); give them "
                "distinct names (a {name: path} mapping, or --name on the command line)"
            )
        seen[e.name] = e.path
        if not e.path.is_file():
            raise ModelLoadError(f"model file {e.path} ('{e.name}') does not exist")
    return entries


def load_arrays(
    data: str | Path | Mapping[str, np.ndarray], what: str, keys: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], str]:
    """``({key: array}, source description)`` from an ``.npz`` path or a mapping.

    ``x`` must be ``[N >= 1, *feature_shape]``.
    """
    if isinstance(data, Mapping):
        missing = [k for k in keys if k not in data]
        if missing:
            raise ConfigError(
                f"{what} lacks key(s) {missing}; it has {sorted(data)} (expected {list(keys)})"
            )
        arrays, source = {k: np.asarray(data[k]) for k in keys}, f"<{what} arrays>"
    elif isinstance(data, (str, Path)):
        arrays, source = load_npz(data, require=keys), str(data)
    else:
        raise ConfigError(
            f"{what} must be an .npz path or a mapping with keys {list(keys)}, got "
            f"{type(data).__name__}"
        )
    x = arrays["x"]
    if x.ndim < 2 or x.shape[0] == 0:
        raise ConfigError(
            f"{what} ({source}) is empty or has no feature axis: 'x' has shape {list(x.shape)}, "
            "expected [N >= 1, *feature_shape]"
        )
    if np.issubdtype(x.dtype, np.floating):
        bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum())
        if bad:
            raise ConfigError(
                f"{what} ({source}): {bad} of {len(x)} rows of 'x' hold NaN or inf; metrics "
                "need finite inputs: remove or impute those rows"
            )
    return arrays, source


def _declared_classes(pred: Predictor) -> int | None:
    """C from the ``qbnn.num_classes`` metadata or a plain model's static output width."""
    declared = pred.info.contract.num_classes
    if declared:
        return declared
    if not pred.info.is_qbnn:
        last = pred.session.get_outputs()[0].shape[-1]
        return last if isinstance(last, int) and last > 0 else None
    return None


def _fits(shape: Sequence, expected: Sequence) -> bool:
    """Same rank, and equal wherever ``expected`` has a concrete size."""
    return len(shape) == len(expected) and all(
        not isinstance(e, int) or e <= 0 or e == s for s, e in zip(shape, expected, strict=True)
    )


def _check_features(preds: dict[str, Predictor], arrays: dict[str, tuple]) -> None:
    shapes = {n: tuple(p.info.feature_shape) for n, p in preds.items()}
    ref_name, ref = next(iter(shapes.items()))
    for name, shape in shapes.items():
        if not (_fits(shape, ref) and _fits(ref, shape)):
            raise ConfigError(
                f"models have different feature shapes: {ref_name} {list(ref)} vs {name} "
                f"{list(shape)}"
            )
    for source, shape in arrays.items():
        if not _fits(shape, ref):
            raise RuntimeInputError(
                f"{source}: inputs 'x' have feature shape {list(shape)} but the models expect "
                f"{list(ref)}"
            )


def check_models(
    entries: list[ModelEntry],
    preds: dict[str, Predictor],
    x: np.ndarray,
    x_ood: np.ndarray | None,
    y: np.ndarray,
    source: str,
) -> tuple[Task, int | None]:
    """Check that models and data fit; returns ``(task, declared class count or None)``.

    Models must share the task, the feature shape and (classifiers) the class count; ``x`` and
    ``x_ood`` must have that feature shape; ``y`` must have one row per input of ``x``, and
    class labels must lie in ``[0, C)`` when C is declared (else checked after the first run).
    """
    tasks = {e.name: preds[e.name].info.task for e in entries}
    if len(set(tasks.values())) != 1:
        raise ConfigError(f"models mix tasks: { ({k: v.value for k, v in tasks.items()}) }")
    shapes = {source: x.shape[1:]}
    if x_ood is not None:
        shapes["ood data"] = x_ood.shape[1:]
    _check_features(preds, shapes)
    if y.ndim == 0 or len(y) != len(x):
        n_y = "a scalar" if y.ndim == 0 else str(len(y))
        raise RuntimeInputError(f"{source}: {len(x)} inputs in 'x' but {n_y} labels in 'y'")
    task = next(iter(tasks.values()))
    if task == Task.REGRESSION:
        return task, None
    declared = {n: c for n, p in preds.items() if (c := _declared_classes(p)) is not None}
    if len(set(declared.values())) > 1:
        raise ConfigError(f"models predict different numbers of classes: {declared}")
    n_classes = next(iter(declared.values()), None)
    if any(p.info.multilabel for p in preds.values()):
        return task, n_classes  # [N, K] 0/1 labels, checked once the heads are known
    if n_classes is not None and y.ndim > 1:  # class maps of a dense classifier (or wrong)
        check_labels(y.reshape(-1), y.size, n_classes, source)
    elif n_classes is not None:
        check_labels(y, len(x), n_classes, source)
    return task, n_classes


def check_labels(y: np.ndarray, n: int, n_classes: int, source: str) -> np.ndarray:
    """Validate class labels ``y [n]`` in ``[0, n_classes)``; returns them as int64."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise RuntimeInputError(
            f"{source}: labels 'y' must be class indices of shape [{n}], got {list(y.shape)}"
        )
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise RuntimeInputError(f"{source}: labels 'y' must be integers, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        bad = ~np.isfinite(y) | (np.mod(y, 1) != 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise RuntimeInputError(
                f"{source}: label {y[i]!r} at row {i} is not an integer class index"
            )
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise RuntimeInputError(
            f"{source}: label {y[i].item()!r} at row {i} is outside [0, {n_classes}) "
            f"({int(bad.sum())} labels out of range; the models predict {n_classes} classes)"
        )
    return y.astype(np.int64)


def check_targets(y: np.ndarray, outs: Mapping) -> np.ndarray:
    """Regression targets ``[N]`` or ``[N, D]`` as float64 ``[N, D]`` matching ``pred_mean``."""
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.number)) or np.issubdtype(y.dtype, np.complexfloating):
        raise RuntimeInputError(f"regression targets 'y' must be real numbers, got {y.dtype}")
    y = y.astype(np.float64)
    if y.ndim == 1:
        y = y[:, None]
    shapes = {n: o.pred_mean.shape for n, o in outs.items()}
    if len(set(shapes.values())) != 1:
        raise ConfigError(f"models predict different output shapes: {shapes}")
    shape = next(iter(shapes.values()))
    if y.shape != shape:
        raise RuntimeInputError(
            f"regression targets 'y' have shape {list(y.shape)} but the models predict "
            f"{list(shape)}"
        )
    if not np.all(np.isfinite(y)):
        raise RuntimeInputError("regression targets 'y' contain NaN or inf")
    return y
