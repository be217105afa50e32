"""The FastAPI app of ``qbnn serve``: the Open Inference Protocol over qbnn's ``Predictor``.

Routes: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``, ``/v2/models/{name}``
(``/versions/{v}``), ``/v2/models/{name}/ready``, ``POST /v2/models/{name}/infer``,
``GET /metrics`` (Prometheus) and the OpenAPI docs at ``/docs``. Every refused request gets a
4xx (503 when overloaded) with ``{"error": "<one line>"}`` and the server keeps serving.
"""

from __future__ import annotations

import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.routing import Route

from qbnn.runtimes.errors import QbnnError, first_line

from .config import ServeConfig
from .errors import BadRequest, Overloaded, PayloadTooLarge, ServeError, UnknownModel
from .metrics import CONTENT_TYPE, ServeMetrics
from .models import PER_SAMPLE, ServedModel
from .protocol import (
    HEADER_LENGTH,
    InferRequest,
    InferResponse,
    ModelMetadata,
    decode_input,
    encode_response,
    parse_request,
)

__all__ = ["create_app"]

SERVER_NAME = "qbnn"
log = logging.getLogger("qbnn.serve")


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds max_body_bytes {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds max_body_bytes {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


class _State:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = ServeMetrics()
        self.executor = ThreadPoolExecutor(config.workers, thread_name_prefix="qbnn-infer")
        self.models = {
            spec.name: ServedModel.open(spec, config, self.executor, self.metrics.batch)
            for spec in config.models
        }
        self.ready = True

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise UnknownModel(f"unknown model {name!r}; served models: {sorted(self.models)}")
        return self.models[name]

    async def close(self) -> None:
        self.ready = False
        for m in self.models.values():
            if m.batcher is not None:
                await m.batcher.close()
        self.executor.shutdown(wait=True)


def _wanted(model: ServedModel, req: InferRequest) -> tuple[list[str], set[str]]:
    """Requested output names (default: every summary output) and those wanted in binary."""
    params = req.parameters or {}
    binary_all = bool(params.get("binary_data_output", False))
    if not req.outputs:
        names = [n for n in model.outputs if n not in PER_SAMPLE]
        return names, set(names) if binary_all else set()
    unknown = [o.name for o in req.outputs if o.name not in model.outputs]
    if unknown:
        raise BadRequest(f"unknown output(s) {unknown}; model {model.spec.name!r} has "
                         f"{list(model.outputs)}")  # fmt: skip
    binary = {
        o.name for o in req.outputs
        if (o.parameters or {}).get("binary_data", binary_all)
    }  # fmt: skip
    return [o.name for o in req.outputs], binary


def _seed(params: dict) -> int | None:
    seed = params.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise BadRequest(f"parameters.seed must be a non-negative integer, got {seed!r}")
    return seed


async def _infer(state: _State, name: str, request: Request) -> Response:
    model = state.model(name)
    body = await _read_body(request, state.config.max_body_bytes)
    req, tail = parse_request(body, request.headers.get(HEADER_LENGTH))
    info = model.predictor.info
    if len(req.inputs) != 1 or req.inputs[0].name != info.input_name:
        got = [i.name for i in req.inputs]
        raise BadRequest(f"model {name!r} takes one input named {info.input_name!r}, got {got}")
    x, _ = decode_input(req.inputs[0], memoryview(tail), 0, model_dtype=info.input_dtype)
    x = model.check_input(x)
    params = req.parameters or {}
    s, seed = model.num_samples(params), _seed(params)
    names, binary = _wanted(model, req)
    keep = any(n in PER_SAMPLE for n in names)
    pred = await model.infer(x, s, seed, keep, state.executor)
    if seed is not None or model.batcher is None:
        state.metrics.batch(name, len(x))
    arrays = {n: np.asarray(getattr(pred, model.outputs[n]), dtype=np.float32) for n in names}
    out_params = {"num_samples": pred.num_samples}
    if seed is not None:
        out_params["seed"] = seed
    head = InferResponse(
        model_name=name, model_version="1", id=req.id, outputs=[], parameters=out_params
    )
    content, header_len = encode_response(head, arrays, binary)
    if header_len is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(header_len)})  # fmt: skip


def create_app(config: ServeConfig) -> FastAPI:
    """Open every model of ``config`` (raising the runtime's one-line errors for a bad path or
    model) and return the app. Inference runs in a pool of ``config.workers`` threads."""
    state = _State(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await state.close()

    app = FastAPI(title="qbnn serve", version="1",
                  description="Open Inference Protocol (KServe v2) over qbnn compiled models",
                  lifespan=lifespan)  # fmt: skip
    app.state.qbnn = state

    @app.get("/v2")
    def server_metadata() -> dict:
        return {"name": SERVER_NAME, "version": "1", "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> Response:
        if not state.ready:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True})

    @app.get("/v2/models/{name}", response_model=ModelMetadata)
    @app.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata)
    def model_metadata(name: str) -> ModelMetadata:
        return state.model(name).metadata()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    def model_ready(name: str) -> dict:
        state.model(name)
        return {"name": name, "ready": state.ready}

    infer_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}}
            },
        }
    }

    @app.post("/v2/models/{name}/infer", openapi_extra=infer_doc, response_model=InferResponse)
    @app.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=infer_doc,
              response_model=InferResponse)  # fmt: skip
    async def infer(name: str, request: Request) -> Response:
        start = time.perf_counter()
        label = name if name in state.models else "_unknown"
        try:
            response = await _infer(state, name, request)
        except Overloaded as exc:
            response = _error(exc.status, first_line(exc), {"Retry-After": "1"})
        except ServeError as exc:
            response = _error(exc.status, first_line(exc))
        except QbnnError as exc:  # the runtime's input checks (shape, dtype, NaN/inf)
            response = _error(400, first_line(exc))
        except Exception as exc:  # a server fault: logged with its trace, answered as 500
            log.exception("inference on model %r failed", name)
            response = _error(500, f"internal error: {first_line(exc)}")
        state.metrics.observe(label, response.status_code, time.perf_counter() - start)
        return response

    async def infer_fast(request: Request) -> Response:
        return await infer(request.path_params["name"], request)

    # The infer paths are answered by plain Starlette routes placed first: FastAPI's per-route
    # dependency solving and telemetry cost about as much as a batched request's inference on
    # this 2-core machine. The FastAPI routes above stay for the OpenAPI docs (same handler).
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        app.router.routes.insert(0, Route(path, infer_fast, methods=["POST"]))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return _error(exc.status, first_line(exc))

    _document_request(app)
    return app


def _document_request(app: FastAPI) -> None:
    """Add ``InferRequest`` (read from the raw body, not a typed parameter, because of the
    binary extension and the size limit) to the OpenAPI components."""
    original = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = original()
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            req = InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(req.pop("$defs", {}))
            comps["InferRequest"] = req
        return app.openapi_schema

    app.openapi = openapi
