"""pure_forward: a forward with side effects traced once with them neutralised (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qbnn.exporters.modules.dropout import mc_mode
from qbnn.exporters.modules.pureforward import pure_forward
from qbnn.runtimes.errors import ExportError

from sideeffect_models import SideEffectBBB, fills_mlp, side_effect_mlp
from tiny_models import example

aten = torch.ops.aten


def _targets(pure) -> list:
    return [n.target for n in pure.graph.graph.nodes if n.op == "call_function"]


def test_the_traced_graph_is_functional_and_keeps_only_what_reaches_the_output():
    model = mc_mode(side_effect_mlp())
    pure = pure_forward(model, example((6,)))
    targets = _targets(pure)
    assert not [t for t in targets if t._schema.is_mutable]  # no normal_ / copy_ left
    random = [t for t in targets if torch.Tag.nondeterministic_seeded in t.tags]
    assert random == [aten.randn_like.default, aten.normal.Tensor_Tensor] * 2
    assert aten.log.default not in targets  # the KL, which no output reads, is gone
    assert sorted(name for name, _ in pure.named_buffers()) == [
        f"graph.state__{layer}__{p}"
        for layer in ("l1", "l2")
        for p in ("b_mu", "b_rho", "eps", "w_mu", "w_rho")
    ]
    for batch in (1, 5):  # the batch axis stays free
        assert pure(example((6,), batch=batch)).shape == (batch, 3)


def test_fills_keep_their_law():
    """uniform_(-1, 1), bernoulli_(0.7), exponential_(2): 4000 traced forwards (seed 0), each
    draw's mean within 5 standard errors of the law's (1/sqrt(3), 0.46, 0.5 per draw)."""
    pure = pure_forward(fills_mlp(), example((6,)))
    torch.manual_seed(0)
    with torch.no_grad():
        noise = torch.stack([pure(example((6,)))[1] for _ in range(4000)]).double().numpy()
    n = noise.shape[0]
    for row, mean, sd in ((0, 0.0, 3**-0.5), (1, 0.7, (0.21) ** 0.5), (2, 0.5, 0.5)):
        assert np.all(np.abs(noise[:, row].mean(0) - mean) <= 5 * sd / n**0.5), row
    assert set(np.unique(noise[:, 1])) == {0.0, 1.0}
    assert noise[:, 0].min() >= -1 and noise[:, 0].max() < 1 and noise[:, 2].min() >= 0


def test_an_untraceable_forward_names_torchs_reason():
    class Branchy(SideEffectBBB):
        def forward(self, x):
            self.eps.data.normal_()
            if self.eps.sum() > 0:  # a Python branch on a draw's value
                return x @ self.w_mu.T
            return -x @ self.w_mu.T

    with pytest.raises(ExportError, match=r"side effects neutralised failed: .*data-dependent"):
        pure_forward(Branchy(6, 3), example((6,)))
