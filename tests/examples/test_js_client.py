"""A JS client of the contract (issue 24): ``examples/js/predict.mjs``, the snippet the README's
"Using the graph from C++/C#/Java/JS" section shows, run by Node.js with onnxruntime-node (no
qbnn, no Python) against the :class:`~qbnn.runtimes.Predictor`.

onnxruntime-node is installed from the npm registry once, pinned, into ``build/js/`` (ignored
by git) and reused; ``ONNXRUNTIME_NODE_INSTALL=skip`` stops its install script from
downloading CUDA files (it fails offline, and the CPU binaries are in the npm tarball). The
tests are skipped only where ``node`` or ``npm`` is missing; CI has both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qbnn.exporters import export
from qbnn.runtimes import Predictor

from tiny_models import CASES, example

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "js" / "predict.mjs"
DRIVER = Path(__file__).with_name("js_check.mjs")
JS_DIR = REPO / "build" / "js"
ORT_NODE = "1.30.0"  # onnxruntime-node, pinned
OUTPUTS = ("probs", "mean_probs", "predictive_entropy", "expected_entropy", "mutual_information")
S_BIG = 4096  # samples per side of the statistical comparison
Z_MAX = 4.5  # max |z| over the 12 mean-probability elements (P(|Z| > 4.5) = 7e-6 each)


def test_readme_shows_the_script_the_test_runs():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```js\n(.*?)```", readme, flags=re.S)
    assert SCRIPT.read_text() in blocks, "README's JS block must equal examples/js/predict.mjs"
    assert f"onnxruntime-node@{ORT_NODE}" in SCRIPT.read_text()


def _node_modules() -> Path:
    """``build/js`` with onnxruntime-node ``ORT_NODE`` installed (reused when present)."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not on PATH (the JS client test needs Node.js >= 18)")
    pkg = JS_DIR / "node_modules" / "onnxruntime-node" / "package.json"
    if not (pkg.is_file() and json.loads(pkg.read_text())["version"] == ORT_NODE):
        JS_DIR.mkdir(parents=True, exist_ok=True)
        (JS_DIR / "package.json").write_text('{"private": true, "type": "module"}\n')
        cmd = ["npm", "install", "--no-audit", "--no-fund", f"onnxruntime-node@{ORT_NODE}"]
        env = {**os.environ, "ONNXRUNTIME_NODE_INSTALL": "skip"}
        done = subprocess.run(cmd, cwd=JS_DIR, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(cmd)} failed in {JS_DIR}:\n{done.stderr[-2000:]}"
    for src in (SCRIPT, DRIVER):  # beside node_modules, so that the import resolves
        shutil.copyfile(src, JS_DIR / src.name)
    return JS_DIR


@pytest.fixture(scope="module")
def node_runs(tmp_path_factory):
    """Exports a 3-member ensemble (exact) and an MC-dropout MLP (sampled, seed 3), runs
    predict.mjs on both at S = 3 and 40 (and the dropout at S = 4096), and returns
    ``(models, x, {(model, S): {output: array}}, {(model, S): inputNames})``."""
    js = _node_modules()
    d = tmp_path_factory.mktemp("js")
    models = {}
    for name, case in (("ensemble", "ensemble-mlp"), ("dropout", "mcdropout-mlp")):
        fac, shape = CASES[case]
        models[name] = export(fac(), example(shape), d / f"{name}.onnx", seed=3, verify=False)
    x = example(CASES["mcdropout-mlp"][1], batch=4).numpy()  # [4, 6] float32
    x.tofile(d / "x.bin")
    runs = [(m, s) for m in models for s in (3, 40)] + [("dropout", S_BIG)]
    jobs = [
        {"model": str(models[m]), "x": str(d / "x.bin"), "shape": list(x.shape), "samples": s,
         "out": str(d / f"{m}.{s}")}
        for m, s in runs
    ]  # fmt: skip
    (d / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run(
        ["node", "js_check.mjs", str(d / "jobs.json")],
        cwd=js, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out, names = {}, {}
    for m, s in runs:
        info = json.loads((d / f"{m}.{s}.json").read_text())
        out[m, s] = {
            k: np.fromfile(d / f"{m}.{s}.{k}.bin", np.float32).reshape(dims)
            for k, dims in info["dims"].items()
        }
        names[m, s] = info["inputNames"]
    return models, x, out, names


def test_num_samples_is_a_node_input_and_sets_the_rows(node_runs):
    """onnxruntime-node lists ``num_samples`` and honours it (format 1: it listed ``input``
    only and returned the default S rows for any fed value)."""
    models, x, out, names = node_runs
    for (m, s), res in out.items():
        assert names[m, s] == ["input", "num_samples"]
        assert sorted(res) == sorted(OUTPUTS)
        assert res["probs"].shape == (s, len(x), 3), (m, s)


@pytest.mark.parametrize("samples", [3, 40])
def test_exact_graph_equals_the_predictor_bit_for_bit(node_runs, samples):
    models, x, out, _ = node_runs
    want = Predictor(models["ensemble"], provider="cpu").predict(x, samples, return_samples=True)
    got = out["ensemble", samples]
    for k in OUTPUTS:
        np.testing.assert_array_equal(got[k], getattr(want, k), err_msg=k)


def test_sampled_graph_agrees_with_the_predictor_statistically(node_runs):
    """Mean of S_BIG per-sample probabilities: Node (the file's seed 3) vs the Predictor
    (seed 123), ``z = |diff| / sqrt(sd_node^2 / N + sd_py^2 / N)`` per element, max below
    ``Z_MAX``."""
    models, x, out, _ = node_runs
    node = out["dropout", S_BIG]["probs"].astype(np.float64)  # [S, B, C]
    py = Predictor(models["dropout"], provider="cpu", seed=123)
    ref = py.predict(x, S_BIG, return_samples=True).probs.astype(np.float64)
    assert node.std(0).min() > 1e-3, "the dropout model must be visibly stochastic"
    se = np.sqrt((node.var(0) + ref.var(0)) / S_BIG)
    z = np.abs(node.mean(0) - ref.mean(0)) / se
    assert z.max() < Z_MAX, z
    np.testing.assert_allclose(out["dropout", S_BIG]["mean_probs"], node.mean(0), atol=1e-5)
    small = out["dropout", 40]["probs"]
    assert len({row.tobytes() for row in small}) == 40, "every sample row is a fresh draw"
