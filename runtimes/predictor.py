"""``Predictor``: MC-batched inference on a compiled model, in bounded-memory chunks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path

import numpy as np

from .contract import MULTILABEL_OUTPUTS, NUM_SAMPLES, Task
from .errors import ConfigError, ModelLoadError, RuntimeInputError, first_line
from .options import Precision, SessionOptions
from .session import ModelInfo, open_model

__all__ = ["PlainOutput", "Prediction", "Predictor", "PredictorOptions"]

MAX_SAMPLES = 4096


class PlainOutput(StrEnum):
    """How to read the single output of a plain (non-qbnn) classification model."""

    LOGITS = "logits"
    PROBS = "probs"


@dataclass(frozen=True, kw_only=True)
class PredictorOptions:
    """Inference options.

    ``max_samples``: cap on ``num_samples`` (default 4096). ``max_rows``: cap on S x batch rows
    per ``session.run`` (inputs are chunked so that a run holds at most this many rows).
    ``plain_output``: whether a plain model's output is logits or probabilities.
    """

    session: SessionOptions = field(default_factory=SessionOptions)
    max_samples: int = MAX_SAMPLES
    max_rows: int = 8192
    plain_output: PlainOutput = PlainOutput.LOGITS
    allow_nonfinite: bool = False

    def __post_init__(self) -> None:
        if self.max_samples < 1 or self.max_rows < 1:
            raise ConfigError(
                f"max_samples and max_rows must be >= 1; got {self.max_samples}, {self.max_rows}"
            )
        try:
            object.__setattr__(self, "plain_output", PlainOutput(self.plain_output))
        except ValueError:
            raise ConfigError(
                f"plain_output must be 'logits' or 'probs', got '{self.plain_output}'"
            ) from None


@dataclass(frozen=True)
class Prediction:
    """Predictive summary of one call. Classification fields:
    ``mean_probs [B, C]``, ``predictive_entropy [B]``, ``expected_entropy [B]``,
    ``mutual_information [B]``, ``probs [S, B, C]`` (only with ``return_samples``).
    Multi-label models (``multilabel`` true): ``mean_probs [B, K]`` and ``probs [S, B, K]`` are
    K independent per-label probabilities (rows do not sum to 1), the three ``[B]`` entropies
    are sums over the labels, and ``label_predictive_entropy``, ``label_expected_entropy``,
    ``label_mutual_information [B, K]`` hold the per-label values (None for other models).
    Regression fields: ``pred_mean [B, D]``, ``pred_variance [B, D]``, ``samples [S, B, D]`` and,
    for heteroscedastic heads, ``variance_samples [S, B, D]`` (both only with ``return_samples``);
    ``epistemic_variance [B, D]``: the spread of the per-sample means over the S samples (the
    posterior's share of ``pred_variance``).
    All float32. ``num_samples`` is the S used."""

    num_samples: int
    mean_probs: np.ndarray | None = None
    predictive_entropy: np.ndarray | None = None
    expected_entropy: np.ndarray | None = None
    mutual_information: np.ndarray | None = None
    probs: np.ndarray | None = None
    pred_mean: np.ndarray | None = None
    pred_variance: np.ndarray | None = None
    samples: np.ndarray | None = None
    variance_samples: np.ndarray | None = None
    epistemic_variance: np.ndarray | None = None
    label_predictive_entropy: np.ndarray | None = None
    label_expected_entropy: np.ndarray | None = None
    label_mutual_information: np.ndarray | None = None
    multilabel: bool = False

    def as_dict(self) -> dict[str, np.ndarray]:
        """Non-empty fields as arrays (for ``np.savez``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["num_samples"] = np.array(self.num_samples)
        out["multilabel"] = np.array(self.multilabel) if self.multilabel else None
        return {k: v for k, v in out.items() if v is not None}


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)


class Predictor:
    """MC inference on a qbnn ONNX model (or a plain model, treated as S = 1).

    ``provider``: a registry name or ``auto``; ``precision``: ``fp32`` (default) or ``bf16``
    (OpenVINO only; overrides ``options.session.precision``). After opening, ``provider`` is
    the name of the provider that runs the model and ``precision`` what it computes in
    (``fp32``, ``int8``, ``bf16``, ``int8+bf16``).

    Thread-safe: ``predict`` only calls ``session.run``, which every backend allows from
    several threads at once. See :func:`qbnn.runtimes.session.open_model` for seeding.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        provider: str = "auto",
        threads: int | None = None,
        seed: int | None = None,
        precision: Precision | str | None = None,
        options: PredictorOptions | None = None,
    ) -> None:
        opts = options or PredictorOptions()
        sess_opts = replace(
            opts.session,
            provider=provider,
            threads=threads,
            precision=opts.session.precision if precision is None else precision,
        )
        self.path = Path(path)
        self.options = opts
        opened = open_model(path, sess_opts, seed)
        self.session, self.info = opened.session, opened.info
        self.provider: str = opened.provider.name
        self.compute_precision: Precision = opened.compute
        self.precision: str = opened.precision
        #: why ``auto`` skipped providers it tried first (one line each)
        self.fallbacks: tuple[str, ...] = opened.fallbacks
        missing = [o for o in MULTILABEL_OUTPUTS if o not in self.info.outputs]
        if self.info.multilabel and missing:
            raise ModelLoadError(
                f"{path} declares a multi-label head (qbnn.multilabel) but lacks the outputs "
                f"{missing}; re-export it with qbnn export"
            )

    def describe(self) -> str:
        """``"<provider> (<precision>)"``, e.g. ``"openvino (int8)"``."""
        return f"{self.provider} ({self.precision})"

    @property
    def model_info(self) -> ModelInfo:
        """The model's declared contract metadata."""
        return self.info

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate ``x [B, *feature_shape]`` and return it contiguous in the model's input
        dtype: float32, or the integer dtype of a model taking token ids (int64 / int32)."""
        x = np.asarray(x)
        want = np.dtype(self.info.input_dtype)
        if np.issubdtype(want, np.integer):
            return self._check_ids(x, want)
        if not np.issubdtype(x.dtype, np.floating):
            raise RuntimeInputError(f"input dtype must be float32, got {x.dtype}")
        fs = self.info.feature_shape
        expected = "[B, " + ", ".join(map(str, fs)) + "]"
        if not self.info.accepts(x.shape):
            raise RuntimeInputError(
                f"input shape {list(x.shape)} does not match the model's {expected}"
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self.options.allow_nonfinite:
            bad = ~np.isfinite(x)
            if bad.any():
                first = tuple(int(i) for i in np.argwhere(bad)[0])
                raise RuntimeInputError(
                    f"input has {int(bad.sum())} NaN/inf values (first at index {list(first)}); "
                    "clean the data or pass allow_nonfinite"
                )
        return x

    def _check_ids(self, x: np.ndarray, want: np.dtype) -> np.ndarray:
        """Integer inputs (token ids): integer dtype, the model's shape, cast to ``want``."""
        if not np.issubdtype(x.dtype, np.integer):
            raise RuntimeInputError(
                f"this model takes integer ids ({want.name}); got {x.dtype} input: pass the "
                "token ids themselves, not floats"
            )
        if not self.info.accepts(x.shape):
            fs = ", ".join(map(str, self.info.feature_shape))
            raise RuntimeInputError(
                f"input shape {list(x.shape)} does not match the model's [B, {fs}]"
            )
        if x.size and x.min() < 0:  # ONNX Gather wraps negative indices; torch's Embedding refuses
            first = [int(i) for i in np.argwhere(x < 0)[0]]
            raise RuntimeInputError(
                f"token ids must be >= 0 (as torch.nn.Embedding takes them); got {int(x.min())} "
                f"(first negative id at index {first})"
            )
        return np.ascontiguousarray(x, dtype=want)

    def _samples(self, num_samples: int | None) -> int:
        if not self.info.takes_num_samples and num_samples not in (None, 1):
            raise RuntimeInputError(
                f"this model has no num_samples input (plain model); got num_samples="
                f"{num_samples}, expected 1 or None"
            )
        s = self.info.default_samples if num_samples is None else int(num_samples)
        if not 1 <= s <= self.options.max_samples:
            raise RuntimeInputError(
                f"num_samples must be in [1, {self.options.max_samples}], got {num_samples}"
            )
        return s

    def predict(
        self,
        x: np.ndarray,
        num_samples: int | None = None,
        *,
        return_samples: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> Prediction:
        """Predict ``x [B, *feature_shape]`` with S = ``num_samples`` (default: the model's).

        Inputs are processed in chunks of at most ``max_rows // S`` rows; ``progress(done,
        total)`` is called after each chunk.
        """
        x = self.check_input(x)
        s = self._samples(num_samples)
        chunk = max(1, self.options.max_rows // s)
        parts = []
        for start in range(0, len(x), chunk):
            parts.append(self._run(x[start : start + chunk], s))
            if progress is not None:
                progress(min(start + chunk, len(x)), len(x))
        return self._merge(parts, s, return_samples)

    def _run(self, x: np.ndarray, s: int) -> dict[str, np.ndarray]:
        if not self.info.is_qbnn:
            out = self._session_run(None, {self.info.input_name: x})[0]
            out = out.reshape(len(x), -1)
            if self.info.task == Task.REGRESSION:
                return {"mean": out[None]}
            probs = out if self.options.plain_output == PlainOutput.PROBS else _softmax(out)
            return {"probs": probs[None].astype(np.float32)}
        feed = {self.info.input_name: x}
        if self.info.takes_num_samples:
            feed[NUM_SAMPLES] = np.array(s, dtype=np.int64)
        names = [o for o in self.info.outputs]
        return dict(zip(names, self._session_run(names, feed), strict=True))

    def _session_run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list:
        """``session.run``; token ids beyond the model's vocabulary (ONNX Runtime's Gather
        bounds check) become a :class:`RuntimeInputError` naming the largest id."""
        try:
            return self.session.run(names, feed)
        except Exception as exc:
            x = feed[self.info.input_name]
            if not (np.issubdtype(x.dtype, np.integer) and "out of data bounds" in str(exc)):
                raise
            why = first_line(exc).split("Status Message: ")[-1]
            raise RuntimeInputError(
                f"token ids out of the model's vocabulary (largest id in this input: "
                f"{int(x.max())}): {why}"
            ) from exc

    def _merge_regression(self, parts: list[dict[str, np.ndarray]], keep: bool) -> Prediction:
        """Per-chunk graph outputs concatenated along the batch; the graph's own
        ``pred_variance`` (which includes a heteroscedastic head's aleatoric part) is used when
        present, else the spread of the per-sample means."""
        samples = np.concatenate([p["mean"] for p in parts], axis=1)
        if all("pred_variance" in p for p in parts):
            mean = np.concatenate([p["pred_mean"] for p in parts])
            var = np.concatenate([p["pred_variance"] for p in parts])
        else:
            mean = samples.mean(0)
            var = ((samples - mean) ** 2).mean(0)
        noise = None
        if keep and all("variance" in p for p in parts):
            noise = np.concatenate([p["variance"] for p in parts], axis=1)
        return Prediction(
            num_samples=samples.shape[0], pred_mean=mean, pred_variance=var,
            samples=samples if keep else None, variance_samples=noise,
            epistemic_variance=samples.var(0),
        )  # fmt: skip

    def _merge(self, parts: list[dict[str, np.ndarray]], s: int, keep: bool) -> Prediction:
        if self.info.task == Task.REGRESSION:
            return self._merge_regression(parts, keep)
        probs = np.concatenate([p["probs"] for p in parts], axis=1)
        if self.info.multilabel:  # the graph's per-label outputs; never recomputed as softmax
            cat = {k: np.concatenate([p[k] for p in parts]) for k in MULTILABEL_OUTPUTS[1:]}
            return Prediction(
                num_samples=probs.shape[0], probs=probs if keep else None, multilabel=True, **cat
            )
        if all("mean_probs" in p for p in parts):
            cat = {
                k: np.concatenate([p[k] for p in parts])
                for k in (
                    "mean_probs",
                    "predictive_entropy",
                    "expected_entropy",
                    "mutual_information",
                )
            }
        else:
            mean = probs.mean(0)
            pe, ee = _entropy(mean), _entropy(probs).mean(0)
            cat = {
                "mean_probs": mean,
                "predictive_entropy": pe,
                "expected_entropy": ee,
                "mutual_information": np.clip(pe - ee, 0, None),
            }
        return Prediction(num_samples=probs.shape[0], probs=probs if keep else None, **cat)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
