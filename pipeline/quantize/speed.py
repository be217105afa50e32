"""Is int8 faster than fp32 for this graph on this CPU? A short measurement at quantize time.

On CPUs without int8 dot-product instructions (VNNI / AMX) int8 kernels gain little over fp32
and the quantize/dequantize steps around them cost extra; graphs whose weights are computed at
run time (the ``weight`` sample loop) measured 0.71-0.79x of fp32 (DESIGN.md section 9). The
user should learn that at quantize time, with figures, and keep fp32 for speed or int8 for size
knowingly.

Method (:func:`measure_speed`): both models are opened as a user would open them (provider
``auto``, ONNX Runtime thread spinning off so one session's idle workers do not slow the other),
``warmup`` untimed calls each, then ``runs`` rounds that time one ``session.run`` of each model
in alternating order (so drift hits both alike) on the first calibration batch at the
calibration S; each model's figure is its median. It is a quick check (a few calls), not a
benchmark: ``qbnn bench`` measures properly.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from qbnn.runtimes import SessionOptions, open_model
from qbnn.runtimes.contract import NUM_SAMPLES

__all__ = ["SpeedCheck", "measure_speed", "speed_message"]

#: ONNX Runtime session entries of the probe: worker threads do not spin between calls
NO_SPINNING = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}


def speed_message(
    fp32_ms: float,
    int8_ms: float,
    *,
    batch: int,
    samples: int,
    size_ratio: float,
    providers: tuple[str, str] | None = None,
) -> str:
    """The line quantize prints about speed, from measured per-call times (milliseconds).

    When ``int8_ms > fp32_ms``: ``int8 is slower than fp32 on this CPU for this graph (12.3 ms
    vs 9.8 ms per call, batch 32, S 8): keep fp32 for speed, int8 for size (0.27x file)``;
    the advice changes when the int8 file is not smaller; otherwise how much faster int8 ran.
    ``providers``: (int8's, fp32's) provider names, shown
    when they differ. ``size_ratio``: int8 file size / fp32 file size.
    """
    where = f"batch {batch}, S {samples}"
    if providers is not None and providers[0] != providers[1]:
        where += f", int8 on {providers[0]}, fp32 on {providers[1]}"
    figures = f"{_ms(int8_ms)} ms vs {_ms(fp32_ms)} ms per call, {where}"
    if int8_ms > fp32_ms:
        advice = (
            f"keep fp32 for speed, int8 for size ({size_ratio:.2f}x file)"
            if size_ratio < 1
            else f"keep fp32 (the int8 file is not smaller either: {size_ratio:.2f}x)"
        )
        return f"int8 is slower than fp32 on this CPU for this graph ({figures}): {advice}"
    speedup = fp32_ms / int8_ms if int8_ms > 0 else float("inf")
    return f"int8 runs {speedup:.2f}x as fast as fp32 on this CPU for this graph ({figures})"


def _ms(value: float) -> str:
    """12.3 / 0.123: one decimal from 1 ms up, three below (tiny graphs run in microseconds)."""
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


@dataclass(frozen=True)
class SpeedCheck:
    """Median milliseconds of one ``session.run`` of each model at ``[batch, S]``, the providers
    ``auto`` chose, the timed calls per model and the int8/fp32 file size ratio."""

    fp32_ms: float
    int8_ms: float
    batch: int
    samples: int
    fp32_provider: str
    int8_provider: str
    runs: int
    size_ratio: float

    @property
    def int8_slower(self) -> bool:
        return self.int8_ms > self.fp32_ms

    def message(self) -> str:
        """:func:`speed_message` of these figures."""
        return speed_message(
            self.fp32_ms,
            self.int8_ms,
            batch=self.batch,
            samples=self.samples,
            size_ratio=self.size_ratio,
            providers=(self.int8_provider, self.fp32_provider),
        )

    def to_dict(self) -> dict:
        """Plain data with the message (the run manifest's ``quantize.speed``)."""
        return {**asdict(self), "int8_slower": self.int8_slower, "message": self.message()}


def measure_speed(
    fp32: str | Path,
    int8: str | Path,
    x: np.ndarray,
    *,
    samples: int,
    warmup: int = 2,
    runs: int = 5,
    threads: int | None = None,
    seed: int = 0,
) -> SpeedCheck:
    """Time ``fp32`` against ``int8`` (compiled model files) on inputs ``x`` ``[B, *F]`` (the
    model's input dtype) at ``samples`` MC samples; see the module docstring for the method.
    Raises what :func:`qbnn.runtimes.open_model` raises when a model cannot be opened."""
    opts = SessionOptions(provider="auto", threads=threads, config_entries=dict(NO_SPINNING))
    opened = [open_model(p, opts, seed) for p in (fp32, int8)]
    feeds = []
    for m in opened:
        feed = {m.info.input_name: x}
        if m.info.takes_num_samples:
            feed[NUM_SAMPLES] = np.asarray(samples, dtype=np.int64)
        feeds.append(feed)
    for _ in range(warmup):
        for m, feed in zip(opened, feeds, strict=True):
            m.session.run(None, feed)
    times: list[list[float]] = [[], []]
    for k in range(runs):
        for i in (0, 1) if k % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            opened[i].session.run(None, feeds[i])
            times[i].append((time.perf_counter() - t0) * 1e3)
    return SpeedCheck(
        fp32_ms=statistics.median(times[0]),
        int8_ms=statistics.median(times[1]),
        batch=len(x),
        samples=samples,
        fp32_provider=opened[0].provider.name,
        int8_provider=opened[1].provider.name,
        runs=runs,
        size_ratio=Path(int8).stat().st_size / Path(fp32).stat().st_size,
    )
