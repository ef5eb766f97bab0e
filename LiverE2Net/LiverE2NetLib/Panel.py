"""The "Segment Liver & Tumors" panel on the widgets of Resources/UI/LiverE2Net.ui.

The Run/Cancel button's states (RunState.RunButton, shared with the batch and training panels) over the Logic;
the child process reports through callbacks, so the GUI thread never waits. Dialogs are attributes (`askReplace`,
`chooseFolder`) so tests can answer them. Written with method calls only (setEnabled, isChecked...), which PythonQt and PySide6 share.
The model list fills the batch section's model selector too: both follow the one `model` parameter.
"""

from __future__ import annotations

import qt
from liver_e2net.errors import UserInputError

from .Dependencies import DependencyInstaller
from .Models import Device, forgetModelInfo
from .PanelBase import PanelBase
from .RunState import IDLE, RUNNING, RunButton
from .Segments import (
    SegmentationCancelled,
    SegmentationError,
    centreSliceViews,
    lesionCentreRas,
    measureSegments,
    referenceVolume,
    storedReport,
)

APPLY_TEXT = "Segment Liver && Tumors"  # "&&" shows one "&" on a Qt button
STAGE_LABELS = {"load": "Loading", "read": "Reading", "stage1": "Finding the liver", "stage2": "Liver and tumors",
                "postprocess": "Cleaning up", "write": "Writing", "case": "Finished", "done": "Done",
                "error": "Failed"}
ERROR_STYLE = "color: #c62828"


def askReplaceDialog(segmentationName: str) -> str:
    """'replace', 'new' or 'cancel'."""
    box = qt.QMessageBox(qt.QMessageBox.Question, "Liver E2Net",
                         f"'{segmentationName}' already holds a result for this CT. Replace its segments?")
    replaceButton = box.addButton("Replace", qt.QMessageBox.AcceptRole)
    newButton = box.addButton("New segmentation", qt.QMessageBox.ActionRole)
    box.addButton(qt.QMessageBox.Cancel)
    box.exec()
    return {replaceButton: "replace", newButton: "new"}.get(box.clickedButton(), "cancel")


def chooseFolderDialog() -> str:
    return qt.QFileDialog.getExistingDirectory(None, "Export STL files to folder")


class SegmentationPanel(PanelBase):
    def __init__(self, ui, logic):
        PanelBase.__init__(self, ui, logic, RunButton(ui.applyButton, APPLY_TEXT,
                                                      "Stop the segmentation; the scene stays as it was."))
        self.askReplace = askReplaceDialog
        self.chooseFolder = chooseFolderDialog
        self.onStateChanged = lambda: None  # the widget links the batch section here
        self.dependencies = DependencyInstaller(onInstalled=self.onDependenciesInstalled)  # the batch's too
        self._models = []
        self._lesions = []
        ui.applyButton.clicked.connect(self.onApplyButton)
        ui.refreshModelsButton.clicked.connect(self.refreshModels)
        self._modelSelectors = (ui.modelSelector, ui.batchModelSelector)
        for selector in self._modelSelectors:
            selector.currentIndexChanged.connect(self.onModelSelected)
        ui.updateResultsButton.clicked.connect(self.onUpdateResults)
        ui.exportStlButton.clicked.connect(self.onExportStl)
        ui.lesionTable.cellClicked.connect(self.onLesionClicked)
        ui.progressBar.setVisible(False)
        ui.lesionTable.horizontalHeader().setSectionResizeMode(qt.QHeaderView.ResizeToContents)

    def onParameterNodeSet(self) -> None:
        self.refreshModels()
        self.refreshDevices()

    def onDependenciesInstalled(self) -> None:
        forgetModelInfo()
        self.refreshModels()
        self.refreshDevices()

    # Inputs

    def refreshModels(self) -> None:
        try:
            self._models = self.logic.listModels()
            note = "" if self._models else f"No model found: add a .pt file to {self.logic.userModelFolder()}."
        except ImportError as error:
            self._models, note = [], f"PyTorch is missing ({error}): install it with the PyTorch Utils module."
        for selector in self._modelSelectors:
            wasBlocked = selector.blockSignals(True)
            selector.clear()
            for entry in self._models:
                selector.addItem(entry.label)
            selector.blockSignals(wasBlocked)
        self.ui.modelDescriptionLabel.setText(note)
        self._syncModelSelector()

    def _modelValue(self, entry) -> str:
        """The parameter value: "" for the default model, so a saved scene uses the default model of any machine."""
        return "" if entry.default else str(entry.path)

    def _syncModelSelector(self) -> None:
        if not self._parameterNode or not self._models:
            return
        values = [self._modelValue(entry) for entry in self._models]
        index = values.index(self._parameterNode.model) if self._parameterNode.model in values else 0
        for selector in self._modelSelectors:
            wasBlocked = selector.blockSignals(True)
            selector.setCurrentIndex(index)
            selector.blockSignals(wasBlocked)
            selector.setToolTip(str(self._models[index].path))
        self.ui.modelDescriptionLabel.setText(self._models[index].description)
        if self._parameterNode.model != values[index]:
            self._parameterNode.model = values[index]

    def onModelSelected(self, index: int) -> None:
        if self._parameterNode and 0 <= index < len(self._models):
            self._parameterNode.model = self._modelValue(self._models[index])

    def refreshDevices(self) -> None:
        available, reason = self.logic.gpuStatus()
        item = self.ui.deviceSelector.model().item(self.ui.deviceSelector.findText(Device.GPU.name))
        item.setEnabled(available)
        item.setToolTip(reason)
        self.ui.deviceNoteLabel.setText(f"GPU: {reason}" if available else f"GPU unavailable: {reason}")

    # Running

    def canRun(self) -> tuple[bool, str]:
        if not self._parameterNode or not self._parameterNode.inputVolume:
            return False, "Select a CT volume first."
        if not self._models:
            return False, "No segmentation model available: see the note under 'Model'."
        if self.logic.isBusy():
            return False, "A batch is running: wait for it or cancel it in the Batch section."
        return True, "Segment the liver and liver tumors of the selected CT."

    def onApplyButton(self) -> None:
        if self.state != IDLE:
            self.cancel()
            return
        if not self.dependencies.readyFor(self.showStatus):
            return
        parameters = self._parameterNode
        outputNode = parameters.outputSegmentation
        if outputNode is not None and referenceVolume(outputNode) is parameters.inputVolume:
            choice = self.askReplace(outputNode.GetName())
            if choice == "cancel":
                return
            if choice == "new":
                outputNode = None
        else:
            outputNode = None  # a result of another CT is never overwritten
        try:
            self.logic.startSegmentation(
                parameters.inputVolume, model=parameters.model or None, device=parameters.device,
                accuracy=parameters.accuracy, tumors=parameters.segmentTumors, smoothing=parameters.smoothing,
                probabilities=parameters.showProbabilities, outputNode=outputNode,
                onProgress=self.onProgress, onFinished=self.onFinished,
                removeFalsePositives=parameters.removeFalsePositives)
        except (UserInputError, SegmentationError) as error:
            self.showStatus(str(error), error=True)
            return
        self.runButton.moveTo(RUNNING)
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self.showStatus("Starting...")
        self.updateGui()
        self.onStateChanged()

    def onProgress(self, record: dict) -> None:
        self.ui.progressBar.setValue(round(100 * float(record.get("fraction", 0.0))))
        stage = STAGE_LABELS.get(record["stage"], record["stage"])
        self.showStatus(f"{stage}: {record.get('message', '')}" if record.get("message") else stage)

    def onFinished(self, segmentationNode, error) -> None:
        self.runButton.moveTo(IDLE)
        self.ui.progressBar.setVisible(False)
        if error is None:
            self._parameterNode.outputSegmentation = segmentationNode
            # The report's warnings (no liver found, slices left out of a series, Best = Fast ...) are the run's.
            notes = (storedReport(segmentationNode) or {}).get("warnings") or []
            self.showStatus(f"Done: '{segmentationNode.GetName()}' is ready for the Segment Editor."
                            + (f" Note: {'; '.join(notes)}" if notes else ""))
        elif isinstance(error, SegmentationCancelled):
            self.showStatus(str(error))
        else:
            self.showStatus(str(error), error=True)
        self.updateGui()
        self.onStateChanged()

    def showStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.setStyleSheet(ERROR_STYLE if error else "")
        self.ui.statusLabel.setText(text)

    def updateGui(self, caller=None, event=None) -> None:
        idle = self.state == IDLE
        canRun, reason = self.canRun()
        self.runButton.show(canRun, reason)
        self.ui.inputsCollapsibleButton.setEnabled(idle)
        self._syncModelSelector()
        self.showResults(self._parameterNode.outputSegmentation if self._parameterNode else None)

    # Results

    def showResults(self, segmentationNode) -> None:
        report = storedReport(segmentationNode)
        hasResult = report is not None and referenceVolume(segmentationNode) is not None
        for button in (self.ui.updateResultsButton, self.ui.exportStlButton):
            button.setEnabled(hasResult and self.state == IDLE)
        self._lesions = report.get("lesions", []) if hasResult else []
        table = self.ui.lesionTable
        table.setRowCount(len(self._lesions))
        if not hasResult:
            for label in (self.ui.timeLabel, self.ui.liverVolumeLabel, self.ui.tumorBurdenLabel):
                label.setText("-")
            return
        seconds = report.get("seconds", {})
        threads = report.get("threads", "?")
        precision = f", {report['precision']}" if "precision" in report else ""  # reports before 2026-12-04 lack it
        self.ui.timeLabel.setText(f"{seconds.get('wall', seconds.get('total', 0.0)):.1f} s on {report.get('device', '?')}"
                                  f"{precision} ({threads} thread{'' if threads == 1 else 's'})")
        self.ui.liverVolumeLabel.setText(f"{report['liver_ml']:.1f} ml")
        self.ui.tumorBurdenLabel.setText(f"{report['tumor_burden_percent']:.2f} % ({report['tumor_ml']:.1f} ml in "
                                         f"{len(self._lesions)} lesion{'' if len(self._lesions) == 1 else 's'})")
        for row, lesion in enumerate(self._lesions):
            centre = lesionCentreRas(segmentationNode, lesion)
            cells = [str(lesion["id"]), f"{lesion['volume_ml']:.2f}", f"{lesion['largest_axial_diameter_mm']:.1f}",
                     f"{lesion['mean_hu']:.0f}", ", ".join(f"{value:.1f}" for value in centre)]
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setFlags(qt.Qt.ItemIsSelectable | qt.Qt.ItemIsEnabled)
                table.setItem(row, column, item)

    def onLesionClicked(self, row: int, column: int) -> None:
        segmentationNode = self._parameterNode.outputSegmentation
        centreSliceViews(lesionCentreRas(segmentationNode, self._lesions[row]))
        self.showStatus(f"Slice views centred on lesion {self._lesions[row]['id']}.")

    def onUpdateResults(self) -> None:
        try:
            report = measureSegments(self._parameterNode.outputSegmentation)
        except SegmentationError as error:
            self.showStatus(str(error), error=True)
            return
        self.showResults(self._parameterNode.outputSegmentation)
        self.showStatus(f"Measured the segments as edited: {len(report['lesions'])} lesions.")

    def onExportStl(self) -> None:
        folder = self.chooseFolder()
        if not folder:
            return
        coordinateSystem = self._parameterNode.stlCoordinates
        try:
            files = self.logic.exportStl(self._parameterNode.outputSegmentation, folder, coordinateSystem)
        except UserInputError as error:
            self.showStatus(str(error), error=True)
            return
        self.showStatus(f"Wrote {len(files)} STL files ({coordinateSystem.value} coordinates) to {folder}.")
