"""``qbnn serve``: the Open Inference Protocol (KServe v2 REST) over compiled models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qbnn.runtimes.errors import UsageError

from .common import handles_errors

__all__ = ["serve_cmd"]


def _samples(values: list[str], names: list[str]) -> dict[str, int]:
    """``["16"]`` (every model) or ``["digits=16", ...]`` -> {model name: S}."""
    out: dict[str, int] = {}
    for v in values:
        name, sep, num = v.rpartition("=")
        targets = [name] if sep else names
        if sep and name not in names:
            raise UsageError(f"--num-samples {v}: no model named {name!r}; models: {names}")
        if not num.isdigit() or int(num) < 1:
            raise UsageError(f"--num-samples {v}: expected S or name=S with S >= 1")
        out.update(dict.fromkeys(targets, int(num)))
    return out


@handles_errors
def serve_cmd(
    models: Annotated[list[str], typer.Argument(help="model.onnx or name=model.onnx, repeatable")],
    host: Annotated[str, typer.Option(help="bind address (default: this machine only)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    provider: Annotated[str, typer.Option(help="auto|cpu|openvino|dnnl")] = "auto",
    threads: Annotated[int | None, typer.Option(help="intra-op threads per session")] = None,
    workers: Annotated[int, typer.Option(help="inference threads")] = 2,
    num_samples: Annotated[
        list[str], typer.Option("--num-samples", help="default S: S (all models) or name=S")
    ] = [],  # noqa: B006 - typer needs a list default
    batching: Annotated[bool, typer.Option(help="dynamic batching of concurrent requests")] = True,
    max_batch: Annotated[int, typer.Option(help="rows per merged run")] = 64,
    max_delay_ms: Annotated[float, typer.Option(help="wait for more requests (ms)")] = 5.0,
    max_request_rows: Annotated[int, typer.Option(help="rows per request")] = 256,
    max_num_samples: Annotated[int, typer.Option(help="largest S a request may ask")] = 256,
    max_body_bytes: Annotated[int, typer.Option(help="request body limit")] = 16 * 1024 * 1024,
    max_queue_rows: Annotated[int, typer.Option(help="rows waiting per model (then 503)")] = 4096,
    ray: Annotated[bool, typer.Option("--ray", help="run on Ray Serve")] = False,
    replicas: Annotated[int, typer.Option(help="Ray Serve replicas (with --ray)")] = 2,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address, e.g. auto (with --ray)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Serve models over HTTP (Open Inference Protocol, /docs, /metrics) until Ctrl-C."""
    from qbnn.serve import ModelSpec, ServeConfig, parse_model_arg

    specs = [parse_model_arg(m) for m in models]
    for s in specs:
        if not Path(s.path).is_file():
            raise UsageError(f"model file {s.path} does not exist")
    per = _samples(num_samples, [s.name for s in specs])
    specs = [ModelSpec(name=s.name, path=s.path, num_samples=per.get(s.name)) for s in specs]
    cfg = ServeConfig(
        models=specs, host=host, port=port, provider=provider, threads=threads, workers=workers,
        batching=batching, max_batch=max_batch, max_delay_ms=max_delay_ms,
        max_request_rows=max_request_rows, max_num_samples=max_num_samples,
        max_body_bytes=max_body_bytes, max_queue_rows=max_queue_rows,
    )  # fmt: skip
    url = f"http://{host}:{port}"
    names = ", ".join(s.name for s in specs)
    if ray:
        from qbnn.serve.ray_serve import deploy_ray, wait_forever

        if replicas < 1:
            raise UsageError(f"--replicas must be >= 1, got {replicas}")
        deploy_ray(cfg, replicas, address=ray_address)
        typer.echo(f"serving {names} on Ray Serve ({replicas} replicas) at {url}", err=True)
        wait_forever()
        return
    from qbnn.serve import make_server

    server = make_server(cfg, log_level=log_level)
    typer.echo(f"serving {names} at {url} (docs: {url}/docs)", err=True)
    server.run()
