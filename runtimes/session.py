"""Sessions for compiled models on any registered provider: seeds, ``auto``, precision."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from . import ortsession, ovsession  # noqa: F401  (register the cpu, dnnl, openvino providers)
from .autorule import auto_order
from .contract import INPUT, NUM_SAMPLES, ContractMeta, Task
from .errors import ConfigError, ModelLoadError
from .loading import load_onnx
from .options import GraphOptLevel, Precision, SessionOptions, effective_precision
from .providers import ProviderSpec, available_providers, resolve_provider
from .seeding import random_nodes, reseed

__all__ = [
    "GraphOptLevel",
    "ModelInfo",
    "OpenModel",
    "Precision",
    "SessionOptions",
    "model_info",
    "open_model",
    "open_session",
]

log = logging.getLogger("qbnn.runtime")


@dataclass(frozen=True)
class ModelInfo:
    """What a compiled (or plain) ONNX model declares. ``feature_shape`` excludes the batch;
    ``contract``: its typed ``qbnn.*`` metadata; ``meta``: every ``metadata_props`` entry as
    written (passed through unchanged by stages that rewrite the graph)."""

    is_qbnn: bool
    task: Task
    posterior: str
    sampling: str
    default_samples: int
    precision: str
    input_name: str
    feature_shape: tuple[int | str, ...]
    outputs: tuple[str, ...]
    takes_num_samples: bool
    stochastic: bool
    meta: dict[str, str]
    #: numpy dtype name of the data input: ``float32``, or ``int64`` / ``int32`` for token ids
    input_dtype: str = "float32"
    contract: ContractMeta = field(default_factory=ContractMeta)

    @property
    def multilabel(self) -> bool:
        """A multi-label classifier (``qbnn.multilabel`` true): K independent per-label
        probabilities and the per-label outputs of
        :data:`~qbnn.runtimes.contract.MULTILABEL_OUTPUTS`."""
        return bool(self.contract.multilabel)

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether an input of ``shape`` (``[N >= 1, *feature_shape]``) fits the model;
        symbolic or unknown feature dims accept any size."""
        fs = self.feature_shape
        return (
            len(shape) == len(fs) + 1
            and shape[0] >= 1
            and all(
                not (isinstance(d, int) and d > 0) or d == s
                for d, s in zip(fs, shape[1:], strict=True)
            )
        )


def model_info(model: onnx.ModelProto) -> ModelInfo:
    """Read the contract's metadata; a model without ``qbnn.format_version`` is a plain model
    (S = 1). Raises :class:`ModelLoadError` for a malformed ``qbnn.*`` entry and
    :class:`ConfigError` unless the graph has exactly one data input."""
    meta = {p.key: p.value for p in model.metadata_props}
    contract = ContractMeta.from_model(meta)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits or i.name == NUM_SAMPLES]
    data_inputs = [i for i in inputs if i.name != NUM_SAMPLES]
    if len(data_inputs) != 1:
        names = [i.name for i in data_inputs]
        raise ConfigError(f"expected exactly one data input, the model has {names}")
    inp = data_inputs[0]
    dims = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in inp.type.tensor_type.shape.dim
    )
    is_qbnn = contract.is_qbnn
    return ModelInfo(
        is_qbnn=is_qbnn,
        task=_given(contract.task, Task.CLASSIFICATION),
        posterior=_given(contract.posterior, "deterministic"),
        sampling=_given(contract.sampling, "none"),
        default_samples=_given(contract.default_samples, 1),
        precision=_given(contract.precision, "unknown"),
        input_name=inp.name if not is_qbnn else INPUT,
        feature_shape=dims[1:],
        outputs=tuple(o.name for o in model.graph.output),
        takes_num_samples=NUM_SAMPLES in inits or NUM_SAMPLES in {i.name for i in inputs},
        stochastic=bool(random_nodes(model)),
        meta=meta,
        input_dtype=_dtype_name(inp),
        contract=contract,
    )


def _given(value, default):
    """``value`` unless the key was absent (``None``)."""
    return default if value is None else value


def _dtype_name(value: onnx.ValueInfoProto) -> str:
    """numpy dtype name of a graph input (``float32`` when undeclared)."""
    elem = value.type.tensor_type.elem_type
    if not elem:
        return "float32"
    return onnx.helper.tensor_dtype_to_np_dtype(elem).name


@dataclass(frozen=True)
class OpenModel:
    """An open session with what ran it. ``session``: see
    :class:`qbnn.runtimes.providers.BackendSession`; ``compute``: its float precision;
    ``fallbacks``: one line per provider ``auto`` tried first and could not load the model."""

    session: Any
    info: ModelInfo
    provider: ProviderSpec
    compute: Precision
    fallbacks: tuple[str, ...] = ()

    @property
    def precision(self) -> str:
        """Effective precision: ``fp32``, ``int8``, ``bf16`` or ``int8+bf16``."""
        return effective_precision(self.info.precision, self.compute)


def _candidates(model: onnx.ModelProto, info: ModelInfo, options: SessionOptions) -> list[str]:
    if options.provider.strip().lower() != "auto":
        return [resolve_provider(options.provider, options.precision).name]
    here = [
        p for p in available_providers()
        if options.precision in resolve_provider(p).precisions
    ]  # fmt: skip
    if not here:
        resolve_provider("auto", options.precision)  # raises the one-line error
    return auto_order(model, info, here)


def open_model(path: str | Path, options: SessionOptions, seed: int | None) -> OpenModel:
    """Load, (re)seed and open ``path`` on ``options.provider``.

    ``auto`` tries the providers in the order of :func:`qbnn.runtimes.autorule.auto_order`
    and falls back to the next one when a provider cannot load the model (e.g. an int8
    QOperator graph on OpenVINO); a named provider that cannot load it raises
    :class:`ModelLoadError`.

    Seeding: ``seed`` given -> every random node gets a seed derived from it (identical draws
    across sessions and processes for the same sequence of calls); ``seed=None`` -> seeds baked
    in at export (``qbnn.seed``) are kept, otherwise fresh OS entropy, so each session draws new
    noise (plain ONNX Runtime would replay the first session's draws in a second session of the
    same process). Every call of a session draws new noise on every provider.
    """
    model = load_onnx(path)
    info = model_info(model)
    baked = info.contract.seed is not None
    if seed is not None or not baked:
        reseed(model, seed)
    order = _candidates(model, info, options)
    fallbacks: list[str] = []
    for i, name in enumerate(order):
        spec = resolve_provider(name, options.precision)
        candidate = (
            model if i == len(order) - 1 else onnx.ModelProto.FromString(model.SerializeToString())
        )  # factories may edit the proto
        try:
            opened = spec.factory(candidate, options, str(path))
        except ModelLoadError as exc:
            if i == len(order) - 1:
                raise
            fallbacks.append(str(exc))
            log.warning("auto: %s; trying %s", exc, order[i + 1])
            continue
        return OpenModel(opened.session, info, spec, opened.precision, tuple(fallbacks))
    raise ConfigError(f"no provider to open {path} with")  # pragma: no cover - order non-empty


def open_session(path: str | Path, options: SessionOptions, seed: int | None):
    """:func:`open_model` as ``(session, info, provider_spec)``."""
    m = open_model(path, options, seed)
    return m.session, m.info, m.provider
