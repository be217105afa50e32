"""Loading user models for the CLI: ``pkg.module:factory`` plus an optional checkpoint."""

from __future__ import annotations

import importlib
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from qbnn.runtimes.errors import ModelLoadError, UsageError, first_line

__all__ = [
    "describe_checkpoint",
    "import_factory",
    "load_factory",
    "load_model",
    "load_weights",
    "parse_shape",
]


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


def import_factory(spec: str):
    """Import ``pkg.module:factory`` and return the callable (without calling it).

    The module is imported from ``sys.path`` (callers put the working directory or a config's
    folder there). A missing module, a module that fails to import (syntax error: file, line
    and message) and a missing attribute each raise one-line :class:`ModelLoadError`; a missing
    *dependency* of the module keeps the ``ModuleNotFoundError`` as ``__cause__``.
    """
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise UsageError(f"--model must look like 'package.module:factory'; got '{spec}'")
    try:
        module = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name and (mod_name == exc.name or mod_name.startswith(exc.name + ".")):
            raise ModelLoadError(
                f"cannot import module '{mod_name}' from '{spec}': no such module on the path "
                f"(the working directory and installed packages); check the name or run from "
                f"the folder that holds {mod_name.partition('.')[0]}.py"
            ) from exc
        raise ModelLoadError(
            f"module '{mod_name}' (from '{spec}') imports '{exc.name}', which is not installed"
        ) from exc
    except SyntaxError as exc:
        raise ModelLoadError(
            f"cannot import module '{mod_name}' from '{spec}': {type(exc).__name__} in "
            f"{exc.filename}, line {exc.lineno}: {exc.msg}"
        ) from exc
    except Exception as exc:  # the user's module failed at import time: one line, cause chained
        raise ModelLoadError(
            f"importing module '{mod_name}' (from '{spec}') raised {type(exc).__name__}: "
            f"{first_line(exc)}"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise ModelLoadError(f"'{attr}' in module '{mod_name}' is missing or not callable")
    return factory


def load_factory(spec: str) -> object:
    """Import ``pkg.module:factory`` and call it; it must return a module, a list of modules or
    any other posterior a registered exporter accepts (a fitted laplace-torch object, a
    ``SwagPosterior``, ``WeightSamples``)."""
    factory = import_factory(spec)
    try:
        model = factory()
    except Exception as exc:  # the user's factory failed: report it, keep the cause chained
        raise ModelLoadError(f"factory '{spec}' raised {type(exc).__name__}: {exc}") from exc
    if isinstance(model, nn.Module):
        return model
    if isinstance(model, (list, tuple)) and model and all(isinstance(m, nn.Module) for m in model):
        return list(model)
    from . import families  # noqa: F401  (the registry is complete)
    from .registry import known_families  # registered posterior types (laplace, swag, ...)

    if any(e.detect(model) for e in known_families().values()):
        return model
    raise ModelLoadError(
        f"factory '{spec}' returned a {type(model).__name__}; expected a torch.nn.Module, a "
        "list of modules, a fitted laplace-torch object, a SwagPosterior or WeightSamples"
    )


_TENSOR_GLOBALS = {"torch._utils", "torch", "collections", "__builtin__", "builtins", "exceptions"}


def _pickle_globals(data: bytes, limit: int = 64) -> list[str]:
    """``module.name`` of the first classes/functions a pickle refers to (no code is run)."""
    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", ".", 1))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
            if len(names) >= limit:
                break
    except Exception:  # a truncated or foreign stream: keep what was read
        pass
    return names


def _is_onnx(raw: bytes) -> bool:
    import onnx

    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except Exception:
        return False
    return model.ir_version > 0 and len(model.graph.node) > 0


def describe_checkpoint(path: str | Path) -> tuple[str, bool]:
    """What ``path`` holds, read without unpickling: ``(description, is_pickled_module)``.

    Descriptions: ``"an ONNX model"``, ``"a pickled whole model (class m.Net)"``, ``"a pickle
    of a m.Thing object"``, ``"a zip archive that is not a torch checkpoint"``, ``"a file that
    is neither a torch checkpoint nor a pickle"``, or ``"torch weights"``.
    """
    path = Path(path)
    raw = path.read_bytes()
    pickled = None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("data.pkl")]
            if not pkl:
                return "a zip archive that is not a torch checkpoint (an .npz?)", False
            pickled = z.read(pkl[0])
    elif raw[:1] == b"\x80":  # pickle protocol 2+ (torch's legacy format or plain pickle)
        pickled = raw
    elif _is_onnx(raw):
        return "an ONNX model", False
    if pickled is None:
        return "a file that is neither a torch checkpoint nor a pickle", False
    names = _pickle_globals(pickled)
    user = [n for n in names if n.partition(".")[0] not in _TENSOR_GLOBALS]
    if "torch.nn.modules" in " ".join(names) or b"_modules" in pickled[:65536]:
        cls = (user or names or ["?"])[0]
        return f"a pickled whole model (class {cls}, saved with torch.save(model))", True
    if user and not any(n.startswith("torch._utils._rebuild") for n in names):
        return f"a pickle of a {user[0]} object, not torch weights", False
    return "torch weights", False


def _state_dict(obj: object, path: Path) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, nn.Module):  # only reachable with trust: a pickled whole model
        return obj.state_dict()
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise ModelLoadError(
            f"checkpoint {path} holds a {type(obj).__name__}, not a state dict or a torch "
            "model; save the weights with torch.save(model.state_dict(), path)"
        )
    return obj


def _unreadable(path: Path, exc: Exception, trust: bool, trust_option: str) -> ModelLoadError:
    what, module = describe_checkpoint(path)
    if trust or what == "torch weights":
        hint = f" (it may need full unpickling: pass {trust_option} if you trust it)"
        hint = "" if trust else hint
        return ModelLoadError(f"cannot load checkpoint {path}: {first_line(exc)}{hint}")
    if module:
        return ModelLoadError(
            f"checkpoint {path} holds {what}, not a state dict; loading it runs code from the "
            f"file: pass {trust_option} if you trust it, or re-save the weights with "
            "torch.save(model.state_dict(), path)"
        )
    return ModelLoadError(
        f"checkpoint {path} is {what}; pass the torch weights of the model, saved with "
        "torch.save(model.state_dict(), path)"
    )


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    trust: bool = False,
    trust_option: str = "--trust-checkpoint",
) -> nn.Module:
    """Load a state dict into ``model`` (strict). ``torch.load(weights_only=True)`` unless
    ``trust`` opts in to full unpickling of a checkpoint from a trusted source; then a pickled
    whole model (``torch.save(model)``) is accepted too and its weights are loaded.
    ``trust_option`` is how the caller spells the opt-in in messages (a flag or a config key).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as exc:
        raise _unreadable(path, exc, trust, trust_option) from exc
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


def load_model(
    spec: str,
    weights: str | Path | None = None,
    *,
    trust: bool = False,
    trust_option: str = "--trust-checkpoint",
):
    """Factory plus optional weights (a single module only; ensembles load in the factory)."""
    model = load_factory(spec)
    if weights is not None:
        if not isinstance(model, nn.Module):
            raise UsageError(
                "--weights applies to a single module; factories of ensembles and fitted "
                f"posteriors load their own weights (got a {type(model).__name__})"
            )
        load_weights(model, weights, trust=trust, trust_option=trust_option)
    return model
