"""Members and MC samples stacked on the batch axis (issue 22, kind 1): torch-uncertainty's
one-network ensembles and wrappers, and models of our own design, exported with ``auto``.

torch-uncertainty's top-level ``import torch_uncertainty`` needs torchvision and lightning, so
its layer / model / method modules are imported under a skeleton package (its ``__init__`` not
run). It is installed in CI from ``requirements/no-deps.txt``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from qbnn.exporters import export_model
from qbnn.pipeline.cli import app
from qbnn.runtimes import Predictor
from qbnn.runtimes.contract import MetaKey
from qbnn.runtimes.errors import ConfigError, ExportError, UnsupportedLayerError

from thirdparty import torch_uncertainty
from tiny_models import StackedDropout, StackedHeads, example
from trainers import iris

M = 4


def _masked_mlp() -> nn.Module:
    """A Masksembles MLP as torch-uncertainty's masked models build it: the input repeated M
    times, ``MaskedLinear`` layers (Mask1d splits the batch with ``batch // M``)."""
    from einops import repeat

    masked = torch_uncertainty("layers").MaskedLinear

    class MaskedMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(4, 16)
            self.fc2 = masked(16, 16, num_estimators=M, scale=2.0)
            self.fc3 = masked(16, 3, num_estimators=M, scale=2.0)

        def forward(self, x):
            x = repeat(x, "b ... -> (m b) ...", m=M)
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    return MaskedMLP()


def _tu_model(kind: str) -> nn.Module:
    if kind == "masksembles":
        return _masked_mlp()
    mlp = torch_uncertainty("models.mlp")
    if kind == "packed":
        return mlp.packed_mlp(4, 3, [16], num_estimators=M, alpha=2)
    if kind == "batchensemble":
        return mlp.batched_mlp(4, 3, [16], num_estimators=M)
    return mlp.mimo_mlp(4, 3, [16], num_estimators=M)


def _trained(kind: str) -> nn.Module:
    """Trained the torch-uncertainty way on iris: targets repeated per member (MIMO's inputs
    too), 60 Adam steps."""
    torch.manual_seed(0)
    net, d = _tu_model(kind), iris()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    xs = d.x_train.repeat(M, 1) if kind == "mimo" else d.x_train  # MIMO trains on (m b) rows
    for _ in range(60):
        opt.zero_grad()
        out = net(xs)
        F.cross_entropy(out, d.y_train.repeat(out.shape[0] // d.x_train.shape[0])).backward()
        opt.step()
    return net.eval()


def _member_probs(net: nn.Module, x: torch.Tensor, k: int) -> np.ndarray:
    """What torch-uncertainty reports: softmax per member ``[k, B, C]``."""
    with torch.no_grad():
        return F.softmax(net(x).reshape(k, x.shape[0], -1), -1).numpy()


@pytest.mark.parametrize("kind", ["packed", "batchensemble", "mimo", "masksembles"])
def test_tu_one_network_ensembles_are_exact_ensembles_at_every_batch(tmp_path, kind):
    net = _trained(kind)
    x = iris().x_test
    res = export_model(net, x[:8], tmp_path / "m.onnx")
    assert (res.family, res.sampling) == ("stacked", f"members:{M}")
    assert res.fidelity.exact and res.fidelity.max_abs_mean_diff < 1e-5
    meta = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert meta[MetaKey.POSTERIOR] == "stacked" and meta[MetaKey.SAMPLING] == f"members:{M}"
    if kind == "masksembles":  # Mask1d's torch.split(batch // M) would fix the batch at 8
        assert any("rewritten without a fixed batch size" in n for n in res.notes), res.notes
    pred = Predictor(res.path)
    for b in (1, 5, 16, 40):
        ref = _member_probs(net, x[:b], M)
        out = pred.predict(x[:b].numpy(), num_samples=M, return_samples=True)
        np.testing.assert_allclose(out.probs, ref, atol=1e-5)
        np.testing.assert_allclose(out.mean_probs, ref.mean(0), atol=1e-5)
        # the summaries are the ensemble's, uniform over the M members, whatever S is
        three = pred.predict(x[:b].numpy(), num_samples=3)
        np.testing.assert_allclose(three.mean_probs, ref.mean(0), atol=1e-5)
    acc = (ref.mean(0).argmax(1) == iris().y_test.numpy()).mean()
    assert acc > 0.8, acc  # trained: the comparison is on a real ensemble


def test_own_one_network_ensemble_is_exact(tmp_path):
    """Own design: a shared body with 3 heads stacked member-major (tiny_models.StackedHeads)."""
    net = StackedHeads().eval()
    res = export_model(net, example((6,)), tmp_path / "m.onnx")
    assert (res.family, res.sampling) == ("stacked", "members:3")
    x = example((6,), batch=5, seed=3)
    ref = _member_probs(net, x, 3)
    out = Predictor(res.path).predict(x.numpy(), num_samples=6, return_samples=True)
    np.testing.assert_allclose(out.probs, ref[[0, 1, 2, 0, 1, 2]], atol=1e-5)
    np.testing.assert_allclose(out.mean_probs, ref.mean(0), atol=1e-5)


def _tu_mc_dropout() -> nn.Module:
    torch.manual_seed(0)
    core = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    wrap = torch_uncertainty("methods.mc_dropout").mc_dropout
    return wrap(core, num_estimators=5, on_batch=True).eval()


def _own_stacked_dropout() -> nn.Module:
    torch.manual_seed(0)
    return StackedDropout().eval()


@pytest.mark.parametrize(
    ("factory", "k"), [(_tu_mc_dropout, 5), (_own_stacked_dropout, 4)], ids=["tu", "own"]
)
def test_stacked_mc_samples_match_the_models_own_mc_average(tmp_path, factory, k):
    """A random forward stacks k MC samples per pass: exported as ``samples:k`` (the graph
    tiles the input ceil(S / k) times). Against the model's own passes, seeded, S = 600 each
    side: every MC-mean element within 4.5 standard errors (+1e-4), mean spread within 15%."""
    net = factory()
    res = export_model(net, example((6,)), tmp_path / "m.onnx")
    assert (res.family, res.sampling) == ("stacked", f"samples:{k}")
    x, s = example((6,), batch=5, seed=3), 600
    graph = Predictor(res.path, seed=11).predict(x.numpy(), num_samples=s, return_samples=True)
    assert graph.probs.shape == (s, 5, 3)
    torch.manual_seed(99)
    ref = np.concatenate([_member_probs(net, x, k) for _ in range(s // k)])
    diff = np.abs(graph.probs.mean(0) - ref.mean(0))
    se = np.sqrt((graph.probs.var(0, ddof=1) + ref.var(0, ddof=1)) / s)
    assert np.all(diff <= 4.5 * se + 1e-4), (diff / np.maximum(se, 1e-9)).max()
    sp_g, sp_t = graph.probs.std(0).mean(), ref.std(0).mean()
    assert sp_t > 1e-2 and abs(sp_g - sp_t) <= 0.15 * sp_t, (sp_g, sp_t)
    seven = Predictor(res.path).predict(x.numpy(), num_samples=7, return_samples=True).probs
    assert len({seven[i].tobytes() for i in range(7)}) == 7  # S need not be a multiple of k


def test_k_can_be_stated_and_contradictions_are_refused(tmp_path):
    net, x = StackedHeads().eval(), example((6,))
    res = export_model(net, x, tmp_path / "a.onnx", posterior="stacked", sampling="members:3")
    assert res.sampling == "members:3"
    with pytest.raises(ConfigError, match=r"states 4 members per input row, but the model maps "
                       r"an input of shape \[4, 6\] to \[12, 3\]"):  # fmt: skip
        export_model(net, x, tmp_path / "b.onnx", sampling="members:4")
    with pytest.raises(ConfigError, match="stacked rows are ensemble members; use sampling="
                       "'members:3'"):  # fmt: skip
        export_model(net, x, tmp_path / "c.onnx", sampling="samples")
    with pytest.raises(ConfigError, match="stacked rows are MC samples, not members; use "
                       "sampling='samples:4'"):  # fmt: skip
        export_model(StackedDropout().eval(), x, tmp_path / "d.onnx", sampling="members")
    plain = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(ExportError, match="could not find how many members .* returns "
                       r"\[4, 3\].*sampling='members:K'"):  # fmt: skip
        export_model(plain, x, tmp_path / "e.onnx", posterior="stacked")
    assert not any(tmp_path.glob("[b-e].onnx"))


class _EvenBatches(nn.Module):
    """Stacks 2 members, but its forward refuses odd batches in eager mode: detection, which
    needs a second batch size, cannot see k (the ambiguous case ``members:K`` resolves)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 3), nn.Linear(6, 3)

    def forward(self, x):
        if isinstance(x.shape[0], int) and x.shape[0] % 2:  # eager only (traced: a SymInt)
            raise ValueError("this model takes even batches")
        return torch.cat([self.a(x), self.b(x)])


def test_ambiguous_detection_is_resolved_by_stating_k(tmp_path):
    torch.manual_seed(0)
    net, x = _EvenBatches().eval(), example((6,))
    with pytest.raises(ExportError, match="posterior='stacked', sampling='members:K'"):
        export_model(net, x, tmp_path / "a.onnx")
    res = export_model(net, x, tmp_path / "b.onnx", posterior="stacked", sampling="members:2")
    assert res.fidelity.exact
    xb = example((6,), batch=6, seed=2)
    ref = _member_probs(net, xb, 2).mean(0)
    np.testing.assert_allclose(Predictor(res.path).predict(xb.numpy()).mean_probs, ref, atol=1e-5)


def test_cli_states_k_with_sampling(tmp_path):
    out = tmp_path / "m.onnx"
    args = ["export", "-m", "tiny_models:stacked_heads", "--input-shape", "6", "-o", str(out)]
    r = CliRunner().invoke(app, [*args, "--posterior", "stacked", "--sampling", "members:3"])
    assert r.exit_code == 0, r.output
    assert "exported stacked (members:3)" in r.output


class _StackedWeightNoise(nn.Module):
    """Own design: 3 samples stacked on the batch axis through one weight draw per pass
    (Bayes-by-backprop style): tiling passes into one would share the draw; refused."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.randn(3, 6))

    def forward(self, x):
        w = self.mu + 0.1 * torch.randn_like(self.mu)
        return x.repeat(3, 1) @ w.T


def test_stacked_samples_with_weight_shaped_noise_are_refused(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(
        UnsupportedLayerError,
        match=r"draws noise of shape \[3, 6\] \(randn_like\) that does not follow",
    ):
        export_model(_StackedWeightNoise(), example((6,)), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_pipeline_yaml_states_k_with_model_sampling(tmp_path):
    from qbnn.pipeline.run import run

    x = example((6,), batch=8).numpy()
    np.savez(tmp_path / "c.npz", x=x)
    np.savez(tmp_path / "t.npz", x=x, y=np.zeros(8, np.int64))
    (tmp_path / "pipeline.yaml").write_text(
        "name: s\noutput_root: out\nstages: [export]\n"
        'model: {factory: "tiny_models:stacked_heads", input_shape: [6], posterior: stacked, '
        "sampling: 'members:3'}\ndata: {calib: c.npz, test: t.npz}\n"
    )
    run(tmp_path / "pipeline.yaml")
    (path,) = (tmp_path / "out" / "s").glob("*.onnx")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert (meta[MetaKey.POSTERIOR], meta[MetaKey.SAMPLING]) == ("stacked", "members:3")
