"""Results of the ``bench`` stage: per-cell timings, per-model stats, ratios, JSON.

The JSON schema of :meth:`BenchResult.to_dict` is documented in
:mod:`qbnn.pipeline.bench.report`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from qbnn.runtimes.errors import ConfigError

from ..common import to_dict
from .config import BenchConfig
from .environment import Environment

__all__ = ["SCHEMA_VERSION", "BenchResult", "Cell", "ModelStats", "Ratio"]

SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class Cell:
    """Timing of one (model, provider, batch, S): ``runs`` timed calls, times in ms.

    ``samples_per_s`` (batch * S / median) is ``None`` for an ``exact`` posterior (ensemble
    members, ``frozen:K`` draws: no random ops): each call evaluates all its members whatever S
    is, so batch * S / median would count rows that were copied, not computed.
    """

    model: str
    provider: str
    batch: int
    num_samples: int
    plain: bool
    runs: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    images_per_s: float
    samples_per_s: float | None
    exact: bool = False


@dataclass(frozen=True)
class ModelStats:
    """One (model, provider): file, contract metadata and memory.

    ``peak_rss_kb``: peak RSS of the probe child minus the baseline child (KiB), ``None`` when
    not measured; ``process_peak_rss_kb`` / ``baseline_rss_kb``: the two raw peaks;
    ``memory_cell``: the [batch, S] the child ran. ``flops_once``: share of the estimated FLOPs
    of one call that run once rather than per MC sample (:func:`qbnn.runtimes.split_report`)
    at ``split_cell`` [batch, S]; ``None`` for plain models.
    """

    name: str
    path: str
    provider: str
    ep: str
    file_bytes: int
    qbnn: bool
    task: str
    posterior: str
    sampling: str
    precision: str
    num_samples: tuple[int, ...]
    peak_rss_kb: int | None = None
    process_peak_rss_kb: int | None = None
    baseline_rss_kb: int | None = None
    memory_cell: tuple[int, int] | None = None
    flops_once: float | None = None
    split_cell: tuple[int, int] | None = None


@dataclass(frozen=True)
class Ratio:
    """``throughput`` = images/s of ``model`` / images/s of the baseline in the same
    (provider, batch); the baseline runs at ``baseline_num_samples`` (S, or 1 for a plain one)."""

    model: str
    provider: str
    batch: int
    num_samples: int
    baseline_num_samples: int
    throughput: float


@dataclass(frozen=True)
class BenchResult:
    """Everything ``bench`` measured; ``to_json()`` is ``bench.json``."""

    config: BenchConfig
    environment: Environment
    models: list[ModelStats]
    cells: list[Cell]
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """Model names in input order."""
        return list(dict.fromkeys(m.name for m in self.models))

    def ratios(self, baseline: str) -> list[Ratio]:
        """Throughput of every other model's cell relative to ``baseline``'s matching cell
        (same provider and batch; same S, or S = 1 when the baseline is a plain model)."""
        if baseline not in self.names:
            raise ConfigError(f"unknown baseline model '{baseline}'; models: {self.names}")
        base = {(c.provider, c.batch, c.num_samples): c for c in self.cells if c.model == baseline}
        out = []
        for c in self.cells:
            ref = base.get((c.provider, c.batch, c.num_samples)) or base.get(
                (c.provider, c.batch, 1)
            )
            if c.model != baseline and ref is not None:
                ratio = c.images_per_s / ref.images_per_s
                out.append(
                    Ratio(c.model, c.provider, c.batch, c.num_samples, ref.num_samples, ratio)
                )
        return out

    def to_dict(self, baseline: str | None = None) -> dict[str, Any]:
        """Plain JSON-ready data (schema in :mod:`qbnn.pipeline.bench.report`)."""
        out = to_dict(
            {
                "version": SCHEMA_VERSION,
                "config": self.config,
                "environment": self.environment,
                "models": self.models,
                "cells": self.cells,
                "notes": self.notes,
            }
        )
        if baseline is not None:
            out["baseline"] = baseline
            out["ratios"] = to_dict(self.ratios(baseline))
        return out

    def to_json(self, baseline: str | None = None) -> str:
        """``bench.json``: :meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(baseline), indent=2)
