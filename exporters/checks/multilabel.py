"""Multi-label heads: K independent Bernoulli labels ``[B, K]`` told apart from one categorical.

A multi-label network (trained with ``BCELoss`` / ``BCEWithLogitsLoss``) returns K per-label
logits, or K probabilities after a final sigmoid; its rows do not sum to 1 and a softmax over
them is wrong. The rules, applied to the network's output on the example input
(:func:`multilabel_form`):

* ``head`` unset: an output that comes out of a sigmoid (``nn.Sigmoid``, ``torch.sigmoid``,
  ``Tensor.sigmoid``, ``F.sigmoid``, possibly reshaped) with K > 1 columns is
  ``multilabel_probs``. Values all in [0, 1] whose rows do not sum to 1 with no sigmoid found at
  the end could be probabilities or logits: :class:`ConfigError` asks for ``head=``.
* ``head="multilabel"``: K logits (the graph applies the sigmoid); refused when the forward
  already ends in a sigmoid (it would be applied twice).
* ``head="multilabel_probs"``: K probabilities; refused unless every value lies in [0, 1].
* Refused in one line: a ``LogSigmoid`` end with K > 1 (return the logits instead) and
  multi-label dense outputs ``[B, K, *spatial]``.

One column (K = 1) with ``head`` unset stays a binary (Bernoulli) head reported as two classes.
"""

from __future__ import annotations

import torch

from qbnn.runtimes.errors import ConfigError, UnsupportedLayerError

from ..modules.heads import Head

__all__ = ["LOG_SIGMOID", "SIGMOID", "multilabel_form"]

#: the ``end`` names :func:`qbnn.exporters.checks.outputform.inspect_output` reports
SIGMOID, LOG_SIGMOID = "Sigmoid", "LogSigmoid"


def multilabel_form(
    requested: Head | None,
    pred: torch.Tensor,
    end: str | None,
    row_shape: tuple[int, ...],
    atol: float = 1e-3,
) -> Head | None:
    """The multi-label head to export for ``pred [B, *row_shape]`` (``row_shape = (K,)``), or
    None when the output is not multi-label (the categorical and binary rules then apply).

    ``requested``: the ``head`` option (None = detect); ``end``: ``Sigmoid`` / ``LogSigmoid``
    when the forward's output came out of one. Raises :class:`ConfigError` for a ``head`` that
    contradicts the output or an ambiguous output, :class:`UnsupportedLayerError` for forms
    not supported (log-sigmoid, dense multi-label).
    """
    multi = requested is not None and requested.multilabel
    k = row_shape[0] if row_shape else 1
    if k == 1 and not multi:
        return None  # the binary (Bernoulli) head
    v = pred.double().reshape(pred.shape[0], *row_shape)
    if len(row_shape) > 1 and (multi or end == SIGMOID):
        raise UnsupportedLayerError(
            f"multi-label dense outputs (K independent labels per position, per-row shape "
            f"{list(row_shape)}) are not supported; return a flat [B, K] output"
        )
    if end == LOG_SIGMOID:
        raise UnsupportedLayerError(
            f"the model's {k} outputs per row end in a log-sigmoid (K independent "
            "log-probabilities), which qbnn does not export; return the logits and pass "
            "head='multilabel'"
        )
    finite = bool(torch.isfinite(v).all())
    in_unit = finite and bool(v.min() >= 0 and v.max() <= 1)
    if requested == Head.MULTILABEL:
        if end == SIGMOID:
            raise ConfigError(
                "head='multilabel' (logits) contradicts the model's output, which comes out of "
                "a sigmoid (probabilities; a second sigmoid would be wrong); pass "
                "head='multilabel_probs' or leave head unset"
            )
        return Head.MULTILABEL
    if requested == Head.MULTILABEL_PROBS:
        if not in_unit:
            lo, hi = float(v.min()), float(v.max())
            raise ConfigError(
                f"head='multilabel_probs' contradicts the model's output on the example input "
                f"(values in [{lo:.3g}, {hi:.3g}], not probabilities); pass head='multilabel' "
                "for per-label logits"
            )
        return Head.MULTILABEL_PROBS
    if end == SIGMOID:
        if requested is None:
            return Head.MULTILABEL_PROBS
        raise ConfigError(
            f"head='{requested.value}' contradicts the model's output, which comes out of a "
            f"sigmoid over {k} columns (K independent label probabilities, rows not summing to "
            "1); pass head='multilabel_probs' or leave head unset"
        )
    if requested is None and in_unit and len(row_shape) == 1:
        sums = v.sum(1)
        if not torch.allclose(sums, torch.ones_like(sums), atol=atol):
            raise ConfigError(
                f"the classifier's {k} outputs per row lie in [0, 1] on the example input with "
                f"row sums {float(sums.min()):.3g}..{float(sums.max()):.3g} (not 1) and no "
                "sigmoid was found at the end of forward, so they could be K independent label "
                "probabilities or logits; pass head='multilabel_probs' or head='logits' "
                "(--head) to say which"
            )
    return None
