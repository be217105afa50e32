"""Configuration of ``qbnn serve``: the models to serve and the limits every request obeys."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qbnn.runtimes.errors import ConfigError

__all__ = ["ModelSpec", "ServeConfig", "parse_model_arg"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One served model. ``name``: the URL name (``/v2/models/<name>``); ``path``: the compiled
    ``.onnx``; ``num_samples``: the MC samples S a request gets when it names none (``None``:
    the model's own default, ``qbnn.default_samples``)."""

    name: str
    path: Path
    num_samples: int | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"model name {self.name!r} is not valid; use 1-64 letters, digits, '_', '.', '-'"
            )
        object.__setattr__(self, "path", Path(self.path))
        if self.num_samples is not None and (
            isinstance(self.num_samples, bool) or self.num_samples < 1
        ):
            raise ConfigError(f"num_samples of model {self.name!r} must be >= 1, got "
                              f"{self.num_samples}")  # fmt: skip


def parse_model_arg(arg: str) -> ModelSpec:
    """``"path.onnx"`` (name = file stem) or ``"name=path.onnx"`` -> :class:`ModelSpec`."""
    name, sep, path = arg.partition("=")
    if not sep:
        path, name = arg, Path(arg).stem
    return ModelSpec(name=name, path=Path(path))


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Server settings. Limits (each enforced with a 4xx that names it):

    ``max_request_rows``: rows (batch B) per request; ``max_num_samples``: S per request;
    ``max_body_bytes``: request body size; ``max_queue_rows``: rows waiting per model (beyond
    it: 503, retryable). Dynamic batching: concurrent requests for one model with the same S are
    merged into one ``Predictor.predict`` (one ``session.run``) of at most ``max_batch`` rows,
    waiting at most ``max_delay_ms`` for more requests once one arrived; ``batching=False``
    runs each request on its own. ``workers``: threads that run inference; ``threads``:
    intra-op threads per session; ``provider``: ``auto`` or a provider name.
    """

    models: tuple[ModelSpec, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    provider: str = "auto"
    threads: int | None = None
    workers: int = 2
    batching: bool = True
    max_batch: int = 64
    max_delay_ms: float = 5.0
    max_request_rows: int = 256
    max_num_samples: int = 256
    max_body_bytes: int = 16 * 1024 * 1024
    max_queue_rows: int = 4096
    graceful_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models:
            raise ConfigError("serve needs at least one model (give one or more .onnx paths)")
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"model names must be unique, got {dup} more than once; "
                              "name them explicitly with name=path.onnx")  # fmt: skip
        positive = {
            "workers": self.workers, "max_batch": self.max_batch,
            "max_request_rows": self.max_request_rows, "max_num_samples": self.max_num_samples,
            "max_body_bytes": self.max_body_bytes, "max_queue_rows": self.max_queue_rows,
        }  # fmt: skip
        for key, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key} must be an integer >= 1, got {value!r}")
        if not 0 <= self.max_delay_ms <= 10_000:
            raise ConfigError(f"max_delay_ms must be in [0, 10000], got {self.max_delay_ms}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in [0, 65535], got {self.port}")
        if self.graceful_timeout_s < 0:
            raise ConfigError(f"graceful_timeout_s must be >= 0, got {self.graceful_timeout_s}")
        for m in self.models:
            if m.num_samples is not None and m.num_samples > self.max_num_samples:
                raise ConfigError(
                    f"model {m.name!r}: num_samples {m.num_samples} exceeds max_num_samples "
                    f"{self.max_num_samples}; raise --max-num-samples or lower it"
                )
