"""The ``run`` stage: export -> quantize -> validate -> bench from one ``pipeline.yaml``.

``run(config_path) -> RunResult`` writes every artifact and a ``manifest.json`` under
``<output_root>/<name>/``. Modules: ``config`` (the pipeline.yaml schema), ``stages`` (the four
stages as functions over files), ``manifest``, ``runner`` (skip/re-run logic), ``summary`` (the
end-of-run table), ``demo`` and ``digits`` (the bundled offline demo).
"""

from .config import DataConfig, ModelSource, RunConfig, Stage, load_run_config
from .demo import demo_config_text, prepare_demo
from .manifest import Manifest, sha256_file
from .runner import RunResult, load_manifest, run
from .summary import speed_notes, summary_columns, summary_rows

__all__ = [
    "DataConfig",
    "Manifest",
    "ModelSource",
    "RunConfig",
    "RunResult",
    "Stage",
    "demo_config_text",
    "load_manifest",
    "load_run_config",
    "prepare_demo",
    "run",
    "sha256_file",
    "summary_columns",
    "speed_notes",
    "summary_rows",
]
