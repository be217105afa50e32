"""Shared fixtures. Tiny seeded models live in ``tiny_models.py`` beside this file."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A fixed torch generator for example inputs."""
    return torch.Generator().manual_seed(1234)
