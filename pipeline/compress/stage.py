"""``compress(src, dst, ...)``: the stage the CLI and ``qbnn run`` call.

Exactly one of ``plan`` (deploy a given plan), ``auto`` (plan from the posterior, searched
under the gates) or ``share`` (weight sharing) is given. With ``data``, the output is validated
against ``src`` with ``validate``'s gates (the ``validate`` stage itself: same metrics, same
gates); ``report_dir`` receives ``compress.json``, ``compress.md``, ``plan.yaml``, the search
plot and the ``validate`` report (``validate/``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qbnn.runtimes.errors import ConfigError, QuantizationError
from qbnn.runtimes.loading import load_onnx

from ..common import atomic_path
from .auto import AutoConfig, Trial, no_plan_message, search
from .deploy import CompressResult, deploy_plan, deploy_share
from .layers import find_layers
from .plan import Plan
from .report import compress_record, failed_gates, write_compress_report, write_failed_search
from .share import ShareConfig

__all__ = ["CompressOutcome", "compress"]


@dataclass(frozen=True)
class CompressOutcome:
    """The result, the ``compress.json`` record, the validate report (or None) and the
    search trials."""

    result: CompressResult
    record: dict[str, Any]
    report: Any | None
    trials: tuple[Trial, ...] = ()

    @property
    def gates_passed(self) -> bool | None:
        return self.record["gates_passed"]


def _weight_bytes(src: Path) -> int:
    model = load_onnx(src)
    inits = {i.name: i for i in model.graph.initializer}
    total = 0
    for lay in find_layers(model).values():
        for n in lay.weights:
            dims = inits[n].dims
            count = 1
            for d in dims:
                count *= d
            total += 4 * count
    return total


def compress(
    src: str | Path,
    dst: str | Path,
    *,
    plan: Plan | None = None,
    auto: AutoConfig | None = None,
    share: ShareConfig | None = None,
    calib=None,
    data=None,
    ood=None,
    validate_config=None,
    quant_config=None,
    num_samples: int = 8,
    report_dir: str | Path | None = None,
    log=lambda s: None,
) -> CompressOutcome:
    """Compress ``src`` into ``dst`` (see the module docstring).

    ``calib``: ``[N, *F]`` float32 or ``.npz`` (needed by ``plan`` and ``auto``); ``data`` /
    ``ood``: as for ``validate``. Raises :class:`ConfigError` for a bad combination and
    :class:`QuantizationError` when ``auto`` finds no plan that passes the gates.
    """
    from ..validate import ValidateConfig, validate, write_report

    src, dst = Path(src), Path(dst)
    if sum(x is not None for x in (plan, auto, share)) != 1:
        raise ConfigError("give exactly one of a plan (--plan), --auto or --share")
    if (plan is not None or auto is not None) and calib is None:
        raise ConfigError("--plan and --auto need calibration data (--calib calib.npz)")
    if auto is not None and data is None:
        raise ConfigError("--auto searches under the validate gates: give --data test.npz")
    vcfg = validate_config or ValidateConfig()

    def check(path: Path):
        return validate({"fp32": src, "compressed": path}, data, ood=ood, config=vcfg)

    trials: list[Trial] = []
    if plan is not None:
        res = deploy_plan(src, dst, plan, calib=calib, num_samples=num_samples,
                          quant_config=quant_config)  # fmt: skip
    elif share is not None:
        res, _ = deploy_share(src, dst, share)
    else:
        quick = replace(vcfg, bootstrap=0, mc_repeats=0)

        def evaluate(path: Path):
            r = validate({"fp32": src, "compressed": path}, data, ood=ood, config=quick)
            m = r.model("compressed").metrics
            return r.passed, m.get("accuracy"), m.get("ece"), failed_gates(r.gates["compressed"])

        found, trials = search(
            src, dst, auto, calib=calib, evaluate=evaluate, num_samples=num_samples,
            quant_config=quant_config, log=log,
        )  # fmt: skip
        if found is None:
            msg = no_plan_message(trials, auto)
            if report_dir is not None:
                write_failed_search(Path(report_dir), trials, msg)
            raise QuantizationError(msg)
        res = found
    report = check(res.path) if data is not None else None
    gates = None if report is None else report.gates["compressed"]
    rec = compress_record(res, weight_bytes_fp32=_weight_bytes(src), gates=gates, trials=trials)
    if report_dir is not None:
        out = Path(report_dir)
        write_compress_report(rec, out, trials)
        if res.plan is not None:
            with atomic_path(out / "plan.yaml") as tmp:
                tmp.write_text(res.plan.to_yaml())
        if report is not None:
            write_report(report, out / "validate")
    return CompressOutcome(res, rec, report, tuple(trials))
