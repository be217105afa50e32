"""Helpers shared by every stage: config (de)serialization and file I/O."""

from .configs import coerce_enums, from_dict, load_config, to_dict
from .io import atomic_path, load_npz, save_npz

__all__ = [
    "atomic_path",
    "coerce_enums",
    "from_dict",
    "load_config",
    "load_npz",
    "save_npz",
    "to_dict",
]
