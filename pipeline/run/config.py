"""``pipeline.yaml``: one config for ``qbnn run`` (export -> quantize -> validate -> bench).

Every key is validated up front by :func:`qbnn.pipeline.common.from_dict`: an unknown or
mistyped key is reported with its dotted path (``quantize.autotune.metric``) and the valid
choices. Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from qbnn.runtimes.contract import Task
from qbnn.runtimes.errors import ConfigError

from ..bench import BenchConfig
from ..common import coerce_enums, load_config
from ..compress import CompressConfig, CompressMode
from ..quantize import QuantConfig
from ..validate import ValidateConfig

__all__ = ["EXPORT_KEYS", "DataConfig", "ModelSource", "RunConfig", "Stage", "load_run_config"]


class Stage(StrEnum):
    EXPORT = "export"
    QUANTIZE = "quantize"
    VALIDATE = "validate"
    BENCH = "bench"
    #: optional, runs only when listed (between quantize and validate in ``stages``)
    COMPRESS = "compress"


#: the stages ``qbnn run`` runs when ``stages`` is not given
DEFAULT_STAGES = (Stage.EXPORT, Stage.QUANTIZE, Stage.VALIDATE, Stage.BENCH)


#: the keys of ``model:`` that are :class:`qbnn.exporters.ExportConfig` options, passed through
#: as they are ("" for None); a test holds this to ExportConfig's fields
EXPORT_KEYS = (
    "posterior",
    "sampling",
    "num_samples",
    "task",
    "seed",
    "verify",
    "verify_samples",
    "opset",
    "source",
    "heteroscedastic",
    "noise_variance",
    "head",
    "split",
    "output_key",
)


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """A torch model (``factory`` + optional ``weights``) to export, or an existing ``onnx``.

    The export options (:data:`EXPORT_KEYS`) are those of :class:`qbnn.exporters.ExportConfig`
    (``seed`` defaults to 0 here, so runs are reproducible); ``bn_update``: an npz with key
    ``x`` (training inputs) to recompute BatchNorm statistics per ``frozen:K`` draw.
    """

    factory: str = ""
    weights: str = ""
    onnx: str = ""
    input_shape: tuple[int, ...] = ()
    posterior: str = "auto"
    sampling: str = ""
    num_samples: int = 16
    seed: int | None = 0
    trust_checkpoint: bool = False
    task: Task = Task.CLASSIFICATION
    heteroscedastic: bool = False
    noise_variance: float | None = None
    head: str = ""
    opset: int = 18
    verify: bool = True
    verify_samples: int = 64
    source: str = ""
    bn_update: str = ""
    split: bool = True
    output_key: str = ""

    def export_options(self) -> dict[str, object]:
        """The export options as :meth:`qbnn.exporters.ExportConfig.from_dict` takes them."""
        out = {k: getattr(self, k) for k in EXPORT_KEYS}
        return {k: (None if v == "" else v) for k, v in out.items()}

    def __post_init__(self) -> None:
        coerce_enums(self)
        if bool(self.factory) == bool(self.onnx):
            raise ConfigError("give exactly one of 'factory' (torch model) or 'onnx' (a file)")
        if self.factory and not self.input_shape:
            raise ConfigError("'input_shape' is required with 'factory' (e.g. [1, 8, 8])")
        if any(d < 1 for d in self.input_shape) or self.num_samples < 1:
            raise ConfigError(
                f"input_shape entries and num_samples must be >= 1; got {list(self.input_shape)}"
                f", {self.num_samples}"
            )


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """``.npz`` files: ``calib`` (key x), ``test`` (keys x, y), optional ``ood`` (key x)."""

    calib: str = ""
    test: str = ""
    ood: str = ""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """The whole pipeline. ``stages`` lists what runs (in pipeline order)."""

    name: str
    output_root: str = "artifacts"
    model: ModelSource
    baseline: ModelSource | None = None
    data: DataConfig = field(default_factory=DataConfig)
    stages: tuple[Stage, ...] = DEFAULT_STAGES
    quantize: QuantConfig = field(default_factory=QuantConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)

    def __post_init__(self) -> None:
        coerce_enums(self)
        object.__setattr__(self, "stages", tuple(Stage(s) for s in self.stages))
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"'name' must be a plain folder name, got '{self.name}'")
        needs = {Stage.QUANTIZE: ("calib",), Stage.VALIDATE: ("test",)}
        needs[Stage.COMPRESS] = {
            CompressMode.PLAN: ("calib",),
            CompressMode.AUTO: ("calib", "test"),
            CompressMode.SHARE: (),
        }[self.compress.mode]
        for stage, keys in needs.items():
            for key in keys:
                if stage in self.stages and not getattr(self.data, key):
                    raise ConfigError(f"stage '{stage}' needs 'data.{key}'")


def load_run_config(path: str | Path) -> tuple[RunConfig, Path]:
    """Load and validate ``pipeline.yaml``; returns the config and its folder."""
    path = Path(path)
    return load_config(RunConfig, path), path.resolve().parent
