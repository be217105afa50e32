"""Plan schema: YAML round trip and one clear error with a dotted path per bad value."""

from __future__ import annotations

import pytest

from qbnn.pipeline.compress import LayerPlan, Plan, load_plan
from qbnn.runtimes.errors import ConfigError


def test_yaml_round_trip(tmp_path):
    plan = Plan(
        layers={
            "conv1": LayerPlan(weight_bits=4, act_bits=8, prune_channels=(3, 1)),
            "fc": LayerPlan(
                weight_bits=2, act_bits=8, weight_range=(-0.5, 0.5), act_range=(0.0, 4.0)
            ),  # fmt: skip
        },
        default=LayerPlan(weight_bits=8, act_bits=8),
    )
    p = tmp_path / "plan.yaml"
    p.write_text(plan.to_yaml())
    back = load_plan(p)
    assert back == plan
    assert back.layer("conv1").prune_channels == (1, 3)
    assert back.layer("other").weight_bits == 8
    assert back.layer("other").via_inc and not back.layer("fc").via_inc


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"layers": {"conv1": {"weight_bits": 3}}},
         "layers.conv1.weight_bits: 3 is not one of 0, 2, 4, 8, 16, 32"),
        ({"layers": {"fc": {"act_bits": 0}}},
         "layers.fc.act_bits: 0 is not one of 2, 4, 8, 16, 32"),
        ({"layers": {"fc": {"weight_range": [1.0, -1.0]}}},
         r"layers.fc.weight_range: \[1.0, -1.0\] is not a range \[lo, hi\] with lo < hi"),
        ({"layers": {"fc": {"prune_channels": [-1]}}},
         r"layers.fc.prune_channels: \[-1\] is not a list of channel indices >= 0"),
        ({"layers": {"fc": {"bits": 4}}}, "layers.fc.bits: unknown key; valid keys: weight_bits"),
        ({"default": {"weight_bits": "8"}}, "default.weight_bits: '8' is not one of"),
        ({"layer": {}}, "layer: unknown key; valid keys: layers, default"),
        ({"layers": {"fc": 4}}, "layers.fc: must be a mapping, got int"),
    ],
)  # fmt: skip
def test_errors_name_the_dotted_path(data, message):
    with pytest.raises(ConfigError, match=message):
        Plan.from_dict(data)


def test_unknown_layer_lists_the_model_layers():
    plan = Plan.from_dict({"layers": {"conv9": {"weight_bits": 4}}})
    with pytest.raises(ConfigError, match="layers.conv9: no such layer in the model; its layers: "
                       "conv1, fc"):  # fmt: skip
        plan.check_layers(["conv1", "fc"])


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_plan(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML/JSON"):
        load_plan(bad)
