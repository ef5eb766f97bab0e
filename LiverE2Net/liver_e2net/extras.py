"""Optional dependencies, imported where a command uses them: the core installs into 3D Slicer's Python without
them, and a command that needs a missing one says which extra (and pip command) brings it."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UserInputError

# Import name -> (distribution, extra of liver-e2net that installs it).
OPTIONAL = {
    "highdicom": ("highdicom", "dicom"),
    "sklearn": ("scikit-learn", "train"),
    "matplotlib": ("matplotlib", "plots"),
    "ray": ("ray", "ray"),
}


def require(module: str, purpose: str) -> ModuleType:
    """`import module`, or a UserInputError naming `purpose`, the extra and the pip command."""
    distribution, extra = OPTIONAL[module.split(".")[0]]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise UserInputError(
            f"{purpose} needs {distribution}, which is not installed: pip install 'liver-e2net[{extra}]' "
            f"(or pip install {distribution})"
        ) from error
