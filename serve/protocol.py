"""The Open Inference Protocol (KServe v2, as Triton, KServe and MLServer speak it): request and
response bodies, JSON and binary tensor encoding.

Spec: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ and Triton's
binary tensor data extension (``Inference-Header-Content-Length``; an input or output with
``parameters.binary_data_size`` carries its raw little-endian bytes after the JSON header, in
order), which ``tritonclient.http`` uses by default.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from .errors import BadRequest

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "InferRequest",
    "InferResponse",
    "ModelMetadata",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "TensorMetadata",
    "decode_input",
    "encode_response",
    "parse_request",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

#: v2 datatype name -> numpy dtype (BYTES is not a numeric tensor; qbnn models take FP32)
DATATYPES: dict[str, np.dtype] = {
    name: np.dtype(dt)
    for name, dt in {
        "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
        "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
        "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    }.items()
}  # fmt: skip
_NAMES = {dt: name for name, dt in DATATYPES.items()}


class TensorMetadata(BaseModel):
    """A tensor of the model's contract; ``-1`` marks a variable dimension."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``."""

    name: str
    versions: list[str] = []
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = {}


class RequestInput(BaseModel):
    """One input tensor; ``data`` is row-major (flat or nested), absent when binary."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    """A requested output; ``parameters.binary_data`` asks for it in binary."""

    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``. qbnn reads ``parameters.num_samples`` (MC samples S)
    and ``parameters.seed`` (reproducible noise; see ``qbnn.serve`` on seeds and batching)."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """One output tensor of a response."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    """The response of an inference request."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


def parse_request(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """Split ``body`` into the JSON request and the binary tail (empty without the binary
    extension). Raises :class:`BadRequest` naming what is malformed."""
    tail = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= n <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} {n} is outside the body's {len(body)} bytes")
        body, tail = body[:n], body[n:]
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None
    try:
        return InferRequest.model_validate(raw), tail
    except ValidationError as exc:
        raise BadRequest(f"invalid inference request: {_first_error(exc)}") from None


def decode_input(inp: RequestInput, tail: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """The tensor of ``inp`` (shape ``inp.shape``, dtype of ``inp.datatype``) and the offset
    after its bytes in ``tail``. Raises :class:`BadRequest` on a mismatch."""
    if inp.datatype not in DATATYPES:
        raise BadRequest(f"input {inp.name!r}: unknown datatype {inp.datatype!r}; "
                         f"expected one of {sorted(DATATYPES)}")  # fmt: skip
    dtype = DATATYPES[inp.datatype].newbyteorder("<")
    if any(d < 0 for d in inp.shape):
        raise BadRequest(f"input {inp.name!r}: shape {inp.shape} has a negative dimension")
    count = int(np.prod(inp.shape, dtype=np.int64))
    size = (inp.parameters or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize:
            raise BadRequest(f"input {inp.name!r}: binary_data_size {size!r} does not match "
                             f"shape {inp.shape} of {inp.datatype} ({count * dtype.itemsize} "
                             "bytes)")  # fmt: skip
        if offset + size > len(tail):
            raise BadRequest(f"input {inp.name!r}: the body ends before its {size} binary bytes")
        arr = np.frombuffer(tail[offset : offset + size], dtype=dtype)
        return arr.reshape(inp.shape), offset + size
    if inp.data is None:
        raise BadRequest(f"input {inp.name!r} has neither 'data' nor binary_data_size")
    try:
        arr = np.asarray(inp.data, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"input {inp.name!r}: data is not a regular {inp.datatype} array "
                         f"({exc})") from None  # fmt: skip
    if arr.size != count:
        raise BadRequest(f"input {inp.name!r}: data has {arr.size} values, shape {inp.shape} "
                         f"needs {count}")  # fmt: skip
    return arr.reshape(inp.shape), offset


def encode_response(
    head: InferResponse, arrays: dict[str, np.ndarray], binary: set[str]
) -> tuple[bytes, int | None]:
    """The response body: JSON (with ``data`` lists) or, when some outputs are in ``binary``,
    the JSON header followed by their bytes; returns ``(body, header_length or None)``."""
    tail: list[bytes] = []
    outputs = []
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        out = ResponseOutput(name=name, shape=list(arr.shape), datatype=_NAMES[arr.dtype])
        if name in binary:
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            out.parameters = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            out.data = arr.ravel().tolist()
        outputs.append(out)
    head = head.model_copy(update={"outputs": outputs})
    text = head.model_dump_json(exclude_none=True).encode()
    if not tail:
        return text, None
    return text + b"".join(tail), len(text)
