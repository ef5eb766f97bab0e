"""The training module's own self-test class, method by method as Slicer's ctest runs it (unittest), here on real
MRML from slicer-core through the stand-ins: the real `liver_e2net train` child on the bundled real CT, stop,
resume, and the segmentation module's logic running the trained model."""

import shutil
import subprocess
from pathlib import Path

import pytest
from slicer_standins import install

install()  # the module file imports slicer.ScriptedLoadableModule & co. at import time

import LiverE2NetTraining  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
SELF_TESTS = sorted(name for name in dir(LiverE2NetTraining.LiverE2NetTrainingTest) if name.startswith("test_"))


def test_self_test_class_has_the_promised_tests():
    assert SELF_TESTS == ["test_BadPairsAreExplained", "test_TrainStopResumeAndSegment"]


@pytest.mark.parametrize("method", SELF_TESTS)
def test_self_test(method, mrmlScene, qtApplication):
    LiverE2NetTraining.LiverE2NetTrainingTest(method).debug()


@pytest.mark.skipif(not (shutil.which("cmake") and shutil.which("ctest")), reason="cmake/ctest not installed")
def test_cmake_lists_every_file_and_registers_the_self_test(tmp_path):
    """Against the strict stand-in SlicerConfig.cmake: a module file that is not listed fails the configure."""
    from test_slicer_cmake import configure

    configured = configure(REPOSITORY, tmp_path / "build")
    assert configured.returncode == 0, configured.stdout + configured.stderr
    assert "Configuring Scripted module: LiverE2NetTraining" in configured.stdout
    listed = subprocess.run(["ctest", "-N"], cwd=tmp_path / "build", capture_output=True, text=True)
    assert "py_LiverE2NetTraining" in listed.stdout
