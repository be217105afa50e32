"""``run(config_path)``: export -> quantize -> validate -> bench into ``<root>/<name>/``.

Each stage is keyed by its config and its inputs' sha256; a re-run skips unchanged stages
(``force=True`` re-runs). The manifest is written after every stage, so a failed stage leaves
earlier artifacts and a valid manifest behind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qbnn.runtimes.errors import ConfigError, QbnnError

from ..common import to_dict
from .config import RunConfig, Stage, load_run_config
from .manifest import Manifest, sha256_file, stage_key
from .preflight import preflight
from .stages import (
    StageContext,
    bench_stage,
    compress_stage,
    export_stage,
    quantize_stage,
    validate_stage,
)

__all__ = ["RunResult", "load_manifest", "run"]

log = logging.getLogger("qbnn.run")
_STAGES = {Stage.EXPORT: export_stage, Stage.QUANTIZE: quantize_stage,
           Stage.VALIDATE: validate_stage, Stage.BENCH: bench_stage,
           Stage.COMPRESS: compress_stage}  # fmt: skip


@dataclass(frozen=True)
class RunResult:
    """Where everything went, which stages ran or were skipped, and whether gates passed."""

    root: Path
    manifest: Path
    ran: tuple[str, ...]
    skipped: tuple[str, ...]
    gates_passed: bool | None
    failed_gates: tuple[str, ...]
    summary: list[dict] = field(default_factory=list)


def _stage_config(cfg: RunConfig, stage: Stage) -> dict:
    common = {"qbnn_format": 1}
    if stage == Stage.EXPORT:
        return {**common, "model": to_dict(cfg.model), "baseline": to_dict(cfg.baseline)}
    return {**common, stage.value: to_dict(getattr(cfg, stage.value)), "data": to_dict(cfg.data)}


def _inputs(ctx: StageContext, stage: Stage) -> dict[str, str]:
    """sha256 of every file a stage reads (config-named files and earlier artifacts)."""
    cfg, files = ctx.cfg, {}
    named = {
        Stage.EXPORT: [cfg.model.weights, cfg.model.onnx, cfg.data.test]
        + ([cfg.baseline.weights, cfg.baseline.onnx] if cfg.baseline else []),
        Stage.QUANTIZE: [cfg.data.calib],
        Stage.VALIDATE: [cfg.data.test, cfg.data.ood],
        Stage.BENCH: [],
        Stage.COMPRESS: [cfg.data.calib, cfg.data.test, cfg.data.ood, cfg.compress.plan],
    }[stage]
    for value in filter(None, named):
        p = Path(value) if Path(value).is_absolute() else ctx.base / value
        files[value] = sha256_file(p) if p.is_file() else "missing"
    if stage != Stage.EXPORT:
        for name in ("model.fp32.onnx", "model.int8.onnx", "baseline.onnx"):
            if (ctx.root / name).is_file() and not (stage == Stage.QUANTIZE and "int8" in name):
                files[name] = sha256_file(ctx.root / name)
    return files


def _prepare_root(cfg: RunConfig, base: Path) -> Path:
    """``<output_root>/<name>``, created; ``output_root`` may be created too, but not its
    parent (the output-path rule of every command)."""
    out = Path(cfg.output_root)
    out = (out if out.is_absolute() else base / out).resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"'output_root' {out} is an existing file; give a folder")
    if not out.parent.is_dir():
        raise ConfigError(
            f"'output_root' {out}: the folder {out.parent} does not exist; create it first "
            "or change 'output_root'"
        )
    root = out / cfg.name
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the artifacts folder {root}: {exc.strerror}") from exc
    if not os.access(root, os.W_OK):
        raise ConfigError(f"the artifacts folder {root} is not writable")
    return root


def run(
    config_path: str | Path,
    *,
    force: bool = False,
    progress: Callable[[str, str], None] | None = None,
) -> RunResult:
    """Run the pipeline described by ``config_path``; ``progress(stage, status)`` is called
    with status ``start``, ``done``, ``skipped`` or ``failed``."""
    cfg, base = load_run_config(config_path)
    preflight(cfg, base)
    root = _prepare_root(cfg, base)
    ctx = StageContext(cfg, base, root)
    manifest = Manifest.load_or_new(root, cfg.name, to_dict(cfg))
    notify = progress or (lambda stage, status: None)
    ran, skipped = [], []
    for stage in cfg.stages:
        key = stage_key(_stage_config(cfg, stage), _inputs(ctx, stage))
        if not force and manifest.can_skip(stage.value, key):
            skipped.append(stage.value)
            notify(stage.value, "skipped")
            continue
        notify(stage.value, "start")
        t0 = time.perf_counter()
        try:
            out = _STAGES[stage](ctx)
        except QbnnError as exc:
            manifest.fail(stage.value, str(exc))
            manifest.save()
            notify(stage.value, "failed")
            raise
        manifest.record(
            stage.value,
            key,
            out.outputs,
            _stage_config(cfg, stage),
            out.parents,
            time.perf_counter() - t0,
            **out.extra,
        )
        manifest.save()
        ran.append(stage.value)
        notify(stage.value, "done")
    manifest.save()
    return _result(root, manifest, ran, skipped)


def _result(root: Path, manifest: Manifest, ran, skipped) -> RunResult:
    from .summary import summary_rows

    val = manifest.stages.get("validate", {})
    return RunResult(
        root=root, manifest=manifest.path, ran=tuple(ran), skipped=tuple(skipped),
        gates_passed=val.get("gates_passed"), failed_gates=tuple(val.get("failed_gates", [])),
        summary=summary_rows(root),
    )  # fmt: skip


def load_manifest(root: Path) -> dict:
    """The parsed ``manifest.json`` of a run folder."""
    return json.loads((root / "manifest.json").read_text())
