"""Half-precision models (issue 22, kind 6): a float16 / bfloat16 model is exported from a
float32 copy with a one-line notice; the user's module keeps its dtype; never "the model
rejected an input".
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from torch import nn

from qbnn.exporters import export_model
from qbnn.exporters.checks.dtypes import float32_model
from qbnn.exporters.modules.dropout import mc_mode
from qbnn.runtimes import Predictor
from qbnn.runtimes.errors import ConfigError

S = 3000


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3)).eval()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_model_exports_a_float32_copy_and_says_so(tmp_path, caplog, dtype):
    """Graph mean_probs within 4.5 standard errors (S = 3000 each side, seeded) of torch's MC
    average of the same weights in float32; the user's module is untouched."""
    model = _mlp().to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    with caplog.at_level(logging.WARNING, logger="qbnn.export"):
        res = export_model(model, x, tmp_path / "half.onnx", seed=0)
    name = str(dtype).removeprefix("torch.")
    notice = (
        f"the model's parameters are {name}; exported a float32 copy (qbnn graphs compute in "
        "float32; the model itself is unchanged)"
    )
    assert [r.getMessage() for r in caplog.records if r.name == "qbnn.export"] == [notice]
    assert f"warning: {notice}" in res.notes
    assert all(p.dtype == dtype for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training  # the user's train/eval flags are untouched too

    ref_net = mc_mode(copy.deepcopy(model).float())
    torch.manual_seed(5)
    with torch.no_grad():
        ref = torch.stack([torch.softmax(ref_net(x.float()), -1) for _ in range(S)]).double()
    graph = Predictor(res.path, seed=2).predict(x.float().numpy(), S, return_samples=True).probs
    graph = np.asarray(graph, dtype=np.float64)
    ref = ref.numpy()
    se = np.sqrt((graph.var(0) + ref.var(0)) / S)
    assert np.all(np.abs(graph.mean(0) - ref.mean(0)) <= 4.5 * se + 1e-6)


def test_float32_models_are_not_copied():
    model = _mlp()
    out, note = float32_model(model, model)
    assert out is model and note is None


def test_an_ensemble_of_half_members_is_copied_member_by_member():
    members = [_mlp().half(), _mlp().half()]
    out, note = float32_model(members, members[0])
    assert note is not None and note.startswith("the model's parameters are float16;")
    assert all(p.dtype == torch.float32 for m in out for p in m.parameters())
    assert all(p.dtype == torch.float16 for m in members for p in m.parameters())


def test_a_posterior_object_with_a_half_network_is_refused_naming_the_dtype():
    class Posterior:  # a fitted posterior object holding its network (Laplace, SWAG style)
        model = _mlp().to(torch.bfloat16)

    with pytest.raises(ConfigError, match=r"^the posterior's network has bfloat16 parameters"):
        float32_model(Posterior(), Posterior.model)
