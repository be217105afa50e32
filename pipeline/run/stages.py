"""The four stages of ``qbnn run`` as functions over files (called by :mod:`.runner`).

Each returns its output paths and a ``parents`` map (output -> input artifact); the runner
hashes, records and skips them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qbnn.runtimes.errors import ConfigError

from ..common import importable, load_npz
from .config import ModelSource, RunConfig, Stage

__all__ = [
    "StageContext",
    "StageOutput",
    "bench_stage",
    "compress_stage",
    "export_stage",
    "quantize_stage",
    "validate_stage",
]


@dataclass
class StageContext:
    """Where a run lives: ``base`` resolves the config's relative paths; ``root`` is
    ``<output_root>/<name>``."""

    cfg: RunConfig
    base: Path
    root: Path

    def path(self, value: str, key: str) -> Path:
        """An input file named in the config; missing files name the config key."""
        p = Path(value)
        p = p if p.is_absolute() else self.base / p
        if not p.is_file():
            raise ConfigError(f"'{key}' points to {p}, which does not exist")
        return p

    def rel(self, p: Path) -> str:
        return p.relative_to(self.root).as_posix()


@dataclass
class StageOutput:
    outputs: list[Path]
    parents: dict[str, str | None] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def _example(ctx: StageContext, src: ModelSource):
    import torch

    if ctx.cfg.data.test:
        x = load_npz(ctx.path(ctx.cfg.data.test, "data.test"), require=("x",))["x"][:8]
        if tuple(x.shape[1:]) == tuple(src.input_shape):
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    gen = torch.Generator().manual_seed(0)
    return torch.randn((4, *src.input_shape), generator=gen)


def _torch_model(ctx: StageContext, src: ModelSource, key: str):
    from qbnn.exporters.usermodels import load_model

    weights = ctx.path(src.weights, f"{key}.weights") if src.weights else None
    with importable(ctx.base):
        return load_model(
            src.factory,
            weights,
            trust=src.trust_checkpoint,
            trust_option=f"'trust_checkpoint: true' under '{key}:' in the config",
        )


def export_stage(ctx: StageContext) -> StageOutput:
    """``model.fp32.onnx`` (and ``baseline.onnx``): exported, or copied from ``onnx``."""
    out = StageOutput([])
    cfg = ctx.cfg
    fp32 = ctx.root / "model.fp32.onnx"
    if cfg.model.onnx:
        shutil.copyfile(ctx.path(cfg.model.onnx, "model.onnx"), fp32)
    else:
        import torch

        from qbnn.exporters import ExportConfig, export_model

        bn = None
        if cfg.model.bn_update:
            path = ctx.path(cfg.model.bn_update, "model.bn_update")
            bn = torch.from_numpy(load_npz(path, require=("x",))["x"]).float()
        config = ExportConfig.from_dict(cfg.model.export_options())
        model = _torch_model(ctx, cfg.model, "model")
        res = export_model(model, _example(ctx, cfg.model), fp32, config=config, bn_update=bn)
        if res.fidelity is not None:
            out.extra["fidelity"] = res.fidelity.summary()
    out.outputs.append(fp32)
    if cfg.baseline is not None:
        base = ctx.root / "baseline.onnx"
        if cfg.baseline.onnx:
            shutil.copyfile(ctx.path(cfg.baseline.onnx, "baseline.onnx"), base)
        else:
            from qbnn.exporters.plain import export_plain

            model = _torch_model(ctx, cfg.baseline, "baseline").eval()
            export_plain(model, _example(ctx, cfg.baseline), base, task=cfg.model.task)
        out.outputs.append(base)
    return out


def _need(ctx: StageContext, path: Path, stage: str, source: str) -> Path:
    if not path.is_file():
        raise ConfigError(
            f"stage '{stage}' needs {ctx.rel(path)} from stage '{source}', which has not run; "
            f"add '{source}' to 'stages' or run it first"
        )
    return path


def quantize_stage(ctx: StageContext) -> StageOutput:
    """``model.int8.onnx`` from ``model.fp32.onnx`` and ``data.calib``."""
    from ..quantize import quantize_model

    fp32 = _need(ctx, ctx.root / "model.fp32.onnx", "quantize", "export")
    calib = ctx.path(ctx.cfg.data.calib, "data.calib")
    res = quantize_model(
        fp32, ctx.root / "model.int8.onnx", ctx.cfg.quantize, calib=calib, speed_check=True
    )
    extra = {"size_ratio": round(res.size_ratio, 4), "kept_fp32": list(res.kept_fp32)}
    if res.calibration is not None:
        extra["calibration_rows"] = [res.calibration.used, res.calibration.total]
    extra["format"] = res.format
    if res.speed is not None:  # int8 vs fp32 per call on this CPU (speed_notes says it)
        extra["speed"] = res.speed.to_dict()
    if res.spread is not None:
        extra["logit_spread_ratio"] = round(res.spread.ratio, 4)
    return StageOutput([res.path], {"model.int8.onnx": "model.fp32.onnx"}, extra)


def _models(ctx: StageContext, stage: str) -> tuple[dict[str, Path], Path | None]:
    models = {"fp32": _need(ctx, ctx.root / "model.fp32.onnx", stage, "export")}
    if Stage.QUANTIZE in ctx.cfg.stages or (ctx.root / "model.int8.onnx").is_file():
        models["int8"] = _need(ctx, ctx.root / "model.int8.onnx", stage, "quantize")
    base = ctx.root / "baseline.onnx"
    return models, (base if ctx.cfg.baseline is not None else None)


def validate_stage(ctx: StageContext) -> StageOutput:
    """``report/`` (report.json, report.md, PNG plots) comparing fp32, int8 and baseline."""
    from ..validate import validate, write_report

    models, base = _models(ctx, "validate")
    data = ctx.path(ctx.cfg.data.test, "data.test")
    ood = ctx.path(ctx.cfg.data.ood, "data.ood") if ctx.cfg.data.ood else None
    if base is not None:
        _need(ctx, base, "validate", "export")
    report = validate(
        models,
        data,
        ood=ood,
        baseline=("baseline", base) if base else None,
        config=ctx.cfg.validate,
    )
    out_dir = ctx.root / "report"
    report = write_report(report, out_dir)
    files = [out_dir / "report.json", out_dir / "report.md"] + [out_dir / p for p in report.plots]
    parents = {
        ctx.rel(f): "model.int8.onnx" if "int8" in models else "model.fp32.onnx" for f in files
    }
    failed = [f"{m}: {g.name}" for m, g in report.failed_gates]
    return StageOutput(files, parents, {"gates_passed": report.passed, "failed_gates": failed})


def bench_stage(ctx: StageContext) -> StageOutput:
    """``bench/bench.json`` and ``bench/bench.png`` for fp32, int8 and baseline."""
    from ..bench import bench, save_plot, write_json

    models, base = _models(ctx, "bench")
    if base is not None:
        models["baseline"] = _need(ctx, base, "bench", "export")
    result = bench(models, ctx.cfg.bench)
    out_dir = ctx.root / "bench"
    out_dir.mkdir(exist_ok=True)
    files = [
        write_json(result, out_dir / "bench.json", baseline="fp32"),
        save_plot(result, out_dir / "bench.png"),
    ]
    return StageOutput(files, {ctx.rel(f): "model.int8.onnx" for f in files})


def compress_stage(ctx: StageContext) -> StageOutput:
    """``model.compressed.onnx`` and ``compress/`` (compress.json, compress.md, plan.yaml, the
    search plot, the validate report against fp32) from ``model.fp32.onnx``; the manifest
    records the plan and the totals."""
    from ..compress import AutoConfig, CompressMode, ShareConfig, compress, load_plan

    cfg, c = ctx.cfg, ctx.cfg.compress
    fp32 = _need(ctx, ctx.root / "model.fp32.onnx", "compress", "export")
    calib = ctx.path(cfg.data.calib, "data.calib") if cfg.data.calib else None
    test = ctx.path(cfg.data.test, "data.test") if cfg.data.test else None
    ood = ctx.path(cfg.data.ood, "data.ood") if cfg.data.ood and test else None
    out_dir = ctx.root / "compress"
    res = compress(
        fp32, ctx.root / "model.compressed.onnx",
        plan=load_plan(ctx.path(c.plan, "compress.plan")) if c.mode == CompressMode.PLAN else None,
        auto=AutoConfig(budget=c.budget, max_trials=c.max_trials)
        if c.mode == CompressMode.AUTO
        else None,
        share=ShareConfig(k=c.k, max_unique=c.max_unique, sigma_bits=c.sigma_bits, snr=c.snr)
        if c.mode == CompressMode.SHARE
        else None,
        calib=calib if c.mode != CompressMode.SHARE else None, data=test, ood=ood,
        validate_config=cfg.validate, quant_config=cfg.quantize, num_samples=c.num_samples,
        report_dir=out_dir,
    )  # fmt: skip
    files = [res.result.path] + sorted(p for p in out_dir.rglob("*") if p.is_file())
    rec = res.record
    extra = {k: rec[k] for k in ("relative_bops", "unique_weights", "size_bytes", "gates_passed")}
    extra["plan"] = rec["plan"]
    return StageOutput(files, {ctx.rel(f): "model.fp32.onnx" for f in files}, extra)
