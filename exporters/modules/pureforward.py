"""A network's forward traced once with its side effects neutralised, as a pure module.

``torch.export`` traces the sample loop's body strictly and refuses a forward that writes
attributes (torch-uncertainty's ``self.log_prior = ...``: "HOP: Unsafe side effect") or fills a
buffer in place with noise (blitz's ``self.eps_w.data.normal_()``). :func:`pure_forward` traces
the forward beforehand with :func:`torch.func.functionalize` under ``make_fx`` (symbolic batch
size): attribute writes never reach the traced graph, in-place writes into module state become
functional values (their write-back into the module, which no output reads, is dropped), and the
in-place random fills become functional draws built from ``torch.randn_like`` /
``torch.rand_like`` (:class:`_FunctionalNoise`), which the export turns into qbnn's seeded noise
(:mod:`qbnn.exporters.passes.randomops`). Computations no output depends on (the ELBO terms of
the layers) are removed. The result is an ``nn.Module`` whose forward is a plain aten graph:
torch.export traces it inside the sample loop like any tensor code.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import fx, nn
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from qbnn.runtimes.errors import ExportError

from ..tracecause import trace_cause

__all__ = ["PureForward", "pure_forward"]

_aten = torch.ops.aten


def _normal(a: dict) -> torch.Tensor:
    return torch.randn_like(a["self"]) * a.get("std", 1.0) + a.get("mean", 0.0)


def _uniform(a: dict) -> torch.Tensor:
    low, high = a.get("from", 0.0), a.get("to", 1.0)
    return torch.rand_like(a["self"]) * (high - low) + low


def _bernoulli(a: dict) -> torch.Tensor:
    t = a["self"]
    return (torch.rand_like(t) < a.get("p", 0.5)).to(t.dtype)


def _exponential(a: dict) -> torch.Tensor:
    return -torch.log1p(-torch.rand_like(a["self"])) / a.get("lambd", 1.0)


def _log_normal(a: dict) -> torch.Tensor:
    return torch.exp(torch.randn_like(a["self"]) * a.get("std", 2.0) + a.get("mean", 1.0))


def _cauchy(a: dict) -> torch.Tensor:
    u = torch.rand_like(a["self"])
    return a.get("median", 0.0) + a.get("sigma", 1.0) * torch.tan(math.pi * (u - 0.5))


#: the functional forms of the in-place random fills (what functionalization emits for
#: ``normal_``, ``uniform_``, ...) -> the same law from ``randn_like`` / ``rand_like``
_FILLS = {
    _aten.normal_functional.default: _normal,
    _aten.uniform.default: _uniform,
    _aten.bernoulli.p: _bernoulli,
    _aten.bernoulli.Tensor: _bernoulli,
    _aten.exponential.default: _exponential,
    _aten.log_normal.default: _log_normal,
    _aten.cauchy.default: _cauchy,
}


class _FunctionalNoise(TorchDispatchMode):
    """Rewrites the functional forms of in-place random fills into ``randn_like`` /
    ``rand_like`` compositions with the same law (a ``generator=`` argument is dropped: the
    graph draws its own seeded noise)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        fill = _FILLS.get(func)
        if fill is None:
            return func(*args, **kwargs)
        return fill(_named_args(func, args, kwargs))


def _named_args(func, args: tuple, kwargs: dict) -> dict:
    """``{schema argument name: value}`` with the schema's defaults filled in."""
    named = {}
    for i, arg in enumerate(func._schema.arguments):
        if i < len(args):
            named[arg.name] = args[i]
        elif arg.name in kwargs:
            named[arg.name] = kwargs[arg.name]
        elif arg.has_default_value():
            named[arg.name] = arg.default_value
    named.pop("generator", None)
    return named


@contextlib.contextmanager
def _no_validation(net: nn.Module):
    """torch.distributions argument checks off (``if not valid.all(): raise`` cannot be traced
    on a symbolic draw; they only raise, never change a value), restored on exit."""
    dists = [
        d
        for m in net.modules()
        for d in vars(m).values()
        if isinstance(d, torch.distributions.Distribution)
    ]
    saved_default = torch.distributions.Distribution._validate_args
    saved = [d._validate_args for d in dists]
    torch.distributions.Distribution.set_default_validate_args(False)
    for d in dists:
        d._validate_args = False
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(saved_default)
        for d, v in zip(dists, saved, strict=True):
            d._validate_args = v


class PureForward(nn.Module):
    """``forward(x [B, *F])``: the traced graph ``graph`` (an ``fx.GraphModule`` holding the
    network's state as buffers) with the network's output structure restored."""

    def __init__(self, graph: fx.GraphModule, out_spec: pytree.TreeSpec) -> None:
        super().__init__()
        self.graph = graph
        self.out_spec = out_spec

    def forward(self, x: torch.Tensor):
        return pytree.tree_unflatten(list(self.graph(x)), self.out_spec)


def _trace(
    net: nn.Module, x: torch.Tensor
) -> tuple[fx.GraphModule, pytree.TreeSpec, list[str], list[torch.Tensor]]:
    """make_fx of the functionalized forward: inputs ``(state values, x)``, flat outputs."""
    named = {**dict(net.named_parameters(remove_duplicate=False))}
    named.update(dict(net.named_buffers(remove_duplicate=False)))
    names, values = list(named), [t.detach() for t in named.values()]
    spec: list[pytree.TreeSpec] = []

    def f(vals: list[torch.Tensor], inp: torch.Tensor) -> list[torch.Tensor]:
        with _FunctionalNoise():
            out = torch.func.functional_call(
                net, dict(zip(names, vals, strict=True)), (inp,), tie_weights=False
            )
        flat, out_spec = pytree.tree_flatten(out)
        spec.append(out_spec)
        return flat

    pure = torch.func.functionalize(f, remove="mutations_and_views")
    with torch.no_grad(), _no_validation(net):
        gm = make_fx(pure, tracing_mode="symbolic", _allow_non_fake_inputs=True)(values, x)
    return gm, spec[-1], names, values


def _bind_state(gm: fx.GraphModule, values: list[torch.Tensor], names: list[str]) -> None:
    """Drop write-backs into module state, dead code, unused state; the used state becomes the
    graph module's buffers, so the graph takes ``x`` only."""
    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    state = set(placeholders[:-1])
    for node in list(graph.nodes):  # functionalization's copy-back into the module's state
        if node.target is _aten.copy_.default and node.args[0] in state:
            graph.erase_node(node)
    graph.eliminate_dead_code(is_impure_node=lambda n: n.is_impure(impure_random=False))
    graph._codegen = fx.graph.CodeGen()  # plain positional input: x
    for node, value, name in zip(placeholders[:-1], values, names, strict=True):
        if node.users:
            attr = "state__" + name.replace(".", "__")
            gm.register_buffer(attr, value.clone())
            with graph.inserting_before(node):
                node.replace_all_uses_with(graph.get_attr(attr))
        graph.erase_node(node)
    graph.lint()
    gm.recompile()


def pure_forward(net: nn.Module, x: torch.Tensor) -> PureForward:
    """``net``'s forward on inputs shaped like ``x [B, *F]`` (any batch size), traced once with
    its side effects neutralised (module docstring). ``net`` is traced as it is (its train /
    eval flags as set); its outputs are those of one forward, with fresh noise per call.

    Raises :class:`ExportError` naming torch's reason when the forward cannot be traced (a
    data-dependent Python branch on a tensor's values, numpy randomness).
    """
    xb = x if x.shape[0] > 1 else x.expand(2, *x.shape[1:]).contiguous()
    try:
        gm, out_spec, names, values = _trace(net, xb)
    except Exception as exc:
        raise ExportError(
            "the forward writes attributes or module state, and tracing it with those side "
            f"effects neutralised failed: {trace_cause(exc)}"
        ) from exc
    _bind_state(gm, values, names)
    return PureForward(gm, out_spec)
