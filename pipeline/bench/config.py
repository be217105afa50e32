"""What the ``bench`` stage measures: the (batch, S) grid, providers, threads and repeats."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qbnn.runtimes import known_providers
from qbnn.runtimes.errors import ConfigError
from qbnn.runtimes.options import parse_precision

from ..common import from_dict, load_config, to_dict

__all__ = ["MAX_SAMPLES", "BenchConfig"]

MAX_SAMPLES = 4096


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What ``bench`` measures.

    ``batches`` / ``samples``: the grid of batch sizes B and MC sample counts S (positive,
    sorted and de-duplicated). ``providers``: registry names or ``auto`` (the best
    available provider by rank, resolved once for all models). ``precision``: ``fp32`` or
    ``bf16`` (OpenVINO). ``threads``: intra-op threads (``None``: the runtime's default, all
    cores). ``warmup``: untimed calls per cell.
    ``repeats``: timed calls per cell (at least). ``min_time_s``: optional minimum of timed
    seconds per cell (0 = none). ``seed``: seed of the sessions' noise and of the inputs.
    ``interleave``: round-robin the models' runs (see :func:`schedule`). ``measure_memory``:
    probe peak memory in fresh processes (about a second per model and provider).
    """

    batches: tuple[int, ...] = (1, 32)
    samples: tuple[int, ...] = (1, 8, 32)
    providers: tuple[str, ...] = ("auto",)
    precision: str = "fp32"
    threads: int | None = None
    warmup: int = 3
    repeats: int = 20
    min_time_s: float = 0.0
    seed: int = 0
    interleave: bool = True
    measure_memory: bool = True
    #: ONNX Runtime worker threads spin after a run by default; with several sessions timed
    #: in turn, one session's spinning threads compete with the next one (interleaved
    #: results of small graphs varied up to ~4x run to run with spinning on), so benchmarks
    #: turn spinning off unless asked.
    spinning: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", _grid("batches", self.batches, 1 << 20))
        object.__setattr__(self, "samples", _grid("samples", self.samples, MAX_SAMPLES))
        object.__setattr__(self, "providers", _providers(self.providers))
        object.__setattr__(self, "precision", parse_precision(self.precision).value)
        for name, lo in (("warmup", 0), ("repeats", 1), ("seed", 0)):
            _check_int(name, getattr(self, name), lo)
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
        t = self.min_time_s
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t < float("inf"):
            raise ConfigError(f"min_time_s must be a finite number >= 0, got {t!r}")
        for name in ("interleave", "measure_memory"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: Mapping | None) -> BenchConfig:
        """Build from plain data; unknown keys and wrong types raise :class:`ConfigError`."""
        return from_dict(cls, dict(data) if isinstance(data, Mapping) else data)

    @classmethod
    def load(cls, path: str | Path) -> BenchConfig:
        """Read from a YAML or JSON file."""
        return load_config(cls, path)

    def to_dict(self) -> dict:
        return to_dict(self)


def _check_int(name: str, value: object, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")


def _grid(name: str, values: object, hi: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{name} must be a non-empty list of positive integers, got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= hi:
            raise ConfigError(
                f"{name} must be positive integers (at most {hi}); got {v!r} in {list(values)}"
            )
    return tuple(sorted({int(v) for v in values}))


def _providers(values: object) -> tuple[str, ...]:
    valid = ["auto", *known_providers()]
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"providers must be a non-empty list of names, got {values!r}")
    for v in values:
        if not isinstance(v, str) or v.strip().lower() not in valid:
            raise ConfigError(f"unknown provider {v!r}; known providers: {', '.join(valid)}")
    return tuple(dict.fromkeys(v.strip().lower() for v in values))
