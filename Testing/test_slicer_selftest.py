"""The module's own self-test class, LiverE2NetTest, method by method as Slicer's ctest runs it (unittest), here on
real MRML from slicer-core through the stand-ins. Every segmentation in it is the real `liver_e2net segment` child
with the bundled model on a real CT."""

import unittest

import pytest
from slicer_standins import install

install()  # the module file imports slicer.ScriptedLoadableModule & co. at import time

import LiverE2Net  # noqa: E402

SELF_TESTS = sorted(name for name in dir(LiverE2Net.LiverE2NetTest) if name.startswith("test_"))


def test_self_test_class_has_the_promised_tests():
    assert SELF_TESTS == ["test_BadInputsGiveClearMessages", "test_BatchFolderToCohortTable",
                          "test_CancelLeavesSceneUnchanged", "test_SegmentEditMeasureExport"]


@pytest.mark.parametrize("method", SELF_TESTS)
def test_self_test(method, mrmlScene):
    result = unittest.TestResult()
    LiverE2Net.LiverE2NetTest(method).run(result)  # run(), not debug(): tearDown also runs after a failure
    if result.skipped:
        pytest.skip(result.skipped[0][1])
    assert result.wasSuccessful(), "\n".join(trace for _, trace in result.errors + result.failures)
