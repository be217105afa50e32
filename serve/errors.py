"""Errors a request can cause, each with its HTTP status and one clear message."""

from __future__ import annotations

from qbnn.runtimes.errors import QbnnError

__all__ = ["BadRequest", "Overloaded", "PayloadTooLarge", "ServeError", "UnknownModel"]


class ServeError(QbnnError):
    """A request the server refuses; ``status`` is its HTTP status code."""

    status = 400


class BadRequest(ServeError):
    """Malformed body, wrong datatype / shape, NaN/inf, or a limit exceeded (400)."""


class UnknownModel(ServeError):
    """No model of that name is served (404)."""

    status = 404


class PayloadTooLarge(ServeError):
    """The request body exceeds ``max_body_bytes`` (413)."""

    status = 413


class Overloaded(ServeError):
    """The model's queue is full; retry later (503, with ``Retry-After``)."""

    status = 503
