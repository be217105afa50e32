"""The Open Inference Protocol against a real ``qbnn serve`` on localhost: health, metadata,
inference (JSON and binary tensors, ``tritonclient.http``), outputs equal to ``Predictor``,
every bad request answered with a 4xx and one clear message while the server keeps serving,
Prometheus metrics and the OpenAPI docs."""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pytest

from qbnn.runtimes import Predictor

from serving import config, running

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

X = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)


@pytest.fixture(scope="module")
def base(model_files):
    with running(config(model_files, max_request_rows=16, max_num_samples=64,
                        max_body_bytes=200_000)) as url:  # fmt: skip
        yield url


def _infer_body(x=X, **parameters) -> dict:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    if parameters:
        body["parameters"] = parameters
    return body


def _outputs(response: httpx.Response) -> dict[str, np.ndarray]:
    assert response.status_code == 200, response.text
    return {
        o["name"]: np.asarray(o["data"], dtype=np.float32).reshape(o["shape"])
        for o in response.json()["outputs"]
    }


def test_health_and_metadata(base, model_files):
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{base}/v2/health/ready").status_code == 200
    meta = httpx.get(f"{base}/v2/models/cnn").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    shapes = {o["name"]: o["shape"] for o in meta["outputs"]}
    assert shapes == {"mean_probs": [-1, 4], "predictive_entropy": [-1],
                      "expected_entropy": [-1], "mutual_information": [-1],
                      "probs": [-1, -1, 4]}  # fmt: skip
    assert meta["parameters"]["default_num_samples"] == 8
    reg = {o["name"] for o in httpx.get(f"{base}/v2/models/reg").json()["outputs"]}
    assert reg == {"pred_mean", "pred_variance", "mean"}


def test_seeded_request_equals_predictor(base, model_files):
    """A request with a seed returns exactly what a fresh Predictor with that seed returns."""
    url = f"{base}/v2/models/cnn/infer"
    out = _outputs(httpx.post(url, json=_infer_body(num_samples=5, seed=11)))
    ref = Predictor(model_files["cnn"], provider="cpu", seed=11).predict(X, 5)
    for name in ("mean_probs", "predictive_entropy", "expected_entropy", "mutual_information"):
        np.testing.assert_array_equal(out[name], getattr(ref, name), err_msg=name)
    again = _outputs(httpx.post(url, json=_infer_body(num_samples=5, seed=11)))
    np.testing.assert_array_equal(again["mean_probs"], out["mean_probs"])


def test_per_sample_and_regression_outputs(base, model_files):
    body = _infer_body(num_samples=6, seed=2) | {"outputs": [{"name": "probs"},
                                                             {"name": "mean_probs"}]}  # fmt: skip
    out = _outputs(httpx.post(f"{base}/v2/models/cnn/infer", json=body))
    assert set(out) == {"probs", "mean_probs"} and out["probs"].shape == (6, 3, 4)
    np.testing.assert_allclose(out["probs"].mean(0), out["mean_probs"], atol=1e-6)
    xr = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    out = _outputs(httpx.post(f"{base}/v2/models/reg/infer", json=_infer_body(xr, seed=3)))
    ref = Predictor(model_files["reg"], provider="cpu", seed=3).predict(xr)
    np.testing.assert_array_equal(out["pred_mean"], ref.pred_mean)
    np.testing.assert_array_equal(out["pred_variance"], ref.pred_variance)


def test_tritonclient_works_unchanged(base, model_files):
    """Triton's own client, binary tensors (its default) and JSON, with parameters."""
    client = tritonhttp.InferenceServerClient(base.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("cnn")
    assert client.get_model_metadata("cnn")["inputs"][0]["shape"] == [-1, 1, 8, 8]
    inp = tritonhttp.InferInput("input", list(X.shape), "FP32")
    inp.set_data_from_numpy(X)  # binary_data=True by default
    res = client.infer("cnn", [inp], parameters={"num_samples": 4, "seed": 7})
    ref = Predictor(model_files["cnn"], provider="cpu", seed=7).predict(X, 4, return_samples=True)
    np.testing.assert_array_equal(res.as_numpy("mean_probs"), ref.mean_probs)
    np.testing.assert_array_equal(res.as_numpy("mutual_information"), ref.mutual_information)
    inp.set_data_from_numpy(X, binary_data=False)
    outs = [tritonhttp.InferRequestedOutput("probs", binary_data=False),
            tritonhttp.InferRequestedOutput("predictive_entropy")]  # fmt: skip
    res = client.infer("cnn", [inp], outputs=outs, parameters={"num_samples": 4, "seed": 7})
    np.testing.assert_array_equal(res.as_numpy("probs"), ref.probs)
    np.testing.assert_array_equal(res.as_numpy("predictive_entropy"), ref.predictive_entropy)
    with pytest.raises(InferenceServerException, match="num_samples 65 is outside"):
        client.infer("cnn", [inp], parameters={"num_samples": 65})
    client.close()


_NAN = X.copy()
_NAN[1, 0, 2, 3] = np.nan  # JSON has no NaN; Python's json writes the common NaN token
_ZEROS = np.zeros((16, 1, 8, 8), np.float32)
_BAD = {
    "malformed JSON": ("cnn", b'{"inputs": [', 400, "malformed JSON body"),
    "not a request": ("cnn", {"inputs": "x"}, 400, "invalid inference request: inputs"),
    "unknown model": ("nope", _infer_body(), 404, r"unknown model 'nope'; served models"),
    "wrong input name": ("cnn", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                             "data": [1.0]}]}, 400, "one input named 'input'"),
    "wrong datatype": ("cnn", {"inputs": [{"name": "input", "shape": [1, 1, 8, 8],
                                           "datatype": "INT64", "data": [0] * 64}]},
                       400, "datatype INT64; this model accepts FP32"),
    "wrong shape": ("cnn", {"inputs": [{"name": "input", "shape": [2, 1, 4, 8],
                                        "datatype": "FP32", "data": [0.0] * 64}]},
                    400, r"input shape \[2, 1, 4, 8\] does not match the model's \[B, 1, 8, 8\]"),
    "data size": ("cnn", {"inputs": [{"name": "input", "shape": [2, 1, 8, 8],
                                      "datatype": "FP32", "data": [0.0] * 64}]},
                  400, r"data has 64 values, shape \[2, 1, 8, 8\] needs 128"),
    "NaN": ("cnn", json.dumps(_infer_body(_NAN)).encode(), 400, "NaN/inf values"),
    "too many rows": ("cnn", _infer_body(np.zeros((17, 1, 8, 8), np.float32)), 400,
                      "17 rows, more than max_request_rows 16"),
    "num_samples": ("cnn", _infer_body(num_samples=1000), 400,
                    r"num_samples 1000 is outside \[1, max_num_samples 64\]"),
    "num_samples type": ("cnn", _infer_body(num_samples="8"), 400, "must be an integer"),
    "seed": ("cnn", _infer_body(seed=-1), 400, "seed must be a non-negative integer"),
    "unknown output": ("cnn", _infer_body() | {"outputs": [{"name": "logits"}]}, 400,
                       r"unknown output\(s\) \['logits'\]"),
    "body too large": ("cnn", _infer_body(_ZEROS) | {"pad": "x" * 200_000}, 413,
                       "exceeds max_body_bytes 200000"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(_BAD))
def test_bad_requests_get_a_4xx_and_one_clear_message(base, case):
    model, body, status, message = _BAD[case]
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{base}/v2/models/{model}/infer", **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert "\n" not in error and "Traceback" not in error
    assert re.search(message, error), error
    # the server keeps serving
    assert httpx.post(f"{base}/v2/models/cnn/infer", json=_infer_body(seed=1)).status_code == 200


def test_metrics_in_prometheus_format(base):
    from prometheus_client.parser import text_string_to_metric_families

    httpx.post(f"{base}/v2/models/cnn/infer", json=_infer_body(seed=1))
    httpx.post(f"{base}/v2/models/cnn/infer", json=_infer_body(num_samples=10**6))
    r = httpx.get(f"{base}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    ok = [
        s.value
        for s in fams["qbnn_requests"].samples
        if s.name == "qbnn_requests_total" and s.labels == {"model": "cnn", "code": "200"}
    ]
    err = [
        s.value
        for s in fams["qbnn_request_errors"].samples
        if s.name == "qbnn_request_errors_total" and s.labels == {"model": "cnn", "code": "400"}
    ]
    assert ok and ok[0] >= 1 and err and err[0] >= 1
    assert "qbnn_request_latency_seconds" in fams and "qbnn_batch_rows" in fams  # fmt: skip


def test_openapi_docs(base):
    assert httpx.get(f"{base}/docs").status_code == 200
    spec = httpx.get(f"{base}/openapi.json").json()
    assert "/v2/models/{name}/infer" in spec["paths"]
    assert {"InferRequest", "RequestInput"} <= set(spec["components"]["schemas"])
