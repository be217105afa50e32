"""``manifest.json``: every artifact of a run with its hash, stage, config, parent and tools.

Stages are keyed by a hash of their config and their inputs' hashes; a re-run skips a stage
whose key is unchanged and whose outputs still match their recorded sha256.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from qbnn.runtimes.atomic import atomic_path

__all__ = ["Manifest", "sha256_file", "stage_key", "tool_versions"]

MANIFEST_VERSION = 1
_TOOLS = {
    "qbnn": "qbnn",
    "torch": "torch",
    "onnx": "onnx",
    "onnxruntime": None,
    "openvino": "openvino",
    "onnx-neural-compressor": "onnx-neural-compressor",
    "bayesian-torch": "bayesian-torch",
}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dist_version(name: str | None) -> str | None:
    names = [name] if name else ["onnxruntime", "onnxruntime-openvino"]
    for n in names:
        try:
            return metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return None


def tool_versions() -> dict[str, str | None]:
    """Installed versions of the tools a run depends on (None when absent)."""
    return {k: _dist_version(v) for k, v in _TOOLS.items()}


def stage_key(config: Any, inputs: dict[str, str]) -> str:
    """Hash of a stage's config and its input files' sha256."""
    blob = json.dumps({"config": config, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Manifest:
    """The run's ``manifest.json`` (read, updated per stage, written atomically)."""

    root: Path
    run_name: str
    config: dict[str, Any]
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.root / "manifest.json"

    @classmethod
    def load_or_new(cls, root: Path, run_name: str, config: dict[str, Any]) -> Manifest:
        """The existing manifest of ``root`` (if valid) updated with ``config``, or a new one."""
        path = root / "manifest.json"
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                return cls(
                    root, run_name, config, data.get("artifacts", []), data.get("stages", {})
                )
            except (json.JSONDecodeError, AttributeError):
                pass
        return cls(root, run_name, config)

    def outputs_intact(self, stage: str) -> bool:
        """Every artifact recorded for ``stage`` exists and matches its sha256."""
        arts = [a for a in self.artifacts if a["stage"] == stage]
        return bool(arts) and all(
            (self.root / a["path"]).is_file() and sha256_file(self.root / a["path"]) == a["sha256"]
            for a in arts
        )

    def can_skip(self, stage: str, key: str) -> bool:
        rec = self.stages.get(stage)
        return (
            bool(rec)
            and rec.get("status") == "done"
            and rec.get("key") == key
            and (self.outputs_intact(stage))
        )

    def record(
        self,
        stage: str,
        key: str,
        outputs: list[Path],
        config: Any,
        parents: dict[str, str | None],
        seconds: float,
        **extra: Any,
    ) -> None:
        """Replace ``stage``'s artifacts with ``outputs`` and mark it done."""
        self.artifacts = [a for a in self.artifacts if a["stage"] != stage]
        tools = tool_versions()
        for out in outputs:
            rel = out.relative_to(self.root).as_posix()
            self.artifacts.append(
                {
                    "path": rel,
                    "sha256": sha256_file(out),
                    "bytes": out.stat().st_size,
                    "stage": stage,
                    "config": config,
                    "parent": parents.get(rel),
                    "tools": tools,
                }
            )
        self.stages[stage] = {
            "status": "done",
            "key": key,
            "seconds": round(seconds, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }

    def fail(self, stage: str, error: str) -> None:
        self.stages[stage] = {
            "status": "failed",
            "error": error,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def artifact(self, stage: str, suffix: str) -> Path | None:
        """The first artifact of ``stage`` whose path ends with ``suffix``."""
        for a in self.artifacts:
            if a["stage"] == stage and a["path"].endswith(suffix):
                return self.root / a["path"]
        return None

    def save(self) -> Path:
        data = {
            "version": MANIFEST_VERSION,
            "run": self.run_name,
            "config": self.config,
            "tools": tool_versions(),
            "stages": self.stages,
            "artifacts": self.artifacts,
        }
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
        return self.path
