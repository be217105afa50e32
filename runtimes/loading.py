"""Loading ONNX files safely: clear errors, validated external-data paths."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

from .errors import ModelLoadError
from .formats import upgrade

__all__ = ["load_onnx", "set_metadata"]


def _check_external(model: onnx.ModelProto, base: Path) -> None:
    """Every external-data location must be a relative path inside the model's folder."""
    root = base.resolve()
    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        loc = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / loc).resolve()
        if Path(loc).is_absolute() or root not in (target, *target.parents):
            raise ModelLoadError(
                f"initializer '{tensor.name}' points to external data '{loc}' outside the "
                f"model's folder {root}; refusing to read it"
            )
        if not target.is_file():
            raise ModelLoadError(f"external data file {target} of '{tensor.name}' is missing")


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX model (with external data, after validating its paths); a qbnn model of an
    older contract format comes back in the current form (:func:`qbnn.runtimes.formats.upgrade`).
    Raises :class:`ModelLoadError` for a missing or unreadable file or malformed metadata."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not an ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node:
        raise ModelLoadError(f"{path} is not an ONNX model (no graph nodes)")
    _check_external(model, path.parent)
    onnx.load_external_data_for_model(model, str(path.parent))
    upgrade(model)
    return model


def set_metadata(model: onnx.ModelProto, meta: dict[str, str], *, overwrite: bool = True) -> None:
    """Set ``metadata_props`` entries in place (sorted by key); with ``overwrite=False`` keys
    the model already has keep their values."""
    current = {p.key: p.value for p in model.metadata_props}
    for k, v in meta.items():
        if overwrite or k not in current:
            current[k] = str(v)
    del model.metadata_props[:]
    for k, v in sorted(current.items()):
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
