"""Helpers of the serving tests: a real uvicorn server on a free localhost port."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from qbnn.runtimes.contract import INPUT, NUM_SAMPLES
from qbnn.runtimes.seeding import reseed
from qbnn.serve import ModelSpec, ServeConfig, make_server

VOCAB, T = 50, 7
#: token ids [4, T] for :class:`TokenNet`
IDS = np.random.default_rng(0).integers(0, VOCAB, (4, T))


class TokenNet(nn.Module):
    """A token-id model: ids [B, T] -> Embedding -> mean over T -> Dropout(0.2) -> Linear ->
    3 logits (MC dropout)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.drop, self.fc = nn.Embedding(VOCAB, 16), nn.Dropout(0.2), nn.Linear(16, 3)

    def forward(self, ids):
        return self.fc(self.drop(self.emb(ids).mean(1)))


@contextlib.contextmanager
def running(config: ServeConfig):
    """A real uvicorn server for ``config`` (port 0: a free one) in a thread; yields its base
    URL and stops it (gracefully) on exit."""
    server = make_server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def config(model_files: dict[str, Path], **kwargs) -> ServeConfig:
    """A config serving every test model on a free port (CPU EP, as the references)."""
    models = [ModelSpec(name=n, path=p) for n, p in model_files.items()]
    return ServeConfig(models=models, port=0, provider="cpu", threads=1, **kwargs)


def ort_reference(path: Path, x: np.ndarray, samples: int, seed: int) -> dict[str, np.ndarray]:
    """Every output of one plain ONNX Runtime run of ``path`` on ``x`` at S = ``samples``,
    reseeded with ``seed`` (what a request with ``seed`` runs: the first call of a fresh
    session)."""
    model = onnx.load(str(path))
    reseed(model, seed)
    opts = ort.SessionOptions()
    opts.log_severity_level, opts.intra_op_num_threads = 3, 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, ["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, {INPUT: x, NUM_SAMPLES: np.array(samples, np.int64)})
    return dict(zip(names, outs, strict=True))


def infer_json(base: str, model: str, x: np.ndarray, names, samples: int, seed: int):
    """One JSON v2 request of ``x`` (FP32) asking for the outputs ``names`` at S = ``samples``
    with ``seed``; asserts 200 and returns ``{name: float32 array}`` in the response's shapes."""
    body = {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "data": x.ravel().tolist()}],
        "outputs": [{"name": n} for n in names],
        "parameters": {"num_samples": samples, "seed": seed},
    }  # fmt: skip
    r = httpx.post(f"{base}/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    return {o["name"]: np.asarray(o["data"], np.float32).reshape(o["shape"])
            for o in r.json()["outputs"]}  # fmt: skip
