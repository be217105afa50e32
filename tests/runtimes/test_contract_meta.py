"""``ContractMeta``: the one typed record of the contract's ``qbnn.*`` metadata (issue 20).

One field per ``MetaKey``, a lossless round trip through ``metadata_props``, booleans written
``true``/``false`` with older exports' ``1``/``0`` still read, one-line errors naming a malformed
key, and no ``"qbnn.<key>"`` literal anywhere in the source tree outside ``runtimes/contract.py``.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

import qbnn.runtimes.contract as contract_module
from qbnn.runtimes import model_info
from qbnn.runtimes.contract import META_PREFIX, ContractMeta, MetaKey, Task
from qbnn.runtimes.errors import ConfigError, ModelLoadError
from qbnn.runtimes.loading import set_metadata

FULL = ContractMeta(
    format_version="1", task=Task.REGRESSION, posterior="meanfield", sampling="lrt",
    default_samples=8, max_samples=64, num_classes=3, output_dim=2, precision="int8",
    source="bayesian-torch", version="0.1.0", seed=7, input_shape=(1, 8, 8),
    heteroscedastic=True, noise_variance=0.25, head="log_probs", multilabel=False,
    output_shape=(3, 8, 8),
    quantization={"backend": "inc", "kept_fp32": ["a"]}, compression={"mode": "plan"},
)  # fmt: skip


def _model(props: dict[str, str]) -> onnx.ModelProto:
    """A one-node graph ``input [B, 6] -> Identity`` carrying ``props`` as metadata."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["pred_mean"], name="id")], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["B", 6])],
        [helper.make_tensor_value_info("pred_mean", TensorProto.FLOAT, ["B", 6])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    set_metadata(model, props)
    return model


def test_one_field_per_key_and_lossless_round_trip():
    props = FULL.to_props()
    assert set(props) == {k.value for k in MetaKey}  # every key has a field, every field a key
    assert ContractMeta.from_model(_model(props)) == FULL  # through metadata_props
    assert ContractMeta.from_model(props) == FULL  # or a plain mapping


def test_written_texts():
    props = FULL.to_props()
    assert props[MetaKey.HETEROSCEDASTIC] == "true" and props[MetaKey.SEED] == "7"
    assert props[MetaKey.INPUT_SHAPE] == "1,8,8" and props[MetaKey.NOISE_VARIANCE] == "0.25"
    assert props[MetaKey.QUANTIZATION] == '{"backend":"inc","kept_fp32":["a"]}'  # sorted, compact
    assert ContractMeta(heteroscedastic=False).to_props() == {"qbnn.heteroscedastic": "false"}
    assert ContractMeta().to_props() == {}  # None = absent: a partial record writes only its keys
    assert ContractMeta(input_shape=()).to_props() == {"qbnn.input_shape": ""}
    assert ContractMeta.from_model({"qbnn.input_shape": ""}).input_shape == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", True),
        ("0", False),
        ("true", True),
        ("false", False),
        ("True", True),
        (" FALSE", False),
    ],
)
def test_old_and_new_boolean_texts(text, expected):
    """Exporters before ContractMeta wrote the flag as "1"/"0": such files stay heteroscedastic."""
    model = _model({"qbnn.format_version": "1", "qbnn.task": "regression",
                    "qbnn.heteroscedastic": text})  # fmt: skip
    info = model_info(model)
    assert info.is_qbnn and info.task == Task.REGRESSION
    assert info.contract.heteroscedastic is expected


def test_old_empty_seed_and_plain_models():
    assert ContractMeta.from_model({"qbnn.seed": ""}).seed is None  # older unseeded exports
    info = model_info(_model({}))
    assert info.contract == ContractMeta() and not info.is_qbnn
    assert (info.task, info.posterior, info.default_samples) == (
        Task.CLASSIFICATION, "deterministic", 1)  # fmt: skip


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("heteroscedastic", "maybe", "'true' or 'false'"),
        ("task", "ranking", "one of \\['classification', 'regression'\\]"),
        ("default_samples", "eight", "an integer"),
        ("input_shape", "3,x", "e.g. '3,8,8'"),
        ("quantization", "[1]", "a JSON object"),
        ("compression", "{", "a JSON object"),
        ("noise_variance", "abc", "a number"),
        ("seed", "1.5", "an integer or ''"),
    ],
)
def test_malformed_text_names_key_and_value(key, text, expected):
    with pytest.raises(ModelLoadError, match=rf"qbnn\.{key}='{re.escape(text)}' is malformed: "
                                             rf"expected {expected}"):  # fmt: skip
        model_info(_model({f"qbnn.{key}": text, "qbnn.format_version": "1"}))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"default_samples": "x"}, "ContractMeta.default_samples='x' cannot be written"),
        ({"task": "ranking"}, "ContractMeta.task='ranking' cannot be written"),
        ({"input_shape": 5}, "ContractMeta.input_shape=5 cannot be written"),
        ({"quantization": {"x": object()}}, "ContractMeta.quantization=.* cannot be written"),
    ],
)
def test_unwritable_value_raises(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ContractMeta(**kwargs)


def test_partial_record_merges_into_a_file():
    """Quantize and compress write only their keys; the export's others stay."""
    model = _model(FULL.to_props())
    set_metadata(model, ContractMeta(precision="fp32", compression={"mode": "share"}).to_props())
    got = ContractMeta.from_model(model)
    assert got.precision == "fp32" and got.compression == {"mode": "share"}
    assert got.heteroscedastic is True and got.seed == 7 and got.quantization == FULL.quantization


# ---- no stray metadata literals ---------------------------------------------------------------

_KEY = re.compile(r"qbnn\.[a-z_]+")
_PACKAGES = ("exporters", "pipeline", "runtimes", "serve")


def stray_keys(source: str) -> list[str]:
    """Every string literal of ``source`` that is a whole ``qbnn.<name>`` key, except logger
    names (``getLogger("qbnn.serve")``) and importable module names (``"qbnn.pipeline"``)."""
    tree = ast.parse(source)
    loggers = {
        id(a)
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("getLogger")
        for a in n.args
    }  # fmt: skip
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and _KEY.fullmatch(n.value)
        and id(n) not in loggers and importlib.util.find_spec(n.value) is None
    ]  # fmt: skip


def test_stray_key_detector_catches_a_planted_literal():
    planted = (
        "import logging\nfrom importlib import resources\n"
        "log = logging.getLogger('qbnn.serve')\n"
        "text = resources.files('qbnn.pipeline')\n"
        "note = 'its metadata says qbnn.precision=int8'\n"
        "flag = meta.get('qbnn.heteroscedastic') == 'true'\n"
        "key = {'qbnn.head': 1}\n"
    )
    assert sorted(stray_keys(planted)) == ["qbnn.head", "qbnn.heteroscedastic"]


def test_no_metadata_literal_outside_the_record():
    own = Path(contract_module.__file__).resolve()
    roots = [
        Path(p) for name in _PACKAGES
        for p in importlib.util.find_spec(f"qbnn.{name}").submodule_search_locations
    ]  # fmt: skip
    files = [f for root in roots for f in sorted(root.rglob("*.py")) if f.resolve() != own]
    assert len(files) > 50  # the scan found the source tree
    found = {str(f): keys for f in files if (keys := stray_keys(f.read_text()))}
    assert not found, f"use ContractMeta / MetaKey instead of {META_PREFIX}* literals: {found}"
