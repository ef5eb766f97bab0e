"""What the segmentation, batch and training panels share: the module's parameter node observed (the panel
redraws with updateGui when it changes) and one Run/Cancel button (RunState) with its cancel."""

from __future__ import annotations

import vtk
from slicer.util import VTKObservationMixin

from .RunState import RunButton


class PanelBase(VTKObservationMixin):
    def __init__(self, ui, logic, runButton: RunButton):
        VTKObservationMixin.__init__(self)
        self.ui, self.logic, self.runButton = ui, logic, runButton
        self._parameterNode = None

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = parameterNode
        if parameterNode:
            self.addObserver(parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            self.onParameterNodeSet()
        self.updateGui()

    def onParameterNodeSet(self) -> None:
        """Refreshes what the node's choices depend on (models, devices) when a scene's node is taken up."""

    @property
    def state(self) -> str:
        return self.runButton.state

    def cancel(self) -> None:
        """Asks the running child to stop (the button greys out until it has); nothing when none runs."""
        if self.runButton.requestCancel():
            self.showStatus("Cancelling...")
            self.logic.cancel()
            self.updateGui()

    def updateGui(self, caller=None, event=None) -> None:
        raise NotImplementedError

    def showStatus(self, text: str) -> None:
        raise NotImplementedError
