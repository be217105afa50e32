"""Random ops qbnn did not reach inside traced code (issue 22, kind 3): dropout inside
``F.scaled_dot_product_attention``, ``nn.MultiheadAttention``'s dropout and dropout called
through a name bound at import time become qbnn's seeded noise, in the MC-dropout family (one
pass over the tiled batch) and in the ``stochastic`` family's sample loop.

Every statistical check: S = 4096 graph samples and 3000 torch forwards (the model's own MC
sampling in train mode), fixed seeds; each ``mean_probs`` element within 4.5 standard errors of
torch's MC average, the mean per-element spread within 15 % of torch's. Each model is built so
that losing its attention dropout moves the mean by more than that tolerance (asserted), so the
checks can fail.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.functional import dropout as drop  # bound at import time, as users write it
from torch.nn.functional import scaled_dot_product_attention as sdpa

from qbnn.exporters import export_model
from qbnn.exporters.checks.noisecensus import noise_census
from qbnn.exporters.modules.dropout import mc_mode
from qbnn.runtimes import Predictor
from qbnn.runtimes.errors import ExportError, UnsupportedLayerError
from qbnn.runtimes.seeding import random_nodes

S = 3000  # torch forwards
S_GRAPH = 4096  # graph samples (one Predictor call)
Z = 4.5


class Block(nn.Module):
    """A hand-written pre-norm encoder block (the HF / timm pattern): attention dropout through
    SDPA's ``dropout_p``, an ``nn.Dropout`` in the MLP."""

    def __init__(self, d: int = 16, h: int = 2, p: float = 0.3, bound: bool = False) -> None:
        super().__init__()
        self.h, self.p, self.bound = h, p, bound
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Dropout(0.1), nn.Linear(32, d))
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).reshape(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        p = self.p if self.training else 0.0
        attend = sdpa if self.bound else F.scaled_dot_product_attention
        a = attend(q, k, v, dropout_p=p, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.n2(x))


class Encoder(nn.Module):
    def __init__(self, p: float = 0.3, noise: float = 0.0, bound: bool = False) -> None:
        super().__init__()
        self.inp, self.b, self.head = nn.Linear(4, 16), Block(p=p, bound=bound), nn.Linear(16, 3)
        self.noise = noise

    def forward(self, x):
        h = self.b(self.inp(x)).mean(1)
        if self.noise:  # activation noise drawn by forward itself: the 'stochastic' family
            h = h + self.noise * torch.randn_like(h)
        return self.head(h)


class MHANet(nn.Module):
    """``nn.MultiheadAttention(dropout=0.3)``: its only randomness (no nn.Dropout module)."""

    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        self.inp, self.head = nn.Linear(4, 16), nn.Linear(16, 3)
        self.mha = nn.MultiheadAttention(16, 2, dropout=0.3, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.mha(h, h, h, need_weights=self.need_weights)
        return self.head((h + a).mean(1))


class BoundDropout(nn.Module):
    """Dropout through ``drop``, the name this test module bound at import time."""

    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(8, 32), nn.Linear(32, 3)

    def forward(self, x):
        return self.l2(drop(torch.relu(self.l1(x)), 0.4, training=self.training))


class AttrAttention(nn.Module):
    """SDPA reached through an attribute: a name qbnn cannot rebind."""

    def __init__(self) -> None:
        super().__init__()
        self.fn = F.scaled_dot_product_attention

    def forward(self, q):
        return self.fn(q, q, q, dropout_p=0.2)


class AttrNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.attn, self.head = nn.Linear(4, 16), AttrAttention(), nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        b, t, d = h.shape
        h = h + self.attn(h.reshape(b, t, 2, 8).transpose(1, 2)).transpose(1, 2).reshape(b, t, d)
        return self.head(h.mean(1) + 0.1 * torch.randn_like(h[:, 0]))


def _seeded(factory, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = factory().eval()
    for mod in net.modules():  # large attention logits, so attention dropout matters
        if isinstance(mod, Block):
            with torch.no_grad():
                mod.qkv.weight.mul_(4.0)
        if isinstance(mod, nn.MultiheadAttention):
            with torch.no_grad():
                mod.in_proj_weight.mul_(4.0)
    return net


def _torch_mc(net: nn.Module, x: torch.Tensor, s: int = S) -> np.ndarray:
    """The model's own MC sampling (train mode, norms in eval), softmaxed: ``[S, B, C]``."""
    import copy

    m = mc_mode(copy.deepcopy(net))
    torch.manual_seed(11)
    with torch.no_grad():
        return torch.stack([torch.softmax(m(x), -1) for _ in range(s)]).double().numpy()


def _max_z(a: np.ndarray, b: np.ndarray) -> float:
    se = np.sqrt(a.var(0) / a.shape[0] + b.var(0) / b.shape[0])
    return float((np.abs(a.mean(0) - b.mean(0)) / np.maximum(se, 1e-12)).max())


def _check(path, x: torch.Tensor, ref: np.ndarray) -> None:
    graph = Predictor(path, seed=5).predict(x.numpy(), S_GRAPH, return_samples=True).probs
    graph = np.asarray(graph, dtype=np.float64)
    assert _max_z(graph, ref) <= Z, _max_z(graph, ref)
    sp_g, sp_t = graph.std(0).mean(), ref.std(0).mean()
    assert abs(sp_g - sp_t) <= 0.15 * sp_t, (sp_g, sp_t)


def _only_owned_noise(path) -> None:
    m = onnx.load(str(path))
    ops = {n.op_type for n in m.graph.node}
    assert "Dropout" not in ops
    assert {n.op_type for n in random_nodes(m)} == {"RandomUniformLike"}


X_SEQ = torch.randn(6, 10, 4, generator=torch.Generator().manual_seed(5))


#: known limitation (the same with a plain matmul attention): inside the stochastic family's
#: sample loop torch.export specializes ``reshape(b, t, ...)`` with ``b = x.shape[0]`` to the
#: example's B, so the graph fixes the batch axis of this ``[B, T, F]`` encoder; the export's
#: batch-axis check (issue 22 kind 7) refuses it in one line instead of writing a graph that
#: ONNX Runtime rejects at every other batch size
_LOOP_BATCH = pytest.mark.xfail(
    strict=True,
    raises=ExportError,
    reason="the sample loop fixes the batch axis of a [B, T, F] input: refused at export",
)


@pytest.mark.parametrize(
    ("posterior", "noise", "bound"),
    [
        ("auto", 0.0, False),
        ("auto", 0.0, True),
        pytest.param("stochastic", 0.0, True, marks=_LOOP_BATCH),
        pytest.param("auto", 0.3, True, marks=_LOOP_BATCH),
    ],
    ids=["mcdropout", "mcdropout-bound-sdpa", "loop-bound-sdpa", "auto-loop-with-noise"],
)
def test_sdpa_dropout_matches_torch_mc_average(tmp_path, posterior, noise, bound):
    net = _seeded(lambda: Encoder(noise=noise, bound=bound))
    res = export_model(net, X_SEQ, tmp_path / "enc.onnx", posterior=posterior, seed=0)
    want = "stochastic" if noise or posterior == "stochastic" else "mcdropout"
    assert res.family == want
    _only_owned_noise(res.path)
    ref = _torch_mc(net, X_SEQ)
    # the test has power: the same encoder without its attention dropout is off by more than Z
    net.b.p = 0.0
    assert _max_z(_torch_mc(net, X_SEQ), ref) > Z
    net.b.p = 0.3
    _check(res.path, X_SEQ, ref)


def test_loop_that_fixes_the_batch_axis_is_refused_with_nothing_written(tmp_path):
    net = _seeded(lambda: Encoder(noise=0.0, bound=True))
    with pytest.raises(ExportError, match=r"fixes the batch axis at 6"):
        export_model(net, X_SEQ, tmp_path / "enc.onnx", posterior="stochastic", seed=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("need_weights", [True, False], ids=["weights-path", "sdpa-path"])
def test_multihead_attention_dropout_is_detected_and_sampled(tmp_path, need_weights):
    """``auto`` picks MC dropout for a model whose only dropout is MultiheadAttention's."""
    net = _seeded(lambda: MHANet(need_weights))
    res = export_model(net, X_SEQ, tmp_path / "mha.onnx", seed=0)
    assert res.family == "mcdropout"
    _only_owned_noise(res.path)
    ref = _torch_mc(net, X_SEQ)
    assert ref.std(0).mean() > 0.005
    _check(res.path, X_SEQ, ref)


def test_import_time_bound_dropout_is_detected_and_sampled(tmp_path):
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    net = _seeded(BoundDropout)
    draws = noise_census(net, x)
    assert [(d.call, d.dropout, d.hidden) for d in draws] == [("F.dropout", True, False)]
    res = export_model(net, x, tmp_path / "drop.onnx", seed=0)
    assert res.family == "mcdropout"
    _only_owned_noise(res.path)
    _check(res.path, x, _torch_mc(net, x))


def test_bound_dropout_runs_in_the_sample_loop_too(tmp_path):
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(2))
    net = _seeded(BoundDropout)
    res = export_model(net, x, tmp_path / "drop.onnx", posterior="stochastic", seed=0)
    _only_owned_noise(res.path)
    _check(res.path, x, _torch_mc(net, x))


def test_sdpa_dropout_through_an_attribute_is_refused_in_the_loop(tmp_path):
    net = _seeded(AttrNet)
    with pytest.raises(UnsupportedLayerError) as err:
        export_model(net, X_SEQ, tmp_path / "a.onnx", seed=0)
    msg = str(err.value)
    assert msg.startswith(
        "module 'attn' calls F.scaled_dot_product_attention with dropout_p > 0 through a name "
        "qbnn cannot rebind"
    )
    assert "\n" not in msg
    assert not (tmp_path / "a.onnx").exists()


def test_the_users_functional_names_are_restored_after_export(tmp_path):
    net = _seeded(lambda: Encoder(bound=True))
    export_model(net, X_SEQ, tmp_path / "enc.onnx", seed=0, verify=False)
    assert sdpa is torch._C._nn.scaled_dot_product_attention
    assert globals()["sdpa"] is F.scaled_dot_product_attention
    assert drop is F.dropout and F.dropout.__module__ == "torch.nn.functional"
