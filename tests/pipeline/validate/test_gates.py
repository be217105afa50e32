"""Gates and ValidateConfig: YAML/JSON round trips, rejected keys and types, gate verdicts."""

from __future__ import annotations

import json

import pytest
import yaml

from qbnn.pipeline.validate import ValidateConfig
from qbnn.pipeline.validate.gates import (
    GATE_SPECS,
    Gates,
    default_gates_path,
    evaluate_gates,
    load_gates,
)
from qbnn.runtimes.errors import ConfigError

REF = {
    "accuracy": 0.98,
    "ece": 0.02,
    "ood_auroc_entropy": 0.94,
    "ood_auroc_mi": 0.93,
    "referral_needed@0.99": 0.03,
    "mean_mi": 0.006,
}
REG = {"rmse": 0.5, "gaussian_nll": 0.9, "mean_variance": 0.4, "mean_epistemic_variance": 0.02,
       "picp@0.95": 0.94}  # fmt: skip
REGRESSION_GATES = {"rmse_ratio", "gaussian_nll_increase", "variance_ratio", "epistemic_ratio"}


def by_name(results):
    return {g.name: g for g in results}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
@pytest.mark.parametrize(
    "cfg",
    [Gates(), Gates(max_accuracy_drop=0.005, mi_ratio_min=0.5, mi_ratio_max=None)],
    ids=["default", "custom"],
)
def test_gates_round_trip(tmp_path, cfg, suffix):
    path = tmp_path / f"gates{suffix}"
    dump = json.dumps if suffix == ".json" else yaml.safe_dump
    path.write_text(dump(cfg.to_dict()))
    assert load_gates(path) == cfg
    assert Gates.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_validate_config_round_trip(tmp_path, suffix):
    cfg = ValidateConfig(
        num_samples=8,
        seed=3,
        referral_targets=(0.95,),
        bootstrap=0,
        mc_repeats=0,
        threads=1,
        plain_output="probs",
        gates=Gates(max_abs_ece_delta=0.02),
    )
    path = tmp_path / f"validate{suffix}"
    dump = json.dumps if suffix == ".json" else yaml.safe_dump
    path.write_text(dump(cfg.to_dict()))
    assert ValidateConfig.load(path) == cfg


def test_shipped_gates_yaml_equals_the_defaults():
    assert load_gates(default_gates_path()) == Gates()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"max_latency": 3}, r"unknown key 'max_latency'; valid keys: max_accuracy_drop, "),
        ({"max_accuracy_drop": "1%"}, r"'max_accuracy_drop' must be of type float, got str"),
        ({"mi_ratio_min": True}, r"'mi_ratio_min' must be of type float, got bool"),
        ({"max_abs_ece_delta": -0.1}, r"'max_abs_ece_delta' must be a finite number >= 0"),
        ({"mi_ratio_min": 2.0, "mi_ratio_max": 1.0}, r"mi_ratio_min \(2.0\) must not exceed"),
        ({"variance_ratio_min": 2.0}, r"variance_ratio_min \(2.0\) must not exceed"),
        ([1, 2], r"must be a mapping, got list"),
    ],
)
def test_bad_gates_rejected(data, match):
    with pytest.raises(ConfigError, match=match):
        Gates.from_dict(data)


def test_bad_gates_file_names_the_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("max_accuracy_drop: 0.01\nmax_auroc_drop: 0.1\n")
    with pytest.raises(ConfigError, match=r"g\.yaml: unknown key 'max_auroc_drop'"):
        load_gates(path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_samples": 0}, r"num_samples must be an integer in \[1, 4096\], got 0"),
        ({"bootstrap": 2.5}, r"bootstrap must be an integer .* got 2.5"),
        ({"provider": "gpu"}, r"unknown provider 'gpu'; valid: auto, "),
        ({"referral_targets": (1.5,)}, r"referral target 1.5 must be an accuracy in \(0, 1\]"),
        ({"plain_output": "scores"}, r"plain_output is 'scores'; valid: logits, probs"),
        ({"gates": {"max_acc_drop": 1}}, r"unknown key 'max_acc_drop'"),
    ],
)
def test_bad_validate_config_rejected(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ValidateConfig(**kwargs)


def test_validate_config_unknown_key():
    with pytest.raises(ConfigError, match=r"unknown key 'samples'; valid keys: num_samples"):
        ValidateConfig.from_dict({"samples": 4})


def test_identical_metrics_pass_every_gate():
    res = by_name(evaluate_gates(REF, REF, Gates()))
    assert [g.name for g in res.values()] == [s.name for s in GATE_SPECS]
    assert all(g.passed is True for n, g in res.items() if n not in REGRESSION_GATES)
    assert all(res[n].passed is None for n in REGRESSION_GATES)  # a classifier's metrics
    assert res["mi_ratio"].value == pytest.approx(1.0)
    assert res["accuracy_drop"].value == 0.0


@pytest.mark.parametrize(
    ("gate", "changes", "passed"),
    [
        ("accuracy_drop", {"accuracy": 0.9701}, True),  # drop 0.0099 <= 0.01
        ("accuracy_drop", {"accuracy": 0.969}, False),
        ("ece_delta", {"ece": 0.0299}, True),
        ("ece_delta", {"ece": 0.0050}, False),  # |delta| counts both ways
        ("ood_auroc_mi_drop", {"ood_auroc_mi": 0.5}, False),
        ("ood_auroc_entropy_drop", {"ood_auroc_entropy": 0.99}, True),
        ("referral99_increase", {"referral_needed@0.99": 0.06}, False),
        ("mi_ratio", {"mean_mi": 0.006 * 1.2}, True),
        ("mi_ratio", {"mean_mi": 0.006 * 1.3}, False),
        ("mi_ratio", {"mean_mi": 1e-9}, False),
    ],
)
def test_gate_verdicts(gate, changes, passed):
    res = by_name(evaluate_gates(REF, REF | changes, Gates()))
    assert res[gate].passed is passed, res[gate].detail
    assert res[gate].status == ("pass" if passed else "FAIL")


def test_unavailable_metrics_are_skipped_not_passed():
    no_ood = {k: v for k, v in REF.items() if not k.startswith("ood_")}
    res = by_name(evaluate_gates(no_ood, no_ood, Gates()))
    for name in ("ood_auroc_entropy_drop", "ood_auroc_mi_drop"):
        assert res[name].passed is None and res[name].status == "skipped"
        assert "needs OOD data (--ood)" in res[name].detail
    assert res["accuracy_drop"].passed is True


def test_regression_metrics_use_the_regression_gates():
    res = by_name(evaluate_gates(REG, REG, Gates()))
    assert {n for n, g in res.items() if g.passed is not None} == REGRESSION_GATES
    assert all(res[n].passed is True for n in REGRESSION_GATES)
    assert "needs a classifier" in res["accuracy_drop"].detail


@pytest.mark.parametrize(
    ("gate", "changes", "passed"),
    [
        ("rmse_ratio", {"rmse": 0.5 * 1.049}, True),
        ("rmse_ratio", {"rmse": 0.5 * 1.06}, False),
        ("rmse_ratio", {"rmse": 0.2}, True),  # only an upper bound
        ("gaussian_nll_increase", {"gaussian_nll": 0.99}, True),
        ("gaussian_nll_increase", {"gaussian_nll": 1.01}, False),
        ("variance_ratio", {"mean_variance": 0.4 * 0.81}, True),
        ("variance_ratio", {"mean_variance": 0.4 * 0.79}, False),
        ("variance_ratio", {"mean_variance": 0.4 * 1.3}, False),
        # an erased posterior under a fixed noise variance: total variance barely moves
        ("variance_ratio", {"mean_variance": 0.38, "mean_epistemic_variance": 1e-7}, True),
        ("epistemic_ratio", {"mean_variance": 0.38, "mean_epistemic_variance": 1e-7}, False),
    ],
)
def test_regression_gate_verdicts(gate, changes, passed):
    res = by_name(evaluate_gates(REG, REG | changes, Gates()))
    assert res[gate].passed is passed, res[gate].detail


def test_disabled_and_undefined_gates_are_skipped():
    res = by_name(evaluate_gates(REF | {"mean_mi": 0.0}, REF, Gates(max_accuracy_drop=None)))
    assert res["accuracy_drop"].passed is None and "disabled" in res["accuracy_drop"].detail
    assert res["mi_ratio"].passed is None and "no epistemic" in res["mi_ratio"].detail


@pytest.mark.parametrize(
    ("ref", "cand", "passed"),
    [(0.03, None, False), (None, 0.03, True), (None, None, None)],
)
def test_referral_never_reached(ref, cand, passed):
    key = "referral_needed@0.99"
    res = by_name(evaluate_gates(REF | {key: ref}, REF | {key: cand}, Gates()))
    assert res["referral99_increase"].passed is passed


def test_evaluate_gates_rejects_a_dict_of_limits():
    with pytest.raises(ConfigError, match="gates must be a Gates instance, got dict"):
        evaluate_gates(REF, REF, {"max_accuracy_drop": 0.01})


def test_undefined_regression_metric_is_skipped():
    res = by_name(evaluate_gates(REG | {"gaussian_nll": None}, REG, Gates()))
    g = res["gaussian_nll_increase"]
    assert g.passed is None and "undefined for the reference" in g.detail
