"""Record ``qbnn demo`` from scratch into ``benchmarks/results/demo.md`` (with its report).

Runs the console script in a fresh artifacts root, times it, and writes the date, versions,
machine load, the full console output and the validation report, so the README's quality
numbers are quoted from a recorded run. Usage: python benchmarks/demo_record.py
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    qbnn = Path(sys.executable).with_name("qbnn")
    with tempfile.TemporaryDirectory(prefix="qbnn-demo-") as root:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [str(qbnn), "demo", "--out", root], capture_output=True, text=True,
            env={**os.environ, "COLUMNS": "140"},
        )  # fmt: skip
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"qbnn demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        report = next(Path(root).rglob("report.md"), None)
        report_text = report.read_text() if report else "(no report.md found)"
    versions = ", ".join(
        f"{p} {version(p)}" for p in ("torch", "onnxruntime", "openvino", "onnx-neural-compressor")
    )
    out = proc.stdout.replace(root, "<artifacts>")
    lines = [
        "# `qbnn demo` on this machine",
        "",
        f"Recorded {time.strftime('%Y-%m-%d')} by `benchmarks/demo_record.py` "
        f"({platform.machine()}, {os.cpu_count()} cores; {versions}). Full run from scratch "
        f"(training included): {wall:.1f} s wall time; load average (1 min) at the end "
        f"{os.getloadavg()[0]:.2f}. The demo is deterministic run to run (fixed seeds); "
        "images/s and wall time vary with machine load.",
        "",
        "```",
        out.rstrip(),
        "```",
        "",
        "## Validation report (report.md of that run)",
        "",
        report_text.replace("# qbnn validate report", "### qbnn validate report", 1),
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "demo.md").write_text("\n".join(lines) + "\n")
    print(out)
    print(f"-> {RESULTS / 'demo.md'} ({wall:.1f} s)")
    shutil.rmtree(Path(root), ignore_errors=True)


if __name__ == "__main__":
    main()
