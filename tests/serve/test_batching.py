"""Dynamic batching on a real server: concurrent requests merged into one run and split back
exactly, seeded requests run alone (reproducible), unseeded ones draw fresh noise from the same
predictive distribution, a full queue answers 503 with Retry-After."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qbnn.runtimes import Predictor

from serving import config, running

RNG = np.random.default_rng(5)
XS = [RNG.random((n, 1, 8, 8), dtype=np.float32) for n in (1, 3, 2, 1, 4, 1, 2, 2)]


def _body(x: np.ndarray, **parameters) -> dict:
    inp = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return {"inputs": [inp], "parameters": parameters}


async def _concurrent(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=60) as client:
        return await asyncio.gather(*(client.post(url, json=b) for b in bodies))


def _mean_probs(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}["mean_probs"]
    return np.asarray(out["data"], np.float32).reshape(out["shape"])


def _batch_rows(base: str, model: str) -> tuple[float, float]:
    """(number of session runs, rows inferred) from the server's Prometheus metrics."""
    text = httpx.get(f"{base}/metrics").text
    fam = {f.name: f for f in text_string_to_metric_families(text)}["qbnn_batch_rows"]
    got = {s.name: s.value for s in fam.samples if s.labels.get("model") == model}
    return got.get("qbnn_batch_rows_count", 0.0), got.get("qbnn_batch_rows_sum", 0.0)


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_requests_are_merged_and_split_back(model_files, batching):
    """``frozen`` is deterministic, so every request must get exactly its own rows' outputs
    (to float32 rounding: a merged run may block the convolution differently; rtol 1e-5)."""
    ref = Predictor(model_files["frozen"], provider="cpu")
    with running(config(model_files, batching=batching, max_delay_ms=300)) as base:
        responses = asyncio.run(
            _concurrent(f"{base}/v2/models/frozen/infer", [_body(x) for x in XS])
        )
        for x, r in zip(XS, responses, strict=True):
            np.testing.assert_allclose(_mean_probs(r), ref.predict(x).mean_probs, rtol=1e-5,
                                       atol=1e-7)  # fmt: skip
        runs, rows = _batch_rows(base, "frozen")
    assert rows == sum(len(x) for x in XS)
    if batching:
        assert runs < len(XS)  # 8 concurrent requests within 300 ms: merged
    else:
        assert runs == len(XS)


def test_seeded_requests_run_alone_and_reproduce(model_files):
    x = XS[1]
    ref = Predictor(model_files["cnn"], provider="cpu", seed=42).predict(x, 16).mean_probs
    with running(config(model_files, max_delay_ms=200)) as base:
        url = f"{base}/v2/models/cnn/infer"
        seeded = [_body(x, seed=42, num_samples=16)] * 4
        unseeded = [_body(XS[0], num_samples=16)] * 4
        responses = asyncio.run(_concurrent(url, seeded + unseeded))
        for r in responses[:4]:
            np.testing.assert_array_equal(_mean_probs(r), ref)
        runs, _ = _batch_rows(base, "cnn")
    assert runs >= 5  # 4 seeded runs alone + at least one (merged) unseeded run


def test_unseeded_requests_draw_fresh_noise_and_merged_rows_share_it(model_files):
    """Unseeded requests: every session run draws fresh noise; rows merged into one run share
    its S weight draws, exactly like the rows of one ``Predictor.predict`` call. So 16
    concurrent requests of one row give as many distinct answers as there were runs, and 8
    sequential requests average to within 0.02 of a seeded S = 4096 reference (the measured MC
    std of one S = 64 mean_probs entry here is < 0.01, of the 8-request average < 0.004)."""
    x = XS[0]
    ref = Predictor(model_files["cnn"], provider="cpu", seed=0).predict(x, 4096).mean_probs[0]
    with running(config(model_files, max_delay_ms=100)) as base:
        url = f"{base}/v2/models/cnn/infer"
        merged = asyncio.run(_concurrent(url, [_body(x, num_samples=64)] * 16))
        runs, _ = _batch_rows(base, "cnn")
        sequential = [httpx.post(url, json=_body(x, num_samples=64)) for _ in range(8)]
    assert len({_mean_probs(r).tobytes() for r in merged}) == runs < 16
    got = np.stack([_mean_probs(r)[0] for r in sequential])
    assert len({g.tobytes() for g in got}) == 8
    np.testing.assert_allclose(got.mean(0), ref, atol=0.02)


def test_full_queue_answers_503_with_retry_after(model_files):
    with running(config(model_files, max_delay_ms=1500, max_queue_rows=4)) as base:
        url = f"{base}/v2/models/frozen/infer"
        waiting, extra = _body(XS[1]), _body(XS[2])  # 3 rows wait 1.5 s; 2 more overflow

        async def both():
            async with httpx.AsyncClient(timeout=60) as client:
                first = asyncio.create_task(client.post(url, json=waiting))
                await asyncio.sleep(0.3)
                second = await client.post(url, json=extra)
                return await first, second

        first, second = asyncio.run(both())
    assert first.status_code == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert "max_queue_rows 4" in second.json()["error"]
