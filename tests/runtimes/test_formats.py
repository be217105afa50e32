"""Contract format 2 (issue 24): ``num_samples`` is a plain int64 scalar graph input whose
default is metadata, so every runtime reads it the same way; format-1 files (an initializer of
the same name held the default) still load and run, as format 2.

The format-1 files are made here from format-2 exports the way qbnn 0.1's exporter wrote them
(initializer ``num_samples`` = the default, ``qbnn.format_version`` = ``1``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qbnn.exporters import export
from qbnn.runtimes import ContractMeta, Predictor, available_providers
from qbnn.runtimes.contract import FORMAT_VERSION, NUM_SAMPLES
from qbnn.runtimes.formats import upgrade
from qbnn.runtimes.loading import load_onnx, set_metadata

from tiny_models import CASES, example

PROVIDERS = [p for p in ("cpu", "openvino") if p in available_providers()]
ORT_WARNING = "appears in graph inputs"  # ONNX Runtime's notice for an initializer-backed input


def as_format_1(src, dst, *, keep_default_meta: bool = True) -> None:
    """Write ``src`` (format 2) as qbnn's format 1: ``num_samples`` backed by an initializer
    holding the default; ``keep_default_meta=False`` also drops ``default_samples``."""
    model = onnx.load(str(src))
    meta = ContractMeta.from_model(model)
    value = np.array(meta.default_samples, dtype=np.int64)
    model.graph.initializer.append(numpy_helper.from_array(value, NUM_SAMPLES))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(ContractMeta(format_version="1").to_props())
    if not keep_default_meta:
        props = {k: v for k, v in props.items() if not k.endswith(".default_samples")}
    del model.metadata_props[:]
    set_metadata(model, props)
    onnx.save(model, str(dst))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """MC dropout (sampled, seed 3, default S = 5) and a 3-member ensemble (exact, S = 4), each
    in format 2 (as exported) and format 1."""
    d = tmp_path_factory.mktemp("formats")
    out = {}
    for name, case, s in (("dropout", "mcdropout-mlp", 5), ("ensemble", "ensemble-mlp", 4)):
        fac, shape = CASES[case]
        new = d / f"{name}.onnx"
        export(fac(), example(shape), new, num_samples=s, seed=3, verify=False)
        old = d / f"{name}.v1.onnx"
        as_format_1(new, old)
        out[name], out[f"{name}.v1"] = new, old
    return out


def _load_log(path, capfd) -> str:
    """What plain ONNX Runtime prints while loading ``path`` at its default severity
    (warnings and above)."""
    so = ort.SessionOptions()
    so.log_severity_level = 2
    capfd.readouterr()
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return capfd.readouterr().err


@pytest.mark.parametrize("name", ["dropout", "ensemble"])
def test_exported_file_declares_a_plain_input_and_loads_quietly(files, name, capfd):
    model = onnx.load(str(files[name]))
    inputs = {i.name: i for i in model.graph.input}
    assert list(inputs) == ["input", NUM_SAMPLES]
    s = inputs[NUM_SAMPLES].type.tensor_type
    assert s.elem_type == TensorProto.INT64 and len(s.shape.dim) == 0  # an int64 scalar
    assert not set(inputs) & {t.name for t in model.graph.initializer}
    meta = ContractMeta.from_model(model)
    assert meta.format_version == FORMAT_VERSION == "2"
    assert meta.default_samples == (5 if name == "dropout" else 4)
    sess = ort.InferenceSession(str(files[name]), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input", NUM_SAMPLES]
    assert sess.get_overridable_initializers() == []
    assert ORT_WARNING not in _load_log(files[name], capfd)
    # the capture sees the warning where there is one: the same graph in format 1
    assert ORT_WARNING in _load_log(files[f"{name}.v1"], capfd)


def test_upgrade_rewrites_format_1_in_place(files, tmp_path):
    model = onnx.load(str(files["dropout.v1"]))
    assert ContractMeta.from_model(model).format_version == "1"
    assert upgrade(model) is True
    assert NUM_SAMPLES not in {t.name for t in model.graph.initializer}
    assert [i.name for i in model.graph.input] == ["input", NUM_SAMPLES]
    meta = ContractMeta.from_model(model)
    assert (meta.format_version, meta.default_samples) == ("2", 5)
    assert upgrade(model) is False  # format 2 is left alone
    # a format-1 file without default_samples: the initializer's value becomes it
    as_format_1(files["dropout"], tmp_path / "bare.onnx", keep_default_meta=False)
    bare = onnx.load(str(tmp_path / "bare.onnx"))
    assert ContractMeta.from_model(bare).default_samples is None
    upgrade(bare)
    assert ContractMeta.from_model(bare).default_samples == 5
    # load_onnx upgrades: every stage reads one form
    loaded = load_onnx(files["ensemble.v1"])
    assert NUM_SAMPLES not in {t.name for t in loaded.graph.initializer}


def test_upgrade_leaves_plain_models_alone():
    """A plain ONNX model (no qbnn metadata) keeps an initializer named num_samples."""
    graph = helper.make_graph(
        [helper.make_node("Cast", [NUM_SAMPLES], ["y"], to=TensorProto.FLOAT)],
        "plain",
        [helper.make_tensor_value_info(NUM_SAMPLES, TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array(7, np.int64), NUM_SAMPLES)],
    )
    model = helper.make_model(graph)
    assert upgrade(model) is False
    assert [t.name for t in model.graph.initializer] == [NUM_SAMPLES]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("name", ["dropout", "ensemble"])
def test_format_1_file_runs_in_predictor_as_format_2(files, name, provider):
    """A format-1 file gives the Predictor exactly what its format-2 twin gives: the same
    default S, the same rows for a fed S, and (seeded) the same draws, bit for bit."""
    x = example(CASES["mcdropout-mlp"][1], batch=7).numpy()
    old = Predictor(files[f"{name}.v1"], provider=provider, seed=0)
    new = Predictor(files[name], provider=provider, seed=0)
    assert old.info.takes_num_samples and old.info.default_samples == new.info.default_samples
    for s in (None, 3, 40):
        a = old.predict(x, s, return_samples=True)
        b = new.predict(x, s, return_samples=True)
        assert a.num_samples == b.num_samples == (s or new.info.default_samples)
        np.testing.assert_array_equal(a.probs, b.probs)
        np.testing.assert_array_equal(a.mean_probs, b.mean_probs)
        np.testing.assert_array_equal(a.mutual_information, b.mutual_information)


def test_quantize_reads_format_1_and_writes_format_2(files, tmp_path):
    """INC calibrates through the plain int64 scalar input (the reader feeds it) and keeps it;
    a format-1 source comes out as format 2."""
    from qbnn.pipeline.quantize import QuantConfig, quantize_model

    x = example(CASES["mcdropout-mlp"][1], batch=64, seed=5).numpy()
    res = quantize_model(files["dropout.v1"], tmp_path / "q.onnx", QuantConfig(), calib=x)
    model = onnx.load(str(res.path))
    assert [i.name for i in model.graph.input] == ["input", NUM_SAMPLES]
    assert NUM_SAMPLES not in {t.name for t in model.graph.initializer}
    meta = ContractMeta.from_model(model)
    assert (meta.format_version, meta.default_samples) == ("2", 5)
    pred = Predictor(res.path, provider="cpu", seed=0)
    assert pred.predict(x[:4]).num_samples == 5
    assert pred.predict(x[:4], 40, return_samples=True).probs.shape == (40, 4, 3)
