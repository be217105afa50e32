"""``sdpa_decomposed`` (issue 22, kind 3): torch's SDPA math, exactly, with qbnn's dropout.

With dropout off the decomposition must equal ``F.scaled_dot_product_attention`` (scale, boolean
and additive masks, ``is_causal``, grouped-query heads, fully masked rows), in torch and in the
exported ONNX graph; with dropout on its mean over draws is the deterministic attention.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from qbnn.exporters.modules.attention import sdpa_decomposed
from qbnn.exporters.quiet import quiet_export


def _qkv(hk: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 2, 5, 4, generator=g)
    k = torch.randn(3, hk, 6, 4, generator=g)
    v = torch.randn(3, hk, 6, 3, generator=g)
    return q, k, v


def _bool_mask() -> torch.Tensor:
    m = torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) > 0.3
    m[0] = False  # a fully masked row: torch gives zeros there
    m[1] = True
    return m


CASES = {
    "plain": {},
    "scale": {"scale": 0.37},
    "bool_mask": {"attn_mask": _bool_mask()},
    "float_mask": {"attn_mask": torch.randn(3, 1, 5, 6) * 2.0},
    "neg_inf_mask": {"attn_mask": torch.where(_bool_mask(), 0.0, float("-inf"))},
    "causal": {"is_causal": True},
    "causal_scale": {"is_causal": True, "scale": 2.0},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dropout_off_equals_torch_sdpa(case):
    q, k, v = _qkv()
    kw = CASES[case]
    want = F.scaled_dot_product_attention(q, k, v, **kw)
    got = sdpa_decomposed(q, k, v, **kw)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if case == "bool_mask":
        assert torch.equal(got[:, :, 0], torch.zeros_like(got[:, :, 0]))


def test_grouped_query_heads_equal_torch_sdpa():
    q, k, v = _qkv(hk=1)
    want = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(sdpa_decomposed(q, k, v, enable_gqa=True), want)


def test_mask_with_is_causal_is_refused_as_torch_does():
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="attn_mask should not be set when is_causal"):
        sdpa_decomposed(q, k, v, attn_mask=_bool_mask(), is_causal=True)


def test_dropout_on_keeps_the_mean_and_zeroes_weights():
    """N = 4000 draws, seed 0: every output element's mean within 4.5 standard errors of the
    deterministic attention (inverted dropout is unbiased); about p of the weights dropped."""
    q, k, v = _qkv()
    torch.manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([sdpa_decomposed(q, k, v, dropout_p=0.3) for _ in range(4000)])
    det = F.scaled_dot_product_attention(q, k, v)
    se = draws.std(0) / 4000**0.5
    assert float(((draws.mean(0) - det).abs() / se).max()) < 4.5
    assert float(draws.std(0).mean()) > 0.1  # the noise is really there


class _Attn(torch.nn.Module):
    def __init__(self, kw: dict) -> None:
        super().__init__()
        self.kw = kw

    def forward(self, q, k, v):
        return sdpa_decomposed(q, k, v, **self.kw)


@pytest.mark.parametrize("case", ["bool_mask", "float_mask", "causal_scale"])
def test_exported_decomposition_is_exact(tmp_path, case):
    """The graph of the decomposition (dropout off) equals torch's SDPA to 1e-5 in ORT."""
    q, k, v = _qkv()
    kw = CASES[case]
    with quiet_export():
        prog = torch.onnx.export(_Attn(kw), (q, k, v), dynamo=True, verbose=False)
    path = tmp_path / "attn.onnx"
    prog.save(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    (got,) = sess.run(None, dict(zip(names, (q.numpy(), k.numpy(), v.numpy()), strict=True)))
    want = F.scaled_dot_product_attention(q, k, v, **kw).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
