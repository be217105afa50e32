"""Dynamic batching: concurrent requests for one model merged into one ``Predictor.predict``.

Requests queue on an asyncio queue; one worker task takes the first waiting request, then
gathers more for at most ``max_delay`` seconds (requests already waiting are taken at once)
until ``max_batch`` rows, groups them by MC sample count S (one run per S), runs each group in
the inference thread pool (at most ``concurrency`` runs at once) and splits the
:class:`~qbnn.runtimes.Prediction` back by rows.
Requests that arrive while a batch runs wait for the next one, so batches grow with load.

MC noise: a merged batch is one ``session.run``, so its rows share that run's noise (for
weight-sampling models the same S weight draws), exactly like the rows of one
``Predictor.predict`` call; which draws a request sees depends on what it was merged with.
Unseeded results are therefore fresh draws from the model's predictive distribution, not
reproducible numbers, and two identical rows merged into one run get identical outputs.
Seeded requests never enter a batcher (:mod:`qbnn.serve.models`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, fields

import numpy as np

from qbnn.runtimes import Prediction

from .errors import Overloaded

__all__ = ["DynamicBatcher", "split_prediction"]

#: Prediction fields laid out [S, B, ...] (the rest are [B, ...] or scalars)
_SAMPLE_AXIS = {"probs", "samples", "variance_samples"}


def split_prediction(pred: Prediction, sizes: list[int]) -> list[Prediction]:
    """Split a prediction of ``sum(sizes)`` rows into one per request, in order."""
    edges = np.cumsum([0, *sizes])
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        parts = {}
        for f in fields(pred):
            v = getattr(pred, f.name)
            if isinstance(v, np.ndarray):
                v = v[:, lo:hi] if f.name in _SAMPLE_AXIS else v[lo:hi]
            parts[f.name] = v
        out.append(Prediction(**parts))
    return out


@dataclass
class _Item:
    x: np.ndarray
    num_samples: int
    keep: bool
    future: asyncio.Future = field(repr=False)
    arrived: float = 0.0


class DynamicBatcher:
    """Merge concurrent ``submit`` calls into runs of ``run(x [B, ...], S, keep) ->
    Prediction`` of at most ``max_batch`` rows (a single request may be larger; it runs alone).

    At most ``concurrency`` merged runs are in flight at once (one per inference thread);
    while they run, new requests queue and form the next batch.
    ``on_batch(rows)`` is called with the row count of every run (for metrics). The worker
    task starts on the first ``submit``; :meth:`close` finishes every queued request first.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray, int, bool], Prediction],
        executor: Executor,
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue_rows: int,
        concurrency: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run, self._executor = run, executor
        self.max_batch, self.max_delay_s, self.max_queue_rows = (
            max_batch,
            max_delay_s,
            max_queue_rows,
        )
        self._on_batch = on_batch or (lambda rows: None)
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._task: asyncio.Task | None = None
        self.queued_rows = 0
        self._held: _Item | None = None
        self.concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None
        self._inflight: set[asyncio.Task] = set()

    async def submit(self, x: np.ndarray, num_samples: int, keep: bool) -> Prediction:
        """Queue ``x [B, *feature_shape]`` float32; returns its rows' prediction. Raises
        :class:`Overloaded` (503) when ``max_queue_rows`` rows already wait."""
        if self.queued_rows + len(x) > self.max_queue_rows:
            raise Overloaded(f"model queue is full ({self.queued_rows} rows waiting, "
                             f"max_queue_rows {self.max_queue_rows}); retry later")  # fmt: skip
        if self._task is None:
            self._queue, self._slots = asyncio.Queue(), asyncio.Semaphore(self.concurrency)
            self._task = asyncio.get_running_loop().create_task(self._work())
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.queued_rows += len(x)
        await self._queue.put(_Item(x, num_samples, keep, fut, loop.time()))
        return await fut

    async def close(self) -> None:
        """Finish the queued requests, then stop the worker."""
        if self._task is not None:
            await self._queue.put(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, rows, stop = [first], len(first.x), False
        deadline = first.arrived + self.max_delay_s
        while rows < self.max_batch:
            timeout = deadline - asyncio.get_running_loop().time()
            try:
                item = (
                    self._queue.get_nowait()
                    if timeout <= 0
                    else await asyncio.wait_for(self._queue.get(), timeout)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if item is None:
                stop = True
                break
            if rows + len(item.x) > self.max_batch:
                self._held = item
                break
            batch.append(item)
            rows += len(item.x)
        return batch, stop

    async def _work(self) -> None:
        stop = False
        while not stop or self._held is not None:
            first, self._held = self._held, None
            if first is None:
                first = await self._queue.get()
                if first is None:
                    break
            await self._slots.acquire()  # at most `concurrency` runs at once; others queue
            batch, stopped = await self._gather(first)
            stop = stop or stopped
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        if self._inflight:
            await asyncio.gather(*self._inflight)
        while not self._queue.empty():  # requests queued behind the stop marker
            item = self._queue.get_nowait()
            if item is not None:
                await self._run_group(item.num_samples, [item])

    async def _run_batch(self, batch: list[_Item]) -> None:
        try:
            groups: dict[int, list[_Item]] = {}
            for item in batch:
                groups.setdefault(item.num_samples, []).append(item)
            for s, items in groups.items():
                await self._run_group(s, items)
        finally:
            self._slots.release()

    async def _run_group(self, s: int, items: list[_Item]) -> None:
        x = items[0].x if len(items) == 1 else np.concatenate([i.x for i in items])
        keep = any(i.keep for i in items)
        loop = asyncio.get_running_loop()
        try:
            pred = await loop.run_in_executor(self._executor, self._run, x, s, keep)
            self._on_batch(len(x))
            parts = split_prediction(pred, [len(i.x) for i in items])
        except Exception as exc:  # the failure belongs to every request of the run
            parts = [exc] * len(items)
        for item, part in zip(items, parts, strict=True):
            self.queued_rows -= len(item.x)
            if item.future.done():  # the client went away
                continue
            if isinstance(part, Exception):
                item.future.set_exception(part)
            else:
                item.future.set_result(part)
