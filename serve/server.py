"""Run the app with uvicorn: bind (``127.0.0.1`` by default), serve, shut down gracefully.

On SIGINT / SIGTERM uvicorn stops accepting connections, lets in-flight requests finish (at
most ``graceful_timeout_s``), then the app's lifespan drains the batchers and the thread pool.
"""

from __future__ import annotations

from .config import ServeConfig

__all__ = ["make_server", "run_server"]


def make_server(config: ServeConfig, *, log_level: str = "warning"):
    """A ``uvicorn.Server`` for ``config`` (models are opened here, before binding)."""
    import uvicorn

    from .app import create_app

    app = create_app(config)
    uv = uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, access_log=False,
        timeout_graceful_shutdown=config.graceful_timeout_s, lifespan="on",
    )  # fmt: skip
    return uvicorn.Server(uv)


def run_server(config: ServeConfig, *, log_level: str = "warning") -> None:
    """Serve until interrupted (blocks)."""
    make_server(config, log_level=log_level).run()
