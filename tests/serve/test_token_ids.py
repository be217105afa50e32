"""Serving a token-id model (issue 24, item 3): the graph's integer input dtype drives the
served metadata and the accepted request datatypes, over a real ``qbnn serve`` on localhost
with ``tritonclient.http``.

The model: Embedding of token ids -> mean over tokens -> MC dropout -> Linear, exported by
qbnn with an int64 (and, second graph, an int32) ``input``. A seeded request runs alone on a
fresh session with that seed, so its outputs equal ``Predictor(path, seed=seed)`` exactly.
"""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from qbnn.runtimes import Predictor
from qbnn.serve import ModelSpec, ServeConfig
from qbnn.serve.protocol import input_datatypes

from serving import IDS, T, running

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def base(token_files):
    models = [ModelSpec(name=n, path=p) for n, p in token_files.items()]
    with running(ServeConfig(models=models, port=0, provider="cpu", threads=1)) as url:
        yield url


def test_input_datatypes_follow_the_graph():
    assert input_datatypes("float32") == ("FP32",)
    assert input_datatypes("int64") == ("INT64", "INT32")
    assert input_datatypes("int32") == ("INT32", "INT64")


@pytest.mark.parametrize(("model", "datatype"), [("ids64", "INT64"), ("ids32", "INT32")])
def test_metadata_reports_the_graph_input_dtype(base, model, datatype):
    client = tritonhttp.InferenceServerClient(base.removeprefix("http://"))
    meta = client.get_model_metadata(model)
    assert meta["inputs"] == [{"name": "input", "datatype": datatype, "shape": [-1, T]}]
    client.close()


@pytest.mark.parametrize("model", ["ids64", "ids32"])
@pytest.mark.parametrize(("datatype", "binary"), [("INT64", True), ("INT32", False)])
def test_integer_requests_equal_predictor(base, token_files, model, datatype, binary):
    """INT64 (binary tensor) and INT32 (JSON) ids, each to the int64 and the int32 graph."""
    client = tritonhttp.InferenceServerClient(base.removeprefix("http://"))
    inp = tritonhttp.InferInput("input", list(IDS.shape), datatype)
    inp.set_data_from_numpy(IDS.astype(datatype.lower()), binary_data=binary)
    res = client.infer(model, [inp], parameters={"num_samples": 16, "seed": 3})
    ref = Predictor(token_files[model], provider="cpu", seed=3).predict(IDS, 16)
    for name in ("mean_probs", "predictive_entropy", "expected_entropy", "mutual_information"):
        np.testing.assert_array_equal(res.as_numpy(name), getattr(ref, name), err_msg=name)
    # MC dropout is on: the 16 samples differ, so the comparison above is not vacuous
    assert float(ref.mutual_information.min()) > 1e-4
    client.close()


def _body(values, datatype="INT64", shape=(1, T)) -> dict:
    return {"inputs": [{"name": "input", "shape": list(shape), "datatype": datatype,
                        "data": values}], "parameters": {"seed": 1}}  # fmt: skip


_BAD = {
    "FP32 ids": ("ids64", _body([1.0] * T, "FP32"),
                 r"datatype FP32; this model accepts INT64 or INT32 \(integer token ids\)"),
    "FP16 ids": ("ids32", _body([1.0] * T, "FP16"), "this model accepts INT32 or INT64"),
    "non-integer value": ("ids64", _body([1, 2, 1.5, 3, 4, 5, 6]),
                          r"INT64 needs integer values, got 1.5 at flat index 2"),
    "whole float": ("ids64", _body([1, 2, 3.0, 3, 4, 5, 6], "INT32"),
                    r"INT32 needs integer values, got 3.0 at flat index 2"),
    "boolean": ("ids64", _body([True] * T), "needs integer values, got True"),
    "string": ("ids64", _body(["7"] * T), "needs integer values, got '7'"),
    "beyond INT64": ("ids64", _body([1, 2**63, 0, 0, 0, 0, 0]),
                     r"value 9223372036854775808 is outside INT64"),
    "beyond INT32": ("ids64", _body([1, 2**31, 0, 0, 0, 0, 0], "INT32"),
                     r"value 2147483648 is outside INT32"),
    "INT64 beyond the int32 graph": ("ids32", _body([1, 2**40, 0, 0, 0, 0, 0]),
                                     r"value 1099511627776 is outside the model's int32"),
    "wrong shape": ("ids64", _body([1] * 6, shape=(1, 6)),
                    r"input shape \[1, 6\] does not match the model's \[B, 7\]"),
    # the vocabulary is 50: ONNX Runtime's Gather fails on id 50 (was a 500), and would wrap -1
    "id beyond the vocabulary": ("ids64", _body([1, 2, 50, 3, 4, 5, 6]),
                                 r"token ids out of the model's vocabulary \(largest id in this "
                                 r"input: 50\): indices element out of data bounds"),
    "negative id": ("ids32", _body([1, 2, -1, 3, 4, 5, 6], "INT32"),
                    r"token ids must be >= 0 .* got -1 \(first negative id at index \[0, 2\]\)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(_BAD))
def test_bad_token_requests_get_a_400_naming_what_is_accepted(base, case):
    model, body, message = _BAD[case]
    r = httpx.post(f"{base}/v2/models/{model}/infer", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "\n" not in error and "Traceback" not in error
    assert re.search(message, error), error


def test_tritonclient_fp32_to_a_token_model_is_refused(base):
    client = tritonhttp.InferenceServerClient(base.removeprefix("http://"))
    inp = tritonhttp.InferInput("input", list(IDS.shape), "FP32")
    inp.set_data_from_numpy(IDS.astype(np.float32))
    with pytest.raises(InferenceServerException, match="accepts INT64 or INT32"):
        client.infer("ids64", [inp])
    client.close()
