"""The ``bench`` stage: latency and throughput of compiled models over a (batch, S) grid.

``bench(models, BenchConfig(...)) -> BenchResult``; ``write_bench`` / ``write_json`` /
``save_plot`` / ``print_tables`` render it. Modules: ``config``, ``runner`` (the timing loop),
``probe`` (peak memory in fresh processes), ``environment`` (CPU, versions, file sizes),
``result`` (the data and ``bench.json``) and ``report`` (tables, plot, files).
"""

from .config import BenchConfig
from .report import check_output, print_tables, save_plot, write_bench, write_json
from .result import BenchResult, Cell, ModelStats, Ratio
from .runner import bench, model_names, schedule

__all__ = [
    "BenchConfig",
    "BenchResult",
    "Cell",
    "ModelStats",
    "Ratio",
    "bench",
    "check_output",
    "model_names",
    "print_tables",
    "save_plot",
    "schedule",
    "write_bench",
    "write_json",
]
