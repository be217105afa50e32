"""Silence torch.onnx's progress prints and registration warnings during an export."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

__all__ = ["quiet_export"]

_LOGGERS = ("torch.onnx", "onnx_ir", "onnxscript", "torch._dynamo", "torch.export")


@contextlib.contextmanager
def quiet_export():
    """Capture stdout, ignore warnings and raise the exporters' log levels to ERROR."""
    saved = {name: logging.getLogger(name).level for name in _LOGGERS}
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
