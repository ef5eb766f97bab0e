"""The Run/Cancel button shared by the segmentation, batch and training panels (LiverE2NetLib/RunState.py), on a
real PySide6 button: its text, enabled state and tooltip in each state, and the transitions a run can make."""

from __future__ import annotations

import pytest


@pytest.fixture
def runButton(mrmlScene, qtApplication):
    from LiverE2NetLib.RunState import RunButton
    from PySide6.QtWidgets import QPushButton

    return RunButton(QPushButton(), "Run batch", "Stop the batch.", cancellingText="Stopping...")


def shown(button) -> tuple:
    return button.text(), button.isEnabled(), button.toolTip()


def test_each_state_shows_its_text_enabled_and_tooltip(runButton):
    from LiverE2NetLib.RunState import IDLE, RUNNING

    runButton.show(False, "Choose an output folder.")
    assert shown(runButton.button) == ("Run batch", False, "Choose an output folder.")
    runButton.show(True, "Segment every CT.")
    assert shown(runButton.button) == ("Run batch", True, "Segment every CT.")
    runButton.moveTo(RUNNING)
    runButton.show(False, "ignored while running")
    assert shown(runButton.button) == ("Cancel", True, "Stop the batch.")
    assert runButton.requestCancel() and not runButton.requestCancel()  # a second click does nothing more
    runButton.show(True, "")
    assert shown(runButton.button) == ("Stopping...", False, "Stop the batch.")
    runButton.moveTo(IDLE)
    assert runButton.idle and not runButton.requestCancel()


def test_a_run_cannot_skip_a_state(runButton):
    from LiverE2NetLib.RunState import CANCELLING, IDLE, RUNNING

    with pytest.raises(RuntimeError, match="from idle to cancelling"):
        runButton.moveTo(CANCELLING)
    runButton.moveTo(RUNNING)
    runButton.moveTo(RUNNING)  # staying is no move
    runButton.moveTo(IDLE)  # a run may end without a cancel
    assert runButton.state == IDLE
