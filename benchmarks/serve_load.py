"""Load and fault checks of ``qbnn serve`` / ``qbnn score`` (issue 16), recorded in
``benchmarks/results/serve_load.md``.

1. Load: 16 concurrent single-image clients (digits Bayesian CNN, S = 16) against ``qbnn serve``
   on localhost, with and without dynamic batching, alternated over ``--rounds`` rounds in one
   run: throughput, p50 / p99 latency, errors.
2. Ray Serve, 2 replicas: 8 clients; one replica is killed mid-run (``ray.kill``); every request
   is accounted for: answered, or failed with a status and retried (5xx / connection errors are
   retryable), never silently dropped.
3. ``qbnn score``: interrupted (SIGKILL) and resumed: every row scored exactly once.
4. ``qbnn score`` of ``--rows`` digits rows on 2 local Ray workers vs single-process
   ``qbnn predict`` of the same rows (rows/s).

Usage: python benchmarks/serve_load.py [--rows 100000] [--requests 60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

RESULTS = Path(__file__).parent / "results"
WORK = Path(os.environ.get("QBNN_BENCH_DIR", "/tmp/qbnn_serve_bench"))
CLI = [sys.executable, "-c", "from qbnn.pipeline.cli import main; main()"]
S = 16


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digits_model() -> tuple[Path, np.ndarray]:
    """Train the digits Bayesian CNN (8 classes, 15 epochs) and export it with S = 16."""
    from qbnn.exporters import export
    from qbnn.pipeline.run.digits import bayes_cnn, load_split, train

    split = load_split()
    path = WORK / "digits.onnx"
    if not path.exists():
        import torch

        model = train(bayes_cnn(), split.x_train, split.y_train, epochs=15)
        export(model, torch.from_numpy(split.x_test[:4]), path, num_samples=S, verify=False)
    return path, split.x_test


def _body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip


async def _clients(url: str, xs: np.ndarray, clients: int, per_client: int, retries: int = 0):
    """``clients`` concurrent clients (aiohttp: httpx's per-request overhead, about 10 ms of
    client CPU here, would cap the load below what the server answers), each sending
    ``per_client`` single-image requests in turn. Returns (latencies of answered requests,
    first-try failures by status, final failures, wall seconds). A failure is a non-200
    status or a transport error."""
    import aiohttp

    lat, first_fail, final_fail = [], {}, {}

    async def one(session: aiohttp.ClientSession, c: int):
        for i in range(per_client):
            x = xs[(c * per_client + i) % len(xs)][None]
            body = json.dumps(_body(x))
            for attempt in range(retries + 1):
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=_JSON) as r:
                        await r.read()
                        status = r.status
                except (TimeoutError, aiohttp.ClientError) as exc:
                    status = type(exc).__name__
                if status == 200:
                    lat.append(time.perf_counter() - t0)
                    break
                if attempt == 0:
                    first_fail[status] = first_fail.get(status, 0) + 1
                if attempt == retries:
                    final_fail[status] = final_fail.get(status, 0) + 1
                await asyncio.sleep(0.2)

    conn = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(session, c) for c in range(clients)))
        return lat, first_fail, final_fail, time.perf_counter() - t0


_JSON = {"Content-Type": "application/json"}


def _wait_ready(base: str, proc: subprocess.Popen | None = None, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{base}/v2/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{base} not ready after {timeout} s")


def _stats(lat: list[float], seconds: float) -> dict:
    ms = sorted(v * 1000 for v in lat)
    return {"rps": len(lat) / seconds, "p50": statistics.median(ms),
            "p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))], "n": len(lat)}  # fmt: skip


def load_test(model: Path, xs: np.ndarray, requests: int, rounds: int) -> list[dict]:
    rows = []
    for r in range(rounds):
        for batching in (True, False):
            port = _port()
            cmd = [*CLI, "serve", f"digits={model}", "--port", str(port), "--threads", "1",
                   "--workers", "2", "--provider", "cpu",
                   "--batching" if batching else "--no-batching"]  # fmt: skip
            proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
            try:
                base = f"http://127.0.0.1:{port}"
                _wait_ready(base, proc)
                url = f"{base}/v2/models/digits/infer"
                asyncio.run(_clients(url, xs, 16, 5))  # warm-up
                lat, first, final, sec = asyncio.run(_clients(url, xs, 16, requests))
                rows.append({"round": r + 1, "batching": batching, **_stats(lat, sec),
                             "errors": sum(first.values()), "sent": 16 * requests})  # fmt: skip
                print(rows[-1], flush=True)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    return rows


def ray_kill_test(model: Path, xs: np.ndarray, per_client: int) -> dict:
    import ray
    from ray import serve

    from qbnn.serve import ModelSpec, ServeConfig
    from qbnn.serve.ray_serve import deploy_ray

    port = _port()
    cfg = ServeConfig(models=[ModelSpec(name="digits", path=model)], port=port, provider="cpu",
                      threads=1, workers=1)  # fmt: skip
    deploy_ray(cfg, replicas=2)
    base = f"http://127.0.0.1:{port}"
    _wait_ready(base)
    url = f"{base}/v2/models/digits/infer"

    def replicas() -> list[tuple[str, str]]:
        return [(a["name"], a["namespace"]) for a in ray.util.list_named_actors(True)
                if "SERVE_REPLICA" in a["name"]]  # fmt: skip

    killed = []

    async def run():
        task = asyncio.create_task(_clients(url, xs, 8, per_client, retries=3))
        await asyncio.sleep(3.0)
        name, ns = replicas()[0]
        ray.kill(ray.get_actor(name, namespace=ns), no_restart=False)
        killed.append(name)
        return await task

    try:
        lat, first, final, sec = asyncio.run(run())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = serve.status().applications["qbnn"].deployments["qbnn_serve"]
            if st.status == "HEALTHY" and st.replica_states.get("RUNNING", 0) == 2:
                break
            time.sleep(1)
        recovered = time.monotonic() < deadline
    finally:
        serve.shutdown()
        ray.shutdown()
    sent = 8 * per_client
    return {"sent": sent, "answered": len(lat), "first_try_failures": first,
            "final_failures": final, "killed": killed[0], "recovered_to_2": recovered,
            "accounted": len(lat) + sum(final.values()) == sent, **_stats(lat, sec)}  # fmt: skip


def make_shards(xs: np.ndarray, rows: int, shards: int, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = rows // shards
    for i in range(shards):
        idx = rng.integers(0, len(xs), per)
        x = np.clip(xs[idx] + rng.normal(0, 0.05, (per, 1, 8, 8)), 0, 1).astype(np.float32)
        np.savez(folder / f"part-{i:03d}.npz", x=x)


def _score_cmd(model: Path, src: Path, out: Path) -> list[str]:
    return [*CLI, "score", str(model), "--inputs", str(src), "--output", str(out), "--samples",
            str(S), "--provider", "cpu", "--workers", "2", "--threads", "1"]  # fmt: skip


def resume_test(model: Path, xs: np.ndarray, rows: int) -> dict:
    import pyarrow.parquet as pq

    src, out = WORK / f"resume_in_{rows}", WORK / f"resume_out_{rows}"
    if not src.exists():
        make_shards(xs, rows, 10, src)
    if out.exists():
        for p in out.iterdir():
            p.unlink()
    import psutil

    proc = subprocess.Popen(_score_cmd(model, src, out), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    while proc.poll() is None and len(list(out.glob("*.parquet"))) < 3:
        time.sleep(0.05)
    # kill the driver and every process it started (Ray's raylet, GCS, workers), by pid
    family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in family:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    t0 = time.perf_counter()
    second = subprocess.run(_score_cmd(model, src, out), capture_output=True, text=True)
    sec = time.perf_counter() - t0
    counts, total = {}, 0
    for shard in sorted(src.glob("*.npz")):
        n = len(np.load(shard)["x"])
        got = pq.read_table(out / f"{shard.stem}.parquet").column("row").to_pylist()
        counts[shard.name] = got == list(range(n))
        total += n
    untouched = all(
        (out / n).stat().st_mtime_ns == t for n, t in before.items()
    )  # fmt: skip
    return {"rows": total, "shards": len(counts), "done_before_kill": len(before),
            "second_run": second.stdout.strip().splitlines()[-1] if second.stdout else
            second.stderr[-300:], "exactly_once": all(counts.values()),
            "finished_shards_untouched": untouched, "resume_seconds": sec,
            "tmp_left": [p.name for p in out.iterdir() if p.name.startswith(".")]}  # fmt: skip


def throughput_test(model: Path, xs: np.ndarray, rows: int) -> dict:
    src, out = WORK / f"tp_in_{rows}", WORK / f"tp_out_{rows}"
    if not src.exists():
        make_shards(xs, rows, 20, src)
    if out.exists():
        for p in out.iterdir():
            p.unlink()
    t0 = time.perf_counter()
    r = subprocess.run(_score_cmd(model, src, out), capture_output=True, text=True)
    score_s = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    allx = np.concatenate([np.load(p)["x"] for p in sorted(src.glob("*.npz"))])
    np.savez(WORK / "all.npz", x=allx)
    t0 = time.perf_counter()
    p = subprocess.run([*CLI, "predict", str(model), "--data", str(WORK / "all.npz"), "-o",
                        str(WORK / "pred.npz"), "--samples", str(S), "--provider", "cpu",
                        "--seed", "0"], capture_output=True, text=True)  # fmt: skip
    predict_s = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    # equality with Predictor on two shards (same shard seed, same chunking)
    import pyarrow.parquet as pq

    from qbnn.runtimes import Predictor
    from qbnn.serve import shard_seed

    equal = True
    for shard in sorted(src.glob("*.npz"))[:2]:
        x = np.load(shard)["x"]
        ref = Predictor(model, provider="cpu", seed=shard_seed(0, shard.name)).predict(x, S)
        got = np.stack(pq.read_table(out / f"{shard.stem}.parquet").column("mean_probs")
                       .to_numpy(zero_copy_only=False))  # fmt: skip
        equal &= bool(np.array_equal(got, ref.mean_probs))
    return {"rows": len(allx), "score_s": score_s, "score_rps": len(allx) / score_s,
            "score_line": r.stdout.strip().splitlines()[-1], "predict_s": predict_s,
            "predict_rps": len(allx) / predict_s, "equal_to_predictor_2_shards": equal}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--resume-rows", type=int, default=20_000)
    ap.add_argument("--requests", type=int, default=60, help="requests per client")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of: load,ray,resume,throughput")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    model, xs = digits_model()
    res: dict = {"load": [], "uptime_before": os.getloadavg()}
    if "load" not in skip:
        res["load"] = load_test(model, xs, args.requests, args.rounds)
    if "ray" not in skip:
        res["ray"] = ray_kill_test(model, xs, 40)
        print(res["ray"], flush=True)
    if "resume" not in skip:
        res["resume"] = resume_test(model, xs, args.resume_rows)
        print(res["resume"], flush=True)
    if "throughput" not in skip:
        res["throughput"] = throughput_test(model, xs, args.rows)
        print(res["throughput"], flush=True)
    res["uptime_after"] = os.getloadavg()
    (WORK / "serve_load.json").write_text(json.dumps(res, indent=1, default=str))
    write_md(res)


def write_md(res: dict) -> None:
    lines = ["# serve_load: `qbnn serve` load and fault checks, `qbnn score` on Ray", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
             f"shared with other agents and loaded during the run (load average "
             f"{res['uptime_before'][0]:.1f} before, {res['uptime_after'][0]:.1f} after). "
             "Clients, server and Ray run on the same 2 cores, so absolute numbers are low and "
             "noisy; the batched / unbatched ratio is measured side by side, rounds "
             "alternating. Produced by `python benchmarks/serve_load.py`.", ""]  # fmt: skip
    if res["load"]:
        lines += ["## Load: 16 concurrent single-image clients, digits Bayesian CNN, S = 16", "",
                  "Server: `qbnn serve --threads 1 --workers 2 --provider cpu`, batching: "
                  "max batch 64 rows, max delay 5 ms.", "",
                  "| round | dynamic batching | requests | errors | throughput (req/s) | "
                  "p50 (ms) | p99 (ms) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in res["load"]:
            lines.append(
                f"| {r['round']} | {'on' if r['batching'] else 'off'} | {r['sent']} | "
                f"{r['errors']} | {r['rps']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} |"
            )
        on = sum(r["rps"] for r in res["load"] if r["batching"])
        off = sum(r["rps"] for r in res["load"] if not r["batching"])
        lines += ["", f"Throughput ratio batched / unbatched (mean over rounds): "
                  f"**{on / off:.2f}x**.", ""]  # fmt: skip
    if "ray" in res:
        r = res["ray"]
        lines += ["## Ray Serve, 2 replicas, one killed mid-run", "",
                  f"8 clients x 40 requests = {r['sent']}; replica `{r['killed']}` killed 3 s "
                  "in. Clients retry 5xx / connection errors up to 3 times (0.2 s apart).", "",
                  f"- answered: {r['answered']} of {r['sent']}",
                  f"- first-try failures (status: count): {r['first_try_failures'] or 'none'}",
                  f"- failures after retries: {r['final_failures'] or 'none'}",
                  f"- every request accounted for (answered + failed = sent): {r['accounted']}",
                  f"- Ray Serve back to 2 running replicas: {r['recovered_to_2']}",
                  f"- throughput {r['rps']:.1f} req/s, p50 {r['p50']:.1f} ms, p99 "
                  f"{r['p99']:.1f} ms (the kill included)", ""]  # fmt: skip
    if "resume" in res:
        r = res["resume"]
        lines += ["## `qbnn score` interrupted and resumed", "",
                  f"{r['rows']} digits rows in {r['shards']} .npz shards, 2 Ray workers; the "
                  "first run was SIGKILLed (driver and its Ray processes) after "
                  f"{r['done_before_kill']} shard outputs existed, then re-run.", "",
                  f"- second run: `{r['second_run']}`",
                  f"- every row scored exactly once (each output has rows 0..n-1 once): "
                  f"{r['exactly_once']}",
                  f"- outputs finished before the kill left untouched: "
                  f"{r['finished_shards_untouched']}",
                  f"- temporary files left: {r['tmp_left'] or 'none'}", ""]  # fmt: skip
    if "throughput" in res:
        r = res["throughput"]
        lines += ["## `qbnn score` (2 local Ray workers) vs `qbnn predict` (one process)", "",
                  f"{r['rows']} digits rows (20 .npz shards), S = 16, CPU EP.", "",
                  "| run | wall time (s) | rows/s |", "|---|---|---|",
                  f"| `qbnn score --workers 2 --threads 1` (Ray start-up included) | "
                  f"{r['score_s']:.1f} | {r['score_rps']:.0f} |",
                  f"| `qbnn predict` (one process, runtime's default threads) | "
                  f"{r['predict_s']:.1f} | {r['predict_rps']:.0f} |", "",
                  f"`qbnn score` said: `{r['score_line']}`. Outputs of 2 shards equal "
                  f"`Predictor(seed=shard_seed(0, shard))` exactly: "
                  f"{r['equal_to_predictor_2_shards']}.", ""]  # fmt: skip
    (RESULTS / "serve_load.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
