"""The compiled-model contract (DESIGN.md section 2): names every qbnn ONNX file uses, and
:class:`ContractMeta`, the one typed record of its ``qbnn.*`` metadata.

Kept here, in the torch-free runtime package, because both the exporters (which write it) and the
runtimes (which read it) depend on it. Every ``qbnn.*`` metadata key is spelled in this module
only (``tests/test_contract_meta.py`` fails on a ``"qbnn.<key>"`` literal anywhere else).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    import onnx

__all__ = [
    "CLASSIFICATION_OUTPUTS",
    "ContractMeta",
    "HETEROSCEDASTIC_OUTPUTS",
    "FORMAT_VERSION",
    "LABEL_OUTPUTS",
    "MULTILABEL_OUTPUTS",
    "INPUT",
    "META_PREFIX",
    "NUM_SAMPLES",
    "REGRESSION_OUTPUTS",
    "MetaKey",
    "Task",
]

#: "2": ``num_samples`` is a plain graph input (no initializer), its default is metadata
#: ``qbnn.default_samples``. "1": an initializer of the same name held the default (ONNX Runtime
#: Python warned on every load, onnxruntime-node dropped the feed, OpenVINO froze it);
#: :func:`qbnn.runtimes.formats.upgrade` reads such files as format 2.
FORMAT_VERSION = "2"
#: the data input ``[B, *feature_shape]``: float32, or the model's integer dtype (token ids)
INPUT = "input"
#: int64 scalar S (a plain graph input: every caller feeds it; its default is
#: ``qbnn.default_samples``): MC samples of a sampled posterior. Exact posteriors (ensembles, weight
#: samples, ``frozen:K``) evaluate all K members and their summaries are uniform over the
#: members whatever S is; S only sets the rows of the per-sample outputs (member ``s mod K``)
NUM_SAMPLES = "num_samples"
META_PREFIX = "qbnn."

#: probs [S, B, C], mean_probs [B, C], predictive/expected entropy and MI [B]; dense heads
#: add the spatial axes: probs [S, B, C, *spatial], mean_probs [B, C, *spatial], maps [B, *spatial]
CLASSIFICATION_OUTPUTS = (
    "probs",
    "mean_probs",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
)
#: per-label uncertainty of a multi-label head (``qbnn.multilabel`` true), each ``[B, K]``:
#: binary entropy of the per-label mean, mean per-sample binary entropy, their difference (BALD)
LABEL_OUTPUTS = (
    "label_predictive_entropy",
    "label_expected_entropy",
    "label_mutual_information",
)
#: multi-label heads: probs [S, B, K] and mean_probs [B, K] hold K independent per-label
#: probabilities (rows do not sum to 1); the three [B] entropies are sums over the labels of
#: the per-label ones, which follow as :data:`LABEL_OUTPUTS`
MULTILABEL_OUTPUTS = CLASSIFICATION_OUTPUTS + LABEL_OUTPUTS
#: mean [S, B, D], pred_mean [B, D], pred_variance [B, D]
REGRESSION_OUTPUTS = ("mean", "pred_mean", "pred_variance")
#: heteroscedastic heads add the per-sample predicted variance ``variance [S, B, D]``
HETEROSCEDASTIC_OUTPUTS = ("mean", "variance", "pred_mean", "pred_variance")


class Task(StrEnum):
    """What the network predicts."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class MetaKey(StrEnum):
    """Keys of the ``qbnn.*`` entries in an ONNX model's ``metadata_props``: one per field of
    :class:`ContractMeta` (``qbnn.<field name>``)."""

    FORMAT_VERSION = "qbnn.format_version"
    TASK = "qbnn.task"
    POSTERIOR = "qbnn.posterior"
    SAMPLING = "qbnn.sampling"
    DEFAULT_SAMPLES = "qbnn.default_samples"
    NUM_CLASSES = "qbnn.num_classes"
    OUTPUT_DIM = "qbnn.output_dim"
    PRECISION = "qbnn.precision"
    SOURCE = "qbnn.source"
    VERSION = "qbnn.version"
    SEED = "qbnn.seed"
    INPUT_SHAPE = "qbnn.input_shape"
    MAX_SAMPLES = "qbnn.max_samples"
    QUANTIZATION = "qbnn.quantization"
    HETEROSCEDASTIC = "qbnn.heteroscedastic"
    NOISE_VARIANCE = "qbnn.noise_variance"
    HEAD = "qbnn.head"
    MULTILABEL = "qbnn.multilabel"
    OUTPUT_SHAPE = "qbnn.output_shape"
    COMPRESSION = "qbnn.compression"


@dataclass(frozen=True)
class _Codec:
    """How one field is written (``dump``: value -> text) and read (``load``: text -> value;
    raises ``ValueError`` / ``TypeError`` on a malformed text)."""

    dump: Callable[[Any], str]
    load: Callable[[str], Any]
    expected: str  # what a valid text looks like, for the error message


_TRUE, _FALSE = "true", "false"
#: texts read as booleans: exporters before ContractMeta wrote "1"/"0"
_BOOLS = {"true": True, "1": True, "false": False, "0": False}


def _load_bool(text: str) -> bool:
    return _BOOLS[text.strip().lower()]


def _load_seed(text: str) -> int | None:
    return None if text == "" else int(text)  # "" = exported without a seed (older files)


def _load_shape(text: str) -> tuple[int, ...]:
    return tuple(int(d) for d in text.split(",")) if text else ()


def _load_json(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError("not a JSON object")
    return value


_STR = _Codec(str, str, "a string")
_INT = _Codec(lambda v: str(int(v)), int, "an integer")
_FLOAT = _Codec(lambda v: repr(float(v)), float, "a number")
_BOOL = _Codec(lambda v: _TRUE if v else _FALSE, _load_bool, "'true' or 'false' (or '1', '0')")
_TASK = _Codec(lambda v: Task(v).value, Task, f"one of {[t.value for t in Task]}")
_SEED = _Codec(lambda v: str(int(v)), _load_seed, "an integer or ''")
_SHAPE = _Codec(lambda v: ",".join(str(int(d)) for d in v), _load_shape, "e.g. '3,8,8'")
#: compact (no spaces): the records sit in every file, which an int8 graph must not outgrow
_JSON = _Codec(
    lambda v: json.dumps(dict(v), sort_keys=True, separators=(",", ":")),
    _load_json,
    "a JSON object",
)


def _meta(codec: _Codec) -> Any:
    return field(default=None, metadata={"codec": codec})


@dataclass(frozen=True, kw_only=True)
class ContractMeta:
    """The contract's ``qbnn.*`` metadata of one ONNX file, typed. ``None`` = the key is absent.

    Written with :meth:`to_props` (only the fields that are set, so a stage that edits a few
    keys builds a partial record and merges it with
    :func:`qbnn.runtimes.loading.set_metadata`); read with :meth:`from_model`. One rule per
    field: integers as decimal text, shapes as ``"3,8,8"``, booleans as ``"true"``/``"false"``
    (``"1"``/``"0"`` from older exports are read too), ``noise_variance`` as ``repr(float)``,
    ``quantization``/``compression`` as JSON objects (sorted keys), a ``seed`` of ``""`` (older
    exports without a seed) as ``None``.

    Fields: ``format_version`` (present = a qbnn model), ``task``, ``posterior``, ``sampling``,
    ``default_samples`` (S when a call names none), ``max_samples``, ``num_classes``
    (classification C), ``output_dim`` (regression D), ``precision`` (``fp32``/``int8``),
    ``source`` (trainer), ``version`` (qbnn's), ``seed`` (baked in at export),
    ``input_shape`` (feature shape, no batch), ``heteroscedastic`` (regression graph with a
    ``variance [S, B, D]`` output), ``noise_variance`` (fixed observation noise), ``head``
    (classifier output form: ``logits``/``probs``/``log_probs``/``multilabel``/
    ``multilabel_probs``), ``multilabel`` (true: K independent Bernoulli labels, the graph has
    :data:`MULTILABEL_OUTPUTS`; absent: one categorical), ``output_shape`` (the
    network's per-row output), ``quantization`` (quantize's record), ``compression`` (compress's
    record). Raises :class:`ConfigError` for a value of the wrong type.
    """

    format_version: str | None = _meta(_STR)
    task: Task | None = _meta(_TASK)
    posterior: str | None = _meta(_STR)
    sampling: str | None = _meta(_STR)
    default_samples: int | None = _meta(_INT)
    max_samples: int | None = _meta(_INT)
    num_classes: int | None = _meta(_INT)
    output_dim: int | None = _meta(_INT)
    precision: str | None = _meta(_STR)
    source: str | None = _meta(_STR)
    version: str | None = _meta(_STR)
    seed: int | None = _meta(_SEED)
    input_shape: tuple[int, ...] | None = _meta(_SHAPE)
    heteroscedastic: bool | None = _meta(_BOOL)
    noise_variance: float | None = _meta(_FLOAT)
    head: str | None = _meta(_STR)
    multilabel: bool | None = _meta(_BOOL)
    output_shape: tuple[int, ...] | None = _meta(_SHAPE)
    quantization: Mapping[str, Any] | None = _meta(_JSON)
    compression: Mapping[str, Any] | None = _meta(_JSON)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            try:
                f.metadata["codec"].dump(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"ContractMeta.{f.name}={value!r} cannot be written: expected "
                    f"{f.metadata['codec'].expected} ({exc})"
                ) from exc
        if self.task is not None:
            object.__setattr__(self, "task", Task(self.task))

    @property
    def is_qbnn(self) -> bool:
        """Whether the file declares the contract (a ``qbnn.format_version`` entry)."""
        return self.format_version is not None

    @property
    def width(self) -> int | None:
        """C of a classifier or D of a regressor, whichever is recorded."""
        return self.num_classes if self.num_classes is not None else self.output_dim

    def to_props(self) -> dict[str, str]:
        """``{qbnn.<field>: text}`` for every field that is not ``None``, in field order."""
        return {
            _key(f.name): f.metadata["codec"].dump(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) is not None
        }

    @classmethod
    def from_model(cls, model_or_props: onnx.ModelProto | Mapping[str, str]) -> ContractMeta:
        """The record of an ``onnx.ModelProto`` (its ``metadata_props``) or of a ``{key: text}``
        mapping. Keys outside the contract are ignored; a key with a malformed text raises
        :class:`ModelLoadError` naming the key, the text and what was expected."""
        if isinstance(model_or_props, Mapping):
            props = dict(model_or_props)
        else:
            props = {p.key: p.value for p in model_or_props.metadata_props}
        values: dict[str, Any] = {}
        for f in fields(cls):
            text = props.get(_key(f.name))
            if text is None:
                continue
            codec: _Codec = f.metadata["codec"]
            try:
                values[f.name] = codec.load(text)
            except (KeyError, TypeError, ValueError) as exc:
                raise ModelLoadError(
                    f"metadata {_key(f.name)}={text!r} is malformed: expected {codec.expected}"
                ) from exc
        return cls(**values)


def _key(name: str) -> str:
    """The metadata key of a :class:`ContractMeta` field (``MetaKey`` lists every one)."""
    return MetaKey(META_PREFIX + name).value
