"""The "Batch (cohort)" section on the widgets of Resources/UI/LiverE2Net.ui: a folder or DICOM studies in, one
`segment-batch` child, its progress, and the cohort table into the scene.

The same Run/Cancel states as the segmentation panel (RunState.RunButton) over the same Logic and
child-process runner. Dialogs are attributes (`chooseFolder`, `showTable`) so tests can answer them.
"""

from __future__ import annotations

from pathlib import Path

import qt
from liver_e2net.errors import UserInputError

from .Batch import COHORT_TABLE, BatchProgress, BatchSource
from .Dependencies import DependencyInstaller
from .Panel import ERROR_STYLE, STAGE_LABELS
from .PanelBase import PanelBase
from .RunState import IDLE, RUNNING, RunButton
from .Segments import SegmentationCancelled, SegmentationError

RUN_TEXT = "Run batch"


def chooseFolderDialog(title: str) -> str:
    return qt.QFileDialog.getExistingDirectory(None, title)


def showTableInViews(tableNode) -> None:
    """Switches to a layout with a table view and shows the table there (Slicer's application logic)."""
    import slicer

    slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
    applicationLogic = slicer.app.applicationLogic()
    applicationLogic.GetSelectionNode().SetActiveTableID(tableNode.GetID())
    applicationLogic.PropagateTableSelection()


class BatchPanel(PanelBase):
    """Cancelling kills the child; the cases it finished stay, and a new run resumes the batch."""

    def __init__(self, ui, logic):
        PanelBase.__init__(self, ui, logic, RunButton(ui.batchRunButton, RUN_TEXT,
                                                      "Stop the batch; finished cases are kept and a new run resumes."))
        self.progress = BatchProgress()
        self.chooseFolder = chooseFolderDialog
        self.showTable = showTableInViews
        self.onStateChanged = lambda: None  # the widget links the segmentation panel here
        self.dependencies = DependencyInstaller()  # the widget shares the segmentation panel's
        self._studies = []
        self._studiesListed = False  # listed once when the DICOM source is first shown, then on Refresh
        ui.batchInputFolderButton.clicked.connect(self.onChooseInputFolder)
        ui.batchOutputFolderButton.clicked.connect(self.onChooseOutputFolder)
        ui.batchRefreshStudiesButton.clicked.connect(self.refreshStudies)
        ui.batchRunButton.clicked.connect(self.onRunButton)
        ui.batchOpenTableButton.clicked.connect(self.onOpenTable)
        ui.batchProgressBar.setVisible(False)

    # Inputs

    def onChooseInputFolder(self) -> None:
        folder = self.chooseFolder("Folder of CT volumes or DICOM files")
        if folder and self._parameterNode:
            self._parameterNode.batchInputFolder = folder

    def onChooseOutputFolder(self) -> None:
        folder = self.chooseFolder("Output folder of the batch")
        if folder and self._parameterNode:
            self._parameterNode.batchOutputFolder = folder

    def refreshStudies(self) -> None:
        """Lists the studies of Slicer's DICOM database; the user selects the ones to segment."""
        self._studies = self.logic.dicomStudies()
        self._studiesListed = True
        studyList = self.ui.batchStudyList
        studyList.clear()
        for study in self._studies:
            studyList.addItem(study.label)
        self.ui.batchStudiesNoteLabel.setText(
            f"{len(self._studies)} studies: select the ones to segment."
            if self._studies
            else "No studies in Slicer's DICOM database: import DICOM files with the DICOM module."
        )

    def selectedStudyUids(self) -> list[str]:
        studyList = self.ui.batchStudyList
        return [study.uid for row, study in enumerate(self._studies) if studyList.item(row).isSelected()]

    # Running

    def canRun(self) -> tuple[bool, str]:
        """Only what the panel knows at a glance; the Logic checks the folders and says what is wrong."""
        if not self._parameterNode:
            return False, "No parameter node."
        if self.ui.batchModelSelector.count() == 0:
            return False, "No segmentation model available: see the note under 'Model' above."
        if self.logic.isBusy() and self.state == IDLE:
            return False, "A segmentation is running: wait for it or cancel it."
        return True, (
            "Segment every CT of the input into the output folder, one folder per case, and write cohort.csv. "
            "Uses the model, device, accuracy and 'Segment tumors' option chosen above. Finished cases are kept: running "
            "again resumes."
        )

    def onRunButton(self) -> None:
        if self.state != IDLE:
            self.cancel()
            return
        if not self.dependencies.readyFor(self.showStatus):
            return
        parameters = self._parameterNode
        fromDicom = parameters.batchSource == BatchSource.DICOM
        try:
            self.logic.startBatch(
                parameters.batchOutputFolder,
                inputFolder=None if fromDicom else parameters.batchInputFolder,
                studyUids=self.selectedStudyUids() if fromDicom else None,
                outputFormat=parameters.batchFormat.value,
                model=parameters.model or None,
                device=parameters.device,
                tumors=parameters.segmentTumors,
                accuracy=parameters.accuracy,
                onProgress=self.onProgress,
                onFinished=self.onFinished,
            )
        except (UserInputError, SegmentationError) as error:
            self.showStatus(str(error), error=True)
            return
        self.runButton.moveTo(RUNNING)
        self.progress = BatchProgress()
        self.ui.batchProgressBar.setValue(0)
        self.ui.batchProgressBar.setVisible(True)
        self.showStatus("Starting (finished cases of an earlier run are reused)...")
        self.updateGui()
        self.onStateChanged()

    def onProgress(self, record: dict) -> None:
        progress = self.progress
        progress.update(record)
        self.ui.batchProgressBar.setValue(round(100 * progress.fraction))
        if progress.stage in ("done", "error"):
            return
        stage = STAGE_LABELS.get(progress.stage, progress.stage)
        where = f"Case {progress.caseIndex} of {progress.caseTotal}" if progress.caseTotal else "Case"
        shown = progress.detail and progress.stage != "case" and progress.detail.lower() != stage.lower()
        detail = f" ({progress.detail})" if shown else ""
        counts = f"{progress.finished - len(progress.failed)} done, {len(progress.failed)} failed"
        self.showStatus(f"{where}: {progress.caseName}, {stage.lower()}{detail}. {counts}.")

    def onFinished(self, outcome, error) -> None:
        self.runButton.moveTo(IDLE)
        self.ui.batchProgressBar.setVisible(False)
        if error is None:
            failed = f" Failed: {', '.join(self.progress.failed)}." if self.progress.failed else ""
            self.showStatus(f"Done: {outcome.summary()}.{failed} Open the cohort table for the details.")
        elif isinstance(error, SegmentationCancelled):
            self.showStatus(str(error))
        else:
            self.showStatus(str(error), error=True)
        self.updateGui()
        self.onStateChanged()

    def tablePath(self) -> Path | None:
        folder = self._parameterNode.batchOutputFolder.strip() if self._parameterNode else ""
        return Path(folder).expanduser() / COHORT_TABLE if folder else None

    def onOpenTable(self) -> None:
        try:
            tableNode = self.logic.loadCohortTable(self.tablePath())
        except (UserInputError, SegmentationError) as error:
            self.showStatus(str(error), error=True)
            return
        self.showTable(tableNode)
        rows = tableNode.GetNumberOfRows()
        self.showStatus(
            f"Loaded '{tableNode.GetName()}' into the scene: {rows} rows, one per case or skipped input."
        )

    def showStatus(self, text: str, error: bool = False) -> None:
        self.ui.batchStatusLabel.setStyleSheet(ERROR_STYLE if error else "")
        self.ui.batchStatusLabel.setText(text)

    def updateGui(self, caller=None, event=None) -> None:
        idle = self.state == IDLE
        canRun, reason = self.canRun()
        ui = self.ui
        self.runButton.show(canRun, reason)
        ui.batchInputsWidget.setEnabled(idle)
        fromDicom = self._parameterNode is not None and self._parameterNode.batchSource == BatchSource.DICOM
        ui.batchInputFolderWidget.setVisible(not fromDicom)
        ui.batchStudiesWidget.setVisible(fromDicom)
        if fromDicom and not self._studiesListed:
            self.refreshStudies()
        tablePath = self.tablePath()
        ui.batchOpenTableButton.setEnabled(idle and tablePath is not None and tablePath.is_file())
