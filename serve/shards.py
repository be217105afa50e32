"""Shard files of ``qbnn score``: ``.npz`` / ``.parquet`` inputs, Parquet outputs.

Inputs: an ``.npz`` with key ``x [N, *feature_shape]`` (no pickles), or a Parquet file with a
list column ``x`` (or ``input``; each row a flattened example, reshaped to the model's feature
shape) or else only numeric columns (one feature each, in column order; ``[N, F]``). An ``id``
column of a Parquet input is copied to the output.
Outputs: one Parquet file per shard with ``row`` (int64, the row's index in its shard), ``id``
(when given) and the contract outputs (``mean_probs`` as a fixed-size list of C float32,
``predictive_entropy``, ``expected_entropy``, ``mutual_information`` float32; multi-label
models add ``label_predictive_entropy``, ``label_expected_entropy``,
``label_mutual_information`` as fixed-size lists of K; regression:
``pred_mean``, ``pred_variance`` lists of D), written atomically (temp file, then rename), with
the run's identity (model sha256, S, seed) in the schema metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qbnn.runtimes import Prediction
from qbnn.runtimes.atomic import atomic_path
from qbnn.runtimes.errors import ConfigError, ModelLoadError

__all__ = ["SUFFIXES", "find_shards", "read_identity", "read_shard", "write_scores"]

SUFFIXES = (".npz", ".parquet")
_OUTPUTS = (
    "mean_probs", "predictive_entropy", "expected_entropy", "mutual_information",
    "label_predictive_entropy", "label_expected_entropy", "label_mutual_information",
    "pred_mean", "pred_variance",
)  # fmt: skip


def find_shards(folder: Path) -> list[Path]:
    """The ``.npz`` / ``.parquet`` files of ``folder`` (sorted); their stems must differ."""
    if not folder.is_dir():
        raise ConfigError(f"input folder {folder} does not exist or is not a folder")
    shards = sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file())
    if not shards:
        raise ConfigError(f"input folder {folder} has no .npz or .parquet shards")
    stems = [p.stem for p in shards]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise ConfigError(f"shards {dup} exist as both .npz and .parquet in {folder}; their "
                          "outputs would collide, keep one of each")  # fmt: skip
    return shards


def read_shard(path: Path, feature_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray | None]:
    """``(x [N, *feature_shape] float32, ids [N] or None)`` of one shard."""
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                if "x" not in z.files:
                    raise ConfigError(f"{path} lacks key 'x'; it has {sorted(z.files)}")
                return np.asarray(z["x"], dtype=np.float32), None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path} is not a readable .npz file ({exc})") from exc
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a readable Parquet file ({exc})") from exc
    ids = table.column("id").to_numpy() if "id" in table.column_names else None
    for name in ("x", "input"):
        if name in table.column_names:
            flat = np.stack(table.column(name).to_numpy(zero_copy_only=False))
            return flat.astype(np.float32).reshape(len(flat), *feature_shape), ids
    cols = [c for c in table.column_names if c != "id"]
    try:
        x = np.stack([table.column(c).to_numpy() for c in cols], axis=1).astype(np.float32)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: expected a list column 'x' or only numeric columns, got "
                          f"{table.schema}") from exc  # fmt: skip
    return x.reshape(len(x), *feature_shape), ids


def write_scores(
    path: Path, pred: Prediction, ids: np.ndarray | None, identity: dict[str, str]
) -> Path:
    """Write ``pred``'s summary outputs as Parquet at ``path`` atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(pred.mean_probs if pred.mean_probs is not None else pred.pred_mean)
    cols = {"row": pa.array(np.arange(n, dtype=np.int64))}
    if ids is not None:
        cols["id"] = pa.array(ids)
    for name in _OUTPUTS:
        v = getattr(pred, name)
        if v is None:
            continue
        v = np.ascontiguousarray(v, dtype=np.float32)
        if v.ndim == 2:
            cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1])
        else:
            cols[name] = pa.array(v)
    table = pa.table(cols).replace_schema_metadata({f"qbnn.{k}": v for k, v in identity.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_identity(path: Path) -> dict[str, str]:
    """The run identity stored by :func:`write_scores` (empty if none)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return {
        k.decode()[len("qbnn.") :]: v.decode() for k, v in meta.items() if k.startswith(b"qbnn.")
    }
