"""Predictor: contract fields, chunking, seeding semantics, plain models, threads, errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from qbnn.exporters import export
from qbnn.pipeline.cli import app
from qbnn.runtimes import Predictor, PredictorOptions, available_providers, known_providers
from qbnn.runtimes.errors import ConfigError, ModelLoadError, RuntimeInputError

from tiny_models import CASES, bayes_mlp, example, plain_mlp

runner = CliRunner()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("rt")
    fac, shape = CASES["meanfield-cnn"]
    out = {
        "bnn": export(fac(), example(shape), d / "bnn.onnx", num_samples=6, verify=False),
        "frozen": export(
            fac(), example(shape), d / "frozen.onnx", sampling="frozen:5", verify=False
        ),
    }
    plain = d / "plain.onnx"
    torch.onnx.export(
        plain_mlp().eval(),
        (example((6,)),),
        str(plain),
        dynamo=True,
        input_names=["features"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("b")}},
    )
    out["plain"] = plain
    return out


def x_img(n=10, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def test_prediction_fields_and_shapes(models):
    p = Predictor(models["bnn"], seed=0)
    r = p.predict(x_img(), 7, return_samples=True)
    assert r.num_samples == 7 and r.probs.shape == (7, 10, 4)
    assert r.mean_probs.shape == (10, 4) and r.mutual_information.shape == (10,)
    np.testing.assert_allclose(r.mean_probs, r.probs.mean(0), atol=1e-6)
    assert p.predict(x_img()).num_samples == 6  # export-time default
    assert p.predict(x_img()).probs is None


def test_chunking_bounds_rows_and_keeps_results(models):
    """frozen:K is deterministic per sample index, so chunked == unchunked exactly."""
    full = Predictor(models["frozen"]).predict(x_img(23), 5)
    small = Predictor(models["frozen"], options=PredictorOptions(max_rows=10))
    seen = []
    part = small.predict(x_img(23), 5, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 23), (4, 23)] + [(i, 23) for i in range(6, 23, 2)] + [(23, 23)]
    np.testing.assert_allclose(part.mean_probs, full.mean_probs, atol=1e-6)


def test_seed_gives_identical_outputs_across_sessions(models):
    a = Predictor(models["bnn"], seed=5).predict(x_img(), 8).mean_probs
    b = Predictor(models["bnn"], seed=5).predict(x_img(), 8).mean_probs
    c = Predictor(models["bnn"], seed=6).predict(x_img(), 8).mean_probs
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_without_seed_every_call_and_session_is_fresh(models):
    p1 = Predictor(models["bnn"])
    a, b = p1.predict(x_img(), 8).mean_probs, p1.predict(x_img(), 8).mean_probs
    c = Predictor(models["bnn"]).predict(x_img(), 8).mean_probs
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, c), "a second session must not replay the first"


_PROC = textwrap.dedent("""
    import sys, numpy as np
    from qbnn.runtimes import Predictor
    x = np.linspace(-1, 1, 10 * 64, dtype=np.float32).reshape(10, 1, 8, 8)
    print(Predictor(sys.argv[1], seed=9).predict(x, 8).mean_probs.tobytes().hex()[:64])
""")


def test_seed_identical_across_processes(models):
    outs = {
        subprocess.run(
            [sys.executable, "-c", _PROC, str(models["bnn"])],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for _ in range(2)
    }
    assert len(outs) == 1


def test_plain_model_is_s_equals_one(models):
    x = example((6,), batch=5).numpy()
    r = Predictor(models["plain"]).predict(x, return_samples=True)
    with torch.no_grad():
        ref = torch.softmax(plain_mlp().eval()(torch.from_numpy(x)), -1).numpy()
    assert r.num_samples == 1 and r.probs.shape == (1, 5, 3)
    np.testing.assert_allclose(r.mean_probs, ref, atol=1e-5)
    np.testing.assert_allclose(r.mutual_information, 0.0, atol=1e-6)
    with pytest.raises(RuntimeInputError, match="no num_samples input"):
        Predictor(models["plain"]).predict(x, 8)


def test_plain_model_output_as_probabilities(models):
    x = example((6,), batch=2).numpy()
    opts = PredictorOptions(plain_output="probs")
    r = Predictor(models["plain"], options=opts).predict(x)
    with torch.no_grad():
        np.testing.assert_allclose(r.mean_probs, plain_mlp().eval()(torch.from_numpy(x)), atol=1e-5)


def test_concurrent_predicts_match_serial(models):
    p = Predictor(models["frozen"])
    xs = [x_img(8, seed=i) for i in range(8)]
    serial = [p.predict(x, 5).mean_probs for x in xs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda x: p.predict(x, 5).mean_probs, xs))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_available_providers_include_cpu():
    assert "cpu" in available_providers()
    assert set(available_providers()) <= set(known_providers())
    assert Predictor.__init__  # registry names are what auto chooses from


def test_auto_picks_best_available(models):
    assert Predictor(models["bnn"], provider="auto").provider == available_providers()[0]


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((4, 8, 8), np.float32), r"shape \[4, 8, 8\] does not match .*\[B, 1, 8, 8\]"),
        (np.zeros((4, 1, 8, 9), np.float32), r"does not match the model's \[B, 1, 8, 8\]"),
        (np.zeros((0, 1, 8, 8), np.float32), "does not match"),
        (np.zeros((4, 1, 8, 8), np.int64), "dtype must be float32, got int64"),
    ],
)
def test_bad_inputs(models, x, match):
    with pytest.raises(RuntimeInputError, match=match):
        Predictor(models["bnn"]).predict(x)


def test_nonfinite_inputs_rejected_with_count_and_index(models):
    x = x_img(3)
    x[1, 0, 2, 3] = np.nan
    x[2, 0, 0, 0] = np.inf
    with pytest.raises(
        RuntimeInputError, match=r"2 NaN/inf values \(first at index \[1, 0, 2, 3\]"
    ):
        Predictor(models["bnn"]).predict(x)
    opts = PredictorOptions(allow_nonfinite=True)
    assert Predictor(models["bnn"], options=opts).predict(x).mean_probs.shape == (3, 4)


@pytest.mark.parametrize("s", [0, -1, 5000])
def test_num_samples_bounds(models, s):
    with pytest.raises(RuntimeInputError, match=r"num_samples must be in \[1, 4096\]"):
        Predictor(models["bnn"]).predict(x_img(), s)


def test_missing_and_non_onnx_files(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        Predictor(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a protobuf")
    with pytest.raises(ModelLoadError, match="is not an ONNX model"):
        Predictor(bad)


def test_unknown_and_missing_providers(models):
    with pytest.raises(ConfigError, match="unknown provider 'gpu'; known providers: auto, dnnl"):
        Predictor(models["bnn"], provider="gpu")
    with pytest.raises(ConfigError, match="DnnlExecutionProvider.*not in the installed"):
        Predictor(models["bnn"], provider="dnnl")


def test_external_data_outside_model_folder_is_refused(tmp_path):
    w = helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0])
    w.data_location = TensorProto.EXTERNAL
    del w.float_data[:]
    w.external_data.add(key="location", value="../../etc/passwd")
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"], name="add")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [w],
    )
    path = tmp_path / "evil.onnx"
    onnx.save_model(helper.make_model(g), str(path))
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        Predictor(path)


# ------------------------------------------------------------------ CLI


def test_cli_predict(models, tmp_path):
    data = tmp_path / "in.npz"
    np.savez(data, x=x_img(12))
    out = tmp_path / "pred.npz"
    r = runner.invoke(
        app,
        [
            "predict",
            str(models["bnn"]),
            "--data",
            str(data),
            "--samples",
            "4",
            "--seed",
            "1",
            "--save-samples",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    z = np.load(out)
    assert z["probs"].shape == (4, 12, 4) and z["mean_probs"].shape == (12, 4)
    assert int(z["num_samples"]) == 4


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("nox", "lacks key(s) ['x']"),
        ("nan", "NaN/inf values"),
        ("missing", "does not exist"),
    ],
)
def test_cli_predict_errors(models, tmp_path, setup, message):
    data = tmp_path / "in.npz"
    if setup == "nox":
        np.savez(data, y=np.zeros(3))
    elif setup == "nan":
        x = x_img(2)
        x[0, 0, 0, 0] = np.nan
        np.savez(data, x=x)
    r = runner.invoke(
        app, ["predict", str(models["bnn"]), "--data", str(data), "-o", str(tmp_path / "o.npz")]
    )
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o.npz").exists()


def test_session_config_entries_pass_through(models):
    from qbnn.runtimes import SessionOptions

    spin_off = {"session.intra_op.allow_spinning": "0"}
    opts = PredictorOptions(session=SessionOptions(config_entries=spin_off, threads=1))
    a = Predictor(models["bnn"], seed=3, options=opts).predict(x_img(), 4).mean_probs
    b = Predictor(models["bnn"], seed=3).predict(x_img(), 4).mean_probs
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        SessionOptions(threads=0)


def test_reseed_follows_the_exporters_node_names_not_graph_order(tmp_path):
    """A quantizer may reorder nodes; each ``qbnn/random/<i>`` keeps its seed (paired noise)."""
    import onnx

    from qbnn.runtimes.seeding import random_nodes, reseed

    path = export(bayes_mlp(), example((6,)), tmp_path / "w.onnx", sampling="weight", verify=False)
    model = onnx.load(str(path))
    shuffled = onnx.load(str(path))
    nodes = list(shuffled.graph.node)
    rand = [i for i, n in enumerate(nodes) if n.op_type.startswith("Random")]
    assert len(rand) >= 2
    nodes[rand[0]], nodes[rand[-1]] = nodes[rand[-1]], nodes[rand[0]]
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes)

    def seeds(m):
        reseed(m, 7)
        return {n.name: [a.f for a in n.attribute if a.name == "seed"][0] for n in random_nodes(m)}

    a, b = seeds(model), seeds(shuffled)
    assert all(name.startswith("qbnn/random/") for name in a)
    assert a == b and len(set(a.values())) == len(a)
