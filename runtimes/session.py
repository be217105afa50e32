"""ONNX Runtime sessions for compiled models: provider, threads, optimization level, seeds."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import onnx

from .contract import INPUT, NUM_SAMPLES, MetaKey, Task
from .errors import ConfigError, ModelLoadError, first_line
from .loading import load_onnx
from .providers import ProviderSpec, resolve_provider
from .seeding import random_nodes, reseed

__all__ = ["GraphOptLevel", "ModelInfo", "SessionOptions", "model_info", "open_session"]

log = logging.getLogger("qbnn.runtime")


class GraphOptLevel(StrEnum):
    """ONNX Runtime graph optimization levels."""

    DISABLE = "disable"
    BASIC = "basic"
    EXTENDED = "extended"
    ALL = "all"


@dataclass(frozen=True, kw_only=True)
class SessionOptions:
    """How to open a session. ``threads=None`` lets ONNX Runtime decide (all cores)."""

    provider: str = "auto"
    threads: int | None = None
    graph_optimization_level: GraphOptLevel = GraphOptLevel.ALL
    provider_options: dict[str, str] = field(default_factory=dict)
    #: ONNX Runtime session config entries, e.g. ``{"session.intra_op.allow_spinning": "0"}``
    #: (benchmarks that interleave ORT with other frameworks turn spinning off)
    config_entries: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or None, got {self.threads}")
        try:
            object.__setattr__(
                self, "graph_optimization_level", GraphOptLevel(self.graph_optimization_level)
            )
        except ValueError:
            raise ConfigError(
                f"unknown graph optimization level '{self.graph_optimization_level}'; "
                f"valid: {', '.join(g.value for g in GraphOptLevel)}"
            ) from None


@dataclass(frozen=True)
class ModelInfo:
    """What a compiled (or plain) ONNX model declares. ``feature_shape`` excludes the batch."""

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
    """Read the contract's metadata; a model without ``qbnn.*`` keys is a plain model (S = 1)."""
    meta = {p.key: p.value for p in model.metadata_props}
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
    is_qbnn = MetaKey.FORMAT_VERSION.value in meta
    return ModelInfo(
        is_qbnn=is_qbnn,
        task=Task(meta.get(MetaKey.TASK, "classification")),
        posterior=meta.get(MetaKey.POSTERIOR, "deterministic"),
        sampling=meta.get(MetaKey.SAMPLING, "none"),
        default_samples=int(meta.get(MetaKey.DEFAULT_SAMPLES, "1")),
        precision=meta.get(MetaKey.PRECISION, "unknown"),
        input_name=inp.name if not is_qbnn else INPUT,
        feature_shape=dims[1:],
        outputs=tuple(o.name for o in model.graph.output),
        takes_num_samples=NUM_SAMPLES in inits,
        stochastic=bool(random_nodes(model)),
        meta=meta,
    )


def _require_num_samples(model: onnx.ModelProto) -> None:
    """Drop the ``num_samples`` initializer so the value must be fed.

    Measured: the OpenVINO EP (1.24) treats an overridable initializer as a constant and
    ignores the fed ``num_samples``; the Predictor always feeds it, so nothing is lost.
    """
    kept = [t for t in model.graph.initializer if t.name != NUM_SAMPLES]
    if len(kept) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)


def open_session(path: str | Path, options: SessionOptions, seed: int | None):
    """Load, (re)seed and open ``path``. Returns ``(session, info, provider_spec)``.

    Seeding: ``seed`` given -> every random node gets a seed derived from it (identical draws
    across sessions and processes); ``seed=None`` -> seeds baked in at export (``qbnn.seed``)
    are kept, otherwise fresh OS entropy, so each session draws new noise (plain ONNX Runtime
    would replay the first session's draws in a second session of the same process).
    """
    import onnxruntime as ort

    model = load_onnx(path)
    info = model_info(model)
    baked = info.meta.get(MetaKey.SEED, "") != ""
    if seed is not None or not baked:
        reseed(model, seed)
    spec: ProviderSpec = resolve_provider(options.provider)
    if spec.name != "cpu":
        _require_num_samples(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the num_samples initializer notice is by design
    for key, value in options.config_entries.items():
        so.add_session_config_entry(key, str(value))
    if options.threads is not None:
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        GraphOptLevel.DISABLE: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        GraphOptLevel.BASIC: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        GraphOptLevel.EXTENDED: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        GraphOptLevel.ALL: ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[options.graph_optimization_level]
    provider_opts = {**spec.default_options, **options.provider_options}
    if options.threads is not None and spec.name == "openvino":
        provider_opts.setdefault("num_of_threads", str(options.threads))
    providers = [(spec.ep, provider_opts)]
    if spec.ep != "CPUExecutionProvider":
        providers.append(("CPUExecutionProvider", {}))
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=providers)
    except Exception as exc:  # ONNX Runtime refused the graph: say which file and why
        first = first_line(exc)
        raise ModelLoadError(f"ONNX Runtime cannot load {path} on {spec.name}: {first}") from exc
    log.info("opened %s on %s (%s)", path, spec.name, spec.ep)
    return sess, info, spec
