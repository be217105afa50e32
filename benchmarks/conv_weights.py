"""Why the sample loop needs int8: ONNX Runtime's Conv with a run-time weight vs a constant one.

One 3x3 convolution (32 -> 32 channels, 16x16, batch 32), 2 threads, median of 30 calls each,
interleaved: fp32 Conv with the weight as an initializer (prepacked, NCHWc kernels) or as a
graph input (what a per-sample weight is), and QLinearConv with an int8 initializer or an int8
graph input (the sample loop's int8 form, 7-bit weights). Also OpenVINO (f32) for the fp32 pair.
Usage: python benchmarks/conv_weights.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RESULTS = Path(__file__).parent / "results"
B, C, OUT, H = 32, 32, 32, 16


def _model(kind: str, w: np.ndarray) -> onnx.ModelProto:
    inits, inputs = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, C, H, H])]
    if kind.startswith("fp32"):
        if kind == "fp32_const":
            inits.append(numpy_helper.from_array(w, "w"))
        else:
            inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)))
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    else:
        ws = (np.abs(w).reshape(OUT, -1).max(1) / 63).astype(np.float32)
        inits += [
            numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
            numpy_helper.from_array(np.array(128, np.uint8), "xz"),
            numpy_helper.from_array(ws, "ws"),
            numpy_helper.from_array(np.array(0, np.int8), "wz"),
            numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
            numpy_helper.from_array(np.array(128, np.uint8), "yz"),
        ]
        wq = np.round(w / ws[:, None, None, None]).astype(np.int8)
        if kind == "int8_const":
            inits.append(numpy_helper.from_array(wq, "wq"))
        else:
            inputs.append(helper.make_tensor_value_info("wq", TensorProto.INT8, list(w.shape)))
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
            helper.make_node(
                "QLinearConv",
                ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"],
                ["yq"],
                pads=[1, 1, 1, 1],
            ),  # fmt: skip
            helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
        ]
    out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [B, OUT, H, H])]
    graph = helper.make_graph(nodes, "conv", inputs, out, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, C, H, H)).astype(np.float32)
    w = (rng.standard_normal((OUT, C, 3, 3)) * 0.1).astype(np.float32)
    wq = np.round(w / (np.abs(w).reshape(OUT, -1).max(1) / 63)[:, None, None, None]).astype(np.int8)
    feeds = {"fp32_const": {"x": x}, "fp32_run": {"x": x, "w": w},
             "int8_const": {"x": x}, "int8_run": {"x": x, "wq": wq}}  # fmt: skip
    runners = {}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for kind, feed in feeds.items():
        sess = ort.InferenceSession(_model(kind, w).SerializeToString(), opts)
        runners[f"ort {kind}"] = (lambda s, f: lambda: s.run(None, f))(sess, feed)
    import openvino as ov

    core = ov.Core()
    with tempfile.TemporaryDirectory() as d:
        for kind in ("fp32_const", "fp32_run"):
            path = Path(d) / f"{kind}.onnx"
            onnx.save(_model(kind, w), str(path))
            cm = core.compile_model(
                core.read_model(str(path)), "CPU",
                {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": "2"},
            )  # fmt: skip
            req = cm.create_infer_request()
            runners[f"openvino {kind}"] = (lambda r, f: lambda: r.infer(f))(req, feeds[kind])
    times = {k: [] for k in runners}
    for fn in runners.values():
        fn()
    names = list(runners)
    for r in range(30):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runners[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    lines = [
        f"# Conv with a run-time vs a constant weight ({time.strftime('%Y-%m-%d')})",
        "",
        f"onnxruntime {ort.__version__}, openvino {ov.__version__}, 2 threads; one 3x3 conv "
        f"{C}->{OUT} channels, {H}x{H}, batch {B}; median of 30 interleaved calls. Load average "
        f"(1 min) at the end: {os.getloadavg()[0]:.2f}.",
        "",
        "| contender | median ms | vs ort fp32_const |",
        "|---|---|---|",
    ]
    for k, v in med.items():
        lines.append(f"| {k} | {v:.2f} | {v / med['ort fp32_const']:.2f}x |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "conv_weights.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
