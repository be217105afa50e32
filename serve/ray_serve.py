"""The same app on Ray Serve: N replicas of ``create_app(config)`` behind Ray's HTTP proxy.

Each replica opens the models itself (``__serve_build_asgi_app__``, Ray Serve's late-bound
ingress), so it has its own sessions, batcher and metrics (``/metrics`` shows the replica that
answered). Ray Serve routes requests to live replicas and restarts a dead one; requests caught
on a dying replica are answered with a 5xx, which clients retry. On a Ray cluster, start Ray on
every node (``ray start --head`` / ``ray start --address=<head>:6379``), put the models on a
path every node sees and run ``qbnn serve --ray --ray-address auto``.
"""

from __future__ import annotations

import signal
import time

from .config import ServeConfig
from .rayinit import ensure_ray

__all__ = ["build_app", "deploy_ray", "wait_forever"]

APP_NAME = "qbnn"


def build_app(config: ServeConfig, replicas: int, *, max_ongoing: int = 64):
    """The Ray Serve application (``serve.run`` it): ``replicas`` replicas, one CPU each."""
    from ray import serve

    from .app import create_app

    @serve.deployment(
        name="qbnn_serve", num_replicas=replicas, max_ongoing_requests=max_ongoing,
        ray_actor_options={"num_cpus": 1},
    )  # fmt: skip
    @serve.ingress()
    class QbnnServe:
        def __init__(self, cfg: ServeConfig) -> None:
            self._cfg = cfg

        def __serve_build_asgi_app__(self):
            return create_app(self._cfg)

    return QbnnServe.bind(config)


def deploy_ray(config: ServeConfig, replicas: int, *, address: str | None = None) -> None:
    """Start Ray (local with ``replicas`` CPUs, or join ``address``), Ray Serve's proxy on
    ``config.host:config.port`` and the app; returns once every replica is up."""
    from ray import serve

    ensure_ray(replicas, address)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(build_app(config, replicas), name=APP_NAME, route_prefix="/", blocking=False)


def wait_forever() -> None:
    """Block until Ctrl-C / SIGTERM, then shut Ray Serve down."""
    import ray
    from ray import serve

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
