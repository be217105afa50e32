"""The ``validate`` stage: compare models side by side on labelled data and apply gates.

``validate(models, data, ood=..., baseline=..., config=ValidateConfig(...)) -> Report``;
``write_report(report, out_dir)`` writes ``report.json``, ``report.md`` and the plots.
Modules: ``metrics`` (numpy-only definitions), ``evaluation`` (metrics of one model's outputs),
``gates``, ``inputs`` (data and model checks), ``report``, ``plots``, ``config`` and
``validator`` (the flow).
"""

from . import metrics
from .config import ValidateConfig
from .gates import GateResult, Gates, default_gates_path, load_gates
from .report import ModelResult, Report, gate_table, summary_table, write_report
from .validator import validate

__all__ = [
    "GateResult",
    "Gates",
    "ModelResult",
    "Report",
    "ValidateConfig",
    "default_gates_path",
    "gate_table",
    "load_gates",
    "metrics",
    "summary_table",
    "validate",
    "write_report",
]
