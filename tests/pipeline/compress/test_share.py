"""Weight sharing: the codebook model equals the torch model holding the shared weights,
values move within k sigma, a model that is already shared deploys without moving anything."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from qbnn.exporters import export
from qbnn.pipeline.compress import ShareConfig, deploy_share
from qbnn.pipeline.compress.layers import find_layers, layer_posterior
from qbnn.runtimes.errors import ConfigError

from compress_tiny import data, run

LAYERS = ("conv1", "conv2", "fc1", "fc2")


@pytest.fixture(scope="module")
def shared(ensemble_model, tmp_path_factory):
    src, members = ensemble_model
    dst = tmp_path_factory.mktemp("share") / "shared.onnx"
    res, layers = deploy_share(src, dst, ShareConfig(k=2.0, max_unique=16))
    torch_members = []
    for k, m in enumerate(members):
        m = copy.deepcopy(m)
        with torch.no_grad():
            for name in LAYERS:
                getattr(m, name).weight.copy_(torch.from_numpy(layers[name].weights()[k]))
        torch_members.append(m)
    return res, layers, torch_members


def test_codebook_model_equals_the_shared_weight_torch_model(shared):
    res, _, torch_members = shared
    x = data(40, seed=13)[0]
    probs = run(res.path, x, samples=2)["probs"]
    for k, m in enumerate(torch_members):
        ref = torch.softmax(m(torch.from_numpy(x)), -1).detach().numpy()
        np.testing.assert_allclose(probs[k], ref, atol=1e-6)


def test_codebook_storage(shared):
    res, layers, _ = shared
    m = onnx.load(res.path)
    inits = {i.name: i for i in m.graph.initializer}
    for name in LAYERS:
        assert layers[name].codebook.size <= 16
        idx = inits[f"qbnn/compress/share/members.0.{name}.weight/idx"]
        assert idx.data_type == onnx.TensorProto.UINT4
        assert f"members.0.{name}.weight" not in inits  # rebuilt by Gather, not stored
    assert res.max_unique_per_layer <= 16
    # the contract's num_samples stays a plain input (format 2: no initializer behind it)
    assert [i.name for i in m.graph.input] == ["input", "num_samples"]
    assert "num_samples" not in inits
    assert all(lay.route == "codebook" and lay.entropy <= 4.0 for lay in res.layers)


def test_weights_move_within_k_sigma(ensemble_model, shared):
    src, _ = ensemble_model
    _, layers, _ = shared
    model = onnx.load(src)
    found = find_layers(model)
    for name in LAYERS:
        mu, sigma = layer_posterior(model, found[name])
        draws = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer
                 if i.name in found[name].weights]  # fmt: skip
        moved = np.abs(np.stack(layers[name].weights()) - np.stack(draws))
        beyond = (moved > 2.0 * sigma[None] + 1e-7).mean()
        assert beyond == pytest.approx(layers[name].beyond_k_sigma, abs=1e-9)
        assert beyond < 0.5


def test_already_shared_model_deploys_without_moving(shared, tmp_path):
    _, layers, torch_members = shared
    path = tmp_path / "pwfn.onnx"
    export(torch_members, torch.from_numpy(data(4)[0]), path, verify=False)
    res, again = deploy_share(path, tmp_path / "again.onnx", ShareConfig(max_unique=16))
    for name in LAYERS:
        assert again[name].already_shared
        np.testing.assert_array_equal(again[name].codebook, layers[name].codebook)
    x = data(16, seed=2)[0]
    np.testing.assert_allclose(run(res.path, x)["probs"], run(path, x)["probs"], atol=1e-6)


def test_no_posterior_scale_is_refused(ensemble_model, tmp_path):
    _, members = ensemble_model
    path = tmp_path / "one.onnx"
    export([members[0]], torch.from_numpy(data(4)[0]), path, verify=False)
    with pytest.raises(ConfigError, match="no posterior scale: --share needs a posterior"):
        deploy_share(path, tmp_path / "x.onnx", ShareConfig(max_unique=4))
    assert not (tmp_path / "x.onnx").exists()


def test_variance_matching_narrows_the_spread_between_shared_draws(ensemble_model, tmp_path):
    src, _ = ensemble_model
    spreads = {}
    for m in (0.0, 1.0):
        _, layers = deploy_share(src, tmp_path / f"m{m}.onnx", ShareConfig(max_unique=4, match=m))
        spreads[m] = float(np.stack(layers["conv2"].weights()).var(0).mean())
    assert spreads[1.0] < spreads[0.0]
