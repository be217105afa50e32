"""A served model: qbnn's :class:`~qbnn.runtimes.Predictor` plus its batcher and contract.

Seeds: a request without ``seed`` is batched with others (:mod:`qbnn.serve.batcher`) and gets
fresh noise. A request with ``seed`` runs alone on a new session opened with that seed, so it
returns exactly ``Predictor(path, provider=<the server's>, seed=seed).predict(x, S)`` on the
first call: the same numbers on every request with that seed, input and S, on any replica.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from qbnn.runtimes import Prediction, Predictor, PredictorOptions, Task
from qbnn.runtimes.contract import LABEL_OUTPUTS

from .batcher import DynamicBatcher
from .config import ModelSpec, ServeConfig
from .errors import BadRequest
from .protocol import ModelMetadata, TensorMetadata, input_datatypes

__all__ = ["ServedModel", "output_fields"]


def output_fields(task: Task, heteroscedastic: bool, multilabel: bool = False) -> dict[str, str]:
    """Contract output name -> :class:`~qbnn.runtimes.Prediction` field; per-sample outputs
    (``probs [S, B, C]``; ``mean``, ``variance [S, B, D]``) come only when requested.
    Multi-label models add the per-label ``label_*`` outputs ``[B, K]``."""
    if task == Task.REGRESSION:
        out = {"pred_mean": "pred_mean", "pred_variance": "pred_variance", "mean": "samples"}
        if heteroscedastic:
            out["variance"] = "variance_samples"
        return out
    out = {
        "mean_probs": "mean_probs", "predictive_entropy": "predictive_entropy",
        "expected_entropy": "expected_entropy", "mutual_information": "mutual_information",
        "probs": "probs",
    }  # fmt: skip
    if multilabel:
        out |= {name: name for name in LABEL_OUTPUTS}
    return out


PER_SAMPLE = {"probs", "mean", "variance"}


@dataclass
class ServedModel:
    """One model behind ``/v2/models/<name>``."""

    spec: ModelSpec
    predictor: Predictor
    config: ServeConfig
    batcher: DynamicBatcher | None

    @classmethod
    def open(
        cls, spec: ModelSpec, config: ServeConfig, executor: Executor, on_batch
    ) -> ServedModel:
        """Open ``spec.path`` on ``config.provider`` (raises the runtime's one-line errors)."""
        opts = PredictorOptions(max_samples=config.max_num_samples)
        pred = Predictor(spec.path, provider=config.provider, threads=config.threads, options=opts)
        batcher = None
        if config.batching:
            batcher = DynamicBatcher(
                lambda x, s, keep: pred.predict(x, s, return_samples=keep), executor,
                max_batch=config.max_batch, concurrency=config.workers,
                max_delay_s=config.max_delay_ms / 1000, max_queue_rows=config.max_queue_rows,
                on_batch=lambda rows: on_batch(spec.name, rows),
            )  # fmt: skip
        return cls(spec, pred, config, batcher)

    @property
    def outputs(self) -> dict[str, str]:
        info = self.predictor.info
        return output_fields(info.task, bool(info.contract.heteroscedastic), info.multilabel)

    def default_samples(self) -> int:
        """S for a request that names none."""
        info = self.predictor.info
        if not info.takes_num_samples:
            return 1
        return self.spec.num_samples or min(info.default_samples, self.config.max_num_samples)

    def metadata(self) -> ModelMetadata:
        """The contract as v2 tensor metadata (``-1``: variable, e.g. the batch or S); the
        input's datatype is the graph's (FP32, or INT64 / INT32 for token ids)."""
        info = self.predictor.info
        fs = [d if isinstance(d, int) and d > 0 else -1 for d in info.feature_shape]
        width = -1 if info.contract.width is None else info.contract.width
        outs = []
        for name in self.outputs:
            if name in PER_SAMPLE:
                shape = [-1, -1, width]
            elif name in ("mean_probs", "pred_mean", "pred_variance", *LABEL_OUTPUTS):
                shape = [-1, width]
            else:
                shape = [-1]
            outs.append(TensorMetadata(name=name, datatype="FP32", shape=shape))
        return ModelMetadata(
            name=self.spec.name, versions=["1"], platform="onnxruntime_onnx",
            inputs=[TensorMetadata(name=info.input_name, shape=[-1, *fs],
                                   datatype=input_datatypes(info.input_dtype)[0])],
            outputs=outs,
            parameters={
                "task": str(info.task), "posterior": info.posterior, "sampling": info.sampling,
                "multilabel": info.multilabel,
                "default_num_samples": self.default_samples(),
                "max_num_samples": self.config.max_num_samples,
                "max_request_rows": self.config.max_request_rows,
                "provider": self.predictor.describe(),
            },
        )  # fmt: skip

    def num_samples(self, params: dict) -> int:
        """``parameters.num_samples`` checked against the limit (default: the model's)."""
        s = params.get("num_samples")
        if s is None:
            return self.default_samples()
        if isinstance(s, bool) or not isinstance(s, int):
            raise BadRequest(f"parameters.num_samples must be an integer, got {s!r}")
        if not 1 <= s <= self.config.max_num_samples:
            raise BadRequest(f"parameters.num_samples {s} is outside [1, max_num_samples "
                             f"{self.config.max_num_samples}]")  # fmt: skip
        if not self.predictor.info.takes_num_samples and s != 1:
            raise BadRequest(f"model {self.spec.name!r} is deterministic (no num_samples "
                             f"input); num_samples must be 1, got {s}")  # fmt: skip
        return s

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """``x [B, *feature_shape]`` checked (rows limit, shape, NaN/inf) in the graph input's
        dtype (float32, or int64 / int32 token ids)."""
        if x.ndim >= 1 and x.shape[0] > self.config.max_request_rows:
            raise BadRequest(f"input has {x.shape[0]} rows, more than max_request_rows "
                             f"{self.config.max_request_rows}; split the request")  # fmt: skip
        return self.predictor.check_input(x)

    async def infer(
        self, x: np.ndarray, s: int, seed: int | None, keep: bool, executor: Executor
    ) -> Prediction:
        """Predict checked ``x [B, ...]`` with S = ``s``; batched unless ``seed`` is given."""
        loop = asyncio.get_running_loop()
        if seed is not None:
            return await loop.run_in_executor(executor, self._seeded, x, s, seed, keep)
        if self.batcher is not None:
            return await self.batcher.submit(x, s, keep)
        return await loop.run_in_executor(
            executor, lambda: self.predictor.predict(x, s, return_samples=keep)
        )

    def _seeded(self, x: np.ndarray, s: int, seed: int, keep: bool) -> Prediction:
        fresh = Predictor(
            self.spec.path, provider=self.predictor.provider, threads=self.config.threads,
            seed=seed, options=self.predictor.options,
        )  # fmt: skip
        return fresh.predict(x, s, return_samples=keep)
