"""Older contract formats read as the current one (:data:`~qbnn.runtimes.contract.FORMAT_VERSION`).

Format 1 backed the int64 scalar input ``num_samples`` by an initializer of the same name that
held the export-time default. Runtimes read that three ways: ONNX Runtime Python listed it as an
overridable initializer and warned on every load, onnxruntime-node dropped the feed silently
(``num_samples`` changed nothing), OpenVINO froze it into a constant. Format 2 keeps
``num_samples`` a plain graph input and its default in the metadata (``default_samples``), so
every runtime sees a required input that callers feed.

:func:`upgrade` turns a format-1 model into a format-2 one in place: it is applied by
:func:`qbnn.runtimes.loading.load_onnx`, so every stage and provider reads one form.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .contract import FORMAT_VERSION, NUM_SAMPLES, ContractMeta

__all__ = ["num_samples_initializer", "upgrade"]


def num_samples_initializer(model: onnx.ModelProto) -> int | None:
    """The value of an initializer named ``num_samples`` (format 1's default), or ``None``."""
    found = [t for t in model.graph.initializer if t.name == NUM_SAMPLES]
    if not found:
        return None
    return int(numpy_helper.to_array(found[0]).astype(np.int64).reshape(()))


def upgrade(model: onnx.ModelProto) -> bool:
    """Rewrite a format-1 model as format 2 in place; returns whether anything changed.

    The ``num_samples`` initializer is dropped (the graph input stays), its value becomes the
    metadata's ``default_samples`` when that is absent, and ``format_version`` becomes the
    current one. A model without such an initializer (format 2) and a plain ONNX model (no
    ``format_version``) are left alone. Raises :class:`~qbnn.runtimes.errors.ModelLoadError`
    for malformed ``qbnn.*`` metadata.
    """
    default = num_samples_initializer(model)
    meta = ContractMeta.from_model(model)
    if default is None or not meta.is_qbnn:
        return False
    kept = [t for t in model.graph.initializer if t.name != NUM_SAMPLES]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if not any(i.name == NUM_SAMPLES for i in model.graph.input):  # an initializer only
        model.graph.input.append(
            onnx.helper.make_tensor_value_info(NUM_SAMPLES, onnx.TensorProto.INT64, [])
        )
    update = ContractMeta(
        format_version=FORMAT_VERSION,
        default_samples=default if meta.default_samples is None else meta.default_samples,
    )
    _set_props(model, update.to_props())
    return True


def _set_props(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Overwrite ``metadata_props`` entries (in place, other entries kept in order)."""
    for entry in model.metadata_props:
        if entry.key in props:
            entry.value = props.pop(entry.key)
    for key, value in props.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
