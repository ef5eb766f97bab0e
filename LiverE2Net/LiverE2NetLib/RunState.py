"""One Run/Cancel button over a child process: idle -> running -> [cancelling] -> idle, and what the button shows
in each state. The segmentation, batch and training panels share it, so their buttons behave alike: one click
starts, the same button cancels, and it stays greyed out while the child winds down."""

from __future__ import annotations

IDLE, RUNNING, CANCELLING = "idle", "running", "cancelling"
TRANSITIONS = {IDLE: {RUNNING}, RUNNING: {CANCELLING, IDLE}, CANCELLING: {IDLE}}


class RunButton:
    def __init__(self, button, idleText: str, runningTip: str, runningText: str = "Cancel",
                 cancellingText: str = "Cancel"):
        self.button, self.runningTip = button, runningTip
        self.texts = {IDLE: idleText, RUNNING: runningText, CANCELLING: cancellingText}
        self.state = IDLE

    @property
    def idle(self) -> bool:
        return self.state == IDLE

    def moveTo(self, state: str) -> None:
        """Refuses a jump a run cannot make (idle -> cancelling): a bug, not a user error."""
        if state != self.state and state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"a run cannot go from {self.state} to {state}")
        self.state = state

    def requestCancel(self) -> bool:
        """True when a running child is now to be cancelled; False when there is none, or it already is."""
        if self.state != RUNNING:
            return False
        self.moveTo(CANCELLING)
        return True

    def show(self, canRun: bool, reason: str) -> None:
        """Idle: the run text, enabled when the panel can run (the reason as tooltip). Running: the cancel text.
        Cancelling: greyed out."""
        self.button.setText(self.texts[self.state])
        self.button.setEnabled(canRun if self.idle else self.state == RUNNING)
        self.button.setToolTip(reason if self.idle else self.runningTip)
