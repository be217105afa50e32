"""``qbnn serve`` from the command line: binds 127.0.0.1 by default, and on SIGTERM finishes
the request in flight before it exits (graceful shutdown)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import psutil


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_on_localhost_and_drains_in_flight_requests_on_sigterm(model_files):
    port = _free_port()
    cli = "from qbnn.pipeline.cli import main; main()"
    cmd = [sys.executable, "-c", cli, "serve", f"digits={model_files['cnn']}",
           "--port", str(port), "--provider", "cpu", "--threads", "1",
           "--num-samples", "digits=4", "--max-delay-ms", "1500"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections()
                     if c.status == "LISTEN"]  # fmt: skip
        assert [a.ip for a in listening] == ["127.0.0.1"]
        meta = httpx.get(f"{base}/v2/models/digits").json()
        assert meta["parameters"]["default_num_samples"] == 4
        x = np.zeros((1, 1, 8, 8), np.float32)
        body = {"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32",
                            "data": x.ravel().tolist()}]}  # fmt: skip
        result = {}
        client = threading.Thread(
            target=lambda: result.update(
                r=httpx.post(f"{base}/v2/models/digits/infer", json=body, timeout=30)
            )  # fmt: skip
        )
        client.start()
        time.sleep(0.5)  # the request now waits in the batcher (max delay 1.5 s)
        proc.send_signal(signal.SIGTERM)
        client.join(30)
        # uvicorn finishes the in-flight request, shuts down, then re-raises the signal it
        # caught, so the exit status is that of SIGTERM's default action
        assert proc.wait(30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = result["r"]
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["num_samples"] == 4
