"""Liver E2Net core: two-stage liver and liver-tumor segmentation of CT (pure Python + PyTorch)."""

__version__ = "0.1.0"
