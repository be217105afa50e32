"""Calibration data readers that drive every MC-sample path of a compiled model."""

from __future__ import annotations

import numpy as np

from qbnn.runtimes.contract import INPUT, NUM_SAMPLES

__all__ = ["make_reader"]


def make_reader(
    x: np.ndarray, *, batch_size: int, num_samples: int, stochastic: bool, input_name: str = INPUT
):
    """A calibration reader over ``x [N, *feature_shape]`` float32 (integer token ids keep
    their integer dtype).

    Each batch feeds ``input`` and, for stochastic graphs, ``num_samples`` so that activation
    ranges are collected over S noisy copies of every input. Works with INC and ONNX Runtime.
    """
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= len(x):
                return None
            dtype = x.dtype if np.issubdtype(x.dtype, np.integer) else np.float32
            batch = np.ascontiguousarray(x[self.i : self.i + batch_size], dtype=dtype)
            self.i += batch_size
            feed = {input_name: batch}
            if stochastic:
                feed[NUM_SAMPLES] = np.array(num_samples, dtype=np.int64)
            return feed

        def rewind(self) -> None:
            self.i = 0

    return _Reader()
