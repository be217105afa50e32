"""Helpers shared by every stage: config (de)serialization, file I/O and the output-path
rule, optional dependencies with their install commands, importing user modules, writing
figures."""

from .configs import coerce_enums, from_dict, load_config, to_dict
from .deps import MissingDependencyError, install_hint, missing_module, require
from .figures import pyplot, save_png
from .io import atomic_path, check_output_dir, check_output_file, load_npz, save_npz
from .syspath import importable

__all__ = [
    "MissingDependencyError",
    "atomic_path",
    "check_output_dir",
    "check_output_file",
    "coerce_enums",
    "from_dict",
    "importable",
    "install_hint",
    "load_config",
    "load_npz",
    "missing_module",
    "pyplot",
    "require",
    "save_npz",
    "save_png",
    "to_dict",
]
