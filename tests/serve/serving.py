"""Helpers of the serving tests: a real uvicorn server on a free localhost port."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from qbnn.serve import ModelSpec, ServeConfig, make_server


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
