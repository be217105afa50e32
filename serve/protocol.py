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
    "input_datatypes",
    "parse_request",
]

HEADER_LENGTH = "Inference-Header-Content-Length"

#: v2 datatype name -> numpy dtype (BYTES is not a numeric tensor; qbnn models take FP32, or
#: INT64 / INT32 token ids: see :func:`input_datatypes`)
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


def input_datatypes(input_dtype: str) -> tuple[str, ...]:
    """The v2 datatypes a request may send for a graph input of numpy dtype ``input_dtype``
    (``"float32"``, ``"int64"``, ...); the first is the graph's own, which ``/v2/models/{name}``
    reports. A float graph takes its own datatype (FP32); an integer graph (token ids) takes
    INT64 and INT32, converted to the graph's dtype. Used by ``qbnn serve`` and its Ray Serve
    deployment alike (both run :func:`qbnn.serve.create_app`)."""
    dtype = np.dtype(input_dtype)
    own = _NAMES.get(dtype)
    if own is None:
        raise ValueError(f"graph input dtype {input_dtype!r} has no v2 datatype")
    if np.issubdtype(dtype, np.integer):
        return (own, *(d for d in ("INT64", "INT32") if d != own))
    return (own,)


def decode_input(
    inp: RequestInput, tail: memoryview, offset: int, *, model_dtype: str = "float32"
) -> tuple[np.ndarray, int]:
    """The tensor of ``inp`` (shape ``inp.shape``) converted to the graph input's numpy dtype
    ``model_dtype``, and the offset after its bytes in ``tail``. Raises :class:`BadRequest` for
    a datatype the graph does not accept (see :func:`input_datatypes`), non-integer values or
    values outside ``model_dtype`` for an integer graph, or a size mismatch."""
    accepted = input_datatypes(model_dtype)
    if inp.datatype not in accepted:
        what = " (integer token ids)" if np.issubdtype(np.dtype(model_dtype), np.integer) else ""
        raise BadRequest(f"input {inp.name!r} has datatype {inp.datatype}; this model accepts "
                         f"{' or '.join(accepted)}{what}")  # fmt: skip
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
        return _to_model(inp, arr.reshape(inp.shape), model_dtype), offset + size
    if inp.data is None:
        raise BadRequest(f"input {inp.name!r} has neither 'data' nor binary_data_size")
    arr = _json_data(inp, dtype)
    if arr.size != count:
        raise BadRequest(f"input {inp.name!r}: data has {arr.size} values, shape {inp.shape} "
                         f"needs {count}")  # fmt: skip
    return _to_model(inp, arr.reshape(inp.shape), model_dtype), offset


def _json_data(inp: RequestInput, dtype: np.dtype) -> np.ndarray:
    """``inp.data`` as an array of ``dtype``; integer datatypes need JSON integers in range
    (numpy alone would truncate 1.5 to 1)."""
    try:
        if not np.issubdtype(dtype, np.integer):
            return np.asarray(inp.data, dtype=dtype)
        raw = np.asarray(inp.data)
        if raw.size and raw.dtype.kind not in "iu":
            flat = np.asarray(inp.data, dtype=object).ravel()
            _check_integers(inp, flat, dtype)
            raw = np.asarray(inp.data, dtype=dtype)
        return _fit(inp, raw, dtype, inp.datatype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"input {inp.name!r}: data is not a regular {inp.datatype} array "
                         f"({exc})") from None  # fmt: skip


def _check_integers(inp: RequestInput, flat: np.ndarray, dtype: np.dtype) -> None:
    """Raise :class:`BadRequest` naming the first value of ``flat`` (Python objects) that is
    not an integer in ``dtype``'s range."""
    info = np.iinfo(dtype)
    for i, v in enumerate(flat):
        if isinstance(v, bool) or not isinstance(v, int):
            raise BadRequest(f"input {inp.name!r}: datatype {inp.datatype} needs integer values,"
                             f" got {v!r} at flat index {i}; send the token ids as JSON "
                             "integers")  # fmt: skip
        if not info.min <= v <= info.max:
            raise BadRequest(f"input {inp.name!r}: value {v} is outside {inp.datatype} "
                             f"[{info.min}, {info.max}]")  # fmt: skip


def _fit(inp: RequestInput, arr: np.ndarray, dtype: np.dtype, label: str) -> np.ndarray:
    """Integer ``arr`` cast to integer ``dtype``; a value outside its range is a BadRequest."""
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        bad = arr.max() if arr.max() > info.max else arr.min()
        raise BadRequest(f"input {inp.name!r}: value {int(bad)} is outside {label} "
                         f"[{info.min}, {info.max}]")  # fmt: skip
    return arr.astype(dtype, copy=False)


def _to_model(inp: RequestInput, arr: np.ndarray, model_dtype: str) -> np.ndarray:
    """``arr`` (the request's datatype) in the graph input's dtype."""
    want = np.dtype(model_dtype)
    if arr.dtype == want:
        return arr
    if np.issubdtype(want, np.integer):
        return _fit(inp, arr, want, f"the model's {want.name}")
    return arr.astype(want)


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
