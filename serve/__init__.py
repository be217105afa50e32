"""Serving and scale-out: ``qbnn serve`` (the Open Inference Protocol over qbnn's
``Predictor``, with dynamic batching and Prometheus metrics), a Ray Serve deployment of the same
app, and ``qbnn score`` (batch scoring of shard folders on Ray Data).

Needs the ``serve`` extra: ``pip install 'qbnn[serve]'``. Seeds and batching: see
:mod:`qbnn.serve.models` and :mod:`qbnn.serve.batcher`.
"""

from .config import ModelSpec, ServeConfig, parse_model_arg
from .errors import BadRequest, Overloaded, PayloadTooLarge, ServeError, UnknownModel

__all__ = [
    "BadRequest",
    "ModelSpec",
    "Overloaded",
    "PayloadTooLarge",
    "ScoreConfig",
    "ServeConfig",
    "ServeError",
    "UnknownModel",
    "create_app",
    "deploy_ray",
    "make_server",
    "parse_model_arg",
    "run_server",
    "score",
    "shard_seed",
]


def __getattr__(name: str):
    """Heavy parts (FastAPI, uvicorn, Ray) load on first use."""
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("make_server", "run_server"):
        from . import server

        return getattr(server, name)
    if name == "deploy_ray":
        from .ray_serve import deploy_ray

        return deploy_ray
    if name in ("ScoreConfig", "score", "shard_seed"):
        from . import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module 'qbnn.serve' has no attribute {name!r}")
