"""Where the time goes: ONNX Runtime's profiler, per-op time of Bayesian ResNet-20, batch 32,
S = 8, fp32 vs int8, per sampling mode (CPU EP, 2 threads).
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path

import onnxruntime as ort
import zoo

from qbnn.runtimes.loading import load_onnx
from qbnn.runtimes.seeding import reseed

CACHE = Path("/tmp/qbnn-bench-models")
RUNS = 5
#: control-flow ops whose kernel time contains their body's op times (reported apart)
CONTAINERS = frozenset({"Scan", "Loop", "If"})


def profile(path: Path) -> tuple[float, list[tuple[str, float]], float]:
    """``(total ms of non-container ops, top 8 ops, container ms)`` per run; a Scan's time
    includes its body's ops, so it is kept out of the total and reported apart (its excess
    over the body's op times is the loop's own overhead: slicing, output stacking)."""
    model = load_onnx(path)
    reseed(model, 0)
    so = ort.SessionOptions()
    so.enable_profiling = True
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    so.profile_file_prefix = f"/tmp/qbnn-prof-{path.stem}"
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = {"input": zoo.inputs("resnet20", 32)}
    if any(i.name == "num_samples" for i in model.graph.input):
        import numpy as np

        feed["num_samples"] = np.array(8, dtype=np.int64)
    sess.run(None, feed)
    for _ in range(RUNS):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    agg: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            agg[e["args"]["op_name"]] += e["dur"] / 1e3 / (RUNS + 1)
    box = sum(agg.pop(op, 0.0) for op in CONTAINERS)
    return sum(agg.values()), agg.most_common(8), box


def main() -> None:
    lines = [
        f"# Per-op profile, Bayesian ResNet-20, batch 32, S = 8 ({time.strftime('%Y-%m-%d')})",
        "",
        f"onnxruntime {ort.__version__}, CPU EP, 2 threads; ms per run (kernel time). Op times "
        "include the ops inside the sample loop's Scan body; the Scan node's own time (which "
        "contains them) is reported apart as the loop total.",
        "",
    ]
    for mode in ("weight", "lrt", "frozen:8"):
        fp32 = zoo.exported("resnet20", mode, CACHE)
        for label, path in (("fp32", fp32), ("int8", zoo.quantized(fp32, "resnet20"))):
            total, top, box = profile(path)
            ops = ", ".join(f"{op} {ms:.1f} ({100 * ms / total:.0f}%)" for op, ms in top)
            loop = f" (Scan loop total {box:.1f} ms)" if box else ""
            lines.append(f"- **{mode} {label}**: {total:.1f} ms{loop} — {ops}")
            print(lines[-1], flush=True)
    out = Path(__file__).parent / "results" / "profile_modes.md"
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
