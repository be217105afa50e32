"""Train a Bayesian CNN on the bundled digits (classes 0-7), export it, run MC inference.

Run: python examples/digits_export.py [out_dir]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from qbnn.exporters import export_model
from qbnn.pipeline.run import digits


def main(out_dir: str = "artifacts/example") -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = digits.load_split()
    t0 = time.time()
    model = digits.train(digits.bayes_cnn(), data.x_train, data.y_train, epochs=30)
    print(f"trained Bayesian CNN on {len(data.x_train)} digits in {time.time() - t0:.1f}s")
    res = export_model(
        model, torch.from_numpy(data.x_test[:8]), out / "digits_bnn.onnx", num_samples=16
    )
    print(res.fidelity.summary())
    import onnxruntime as ort

    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    feed = {"input": data.x_test, "num_samples": np.array(16)}
    _, mean, pe, _, mi = sess.run(None, feed)
    acc = float((mean.argmax(1) == data.y_test).mean())
    _, _, pe_ood, _, mi_ood = sess.run(None, {"input": data.x_ood, "num_samples": np.array(16)})
    print(
        f"test accuracy {acc:.3f} | mean predictive entropy in-dist {pe.mean():.3f} vs "
        f"OOD {pe_ood.mean():.3f} | mean MI in-dist {mi.mean():.4f} vs OOD {mi_ood.mean():.4f}"
    )
    print(f"exported -> {res.path}")


if __name__ == "__main__":
    main(*sys.argv[1:])
