"""Export per posterior family: fidelity against the torch sampler, graph structure, seeds."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from qbnn.exporters import export_model, known_families
from qbnn.exporters.modules.dropout import mc_mode
from qbnn.runtimes.contract import CLASSIFICATION_OUTPUTS, MetaKey
from qbnn.runtimes.seeding import random_nodes

from tiny_models import CASES, example, ort_session

#: (case, sampling mode); every registered family appears at least once (checked below)
EXPORTS = [
    ("meanfield-mlp", "weight"),
    ("meanfield-mlp", "lrt"),
    ("meanfield-mlp", "frozen:4"),
    ("meanfield-cnn", "weight"),
    ("meanfield-cnn", "lrt"),
    ("meanfield-cnn", "frozen:4"),
    ("meanfield-conv1d", "weight"),
    ("meanfield-conv1d", "lrt"),
    ("meanfield-dnn_to_bnn", "weight"),
    ("flipout-cnn", "flipout"),
    ("flipout-cnn", "weight"),
    ("mcdropout-mlp", "dropout"),
    ("ensemble-mlp", "members"),
    ("stochastic-bbb", "loop"),
    ("stacked-heads", "members:3"),
]
EXACT_MODES = ("frozen:4", "members", "members:3")
ids = [f"{c}[{m}]" for c, m in EXPORTS]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Export every case once (with the self-check on) and cache the results."""
    cache = {}

    def get(case: str, mode: str):
        if (case, mode) not in cache:
            factory, shape = CASES[case]
            path = tmp_path_factory.mktemp("exp") / f"{case}-{mode.replace(':', '_')}.onnx"
            res = export_model(factory(), example(shape), path, sampling=mode, num_samples=8)
            cache[(case, mode)] = res
        return cache[(case, mode)]

    return get


def test_every_family_has_a_tiny_case():
    families = {c.split("-")[0] for c, _ in EXPORTS}
    trained = {"laplace", "swag", "gaussian"}  # fitted posteriors: families/test_trainers.py
    assert families | trained == set(known_families())


def _torch_samples(case: str, x: torch.Tensor, s: int) -> np.ndarray:
    """Independent torch reference: S forward passes as the trainer's users run them."""
    factory, _ = CASES[case]
    model = factory()
    model = mc_mode(model) if case.startswith(("mcdropout", "stochastic")) else model.eval()
    torch.manual_seed(99)
    with torch.no_grad():
        outs = []
        for _ in range(s):
            o = model(x)
            outs.append(F.softmax(o[0] if isinstance(o, tuple) else o, -1))
    return torch.stack(outs).double().numpy()


@pytest.mark.parametrize(
    ("case", "mode"),
    [e for e in EXPORTS if e[1] not in EXACT_MODES],
    ids=[i for i, e in zip(ids, EXPORTS, strict=True) if e[1] not in EXACT_MODES],
)
def test_statistical_equivalence_with_torch(exported, case, mode):
    """Seeded S=600 draws each side. Tolerances: every MC-mean element within 4.5 standard
    errors (+1e-4); mean per-element spread within 15% (35% for lrt on convolutions, which
    is an approximation there by design)."""
    res = exported(case, mode)
    x = example(CASES[case][1], seed=5)
    s = 600
    graph = ort_session(res.path).run(["probs"], {"input": x.numpy(), "num_samples": np.array(s)})[
        0
    ]
    ref = _torch_samples(case, x, s)
    diff = np.abs(graph.mean(0) - ref.mean(0))
    se = np.sqrt((graph.var(0, ddof=1) + ref.var(0, ddof=1)) / s)
    assert np.all(diff <= 4.5 * se + 1e-4), f"max z {(diff / np.maximum(se, 1e-9)).max():.2f}"
    sp_g, sp_t = graph.std(0).mean(), ref.std(0).mean()
    rtol = 0.35 if mode == "lrt" and "cnn" in case or "conv" in case and mode == "lrt" else 0.15
    assert abs(sp_g - sp_t) <= rtol * sp_t, (sp_g, sp_t)
    assert sp_t > 1e-3  # the tiny models are visibly stochastic, so this test can fail


@pytest.mark.parametrize(("case", "mode"), EXPORTS, ids=ids)
def test_graph_structure_and_contract(exported, case, mode):
    res = exported(case, mode)
    model = onnx.load(str(res.path))
    names = [n.name for n in model.graph.node]
    assert all(names) and len(names) == len(set(names)), "node names must be unique (INC)"
    rand = random_nodes(model)  # subgraphs included (the sample loop's Scan body)
    assert (len(rand) == 0) == (mode in EXACT_MODES)
    assert all(n.op_type != "RandomNormalLike" for n in rand), "OpenVINO computes it wrongly"
    assert [o.name for o in model.graph.output] == list(CLASSIFICATION_OUTPUTS)
    inputs = {i.name for i in model.graph.input}
    assert inputs == {"input", "num_samples"}
    # contract format 2: a plain input, no initializer of that name (issue 24)
    assert not inputs & {i.name for i in model.graph.initializer}
    meta = {p.key: p.value for p in model.metadata_props}
    for key in (
        MetaKey.FORMAT_VERSION,
        MetaKey.TASK,
        MetaKey.POSTERIOR,
        MetaKey.SAMPLING,
        MetaKey.DEFAULT_SAMPLES,
        MetaKey.NUM_CLASSES,
        MetaKey.PRECISION,
        MetaKey.SOURCE,
        MetaKey.VERSION,
    ):
        assert meta.get(key), key
    assert meta[MetaKey.SAMPLING] == mode and meta[MetaKey.PRECISION] == "fp32"
    assert meta[MetaKey.DEFAULT_SAMPLES] == "8" and meta[MetaKey.FORMAT_VERSION] == "2"


@pytest.mark.parametrize(("case", "mode"), EXPORTS, ids=ids)
def test_dynamic_samples_batch_and_summary(exported, case, mode):
    res = exported(case, mode)
    sess = ort_session(res.path)
    shape = CASES[case][1]
    one = sess.run(None, {"input": example(shape, batch=1).numpy(), "num_samples": np.array(8)})
    assert one[0].shape[:2] == (8, 1)  # batch of one
    x = example(shape, batch=5).numpy()
    probs, mean, pe, ee, mi = sess.run(None, {"input": x, "num_samples": np.array(11)})
    assert probs.shape[:2] == (11, 5) and mean.shape == (5, probs.shape[2])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    k = 4 if mode == "frozen:4" else 3 if case.startswith(("ensemble", "stacked")) else 11
    rows = probs[:k]  # exact modes: the summaries are uniform over the K members (issue 14)
    np.testing.assert_allclose(mean, rows.mean(0), atol=1e-6)
    ent = lambda p: -(p * np.log(np.clip(p, 1e-12, None))).sum(-1)  # noqa: E731
    np.testing.assert_allclose(pe, ent(mean), atol=1e-5)
    np.testing.assert_allclose(ee, ent(rows).mean(0), atol=1e-5)
    np.testing.assert_allclose(mi, np.clip(pe - ee, 0, None), atol=1e-5)
    assert np.all(mi >= 0)
    distinct = len({probs[i].tobytes() for i in range(probs.shape[0])})
    assert distinct == k, "one run must give S different samples (K for exact modes)"
    if mode not in EXACT_MODES:
        again = sess.run(["probs"], {"input": x, "num_samples": np.array(11)})[0]
        assert not np.array_equal(again, probs), "every run draws fresh samples"


def test_exact_modes_match_members(exported):
    res = exported("ensemble-mlp", "members")
    members = CASES["ensemble-mlp"][0]()
    x = example((6,), batch=3)
    probs = ort_session(res.path).run(["probs"], {"input": x.numpy(), "num_samples": np.array(5)})[
        0
    ]
    with torch.no_grad():
        ref = [F.softmax(members[i % 3].eval()(x), -1).numpy() for i in range(5)]
    np.testing.assert_allclose(probs, np.stack(ref), atol=1e-5)
    assert res.fidelity.exact and res.fidelity.max_abs_mean_diff < 1e-4


_RUN = textwrap.dedent("""
    import sys, hashlib, numpy as np, onnxruntime as ort
    o = ort.SessionOptions(); o.log_severity_level = 3
    s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
    x = np.linspace(-1, 1, 4 * 6, dtype=np.float32).reshape(4, 6)
    p = s.run(["probs"], {"input": x, "num_samples": np.array(16)})[0]
    print(hashlib.sha256(p.tobytes()).hexdigest())
""")


def _hash_in_subprocess(path) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _RUN, str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_seed_reproducible_across_processes(tmp_path):
    factory, shape = CASES["meanfield-mlp"]
    a = export_model(factory(), example(shape), tmp_path / "a.onnx", seed=7, verify=False)
    b = export_model(factory(), example(shape), tmp_path / "b.onnx", seed=8, verify=False)
    h1, h2 = _hash_in_subprocess(a.path), _hash_in_subprocess(a.path)
    assert h1 == h2
    assert _hash_in_subprocess(b.path) != h1
    seeds = [
        att.f
        for n in onnx.load(str(a.path)).graph.node
        for att in n.attribute
        if att.name == "seed"
    ]
    assert len(seeds) == len(set(seeds)) > 0, "every random node gets a distinct seed"


@pytest.mark.parametrize("mode", ["weight", "lrt", "frozen:3"])
def test_resnet20_dnn_to_bnn_exports_and_runs(tmp_path, mode):
    from tiny_models import resnet20_bnn

    res = export_model(
        resnet20_bnn(),
        example((3, 32, 32), batch=2),
        tmp_path / "r20.onnx",
        sampling=mode,
        verify_samples=16,
    )
    assert res.fidelity is not None
    sess = ort_session(res.path)
    x = example((3, 32, 32), batch=2).numpy()
    for s in (1, 8, 64):
        probs = sess.run(["probs"], {"input": x, "num_samples": np.array(s)})[0]
        assert probs.shape == (s, 2, 10) and np.isfinite(probs).all()
