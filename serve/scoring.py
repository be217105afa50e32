"""``qbnn score``: batch scoring of a folder of shards on Ray Data, resumable.

Each shard is one unit of work: a Ray Data actor (``concurrency`` = ``workers``, one CPU each,
on a local Ray or a cluster) opens qbnn's :class:`~qbnn.runtimes.Predictor` with the shard's
seed, predicts every row and writes ``<output>/<shard stem>.parquet`` atomically
(:mod:`qbnn.serve.shards`). A re-run skips every shard whose output exists with the same model,
S and seed, so an interrupted run resumes where it stopped and no row is scored twice.

Results equal ``Predictor(model, provider=..., seed=shard_seed(seed, shard.name)).predict(x,
S)`` on the shard's rows: exactly for deterministic models, and for stochastic ones too,
because each shard gets a fresh session with its own seed and ``Predictor``'s own chunking.
Shards get different seeds (derived from ``seed`` and the shard's file name), so no two shards
share noise. On a cluster the model and the folders must be on a file system every node sees.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qbnn.runtimes.errors import ConfigError

from .rayinit import ensure_ray
from .shards import find_shards, read_identity, read_shard, write_scores

__all__ = ["ScoreConfig", "ScoreResult", "score", "shard_seed"]


def shard_seed(seed: int, shard_name: str) -> int:
    """The seed of one shard: ``SeedSequence([seed, crc32(name)])``'s first word (< 2**31)."""
    seq = np.random.SeedSequence([seed, zlib.crc32(shard_name.encode())])
    return int(seq.generate_state(1, dtype=np.uint32)[0] % 2**31)


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """``num_samples``: S (``None``: the model's default); ``seed``: base seed of the shards'
    noise; ``workers``: Ray actors scoring shards at once (one CPU each); ``threads``: intra-op
    threads per actor; ``address``: a Ray cluster (``None``: the running Ray, else a local one
    with ``workers`` CPUs)."""

    num_samples: int | None = None
    seed: int = 0
    provider: str = "auto"
    threads: int | None = 1
    workers: int = 2
    address: str | None = None

    def __post_init__(self) -> None:
        if self.num_samples is not None and self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class ScoreResult:
    """What a run did: shards scored now / skipped as already done, rows scored now, and the
    wall time in seconds (Ray start-up included)."""

    scored: tuple[str, ...]
    skipped: tuple[str, ...]
    rows: int
    seconds: float


class _ShardScorer:
    """A Ray Data actor: one shard in, its Parquet output written, a summary row out."""

    def __init__(self, model: str, output: str, cfg: ScoreConfig, identity: dict) -> None:
        self.model, self.output, self.cfg, self.identity = model, Path(output), cfg, identity

    def __call__(self, row: dict) -> dict:
        from qbnn.runtimes import Predictor

        path = Path(row["shard"])
        seed = shard_seed(self.cfg.seed, path.name)
        pred = Predictor(self.model, provider=self.cfg.provider, threads=self.cfg.threads,
                         seed=seed)  # fmt: skip
        fs = tuple(pred.info.feature_shape)
        x, ids = read_shard(path, fs)
        result = pred.predict(x, self.cfg.num_samples)
        identity = {**self.identity, "shard": path.name, "shard_seed": str(seed),
                    "num_samples": str(result.num_samples)}  # fmt: skip
        write_scores(self.output / f"{path.stem}.parquet", result, ids, identity)
        return {"shard": path.name, "rows": len(x)}


def _identity(model: Path, cfg: ScoreConfig) -> dict[str, str]:
    h = hashlib.sha256()
    with open(model, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    s = "default" if cfg.num_samples is None else str(cfg.num_samples)
    return {"model_sha256": h.hexdigest(), "requested_samples": s, "seed": str(cfg.seed)}


def _todo(shards: list[Path], output: Path, identity: dict[str, str]) -> list[Path]:
    for stale in output.glob(".*.parquet.*.tmp"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)
    todo = []
    for shard in shards:
        out = output / f"{shard.stem}.parquet"
        if not out.exists():
            todo.append(shard)
            continue
        have = read_identity(out)
        diff = {k: (have.get(k), v) for k, v in identity.items() if have.get(k) != v}
        if diff:
            raise ConfigError(f"{out} was scored with other settings {diff} (found, wanted); "
                              "use another output folder or delete it")  # fmt: skip
    return todo


def score(
    model: str | Path, inputs: str | Path, output: str | Path, cfg: ScoreConfig
) -> ScoreResult:
    """Score every shard of ``inputs`` not yet in ``output`` (created if absent) with ``model``
    on Ray Data; see the module docstring for the output format and the seeds."""
    import ray

    start = time.perf_counter()
    model, inputs, output = Path(model).resolve(), Path(inputs).resolve(), Path(output).resolve()
    if not model.is_file():
        raise ConfigError(f"model {model} does not exist")
    shards = find_shards(inputs)
    output.mkdir(parents=True, exist_ok=True)
    identity = _identity(model, cfg)
    todo = _todo(shards, output, identity)
    skipped = tuple(p.name for p in shards if p not in todo)
    if not todo:
        return ScoreResult((), skipped, 0, time.perf_counter() - start)
    started = ensure_ray(cfg.workers, cfg.address)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items([{"shard": str(p)} for p in todo], override_num_blocks=len(todo))
        done = ds.map(
            _ShardScorer, fn_constructor_kwargs={"model": str(model), "output": str(output),
                                                 "cfg": cfg, "identity": identity},
            concurrency=min(cfg.workers, len(todo)), num_cpus=1,
        ).take_all()  # fmt: skip
    finally:
        if started:
            ray.shutdown()
    scored = tuple(sorted(r["shard"] for r in done))
    rows = sum(int(r["rows"]) for r in done)
    return ScoreResult(scored, skipped, rows, time.perf_counter() - start)
