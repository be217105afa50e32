"""Bayesian-Torch's own int8 QBNN path, as a peer baseline for qbnn benchmarks.

Bayesian-Torch (IntelLabs/bayesian-torch, 0.5.0) ships post-training quantization of BNNs from
Lin et al., "Quantization for Bayesian Deep Learning" (IISWC 2023). Its CIFAR ResNet-20 flow is
``quantize()`` in ``bayesian_torch/examples/main_bayesian_cifar_dnn2bnn.py`` (run by
``bayesian_torch/scripts/quantize_bayesian_cifar.sh``, the README's PTQ command)::

    model.eval(); model.cpu()
    model.qconfig = torch.quantization.get_default_qconfig("onednn")
    enable_prepare(model)                      # bayesian_torch/ao/quantization/quantize.py
    prepared_model = torch.quantization.prepare(model)
    for data, _ in calib_loader: prepared_model(data)          # calibration
    quantized_model = convert(prepared_model)  # torch convert + models/bnn_to_qbnn.bnn_to_qbnn

``enable_prepare`` calls ``Conv2dReparameterization.prepare()`` / ``LinearReparameterization
.prepare()`` on every Bayesian layer, which attaches QuantStubs with their own MinMax qconfig
to observe sigma, mu, eps, sigma*eps, the sampled weight (qint8, symmetric) and the layer
input/output (quint8). ``convert`` turns them into ``Quantize`` modules, then ``bnn_to_qbnn``
swaps each layer for ``Quantized{Conv2d,Linear}Reparameterization``
(``layers/variational_layers/quantize_*_variational.py``) holding int8 mu and sigma plus the
calibrated scales in ``quant_dict``. Their forward still draws a fresh fp32 ``eps ~ N(0, 1)``
every call, quantizes it (qint8, calibrated scale), and forms the weight with
``quantized.mul(sigma, eps)`` then ``quantized.add(., mu)``, each requantized to the calibrated
scale of the observed fp32 product/sum; the weight is prepacked and run by
``torch.nn.quantized.functional.conv2d``/``linear`` on every forward. Biases (only the final
Linear has one) stay fp32 and are sampled in fp32. The Linear dequantizes its output, so the
model returns fp32 logits. BatchNorm and the residual ``FloatFunctional`` adds are converted by
torch's eager-mode convert using the model qconfig.

On torch 2.13 the flow runs unchanged (``torch.quantization`` / ``torch.nn.quantized`` are
still aliases of ``torch.ao``); it only emits DeprecationWarnings and a UserWarning about
quantized tensor creation. Differences from the upstream script, all harness-level:

* the caller's fp32 model is deep-copied first (``enable_prepare`` mutates it in place);
* ``torch.backends.quantized.engine`` is global and the Bayesian layers prepack their freshly
  sampled weight on every forward with whatever engine is current, so the returned model is
  wrapped in :class:`BTInt8` which sets ``engine`` around each forward;
* the engine is a parameter. The qconfig (used only for BatchNorm and the residual adds; the
  Bayesian layers carry their own observers) stays ``"onednn"`` as upstream unless
  ``qconfig_engine`` says otherwise.
"""

from __future__ import annotations

import copy
import time
import warnings

import torch
from torch import nn

__all__ = [
    "BTInt8",
    "bt_int8",
    "bt_resnet20_bnn",
    "int8_weight_resample_fraction",
    "mc_forward",
]

ENGINES = ("x86", "onednn", "fbgemm")


def bt_resnet20_bnn(seed: int = 0, posterior_rho_init: float = -3.0) -> nn.Module:
    """Bayesian-Torch's CIFAR ResNet-20 converted by ``dnn_to_bnn`` (Reparameterization), eval.

    Prior parameters are those of ``main_bayesian_cifar_dnn2bnn.py`` (prior N(0, 1), mu init 0,
    no MOPED). ``posterior_rho_init=-3`` gives sigma = softplus(-3) ~ 0.049.
    """
    from bayesian_torch.models.deterministic.resnet import resnet20
    from bayesian_torch.models.dnn_to_bnn import dnn_to_bnn

    torch.manual_seed(seed)
    model = resnet20()
    dnn_to_bnn(
        model,
        {
            "prior_mu": 0.0,
            "prior_sigma": 1.0,
            "posterior_mu_init": 0.0,
            "posterior_rho_init": posterior_rho_init,
            "type": "Reparameterization",
            "moped_enable": False,
            "moped_delta": 0.5,
        },
    )
    return model.eval()


class BTInt8(nn.Module):
    """Bayesian-Torch QBNN model pinned to a quantized engine.

    The wrapped model's Bayesian layers call ``conv2d_prepack`` on each forward with the global
    ``torch.backends.quantized.engine``; this wrapper sets ``engine`` for the duration of the
    forward and restores the previous one. The converted model itself is ``self.qmodel``.
    """

    def __init__(self, qmodel: nn.Module, engine: str) -> None:
        super().__init__()
        self.qmodel = qmodel
        self.engine = engine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run one stochastic int8 forward pass (fresh eps in every Bayesian layer)."""
        previous = torch.backends.quantized.engine
        if previous != self.engine:
            torch.backends.quantized.engine = self.engine
        try:
            return self.qmodel(x)
        finally:
            if previous != self.engine:
                torch.backends.quantized.engine = previous


def bt_int8(
    model: nn.Module,
    calib: torch.Tensor,
    engine: str = "x86",
    *,
    qconfig_engine: str = "onednn",
    calib_batch_size: int = 100,
) -> nn.Module:
    """Quantize a Bayesian-Torch BNN to int8 with Bayesian-Torch's own PTQ flow.

    Mirrors ``quantize()`` of ``bayesian_torch/examples/main_bayesian_cifar_dnn2bnn.py``:
    qconfig, ``enable_prepare``, ``torch.quantization.prepare``, calibration forwards over
    ``calib`` (split into batches of ``calib_batch_size``; upstream uses one batch of 100
    CIFAR training images), and Bayesian-Torch's ``convert`` (torch convert + ``bnn_to_qbnn``).
    ``model`` is not modified. Returns a :class:`BTInt8` pinned to ``engine``.

    Raises:
        RuntimeError: if ``engine`` is not supported or a step fails; the message names the
            step and carries the original exception type and message.
    """
    supported = torch.backends.quantized.supported_engines
    if engine not in supported:
        raise RuntimeError(f"bt_int8: engine {engine!r} not in supported_engines {supported}")

    step = "import bayesian_torch.ao.quantization.quantize (enable_prepare, convert)"
    previous = torch.backends.quantized.engine
    try:
        from bayesian_torch.ao.quantization.quantize import convert, enable_prepare

        step = f"torch.backends.quantized.engine = {engine!r}"
        torch.backends.quantized.engine = engine
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            step = "deepcopy + eval"
            m = copy.deepcopy(model).eval().cpu()
            step = f"model.qconfig = torch.quantization.get_default_qconfig({qconfig_engine!r})"
            m.qconfig = torch.quantization.get_default_qconfig(qconfig_engine)
            step = "bayesian_torch enable_prepare(model)"
            enable_prepare(m)
            step = "torch.quantization.prepare(model)"
            prepared = torch.quantization.prepare(m)
            step = "calibration forwards of the prepared model"
            with torch.no_grad():
                for batch in calib.split(calib_batch_size):
                    prepared(batch)
            step = "bayesian_torch convert(prepared) (torch.quantization.convert + bnn_to_qbnn)"
            qmodel = convert(prepared)
            qmodel.eval()
            step = "first int8 forward of the converted model"
            with torch.no_grad():
                out = qmodel(calib[:1])
            if isinstance(out, tuple):
                out = out[0]
            if not torch.isfinite(out.dequantize() if out.is_quantized else out).all():
                raise FloatingPointError("non-finite int8 output")
    except Exception as exc:  # re-raised with the failing step recorded
        raise RuntimeError(
            f"bt_int8 failed at step [{step}] (torch {torch.__version__}, engine {engine}): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        torch.backends.quantized.engine = previous
    return BTInt8(qmodel, engine)


def mc_forward(model: nn.Module, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Run ``num_samples`` stochastic forward passes in a loop; return logits ``[S, B, C]``.

    This is how Bayesian-Torch users (and its examples) run MC inference. Handles models that
    return ``(out, kl)`` and quantized outputs.
    """
    outs = []
    with torch.no_grad():
        for _ in range(num_samples):
            out = model(x)
            if isinstance(out, tuple):
                out = out[0]
            if out.is_quantized:
                out = out.dequantize()
            outs.append(out)
    return torch.stack(outs)


def _bayesian_int8_layers(qmodel: nn.Module) -> list[nn.Module]:
    return [
        m
        for m in qmodel.modules()
        if type(m).__name__.startswith("Quantized") and getattr(m, "quant_dict", None) is not None
    ]


def _sample_int8_weight(layer: nn.Module) -> torch.Tensor:
    """Re-run the first three lines of the QBNN layer's forward (the int8 weight draw)."""
    eps_buf = layer.eps_kernel if hasattr(layer, "eps_kernel") else layer.eps_weight
    qd = layer.quant_dict
    eps = torch.quantize_per_tensor(
        eps_buf.data.normal_(), qd[0]["scale"], qd[0]["zero_point"], torch.qint8
    )
    w = torch.ops.quantized.mul(
        layer.quantized_sigma_weight, eps, qd[1]["scale"], qd[1]["zero_point"]
    )
    w = torch.ops.quantized.add(w, layer.quantized_mu_weight, qd[2]["scale"], qd[2]["zero_point"])
    return w.int_repr()


def int8_weight_resample_fraction(model: nn.Module) -> float:
    """Fraction of int8 weight entries (all Bayesian layers) that change between two draws.

    0.0 means quantization has erased the weight posterior: every draw gives the int8 mean.
    """
    qmodel = model.qmodel if isinstance(model, BTInt8) else model
    changed = total = 0
    with torch.no_grad():
        for layer in _bayesian_int8_layers(qmodel):
            a, b = _sample_int8_weight(layer), _sample_int8_weight(layer)
            changed += int((a != b).sum())
            total += a.numel()
    return changed / max(total, 1)


def _time_forward(model: nn.Module, x: torch.Tensor, reps: int = 3) -> float:
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _report(name: str, model: nn.Module, x: torch.Tensor, ref_probs: torch.Tensor | None) -> None:
    logits = mc_forward(model, x, 2)
    probs = logits.softmax(-1)
    differ = not torch.equal(logits[0], logits[1])
    line = (
        f"  {name:<18} runs=yes shape={tuple(logits.shape)} samples_differ={differ} "
        f"max|dlogit|(s0,s1)={(logits[0] - logits[1]).abs().max().item():.3g}"
    )
    if ref_probs is not None:
        diff = (probs.mean(0) - ref_probs.mean(0)).abs().max().item()
        line += f" max|mean prob fp32-int8|={diff:.3f}"
    if isinstance(model, BTInt8):
        line += f" int8_w_resampled={int8_weight_resample_fraction(model):.4f}"
    line += f" t_fwd(b={x.shape[0]})={_time_forward(model, x) * 1e3:.1f}ms"
    print(line)


def _refresh_bn_stats(model: nn.Module, data: torch.Tensor) -> nn.Module:
    """Re-estimate BatchNorm running stats on ``data`` (cumulative average), back to eval.

    Smoke-check only: at init (mean 0, var 1) the untrained ResNet-20's logits are O(100), the
    softmax saturates and probability differences mean little.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    with torch.no_grad():
        model(data)
    return model.eval()


def main() -> None:
    """Smoke check: fp32 BNN and Bayesian-Torch int8 QBNN on every available engine."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*quantized tensor creation.*")
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    calib = torch.randn(24, 3, 32, 32, generator=gen)
    engines = [e for e in ENGINES if e in torch.backends.quantized.supported_engines]
    print(
        f"torch {torch.__version__}; supported engines {torch.backends.quantized.supported_engines}"
    )
    print("input/calib: N(0,1) noise; untrained weights; MC S=2; batch 2; 3 calib batches of 8")

    for bn_refresh in (False, True):
        for rho in (-3.0, -9.0):
            sigma = torch.nn.functional.softplus(torch.tensor(rho)).item()
            bn = "BN stats re-estimated on calib" if bn_refresh else "BN at init stats"
            print(f"ResNet-20 BNN, posterior_rho_init={rho} (sigma~{sigma:.3g}), {bn}")
            bnn = bt_resnet20_bnn(seed=0, posterior_rho_init=rho)
            if bn_refresh:
                _refresh_bn_stats(bnn, calib)
            torch.manual_seed(1)
            ref = mc_forward(bnn, x, 2)
            print(f"  fp32 max|logit|={ref.abs().max().item():.3g}")
            ref = ref.softmax(-1)
            _report("fp32", bnn, x, None)
            for engine in engines:
                try:
                    q = bt_int8(bnn, calib, engine=engine, calib_batch_size=8)
                except RuntimeError as exc:
                    print(f"  int8[{engine}]: runs=no -> {exc}")
                    continue
                _report(f"int8[{engine}]", q, x, ref)


if __name__ == "__main__":
    main()
