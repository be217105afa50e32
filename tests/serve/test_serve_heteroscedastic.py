"""``qbnn serve`` on a heteroscedastic regression model (issue 20): a real server lists and returns
the per-sample predicted variance ``variance [S, B, D]``, equal to a local ONNX Runtime run of the
same graph with the same seed, for a file written today (``qbnn.heteroscedastic=true``) and for
one written by an older exporter (``"1"``)."""

from __future__ import annotations

import httpx
import numpy as np
import onnx
import pytest

from qbnn.runtimes.contract import HETEROSCEDASTIC_OUTPUTS, MetaKey
from qbnn.runtimes.loading import set_metadata

from serving import config, infer_json, ort_reference, running
from tiny_models import example, hetero_mlp

S, SEED = 6, 11
X = np.random.default_rng(4).normal(size=(5, 6)).astype(np.float32)  # [B=5, 6] -> D = 2


@pytest.fixture(scope="module")
def hetero_files(tmp_path_factory) -> dict:
    """``hetero``: a mean-field MLP with a (mean, log-variance) head, exported today;
    ``hetero_old``: the same graph with the flag as older exporters wrote it (``"1"``)."""
    from qbnn.exporters import export

    d = tmp_path_factory.mktemp("hetero")
    path = export(hetero_mlp(), example((6,)), d / "h.onnx", task="regression",
                  heteroscedastic=True, num_samples=8, verify=False)  # fmt: skip
    model = onnx.load(str(path))
    set_metadata(model, {MetaKey.HETEROSCEDASTIC.value: "1"})
    onnx.save_model(model, str(d / "h_old.onnx"))
    return {"hetero": path, "hetero_old": d / "h_old.onnx"}


@pytest.fixture(scope="module")
def base(hetero_files):
    with running(config(hetero_files)) as url:
        yield url


def test_file_flag_as_written(hetero_files):
    meta = {p.key: p.value for p in onnx.load(str(hetero_files["hetero"])).metadata_props}
    assert meta[MetaKey.HETEROSCEDASTIC.value] == "true"
    assert meta[MetaKey.OUTPUT_DIM.value] == "2"


@pytest.mark.parametrize("name", ["hetero", "hetero_old"])
def test_metadata_lists_variance(base, name):
    meta = httpx.get(f"{base}/v2/models/{name}").json()
    shapes = {o["name"]: o["shape"] for o in meta["outputs"]}
    assert shapes == {"pred_mean": [-1, 2], "pred_variance": [-1, 2],
                      "mean": [-1, -1, 2], "variance": [-1, -1, 2]}  # fmt: skip


@pytest.mark.parametrize("name", ["hetero", "hetero_old"])
def test_variance_equals_local_onnxruntime(base, hetero_files, name):
    got = infer_json(base, name, X, HETEROSCEDASTIC_OUTPUTS, S, SEED)
    assert got["variance"].shape == (S, 5, 2) and got["mean"].shape == (S, 5, 2)
    ref = ort_reference(hetero_files[name], X, S, SEED)
    for n in HETEROSCEDASTIC_OUTPUTS:  # JSON carries float32 exactly; 1e-6 covers op fusion
        np.testing.assert_allclose(got[n], ref[n], rtol=1e-6, atol=1e-7, err_msg=n)
    assert np.all(got["variance"] > 0)  # exp(log-variance)
    assert np.ptp(got["mean"], axis=0).max() > 1e-3  # S distinct posterior draws, not one
