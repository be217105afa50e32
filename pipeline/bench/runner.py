"""The ``bench`` stage: latency and throughput of compiled models over a (batch, S) grid.

``bench(models, config) -> BenchResult``. Method:

* One session per (model, provider), opened once through :func:`qbnn.runtimes.open_session`
  with ``config.seed`` and ``config.threads``; all sessions stay open during timing.
* Cells are grouped by (batch, S). In each group every session first runs ``warmup`` untimed
  calls, then the timed calls follow :func:`schedule`: with ``interleave`` each round runs every
  (model, provider) once, starting one further along each round, so drift of the machine (turbo,
  thermal, noisy neighbours) hits every model alike; without it each model runs its block.
  Rounds continue past ``repeats`` until every cell has ``min_time_s`` of timed runs.
* One timed call is one ``session.run`` of all outputs with ``input [batch, *F]`` and
  ``num_samples = S`` (wall clock, ``time.perf_counter``). A cell reports the median, p90 and p99
  (linear interpolation, so with 20 runs p99 sits near the maximum) in milliseconds,
  ``images_per_s = batch / median`` (each input counted once whatever S is) and
  ``samples_per_s = batch * S / median``.
* Plain ONNX models (no ``num_samples`` input) run at S = 1 only, whatever the grid says.
* Per (model, provider): file size (with external-data files), peak resident memory measured
  in fresh processes (see :mod:`qbnn.pipeline.bench.probe`) and the share of estimated FLOPs
  that run once per call rather than per MC sample (:func:`qbnn.runtimes.split_report`, at the
  largest batch and S benched).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from qbnn.runtimes import SessionOptions, open_model, resolve_provider, split_report
from qbnn.runtimes.errors import ConfigError

from .config import BenchConfig
from .environment import environment, model_file_bytes
from .probe import make_feed, probe_memory
from .result import BenchResult, Cell, ModelStats

__all__ = ["bench", "model_names", "schedule"]

T = TypeVar("T")
Progress = Callable[[int, int], None]


def schedule(runners: Sequence[T], repeats: int, *, interleave: bool = True, start: int = 0):
    """Order of timed runs: ``repeats`` rounds of ``runners``.

    Interleaved, round ``k`` (counted from ``start``) runs every runner once, starting with
    ``runners[k % n]``: ``schedule("abc", 2) == list("abcbca")``. Otherwise blocks:
    ``schedule("abc", 2, interleave=False) == list("aabbcc")``.
    """
    n = len(runners)
    if not interleave:
        return [r for r in runners for _ in range(repeats)]
    return [runners[(k + i) % n] for k in range(start, start + repeats) for i in range(n)]


def model_names(models: Sequence[str | Path] | Mapping[str, str | Path]) -> dict[str, Path]:
    """``{name: path}``: a mapping's own names, else file stems (the path where stems clash)."""
    if isinstance(models, (str, Path)):
        raise ConfigError(
            f"models must be a list of paths or a {{name: path}} mapping, got the single path "
            f"{str(models)!r}; wrap it in a list"
        )
    if isinstance(models, Mapping):
        named = {str(k): Path(v) for k, v in models.items()}
    else:
        paths = [Path(p) for p in models]
        stems = [p.stem for p in paths]
        named = {(p.stem if stems.count(p.stem) == 1 else str(p)): p for p in paths}
        if len(named) != len(paths):
            raise ConfigError(f"a model is listed twice: {[str(p) for p in paths]}")
    if not named:
        raise ConfigError("bench needs at least one model; got none")
    return named


class _Runner:
    """One open session and its feeds, timed one ``session.run`` at a time."""

    def __init__(self, name: str, path: Path, provider: str, cfg: BenchConfig) -> None:
        spin = "1" if cfg.spinning else "0"
        opts = SessionOptions(
            provider=provider,
            threads=cfg.threads,
            precision=cfg.precision,
            config_entries={
                "session.intra_op.allow_spinning": spin,
                "session.inter_op.allow_spinning": spin,
            },
        )
        opened = open_model(path, opts, cfg.seed)
        self.session, self.info, self.spec = opened.session, opened.info, opened.provider
        self.precision = opened.precision  # effective: fp32, int8, bf16 or int8+bf16
        self.name, self.path, self.seed = name, path, cfg.seed
        self.samples = cfg.samples if self.info.takes_num_samples else (1,)
        self.feed: dict[str, np.ndarray] = {}
        self.times: list[float] = []

    def prepare(self, batch: int, samples: int) -> None:
        self.feed = make_feed(self.info, batch, samples, self.seed)
        self.times = []

    def run(self) -> float:
        t0 = time.perf_counter()
        self.session.run(None, self.feed)
        elapsed = time.perf_counter() - t0
        self.times.append(elapsed)
        return elapsed


def _time_group(runners: list[_Runner], cfg: BenchConfig, tick: Callable[[], None]) -> None:
    """Warm up, then time every runner of one (batch, S) group (times kept on the runners)."""
    for r in runners:
        for _ in range(cfg.warmup):
            r.session.run(None, r.feed)

    def short(rs: list[_Runner]) -> bool:
        return any(sum(r.times) < cfg.min_time_s for r in rs)

    blocks = [runners] if cfg.interleave else [[r] for r in runners]
    for block in blocks:
        k = 0
        while k < cfg.repeats or short(block):
            repeats = cfg.repeats if k == 0 else 1
            for r in schedule(block, repeats, interleave=True, start=k):
                r.run()
                tick()
            k += repeats


def _exact(info) -> bool:
    """An exact posterior: S is an input but no op draws noise (every call evaluates all the
    members; S only sets the rows of the per-sample outputs)."""
    return info.takes_num_samples and not info.stochastic


def _cell(r: _Runner, batch: int, samples: int) -> Cell:
    ms = np.asarray(r.times) * 1e3
    median, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    exact = _exact(r.info)
    return Cell(
        model=r.name, provider=r.spec.name, batch=batch, num_samples=samples,
        plain=not r.info.takes_num_samples, runs=len(ms),
        median_ms=median, p90_ms=p90, p99_ms=p99, mean_ms=float(ms.mean()),
        min_ms=float(ms.min()), max_ms=float(ms.max()),
        images_per_s=batch / (median / 1e3),
        samples_per_s=None if exact else batch * samples / (median / 1e3), exact=exact,
    )  # fmt: skip


def _open_runners(named: dict[str, Path], cfg: BenchConfig, notes: list[str]) -> list[_Runner]:
    specs = list(dict.fromkeys(resolve_provider(p, cfg.precision).name for p in cfg.providers))
    if len(specs) < len(cfg.providers):
        notes.append(f"providers {list(cfg.providers)} resolve to {specs}; each is run once")
    runners = [_Runner(n, p, s, cfg) for n, p in named.items() for s in specs]
    for r in runners:
        if r.spec.name == specs[0] and _exact(r.info):
            notes.append(
                f"'{r.name}' is an exact posterior (sampling '{r.info.sampling}', no random ops): "
                "every call evaluates all its members whatever S is, S only sets the rows of "
                "its per-sample outputs; samples/s is not reported for it (compare images/s)"
            )
        if r.spec.name == specs[0] and not r.info.takes_num_samples:
            skipped = [s for s in cfg.samples if s != 1]
            notes.append(
                f"'{r.name}' has no num_samples input (plain ONNX model): benched at S=1 only"
                + (f"; skipped S={', '.join(map(str, skipped))}" if skipped else "")
            )
    return runners


def _memory(r: _Runner, cfg: BenchConfig, baseline: int, notes: list[str]) -> dict:
    batch, samples = max(cfg.batches), max(r.samples)
    try:
        peak = probe_memory(
            r.path, provider=r.spec.name, threads=cfg.threads, seed=cfg.seed,
            batch=batch, samples=samples, precision=cfg.precision,
        )  # fmt: skip
    except Exception as exc:  # a crashed or killed child: report, keep the timings
        notes.append(f"memory of '{r.name}' on {r.spec.name} not measured: {exc}")
        return {}
    return {
        "peak_rss_kb": max(peak - baseline, 0),
        "process_peak_rss_kb": peak,
        "baseline_rss_kb": baseline,
        "memory_cell": (batch, samples),
    }


def _measure_memory(
    runners: list[_Runner], stats: list[ModelStats], cfg: BenchConfig, notes: list[str], tick
) -> list[ModelStats]:
    for r in runners:
        del r.session  # the probes run in fresh processes; free this one's memory first
    try:
        baseline = probe_memory(None, threads=cfg.threads, seed=cfg.seed)
    except Exception as exc:  # no baseline, no honest difference: report, keep the timings
        notes.append(f"memory not measured: {exc}")
        return stats
    tick()
    out = []
    for r, st in zip(runners, stats, strict=True):
        out.append(replace(st, **_memory(r, cfg, baseline, notes)))
        tick()
    return out


def _split(r: _Runner, batch: int) -> dict:
    """Share of FLOPs run once at the largest benched [batch, S] (qbnn models only)."""
    if not r.info.takes_num_samples:
        return {}
    import onnx

    samples = max(r.samples)
    model = onnx.load(str(r.path), load_external_data=False)  # shapes only
    rep = split_report(model, batch, samples)
    return {"flops_once": rep.fraction_once, "split_cell": (batch, samples)}


def _split_or_note(r: _Runner, batch: int, notes: list[str]) -> dict:
    try:
        return _split(r, batch)
    except Exception as exc:  # noqa: BLE001  an estimate, never a reason to lose the timings
        notes.append(f"FLOPs run once not estimated for '{r.name}': {exc}")
        return {}


def _stats(r: _Runner, batch: int, notes: list[str]) -> ModelStats:
    i = r.info
    return ModelStats(
        name=r.name, path=str(r.path), provider=r.spec.name, ep=r.spec.ep,
        file_bytes=model_file_bytes(r.path), qbnn=i.is_qbnn, task=i.task.value,
        posterior=i.posterior, sampling=i.sampling, precision=r.precision,
        num_samples=r.samples, **_split_or_note(r, batch, notes),
    )  # fmt: skip


def bench(
    models: Sequence[str | Path] | Mapping[str, str | Path],
    config: BenchConfig | None = None,
    *,
    progress: Progress | None = None,
) -> BenchResult:
    """Time every (model, provider, batch, S) cell of ``config``'s grid.

    ``models``: ONNX paths (named by file stem) or ``{name: path}``. ``progress(done, total)``
    is called after each timed run and memory probe. Inputs are ``[batch, *feature_shape]``
    float32 standard normal (seeded); models need a static feature shape.
    """
    cfg = config or BenchConfig()
    notes: list[str] = []
    runners = _open_runners(model_names(models), cfg, notes)
    groups = [(b, s) for b in cfg.batches for s in sorted({*cfg.samples, 1})]
    plan = [(b, s, [r for r in runners if s in r.samples]) for b, s in groups]
    plan = [(b, s, rs) for b, s, rs in plan if rs]
    total = sum(len(rs) for *_, rs in plan) * cfg.repeats
    total += len(runners) + 1 if cfg.measure_memory else 0
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(min(done, total), total)

    cells = []
    for batch, samples, rs in plan:
        for r in rs:
            r.prepare(batch, samples)
        _time_group(rs, cfg, tick)
        cells += [_cell(r, batch, samples) for r in rs]
    stats = [_stats(r, max(cfg.batches), notes) for r in runners]
    if cfg.measure_memory:
        stats = _measure_memory(runners, stats, cfg, notes, tick)
    env = environment(cfg.threads)
    return BenchResult(config=cfg, environment=env, models=stats, cells=cells, notes=notes)
