"""``qbnn serve`` on a multi-label model (issue 22, kind 5): a real server lists and returns the
per-label outputs ``label_* [B, K]`` and per-label ``mean_probs``, equal to a local ONNX Runtime
run of the same graph with the same seed."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch
from torch import nn

from qbnn.runtimes.contract import MULTILABEL_OUTPUTS

from serving import config, infer_json, ort_reference, running

S, SEED, K = 6, 11, 3
X = np.random.default_rng(4).normal(size=(5, 6)).astype(np.float32)  # [B=5, 6] -> K = 3


@pytest.fixture(scope="module")
def ml_file(tmp_path_factory):
    from qbnn.exporters import export

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, K))
    d = tmp_path_factory.mktemp("ml")
    return export(net, torch.from_numpy(X), d / "ml.onnx", head="multilabel", verify=False)


@pytest.fixture(scope="module")
def base(ml_file):
    with running(config({"ml": ml_file})) as url:
        yield url


def test_metadata_lists_label_outputs(base):
    meta = httpx.get(f"{base}/v2/models/ml").json()
    shapes = {o["name"]: o["shape"] for o in meta["outputs"]}
    for name in ("mean_probs", "label_predictive_entropy", "label_mutual_information"):
        assert shapes[name] == [-1, K]
    assert meta["parameters"]["multilabel"] is True


def test_label_outputs_equal_local_onnxruntime(base, ml_file):
    names = [n for n in MULTILABEL_OUTPUTS if n != "probs"]
    got = infer_json(base, "ml", X, names, S, SEED)
    ref = ort_reference(ml_file, X, S, SEED)
    for n in names:
        np.testing.assert_allclose(got[n], ref[n], rtol=1e-6, atol=1e-7, err_msg=n)
    assert got["label_mutual_information"].shape == (5, K)
    assert np.abs(got["mean_probs"].sum(1) - 1).max() > 0.05  # per-label, not a softmax
