"""The cause of a failed trace, in torch's own words, without the exporter's banner.

``torch.onnx.export`` wraps every ``torch.export`` failure in a ``TorchExportError`` whose first
line is a banner ("Failed to export the model with torch.export. This is step 1/3 ... Next
steps:") and whose real reason sits further down ("## Exception summary") and in the chained
exceptions (dynamo's ``Unsupported``: "Data-dependent branching", "Unsafe side effect", an
unsupported context manager; ``GuardOnDataDependentSymNode``; a custom autograd Function).
:func:`trace_cause` digs that reason out, with where in the user's code it happened.
"""

from __future__ import annotations

import os
import re
import traceback

import torch

import qbnn.runtimes

__all__ = ["trace_cause"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_WRAPPERS = ("torch.onnx.",)  # exception modules whose message is a banner, not a reason

#: frames in these folders are torch's or qbnn's own, never the user's code
_OWN_DIRS = tuple(
    os.path.dirname(os.path.abspath(f)) + os.sep
    for f in (torch.__file__, __file__, qbnn.runtimes.__file__)
)
_WHERE = re.compile(r'# File "([^"]+)", line (\d+), in (\w+), code: (.+)')
_FIRST_SENTENCE = re.compile(r"(.+?)(?:\.\s|\.?$)")
_CALL_ARGS = re.compile(r"call_function (\w+)\(\*\(.*\), \*\*\{.*?\}\)")
_SKIP_LINES = ("Higher Order Operator:", "For more information", "Hint:", "Developer debug")


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its explicit causes (``raise ... from``), outermost first; implicit contexts
    are left out (torch.onnx tries several strategies: an earlier one's error is a context)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 16:
        out.append(cur)
        cur = cur.__cause__
    return out


def _lines(exc: BaseException) -> list[str]:
    text = _ANSI.sub("", str(exc))
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def _reason(exc: BaseException) -> str:
    """The first one or two informative lines of ``exc``'s message."""
    lines = [ln for ln in _lines(exc) if not ln.startswith(_SKIP_LINES)]
    if lines and lines[0].startswith("This higher order operator doesn't work"):
        lines = lines[1:]  # dynamo's scan wrapper; the next line is the reason
    if lines and lines[0].endswith("Got graph break/error:"):
        lines = lines[1:]
    if not lines:
        return type(exc).__name__
    head = _FIRST_SENTENCE.match(lines[0]).group(1)
    expl = next((ln for ln in lines[1:3] if ln.startswith("Explanation:")), None)
    if expl is None:
        return head
    expl = _CALL_ARGS.sub(r"call_function \1(...)", expl[len("Explanation:") :].strip())
    return f"{head} ({expl.rstrip('.')})"


def _user_frame(exc: BaseException) -> str | None:
    """``file:line in func`` of the innermost traceback frame in the user's code (not torch's
    or qbnn's), or of dynamo's ``# File ...`` note in the message."""
    for ln in _lines(exc):
        m = _WHERE.search(ln)
        if m and not m.group(1).startswith(_OWN_DIRS):
            return f"{m.group(1)}:{m.group(2)} in {m.group(3)} (`{m.group(4).strip()}`)"
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    user = [
        f
        for f in frames
        if not os.path.abspath(f.filename).startswith(_OWN_DIRS) and not f.filename.startswith("<")
    ]
    if not user:
        return None
    f = user[-1]
    code = f" (`{f.line.strip()}`)" if f.line else ""
    return f"{f.filename}:{f.lineno} in {f.name}{code}"


def _summary(exc: BaseException) -> str | None:
    """The ``## Exception summary`` section of torch.onnx's banner, first line."""
    lines = _lines(exc)
    for i, ln in enumerate(lines):
        if ln.startswith("## Exception summary") and i + 1 < len(lines):
            m = re.match(r"<class '([\w.]+)'>:\s*(.*)", lines[i + 1])
            if m is None:
                return _FIRST_SENTENCE.match(lines[i + 1]).group(1)
            return f"{m.group(1).rpartition('.')[2]}: {_FIRST_SENTENCE.match(m.group(2)).group(1)}"
    return None


def trace_cause(exc: BaseException) -> str:
    """One line: torch's reason for a failed export (``TypeName: first line (explanation)``)
    and, when known, where in the user's code (``at file:line in func: code``). Falls back to
    the banner's "Exception summary" line, then to the first line of ``exc``."""
    chain = _chain(exc)
    causes = [e for e in chain if not type(e).__module__.startswith(_WRAPPERS)]
    torch_causes = [e for e in causes if type(e).__module__.startswith("torch")]
    root = (torch_causes or causes or [None])[-1]
    if root is None or root is exc and _summary(exc):
        text = _summary(exc) or (_lines(exc) or [type(exc).__name__])[0]
    else:
        text = f"{type(root).__name__}: {_reason(root)}"
    where = next((w for w in (_user_frame(e) for e in reversed(chain)) if w), None)
    return f"{text}; at {where}" if where else text
