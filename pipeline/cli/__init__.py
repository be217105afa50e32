"""The ``qbnn`` command line: each command parses, builds a config and calls one stage.

One module per command; :data:`COMMANDS` registers them on :data:`app` in the order
``qbnn --help`` lists them. Errors of the :class:`QbnnError` family are printed as one line
(exit 1; 2 for usage errors), never as a traceback.
"""

from __future__ import annotations

import sys

from . import bench, compress, demo, export, predict, quantize, run, score, serve, validate
from .common import QbnnCommand, app

__all__ = ["COMMANDS", "app", "main"]

#: every command in pipeline order (the order of ``qbnn --help``)
COMMANDS = {
    "export": export.export_cmd,
    "quantize": quantize.quantize_cmd,
    "compress": compress.compress_cmd,
    "predict": predict.predict_cmd,
    "validate": validate.validate_cmd,
    "bench": bench.bench_cmd,
    "run": run.run_cmd,
    "serve": serve.serve_cmd,
    "score": score.score_cmd,
    "demo": demo.demo_cmd,
}
for _name, _fn in COMMANDS.items():
    app.command(_name, cls=QbnnCommand)(_fn)


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
