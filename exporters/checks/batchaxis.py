"""The batch axis stays free: an exported graph must run at batch sizes other than the example's.

``torch.export`` specialises the batch dimension when the traced forward computes a Python
number from it (``x.view(8, -1)``, ``torch.split(x, batch // M)``, ``repeat(..., b=batch //
M)``): the graph then declares a fixed input size, or reshapes to a literal inside. Either way
predictions at any other batch size fail. :func:`check_batch_axis` reads the declared input
shape and runs the graph once at a second batch size, and refuses a graph that fixes it.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from qbnn.runtimes.contract import INPUT, NUM_SAMPLES
from qbnn.runtimes.errors import ExportError, first_line

__all__ = ["check_batch_axis", "second_batch"]

_CAUSE = (
    "likely cause: forward computes a size from the batch (x.view(8, -1), torch.split(x, "
    "batch // M), repeat(..., b=batch // M), torch.tensor(x.shape[0])); write it with -1 or "
    "x.reshape(M, -1, ...) so the batch stays symbolic"
)


def second_batch(b: int) -> int:
    """A batch size different from ``b`` and from the traced one (``max(b, 2)``)."""
    return b + 3


def _declared_batch(model: onnx.ModelProto) -> int | None:
    for inp in model.graph.input:
        if inp.name == INPUT:
            dims = inp.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value"):
                return int(dims[0].dim_value)
    return None


def check_batch_axis(model: onnx.ModelProto, example: torch.Tensor, samples: int = 2) -> None:
    """Raise :class:`ExportError` (one line naming the fixed size and the likely cause) when
    ``model`` does not run on ``input [b2, *F]`` for ``b2 != B`` (``example [B, *F]``)."""
    b = example.shape[0]
    fixed = _declared_batch(model)
    if fixed is not None:
        raise ExportError(
            f"the exported graph fixes the batch axis at {fixed} (its input is declared "
            f"[{fixed}, ...]): it would reject every other batch size; {_CAUSE}"
        )
    import onnxruntime as ort

    b2 = second_batch(b)
    rows = example[torch.arange(b2) % b].numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        outs = sess.run(None, {INPUT: rows, NUM_SAMPLES: np.array(samples, dtype=np.int64)})
    except Exception as exc:  # noqa: BLE001 - ORT's error is the evidence, reported in one line
        raise ExportError(
            f"the exported graph fixes the batch axis at {max(b, 2)}: run at batch {b2} it "
            f"fails ({first_line(exc)[:160]}); {_CAUSE}"
        ) from exc
    bad = [o.shape for o in outs if o.ndim >= 1 and b2 not in o.shape[:2]]
    if bad:
        raise ExportError(
            f"the exported graph fixes the batch axis at {max(b, 2)}: run at batch {b2} it "
            f"returns outputs of shape {list(bad[0])}; {_CAUSE}"
        )
