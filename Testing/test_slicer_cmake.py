"""The extension's CMake files against the stand-in Testing/SlicerConfig.cmake: every listed file exists, every
module helper is listed, the extension metadata is complete, and ctest runs the module's self-test."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
CMAKE, CTEST = shutil.which("cmake"), shutil.which("ctest")
pytestmark = pytest.mark.skipif(not (CMAKE and CTEST), reason="cmake/ctest not installed")


def configure(source: Path, build: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CMAKE, "-S", str(source), "-B", str(build), f"-DSlicer_DIR={REPOSITORY / 'Testing'}",
                           f"-DPython3_EXECUTABLE={sys.executable}"], capture_output=True, text=True)


def errorText(configured: subprocess.CompletedProcess) -> str:
    """CMake wraps long messages; one line is easier to search."""
    return " ".join(configured.stderr.split())


def test_configure_and_ctest_run_the_self_test(tmp_path):
    configured = configure(REPOSITORY, tmp_path / "build")
    assert configured.returncode == 0, configured.stdout + configured.stderr
    assert "Extension metadata complete" in configured.stdout
    listed = subprocess.run([CTEST, "-N"], cwd=tmp_path / "build", capture_output=True, text=True)
    assert "py_LiverE2Net" in listed.stdout
    tested = subprocess.run([CTEST, "-R", "^py_LiverE2Net$", "--verbose"], cwd=tmp_path / "build",
                            capture_output=True, text=True, timeout=900)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "100% tests passed, 0 tests failed out of 1" in tested.stdout
    for method in ("test_BadInputsGiveClearMessages", "test_BatchFolderToCohortTable", "test_CancelLeavesSceneUnchanged",
                   "test_SegmentEditMeasureExport"):
        assert f"{method} (LiverE2Net.LiverE2NetTest.{method}) ..." in tested.stdout
    assert "\n1: OK\n" in tested.stdout  # unittest's verdict on all of them


@pytest.fixture
def extensionCopy(tmp_path) -> Path:
    """The files CMake reads, copied so they can be broken."""
    copy = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pt", "*.nii.gz")
    shutil.copytree(REPOSITORY / "LiverE2Net", copy / "LiverE2Net", ignore=ignore)
    shutil.copytree(REPOSITORY / "Resources", copy / "Resources", ignore=ignore)
    shutil.copy(REPOSITORY / "CMakeLists.txt", copy / "CMakeLists.txt")
    return copy


def test_a_listed_file_that_is_missing_fails_the_configure(extensionCopy, tmp_path):
    (extensionCopy / "LiverE2Net" / "LiverE2NetLib" / "Panel.py").unlink()
    configured = configure(extensionCopy, tmp_path / "build")
    assert configured.returncode != 0
    assert "given nonexistent file or directory 'LiverE2NetLib/Panel.py'" in errorText(configured)


def test_an_unlisted_helper_fails_the_configure(extensionCopy, tmp_path):
    (extensionCopy / "LiverE2Net" / "LiverE2NetLib" / "Forgotten.py").write_text("")
    configured = configure(extensionCopy, tmp_path / "build")
    assert configured.returncode != 0 and "not listed, so not installed: LiverE2NetLib/Forgotten.py" in errorText(configured)


def test_incomplete_metadata_fails_the_configure(extensionCopy, tmp_path):
    cmakeLists = extensionCopy / "CMakeLists.txt"
    text = cmakeLists.read_text()
    for old, new in (('"Segmentation"', '"Examples"'), ('set(EXTENSION_DEPENDS "PyTorch")', 'set(EXTENSION_DEPENDS "NA")'),
                     ('set(EXTENSION_CONTRIBUTORS "Liver E2Net contributors")', 'set(EXTENSION_CONTRIBUTORS "")')):
        assert old in text
        text = text.replace(old, new)
    cmakeLists.write_text(text)
    (extensionCopy / "Resources" / "Screenshots" / "panel.png").unlink()
    configured = configure(extensionCopy, tmp_path / "build")
    assert configured.returncode != 0
    for problem in ("EXTENSION_CONTRIBUTORS is empty", "EXTENSION_CATEGORY is 'Examples', not 'Segmentation'",
                    "EXTENSION_DEPENDS does not name PyTorch", "Resources/Screenshots/panel.png is not in the repository"):
        assert problem in errorText(configured)
