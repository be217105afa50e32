"""Scale-out on a local Ray (``ray.init(num_cpus=2)``, started once for this module):
``qbnn score`` on Ray Data (outputs equal to ``Predictor``, resumable, refuses mixed runs) and
the Ray Serve deployment of the same app answering real HTTP and ``tritonclient`` requests."""

from __future__ import annotations

import os
import socket

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from qbnn.pipeline.cli import app
from qbnn.runtimes import Predictor
from qbnn.runtimes.errors import ConfigError
from qbnn.serve import ModelSpec, ScoreConfig, ServeConfig, score, shard_seed

from serving import IDS

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    from qbnn.serve.rayinit import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three shards: two .npz (7 and 5 rows) and a .parquet with a list column and ids."""
    d = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(3)
    xs = {"a.npz": rng.random((7, 1, 8, 8), dtype=np.float32),
          "b.npz": rng.random((5, 1, 8, 8), dtype=np.float32),
          "c.parquet": rng.random((6, 1, 8, 8), dtype=np.float32)}  # fmt: skip
    np.savez(d / "a.npz", x=xs["a.npz"])
    np.savez(d / "b.npz", x=xs["b.npz"])
    flat = xs["c.parquet"].reshape(6, -1)
    table = pa.table({"id": np.arange(100, 106), "x": pa.array(list(flat))})
    pq.write_table(table, d / "c.parquet")
    return d, xs


def test_score_equals_predictor_and_resumes(model_files, shards, tmp_path):
    src, xs = shards
    out = tmp_path / "scores"
    cfg = ScoreConfig(num_samples=6, seed=9, provider="cpu", workers=2)
    first = score(model_files["cnn"], src, out, cfg)
    assert sorted(first.scored) == sorted(xs) and first.rows == 18 and not first.skipped
    for name, x in xs.items():
        table = pq.read_table(out / f"{name.split('.')[0]}.parquet")
        ref = Predictor(model_files["cnn"], provider="cpu", seed=shard_seed(9, name)).predict(x, 6)
        assert table.column("row").to_pylist() == list(range(len(x)))
        got = np.stack(table.column("mean_probs").to_numpy(zero_copy_only=False))
        np.testing.assert_array_equal(got, ref.mean_probs)
        np.testing.assert_array_equal(
            table.column("mutual_information").to_numpy(), ref.mutual_information
        )
    ids = pq.read_table(out / "c.parquet").column("id").to_pylist()
    assert ids == list(range(100, 106))
    # resume: a finished shard is skipped (file untouched), a missing one is scored again
    kept = (out / "a.parquet").stat().st_mtime_ns
    (out / "b.parquet").unlink()
    second = score(model_files["cnn"], src, out, cfg)
    assert second.scored == ("b.npz",) and second.rows == 5
    assert sorted(second.skipped) == ["a.npz", "c.parquet"]
    assert (out / "a.parquet").stat().st_mtime_ns == kept
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temp files left
    with pytest.raises(ConfigError, match="scored with other settings .*seed"):
        score(model_files["cnn"], src, out, ScoreConfig(num_samples=6, seed=10, provider="cpu"))


def test_score_cli(model_files, shards, tmp_path):
    src, _ = shards
    args = ["score", str(model_files["frozen"]), "--inputs", str(src), "--output",
            str(tmp_path / "o"), "--provider", "cpu"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "scored 3 shards (18 rows" in r.output
    r = CliRunner().invoke(app, args)
    assert "scored 0 shards (0 rows" in r.output and "skipped 3" in r.output
    r = CliRunner().invoke(
        app,
        [
            "score",
            str(model_files["frozen"]),
            "--inputs",
            str(tmp_path / "missing"),
            "--output",
            str(tmp_path / "o2"),
        ],
    )
    assert r.exit_code == 1 and "does not exist or is not a folder" in r.output  # fmt: skip


def test_ray_serve_replicas_answer_the_protocol(model_files, token_files):
    from ray import serve

    from qbnn.serve.ray_serve import deploy_ray

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ServeConfig(models=[ModelSpec(name="cnn", path=model_files["cnn"]),
                              ModelSpec(name="ids", path=token_files["ids64"])], port=port,
                      provider="cpu", threads=1)  # fmt: skip
    deploy_ray(cfg, replicas=2)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/v2/health/ready", timeout=30).status_code == 200
        x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
        import tritonclient.http as tritonhttp

        client = tritonhttp.InferenceServerClient(f"127.0.0.1:{port}")
        inp = tritonhttp.InferInput("input", [2, 1, 8, 8], "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("cnn", [inp], parameters={"num_samples": 4, "seed": 5})
        ref = Predictor(model_files["cnn"], provider="cpu", seed=5).predict(x, 4)
        np.testing.assert_array_equal(res.as_numpy("mean_probs"), ref.mean_probs)
        # the token-id model: the same dtype logic as qbnn serve (INT64 graph, INT32 accepted)
        assert client.get_model_metadata("ids")["inputs"][0]["datatype"] == "INT64"
        ids = tritonhttp.InferInput("input", list(IDS.shape), "INT32")
        ids.set_data_from_numpy(IDS.astype(np.int32))
        res = client.infer("ids", [ids], parameters={"num_samples": 8, "seed": 5})
        ref = Predictor(token_files["ids64"], provider="cpu", seed=5).predict(IDS, 8)
        np.testing.assert_array_equal(res.as_numpy("mean_probs"), ref.mean_probs)
        bad = httpx.post(f"{base}/v2/models/cnn/infer", content=b"{", timeout=30)
        assert bad.status_code == 400 and "malformed JSON" in bad.json()["error"]
        status = serve.status().applications["qbnn"].deployments["qbnn_serve"]
        assert status.status == "HEALTHY" and sum(status.replica_states.values()) == 2
    finally:
        serve.shutdown()
