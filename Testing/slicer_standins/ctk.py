"""Stand-in for Slicer's `ctk` module: the CTK widgets the module's .ui uses."""

from .widgets import ctkCollapsibleButton, ctkSliderWidget

__all__ = ["ctkCollapsibleButton", "ctkSliderWidget"]
