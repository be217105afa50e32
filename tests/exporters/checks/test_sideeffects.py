"""side_effects: the attribute writes and in-place state writes of one forward (issue 22)."""

from __future__ import annotations

import torch

from qbnn.exporters.checks.sideeffects import SideEffects, detached_copy, side_effects

from sideeffect_models import fills_mlp, side_effect_mlp
from tiny_models import bbb_mlp, example


def test_lists_attribute_writes_and_in_place_state_writes():
    model = side_effect_mlp()
    eps = model.l1.eps.clone()
    found = side_effects(model, example((6,)))
    assert found.attributes == ("kl", "l1.calls", "l1.kl", "l2.calls", "l2.kl")
    assert found.state == ("l1.eps (normal_)", "l2.eps (normal_)")
    assert torch.equal(model.l1.eps, eps) and model.l1.calls == 0  # ran on a copy
    assert found.note() == (
        "the forward's side effects were neutralised for tracing: attribute writes dropped "
        "(kl, l1.calls, l1.kl and 2 more); in-place writes into module state made functional "
        "(l1.eps (normal_), l2.eps (normal_))"
    )


def test_each_in_place_fill_is_named_with_its_op():
    assert side_effects(fills_mlp(), example((6,))).state == (
        "u (uniform_)",
        "m (bernoulli_)",
        "e (exponential_)",
    )


def test_a_pure_forward_has_none():
    found = side_effects(bbb_mlp(), example((6,)))
    assert found == SideEffects() and not found
    assert not side_effects([bbb_mlp()], example((6,)))  # not a module


def test_detached_copy_lets_a_trained_layer_be_copied():
    """A training step leaves ``self.kl`` with autograd history, which deepcopy refuses."""
    model = side_effect_mlp().train()
    model(example((6,))).sum().backward()
    assert not model.kl.is_leaf
    copied = detached_copy(model)
    assert copied is not model and copied.kl.is_leaf and torch.equal(copied.kl, model.kl)
    assert not model.kl.is_leaf  # the caller's model is unchanged
    plain = bbb_mlp()
    assert detached_copy(plain) is plain
