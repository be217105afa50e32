"""Loading user models for the CLI: ``pkg.module:factory`` plus an optional checkpoint."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from qbnn.runtimes.errors import ModelLoadError, UsageError, first_line

__all__ = ["load_factory", "load_model", "load_weights", "parse_shape"]


def parse_shape(text: str) -> tuple[int, ...]:
    """``"3,32,32"`` -> ``(3, 32, 32)``; every entry must be a positive integer."""
    try:
        shape = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise UsageError(
            f"--input-shape must be positive integers separated by commas (e.g. 3,32,32); "
            f"got '{text}'"
        )
    return shape


def load_factory(spec: str) -> object:
    """Import ``pkg.module:factory`` and call it; it must return a module, a list of modules or
    any other posterior a registered exporter accepts (a fitted laplace-torch object, a
    ``SwagPosterior``, ``WeightSamples``)."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise UsageError(f"--model must look like 'package.module:factory'; got '{spec}'")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ModelLoadError(f"cannot import module '{mod_name}' from '{spec}': {exc}") from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ModelLoadError(f"'{attr}' in module '{mod_name}' is missing or not callable")
    try:
        model = factory()
    except Exception as exc:  # the user's factory failed: report it, keep the cause chained
        raise ModelLoadError(f"factory '{spec}' raised {type(exc).__name__}: {exc}") from exc
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, (list, tuple)) and model and all(isinstance(m, nn.Module) for m in model):
        return list(model)
    from .api import known_families  # registered posterior types (laplace, swag, ...)

    if any(e.detect(model) for e in known_families().values()):
        return model
    raise ModelLoadError(
        f"factory '{spec}' returned a {type(model).__name__}; expected a torch.nn.Module, a "
        "list of modules, a fitted laplace-torch object, a SwagPosterior or WeightSamples"
    )


def _state_dict(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelLoadError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def load_weights(model: nn.Module, path: str | Path, *, trust: bool = False) -> nn.Module:
    """Load a state dict into ``model`` (strict). ``torch.load(weights_only=True)`` unless
    ``trust`` opts in to full unpickling of a checkpoint from a trusted source."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:
        hint = (
            ""
            if trust
            else " (it may need full unpickling: pass --trust-checkpoint if you trust it)"
        )
        raise ModelLoadError(f"cannot load checkpoint {path}: {first_line(exc)}{hint}") from exc
    state = _state_dict(obj, path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape_bad = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state
        and hasattr(state[k], "shape")
        and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shape_bad:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shape_bad)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:3])}" + (" ..." if len(keys) > 3 else ""))
        raise ModelLoadError(f"weights in {path} do not match the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=True)
    return model


def load_model(spec: str, weights: str | Path | None = None, *, trust: bool = False):
    """Factory plus optional weights (a single module only; ensembles load in the factory)."""
    model = load_factory(spec)
    if weights is not None:
        if not isinstance(model, nn.Module):
            raise UsageError(
                "--weights applies to a single module; factories of ensembles and fitted "
                f"posteriors load their own weights (got a {type(model).__name__})"
            )
        load_weights(model, weights, trust=trust)
    return model
