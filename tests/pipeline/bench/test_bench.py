"""The bench stage on tiny models: JSON schema, table and plot, S = 1 for plain models, run order,
memory probes, config round trip, every error path. Speed itself is never asserted.

Models (module fixture): ``bayes_mlp`` exported in ``weight`` and ``lrt`` mode, and ``plain_mlp``
exported by ``torch.onnx.export(dynamo=True)`` (a plain ONNX file with external data).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from qbnn.exporters import export
from qbnn.pipeline.bench import BenchConfig, bench, model_names, schedule
from qbnn.pipeline.bench import probe as bench_probe
from qbnn.pipeline.bench import runner as B
from qbnn.pipeline.bench.environment import cpu_model
from qbnn.pipeline.bench.report import cell_table
from qbnn.pipeline.cli import app
from qbnn.pipeline.common import from_dict, load_config, to_dict
from qbnn.runtimes import available_providers, known_providers
from qbnn.runtimes.errors import ConfigError, ModelLoadError

from tiny_models import bayes_mlp, ensemble, example, plain_mlp

runner = CliRunner()
KNOWN = ["auto", *known_providers()]
GRID = {"batches": (1, 4), "samples": (1, 3), "repeats": 3, "warmup": 1, "threads": 1}
FAST = BenchConfig(**GRID, measure_memory=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    out = {
        mode: export(bayes_mlp(), example((6,)), d / f"{mode}.onnx", sampling=mode, verify=False)
        for mode in ("weight", "lrt")
    }
    out["plain"] = d / "plain.onnx"
    torch.onnx.export(
        plain_mlp().eval(),
        (example((6,)),),
        str(out["plain"]),
        dynamo=True,
        input_names=["features"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("b")}},
    )
    return out


@pytest.fixture(scope="module")
def cli_run(models, tmp_path_factory):
    """One full CLI run (with memory probes); returns (result, bench.json data, out dir)."""
    out = tmp_path_factory.mktemp("cli")
    args = ["bench", *map(str, models.values()), "--batch", "1,4", "--samples", "1,3"]
    args += ["--repeats", "3", "--warmup", "1", "--threads", "1", "--baseline", "plain"]
    r = runner.invoke(app, [*args, "-o", str(out / "bench.json")])
    assert r.exit_code == 0, r.output
    return r, json.loads((out / "bench.json").read_text()), out


def _cells(data, model):
    return {
        (c["provider"], c["batch"], c["num_samples"]) for c in data["cells"] if c["model"] == model
    }


def test_json_has_every_cell_and_plain_model_runs_at_s1(cli_run):
    _, data, _ = cli_run
    cpu = available_providers()[0]
    for name in ("weight", "lrt"):
        assert _cells(data, name) == {(cpu, b, s) for b in (1, 4) for s in (1, 3)}
    assert _cells(data, "plain") == {(cpu, 1, 1), (cpu, 4, 1)}
    assert any(
        "'plain' has no num_samples input" in n and "skipped S=3" in n for n in data["notes"]
    )
    assert all(c["runs"] == 3 and c["plain"] == (c["model"] == "plain") for c in data["cells"])


def test_percentiles_positive_ordered_and_throughput_from_median(cli_run):
    for c in cli_run[1]["cells"]:
        assert 0 < c["min_ms"] <= c["median_ms"] <= c["p90_ms"] <= c["p99_ms"] <= c["max_ms"]
        assert c["images_per_s"] == pytest.approx(c["batch"] / (c["median_ms"] / 1e3))
        assert c["samples_per_s"] == pytest.approx(c["images_per_s"] * c["num_samples"])
        assert c["exact"] is False


def test_models_sizes_memory_and_metadata(cli_run, models):
    data = cli_run[1]
    by_name = {m["name"]: m for m in data["models"]}
    assert by_name.keys() == {"weight", "lrt", "plain"}
    plain_files = [models["plain"], models["plain"].with_name("plain.onnx.data")]
    assert plain_files[1].is_file(), "the dynamo export should write external data"
    assert by_name["plain"]["file_bytes"] == sum(p.stat().st_size for p in plain_files)
    for name in ("weight", "lrt"):
        m = by_name[name]
        assert m["file_bytes"] == models[name].stat().st_size
        assert (m["precision"], m["sampling"], m["posterior"]) == ("fp32", name, "meanfield")
        assert m["memory_cell"] == [4, 3]
    assert by_name["plain"]["qbnn"] is False and by_name["plain"]["memory_cell"] == [4, 1]
    for m in by_name.values():
        assert m["peak_rss_kb"] > 0
        assert m["process_peak_rss_kb"] == m["baseline_rss_kb"] + m["peak_rss_kb"]
    env = data["environment"]
    assert env["cpu"] and env["cores_logical"] >= 1 and env["threads"] == 1
    assert env["onnxruntime"] and "cpu" in env["providers_available"]
    assert data["config"] == to_dict(BenchConfig(**GRID))


def test_cli_prints_tables_writes_png_and_ratios(cli_run):
    r, data, out = cli_run
    for text in ("median ms", "p99 ms", "images/s", "x plain", "memory MB", "weight", "lrt"):
        assert text in r.output
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))
    assert data["baseline"] == "plain"
    ratios = {(x["model"], x["batch"], x["num_samples"]): x for x in data["ratios"]}
    cells = {(c["model"], c["batch"], c["num_samples"]): c for c in data["cells"]}
    ratio = ratios[("weight", 4, 3)]
    assert ratio["baseline_num_samples"] == 1
    expected = cells[("weight", 4, 3)]["images_per_s"] / cells[("plain", 4, 1)]["images_per_s"]
    assert ratio["throughput"] == pytest.approx(expected)
    assert not any(k[0] == "plain" for k in ratios)


def test_cli_plot_path_and_config_file(models, tmp_path):
    cfg = tmp_path / "bench.yaml"
    cfg.write_text("batches: [2]\nsamples: [2]\nrepeats: 2\nwarmup: 0\nmeasure_memory: false\n")
    plot = tmp_path / "plots"
    plot.mkdir()
    args = ["bench", str(models["lrt"]), "--config", str(cfg), "--plot", str(plot / "t.png")]
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "b.json")])
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert [(c["batch"], c["num_samples"], c["runs"]) for c in data["cells"]] == [(2, 2, 2)]
    assert data["models"][0]["peak_rss_kb"] is None and "baseline" not in data
    assert (plot / "t.png").is_file() and not (tmp_path / "b.png").exists()


# --------------------------------------------------------------------------- run order


def test_schedule_is_round_robin_with_rotation():
    assert schedule("abc", 3) == list("abcbcacab")
    assert schedule("abc", 2, interleave=False) == list("aabbcc")
    assert schedule("abc", 1, start=4) == list("bca")
    rounds = [schedule(range(4), 8)[i : i + 4] for i in range(0, 32, 4)]
    assert all(sorted(r) == [0, 1, 2, 3] for r in rounds)
    assert [r[0] for r in rounds] == [0, 1, 2, 3, 0, 1, 2, 3]


@pytest.mark.parametrize("interleave", [True, False])
def test_timed_runs_follow_the_schedule(models, monkeypatch, interleave):
    order: list[str] = []
    run = B._Runner.run

    def recording(self):
        order.append(self.name)
        return run(self)

    monkeypatch.setattr(B._Runner, "run", recording)
    cfg = BenchConfig(batches=(2,), samples=(1,), repeats=4, warmup=2, interleave=interleave)
    result = bench(models, replace(cfg, measure_memory=False))
    assert order == schedule(list(models), 4, interleave=interleave)
    assert [c.runs for c in result.cells] == [4, 4, 4]


def test_min_time_extends_every_cell(models):
    cfg = replace(FAST, batches=(1,), samples=(3,), min_time_s=0.005)
    result = bench({"w": models["weight"], "l": models["lrt"]}, cfg)
    for c in result.cells:
        assert c.runs >= 3 and c.runs * c.max_ms >= 5.0


# --------------------------------------------------------------------------- result API


def test_ratios_and_json_of_the_api(models):
    result = bench({"a": models["weight"], "b": models["lrt"]}, FAST)
    assert [m.name for m in result.models] == ["a", "b"]
    ratios = result.ratios("a")
    assert len(ratios) == 4 and all(
        r.model == "b" and r.num_samples == r.baseline_num_samples for r in ratios
    )
    data = json.loads(result.to_json("a"))
    assert data["version"] == "1" and len(data["cells"]) == 8 and len(data["ratios"]) == 4
    with pytest.raises(ConfigError, match=r"unknown baseline model 'c'; models: \['a', 'b'\]"):
        result.ratios("c")


def test_exact_posteriors_report_no_samples_per_s(models, tmp_path):
    """Issue 24, item 4: a 3-member ensemble at S = 16 was reported at batch * 16 / median
    "samples/s" (2,382,193), though each call runs the 3 members once and copies rows. Exact
    posteriors (no random ops) get no samples/s, a label in the table and a note; sampled
    models keep batch * S / median."""
    ens = export(ensemble(), example((6,)), tmp_path / "ens.onnx", verify=False)
    cfg = replace(FAST, batches=(2,), samples=(1, 16))
    result = bench({"ens": ens, "w": models["weight"]}, cfg)
    by = {(c.model, c.num_samples): c for c in result.cells}
    assert by["ens", 16].exact and by["ens", 16].samples_per_s is None
    w = by["w", 16]
    assert not w.exact and w.samples_per_s == pytest.approx(w.images_per_s * 16)
    header, rows = cell_table(result)
    col = header.index("samples/s")
    assert {r[3]: r[col] for r in rows if r[0] == "ens"} == {"1": "exact", "16": "exact"}
    assert all(r[col] != "exact" for r in rows if r[0] == "w")
    note = "'ens' is an exact posterior (sampling 'members'"
    assert any(n.startswith(note) for n in result.notes), result.notes
    data = json.loads(result.to_json())
    assert {(c["model"], c["exact"], c["samples_per_s"] is None) for c in data["cells"]} == {
        ("ens", True, True),
        ("w", False, False),
    }


@pytest.mark.parametrize("fail", ["model", "baseline"])
def test_failed_memory_probe_is_a_note(models, monkeypatch, fail):
    real = bench_probe.probe_memory

    def probe(path, **kw):
        if (path is None) == (fail == "baseline"):
            raise RuntimeError("probe killed")
        return real(path, **kw)

    monkeypatch.setattr(B, "probe_memory", probe)
    cfg = replace(FAST, batches=(1,), samples=(1,), measure_memory=True)
    result = bench([models["lrt"]], cfg)
    assert result.models[0].peak_rss_kb is None
    expected = "memory not measured" if fail == "baseline" else "memory of 'lrt' on"
    assert any(expected in n and "probe killed" in n for n in result.notes)


def test_probe_helpers_fall_back(tmp_path):
    (tmp_path / "status").write_text("Name: x\n")
    assert bench_probe.peak_rss_kb(tmp_path / "status") > 0
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Test CPU 9000\n")
    assert cpu_model(tmp_path / "cpuinfo") == "Test CPU 9000"
    assert cpu_model(tmp_path / "missing")


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "cfg",
    [
        BenchConfig(),
        BenchConfig(**GRID, providers=("cpu", "auto"), min_time_s=0.5, interleave=False),
    ],
)
def test_config_round_trips(cfg, tmp_path):
    data = to_dict(cfg)
    assert from_dict(BenchConfig, data) == cfg == BenchConfig.from_dict(cfg.to_dict())
    (tmp_path / "c.json").write_text(json.dumps(data))
    assert load_config(BenchConfig, tmp_path / "c.json") == cfg


def test_config_normalizes_grids_and_providers():
    cfg = BenchConfig(batches=[32, 1, 32], samples=(8, 1), providers=(" CPU ", "auto", "cpu"))
    assert (cfg.batches, cfg.samples, cfg.providers) == ((1, 32), (1, 8), ("cpu", "auto"))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batches": (0, 4)}, r"batches must be positive integers .*got 0 in \[0, 4\]"),
        ({"samples": ()}, r"samples must be a non-empty list of positive integers, got \(\)"),
        ({"samples": (1, 5000)}, r"samples must be positive integers \(at most 4096\)"),
        ({"batches": "1,2"}, r"batches must be a non-empty list"),
        (
            {"providers": ("tpu",)},
            re.escape("unknown provider 'tpu'; known providers: " + ", ".join(KNOWN)),
        ),
        ({"providers": "cpu"}, r"providers must be a non-empty list of names, got 'cpu'"),
        ({"repeats": 0}, r"repeats must be an integer >= 1, got 0"),
        ({"warmup": -1}, r"warmup must be an integer >= 0, got -1"),
        ({"threads": 0}, r"threads must be an integer >= 1, got 0"),
        ({"seed": True}, r"seed must be an integer >= 0, got True"),
        ({"min_time_s": -1.0}, r"min_time_s must be a finite number >= 0, got -1.0"),
        ({"min_time_s": float("nan")}, r"min_time_s must be a finite number >= 0"),
        ({"interleave": "yes"}, r"interleave must be true or false, got 'yes'"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        BenchConfig(**kwargs)


def test_config_unknown_key():
    with pytest.raises(ConfigError, match=r"unknown key 'batch'; valid keys: batches, samples"):
        BenchConfig.from_dict({"batch": [1]})


# --------------------------------------------------------------------------- error paths


def _onnx(path, node, dims):
    """A one-node float graph ``x [*dims] -> y``."""
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, path)
    return [path]


def test_bench_errors(models, tmp_path):
    (tmp_path / "notes.onnx").write_text("not a model")
    cases = [
        (ModelLoadError, r"model file .*missing.onnx does not exist", [tmp_path / "missing.onnx"]),
        (ModelLoadError, r"notes.onnx is not an ONNX model", [tmp_path / "notes.onnx"]),
        (ConfigError, r"got the single path '.*weight.onnx'; wrap it in a list", models["weight"]),
        (ConfigError, r"bench needs at least one model; got none", []),
        (ConfigError, r"a model is listed twice", [models["lrt"], models["lrt"]]),
        (
            ConfigError,
            r"input 'x' has feature shape \['f'\] with a dynamic or unknown dimension",
            _onnx(tmp_path / "dyn.onnx", helper.make_node("Relu", ["x"], ["y"]), ["b", "f"]),
        ),
        (
            ModelLoadError,
            r"ONNX Runtime cannot load .*bogus.onnx on \w+: .*No Op registered for NoSuchOp",
            _onnx(tmp_path / "bogus.onnx", helper.make_node("NoSuchOp", ["x"], ["y"]), ["b", 2]),
        ),
    ]
    for exc, match, arg in cases:
        with pytest.raises(exc, match=match):
            bench(arg, FAST)


def test_same_stems_are_named_by_path(models, tmp_path):
    other = tmp_path / "weight.onnx"
    other.write_bytes(models["weight"].read_bytes())
    assert list(model_names([models["weight"], other])) == [str(models["weight"]), str(other)]


def test_unavailable_provider_lists_available(models):
    missing = [p for p in known_providers() if p not in available_providers()]
    if not missing:
        pytest.skip("every registered provider is installed here")
    cfg = replace(FAST, providers=(missing[0],))
    with pytest.raises(ConfigError, match=rf"'{missing[0]}' .*Available here: .*cpu"):
        bench([models["lrt"]], cfg)


@pytest.mark.parametrize(
    ("args", "code", "match"),
    [
        (["--provider", "tpu"], 1, "unknown provider 'tpu'; known providers: auto"),
        (["--batch", "0,4"], 1, "batches must be positive integers"),
        (["--samples", "-1"], 1, "samples must be positive integers"),
        (["--batch", "1,,4"], 2, "--batch must be a comma-separated list without empty items"),
        (["--samples", "a,8"], 2, "--samples must be integers separated by commas"),
        (["--baseline", "nope"], 2, "--baseline 'nope' is not a model name; names: ['lrt']"),
        (["-o", "{tmp}/no/such/dir/b.json"], 2, "the folder {tmp}/no/such/dir does not exist"),
        (["--plot", "{tmp}/none/p.png"], 2, "the folder {tmp}/none does not exist"),
    ],
)
def test_cli_errors(models, tmp_path, args, code, match):
    args = [a.format(tmp=tmp_path) for a in args]
    out = [] if "-o" in args else ["-o", str(tmp_path / "b.json")]
    r = runner.invoke(app, ["bench", str(models["lrt"]), *args, *out])
    assert r.exit_code == code, r.output
    assert match.format(tmp=tmp_path) in r.output
    assert not (tmp_path / "b.json").exists()


@pytest.mark.parametrize(
    ("name", "match"), [("missing.onnx", "does not exist"), ("bad.onnx", "is not an ONNX model")]
)
def test_cli_bad_model_files(tmp_path, name, match):
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage")
    r = runner.invoke(app, ["bench", str(tmp_path / name), "-o", str(tmp_path / "b.json")])
    assert r.exit_code == 1 and match in r.output and len(r.output.strip().splitlines()) == 1


def test_models_report_the_share_of_flops_run_once(cli_run, models):
    """Issue 21, item 4: bench.json and the model table carry split_report's estimate at the
    largest benched [batch, S]; the weight-mode sample loop runs all of it per sample."""
    from qbnn.runtimes import split_report

    r, data, _ = cli_run
    by_name = {m["name"]: m for m in data["models"]}
    for name in ("weight", "lrt"):
        rep = split_report(onnx.load(str(models[name])), 4, 3)
        assert by_name[name]["flops_once"] == pytest.approx(rep.fraction_once)
        assert by_name[name]["split_cell"] == [4, 3]
    assert by_name["weight"]["flops_once"] < 0.01
    assert by_name["plain"]["flops_once"] is None and by_name["plain"]["split_cell"] is None
    assert "FLOPs run once" in r.output and "(B=4, S=3)" in r.output
