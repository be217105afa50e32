"""The registry entries carry what other code used to hard-code (issue 20): these facts are the
values ``api.py``, ``bnstats.py``, ``compress/layers.py`` and the CLI spelled out before."""

from __future__ import annotations

from importlib.metadata import version

import pytest
import torch

from qbnn.exporters import get_exporter, known_families, register_exporter
from qbnn.exporters.registry import detection_order
from qbnn.runtimes.errors import ConfigError


def test_auto_tries_families_in_the_former_order():
    assert [e.family for e in detection_order()] == [
        "laplace",
        "swag",
        "gaussian",
        "ensemble",
        "stacked",  # needs the example input (k rows per input row); before any layer family
        "flipout",
        "meanfield",
        "stochastic",  # needs the example input; tried before mcdropout, as before
        "mcdropout",
    ]
    # mcdropout also reads the example input: dropout reached only in forward (SDPA's
    # dropout_p, a dropout bound at import time) is found by the noise census (issue 22)
    assert [e.family for e in detection_order() if e.detect_input] == [
        "stacked",
        "stochastic",
        "mcdropout",
    ]


def test_whole_network_families_are_the_former_bn_families():
    whole = {e.family for e in known_families().values() if e.whole_network}
    assert whole == {"swag", "gaussian", "laplace", "meanfield", "flipout"}


def test_compress_refuses_the_former_refused_families():
    refused = {e.family for e in known_families().values() if e.tensors.refused}
    assert refused == {"laplace", "swag", "gaussian"}


@pytest.mark.parametrize(
    ("family", "trainer"),
    [("meanfield", "bayesian-torch"), ("flipout", "bayesian-torch"), ("laplace", "laplace-torch")],
)
def test_source_names_the_trainer_and_its_version(family, trainer):
    expected = f"{trainer} {version(trainer)}; torch {torch.__version__}"
    assert get_exporter(family).source() == expected


def test_families_without_a_trainer_name_torch_only():
    plain = [e for e in known_families().values() if e.trainer is None]
    assert {e.family for e in plain} == {
        "ensemble", "gaussian", "mcdropout", "stacked", "stochastic", "swag"
    }  # fmt: skip
    assert all(e.source() == f"torch {torch.__version__}" for e in plain)


def test_registering_a_family_twice_and_unknown_families_are_errors():
    with pytest.raises(ValueError, match="exporter family 'meanfield' registered twice"):
        register_exporter(
            "meanfield", modes=("weight",), default_mode="weight", detect=bool, description=""
        )(lambda *a, **k: None)
    with pytest.raises(ConfigError, match="unknown posterior family 'bogus'; known families: auto, "
                       "ensemble, flipout, gaussian, laplace, mcdropout, meanfield, stacked, "
                       "stochastic, swag"):  # fmt: skip
        get_exporter("bogus")


def test_counted_modes_take_an_optional_k():
    stacked = get_exporter("stacked")
    assert str(stacked.parse_mode("members:3", 8)) == "members:3"
    assert stacked.parse_mode("samples", 8).k is None and str(stacked.parse_mode(None, 8)) == "auto"
    with pytest.raises(ConfigError, match="members:K needs K >= 1, got 0"):
        stacked.parse_mode("members:0", 8)
    with pytest.raises(ConfigError, match=r"valid modes: auto\[:K\], members\[:K\], samples\[:K\]"):
        stacked.parse_mode("bogus", 8)
    with pytest.raises(ConfigError, match="sampling mode 'members' takes no ':K' suffix"):
        get_exporter("ensemble").parse_mode("members:3", 8)
