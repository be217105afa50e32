"""The compiled-model contract (DESIGN.md section 2): names every qbnn ONNX file uses.

Kept here, in the torch-free runtime package, because both the exporters (which write it) and the
runtimes (which read it) depend on it.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "CLASSIFICATION_OUTPUTS",
    "HETEROSCEDASTIC_OUTPUTS",
    "FORMAT_VERSION",
    "INPUT",
    "META_PREFIX",
    "NUM_SAMPLES",
    "REGRESSION_OUTPUTS",
    "MetaKey",
    "Task",
]

FORMAT_VERSION = "1"
#: the data input ``[B, *feature_shape]``: float32, or the model's integer dtype (token ids)
INPUT = "input"
#: int64 scalar S: MC samples of a sampled posterior. Exact posteriors (ensembles, weight
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
#: mean [S, B, D], pred_mean [B, D], pred_variance [B, D]
REGRESSION_OUTPUTS = ("mean", "pred_mean", "pred_variance")
#: heteroscedastic heads add the per-sample predicted variance ``variance [S, B, D]``
HETEROSCEDASTIC_OUTPUTS = ("mean", "variance", "pred_mean", "pred_variance")


class Task(StrEnum):
    """What the network predicts."""

    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class MetaKey(StrEnum):
    """Keys of the ``qbnn.*`` entries in an ONNX model's ``metadata_props``."""

    FORMAT_VERSION = "qbnn.format_version"
    TASK = "qbnn.task"
    POSTERIOR = "qbnn.posterior"
    SAMPLING = "qbnn.sampling"
    DEFAULT_SAMPLES = "qbnn.default_samples"
    NUM_CLASSES = "qbnn.num_classes"
    PRECISION = "qbnn.precision"
    SOURCE = "qbnn.source"
    VERSION = "qbnn.version"
    SEED = "qbnn.seed"
    INPUT_SHAPE = "qbnn.input_shape"
    MAX_SAMPLES = "qbnn.max_samples"
    QUANTIZATION = "qbnn.quantization"
    HETEROSCEDASTIC = "qbnn.heteroscedastic"
    NOISE_VARIANCE = "qbnn.noise_variance"
