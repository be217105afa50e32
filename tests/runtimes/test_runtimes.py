"""Predictor: contract fields, chunking, seeding semantics, plain models, threads, errors;
the provider registry, ``auto`` and the native OpenVINO session's calling convention."""

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
from qbnn.runtimes import (
    Predictor,
    PredictorOptions,
    SessionOptions,
    available_providers,
    known_providers,
    model_info,
    open_model,
)
from qbnn.runtimes.autorule import (
    CpuClass,
    GraphFeatures,
    GraphKind,
    auto_order,
    cpu_class,
    features,
    int8_format,
)
from qbnn.runtimes.errors import ConfigError, ModelLoadError, RuntimeInputError
from qbnn.runtimes.providers import register_provider

from tiny_models import CASES, bayes_mlp, example, plain_mlp

runner = CliRunner()
PROVIDERS = available_providers()
needs_openvino = pytest.mark.skipif("openvino" not in PROVIDERS, reason="openvino not installed")


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
    p = Predictor(sys.argv[1], provider=sys.argv[2], seed=9)
    print(b"".join(p.predict(x, 8).mean_probs.tobytes() for _ in range(2)).hex()[:128])
""")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_seed_identical_across_processes(models, provider):
    """Two processes, two calls each: identical sequences."""
    outs = {
        subprocess.run(
            [sys.executable, "-c", _PROC, str(models["bnn"]), provider],
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


@pytest.mark.parametrize("provider", PROVIDERS)
def test_concurrent_predicts_match_serial(models, provider):
    p = Predictor(models["frozen"], provider=provider)
    xs = [x_img(8, seed=i) for i in range(8)]
    serial = [p.predict(x, 5).mean_probs for x in xs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda x: p.predict(x, 5).mean_probs, xs))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_available_providers_include_cpu():
    assert "cpu" in PROVIDERS
    assert set(PROVIDERS) <= set(known_providers())
    for spec in known_providers().values():
        assert callable(spec.factory) and spec.is_available() in (True, False)


def test_a_provider_name_registers_once():
    with pytest.raises(ValueError, match="'cpu' registered twice"):
        register_provider("cpu", ep="x", package="x", rank=9, available=lambda: False)(print)


@pytest.mark.parametrize("name", ["bnn", "frozen", "plain"])
def test_auto_follows_the_rule(models, name):
    model = onnx.load(str(models[name]))
    expected = auto_order(model, model_info(model), PROVIDERS)[0]
    pred = Predictor(models[name], provider="auto")
    assert pred.provider == expected and not pred.fallbacks


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


def test_unknown_retired_and_missing_providers(models):
    known = ", ".join(["auto", *known_providers()])
    with pytest.raises(ConfigError, match=f"unknown provider 'gpu'; known providers: {known};"):
        Predictor(models["bnn"], provider="gpu")
    with pytest.raises(ConfigError, match="'ort-openvino'.*retired.*use 'openvino'.*Known prov"):
        Predictor(models["bnn"], provider="ort-openvino")
    with pytest.raises(ConfigError, match=r"'dnnl' \(DnnlExecutionProvider\) is not available"):
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
    assert f"provider: {Predictor(models['bnn']).describe()}" in r.output  # e.g. "cpu (fp32)"
    z = np.load(out)
    assert z["probs"].shape == (4, 12, 4) and z["mean_probs"].shape == (12, 4)
    assert int(z["num_samples"]) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--precision", "fp16"], "unknown precision 'fp16'; valid: fp32, bf16"),
        (["--provider", "cpu", "--precision", "bf16"], "provider 'cpu' runs fp32 only"),
    ],
)
def test_cli_predict_precision_errors(models, tmp_path, args, message):
    data = tmp_path / "in.npz"
    np.savez(data, x=x_img(2))
    out = tmp_path / "o.npz"
    r = runner.invoke(
        app, ["predict", str(models["bnn"]), "--data", str(data), "-o", str(out), *args]
    )
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


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


# ------------------------------------------------------------------ native OpenVINO session


@needs_openvino
def test_openvino_session_follows_onnx_runtimes_calling_convention(models):
    opened = open_model(models["bnn"], SessionOptions(provider="openvino", threads=1), seed=0)
    sess = opened.session
    assert sess.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert [o.name for o in sess.get_outputs()] == list(opened.info.outputs)
    feed = {"input": x_img(3), "num_samples": np.array(4, np.int64)}
    first = sess.run(None, feed)
    kept = [a.copy() for a in first]
    sess.run(None, feed)  # a later call must not overwrite returned arrays
    for a, b in zip(first, kept, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeInputError, match=r"unknown outputs \['nope'\]; the model has"):
        sess.run(["nope"], feed)
    with pytest.raises(RuntimeInputError, match=r"feed has inputs \['x'\]; the model takes"):
        sess.run(None, {"x": x_img(3)})


@needs_openvino
def test_openvino_conversion_failure_is_one_line(tmp_path):
    node = helper.make_node("Nope", ["x"], ["y"], name="n", domain="qbnn.test")
    g = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )  # fmt: skip
    path = tmp_path / "nope.onnx"
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("qbnn.test", 1)]
    onnx.save_model(helper.make_model(g, opset_imports=opsets), str(path))
    with pytest.raises(ModelLoadError, match=r"OpenVINO cannot convert .*nope.onnx: .*Nope") as e:
        Predictor(path, provider="openvino")
    assert "\n" not in str(e.value)


@needs_openvino
def test_openvino_never_gets_a_time_seeded_random_node():
    """OpenVINO seeds op_seed 0 from time(NULL) (per second): qbnn replaces seed 0.0 and gives
    unseeded nodes a seed from OS entropy."""
    from qbnn.runtimes.ovsession import _openvino_seeds

    nodes = [
        helper.make_node("RandomUniformLike", ["x"], ["a"], name="a", seed=0.0),
        helper.make_node("RandomUniformLike", ["x"], ["b"], name="b"),
        helper.make_node("RandomUniformLike", ["x"], ["c"], name="c", seed=7.0),
    ]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "abc"],
    )  # fmt: skip
    model = helper.make_model(g)
    _openvino_seeds(model)
    seeds = [[a.f for a in n.attribute if a.name == "seed"] for n in model.graph.node]
    assert seeds[0] == [2.0**24] and len(seeds[1]) == 1 and seeds[1][0] > 0 and seeds[2] == [7.0]


# ------------------------------------------------------------------ the auto rule


def _graph(*nodes, body=None) -> onnx.ModelProto:
    """Five-node-style graphs for the rule: ``nodes`` are (op, inputs, outputs) triples."""
    made = [helper.make_node(op, i, o, name=f"n{k}") for k, (op, i, o) in enumerate(nodes)]
    if body is not None:
        made.append(helper.make_node("Loop", ["", "", "x"], ["z"], name="loop", body=body))
    g = helper.make_graph(
        made, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    return helper.make_model(g)


CONV = ("Conv", ["h", "w"], ["y"])
NOISE = [("RandomUniformLike", ["x"], ["u"]), ("Mul", ["x", "u"], ["h"])]


@pytest.mark.parametrize(
    ("nodes", "kind", "int8"),
    [
        ([("Relu", ["x"], ["h"]), CONV], GraphKind.STATIC_CONV, False),
        ([*NOISE, CONV], GraphKind.NOISY_CONV, False),
        ([("Relu", ["x"], ["h"]), ("Conv", ["h", "w"], ["c"]), ("RandomUniformLike", ["c"], ["u"]),
          ("Add", ["c", "u"], ["y"])], GraphKind.STATIC_CONV, False),  # noise after the convs
        ([*NOISE, ("MatMul", ["h", "w"], ["y"])], GraphKind.DENSE, False),
        ([("QuantizeLinear", ["x", "s"], ["q"]), ("DequantizeLinear", ["q", "s"], ["h"]), CONV],
         GraphKind.STATIC_CONV, True),
        ([("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"], ["y"])],
         GraphKind.QOPERATOR, True),
        ([("DequantizeLinear", ["wq", "s"], ["w"]), ("Relu", ["x"], ["h"]), CONV],
         GraphKind.STATIC_CONV, False),  # weight-only int8 storage is not an int8 graph
    ],
)  # fmt: skip
def test_rule_reads_the_graph_kind(nodes, kind, int8):
    assert features(_graph(*nodes)) == GraphFeatures(kind, int8)


def test_rule_counts_convolutions_in_loop_bodies_as_noisy_when_noise_is_inside():
    body = helper.make_graph(
        [helper.make_node("RandomUniformLike", ["v"], ["u"], name="r"),
         helper.make_node("Conv", ["u", "w"], ["c"], name="c")],
        "body", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "iv"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, None)],
    )  # fmt: skip
    assert features(_graph(("Relu", ["x"], ["y"]), body=body)).kind == GraphKind.NOISY_CONV


@pytest.mark.parametrize(
    ("flags", "cls"),
    [("fpu avx2 avx512_vnni", CpuClass.VNNI), ("avx2 amx_int8", CpuClass.VNNI),
     ("fpu avx avx2 fma", CpuClass.PLAIN), (None, CpuClass.PLAIN)],
)  # fmt: skip
def test_cpu_class_from_flags(tmp_path, flags, cls):
    path = tmp_path / "cpuinfo"
    if flags is not None:
        path.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_class(str(path)) == cls


@pytest.mark.parametrize(
    ("cls", "int8", "first"),
    [(CpuClass.VNNI, True, "openvino"), (CpuClass.VNNI, False, "cpu"),
     (CpuClass.PLAIN, True, "openvino"), (CpuClass.PLAIN, False, "cpu")],
)  # fmt: skip
def test_rule_prefers_openvino_only_for_int8_qdq_convs(monkeypatch, cls, int8, first):
    """benchmarks/results/provider_rule.md: int8 QDQ convolutional graphs run 1.21-1.62x faster
    on OpenVINO; fp32 and dense graphs stay on the CPU EP. Also the int8 format quantize picks
    with ``format: auto``: QDQ exactly where the int8 graph would run on OpenVINO."""
    import qbnn.runtimes.autorule as rule

    monkeypatch.setattr(rule, "cpu_class", lambda: cls)
    q = [("QuantizeLinear", ["x", "s"], ["q"]), ("DequantizeLinear", ["q", "s"], ["h"])]
    model = _graph(*(q if int8 else [("Relu", ["x"], ["h"])]), CONV)
    assert auto_order(model, None, ["cpu", "openvino"])[0] == first
    assert auto_order(model, None, ["cpu"]) == ["cpu"]
    assert auto_order(_graph(*NOISE, CONV), None, ["openvino", "cpu"]) == ["cpu", "openvino"]
    fp32 = _graph(("Relu", ["x"], ["h"]), CONV)
    assert int8_format(fp32, ["cpu", "openvino"]) == "qdq"
    noisy_q = _graph(
        ("RandomUniformLike", ["x"], ["u"]), ("Mul", ["x", "u"], ["n"]),
        ("QuantizeLinear", ["n", "s"], ["q"]), ("DequantizeLinear", ["q", "s"], ["h"]), CONV,
    )  # fmt: skip
    assert auto_order(noisy_q, None, ["cpu", "openvino"])[0] == "openvino"  # lrt QDQ: 1.31-1.36x
    assert int8_format(fp32, ["cpu"]) == "qoperator"
