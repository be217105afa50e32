"""Starting (or joining) Ray for ``qbnn serve --ray`` and ``qbnn score``."""

from __future__ import annotations

import logging
import os

__all__ = ["ensure_ray"]

log = logging.getLogger("qbnn.serve")


def ensure_ray(num_cpus: int, address: str | None = None) -> bool:
    """Connect to ``address`` (a Ray cluster, e.g. ``auto``) or start a local Ray with
    ``num_cpus`` CPUs, unless Ray is already running in this process. Returns whether this
    call started it (and so should shut it down).

    On a busy machine Ray's dashboard agent can miss the raylet's start-up deadline (the raylet
    then aborts with "Timed out waiting for file .../metrics_agent_port"); the agent timeout is
    raised to 120 s (``RAY_agent_register_timeout_ms``, unless set) and a failed local start
    is tried once more.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    kwargs = {"num_cpus": num_cpus} if address is None else {"address": address}
    for attempt in (1, 2):
        try:
            ray.init(include_dashboard=False, logging_level="WARNING", **kwargs)
            return True
        except Exception as exc:  # Ray raises plain Exception on a start-up timeout
            if address is not None or attempt == 2:
                raise
            log.warning("Ray did not start (%s); trying once more", exc)
            ray.shutdown()
    return True  # pragma: no cover - the loop returns or raises
