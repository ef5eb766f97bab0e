"""Shared fixtures. Slicer-side tests: `mrmlScene` (a fresh real MRML scene as slicer.mrmlScene, with the Slicer
stand-ins installed), `sampleCt` (the bundled real CT in that scene), `qtApplication` (PySide6, offscreen),
`liteModel` (a small random checkpoint file)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# A test run started as a shell's background job inherits an ignored SIGINT, and so would every child it starts:
# the Stop buttons' SIGINT would never reach them. Tests run as Slicer does: with SIGINT handled.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SAMPLE_CT = Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "totalseg_example_ct.nii.gz"


@pytest.fixture
def mrmlScene():
    from slicer_standins import install, newScene

    install()
    return newScene()


@pytest.fixture
def sampleCt(mrmlScene):
    """TotalSegmentator's example CT: 122 x 101 x 53 voxels of 3 mm, direction flipped on disk."""
    import slicer

    node = mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(SAMPLE_CT))
    assert storage.ReadData(node), f"cannot read {SAMPLE_CT}"
    return node


@pytest.fixture(scope="session")
def qtApplication():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication([])


@pytest.fixture(scope="session")
def liteModel(tmp_path_factory) -> Path:
    from liver_e2net.checkpoint import random_checkpoint, save_checkpoint
    from liver_e2net.config import lite_config

    return save_checkpoint(random_checkpoint(lite_config()), tmp_path_factory.mktemp("models") / "random-lite.pt")


@pytest.fixture(scope="session")
def model(tmp_path_factory) -> Path:
    """A small random lite model biased to find liver and some tumor: drives the real CLI in tests."""
    from core_helpers import biased_checkpoint
    from liver_e2net.checkpoint import save_checkpoint

    return save_checkpoint(biased_checkpoint(liver_bias=0.5, tumor_bias=0.3), tmp_path_factory.mktemp("m") / "m.pt")
