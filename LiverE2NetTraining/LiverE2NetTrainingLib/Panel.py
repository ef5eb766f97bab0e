"""The training panel on the widgets of Resources/UI/LiverE2NetTraining.ui.

The pair list, the Start/Stop/Resume state and the live progress. The child reports through callbacks, so the
GUI thread never waits on training. Dialogs are attributes (`chooseFolder`, `chooseSceneFile`, `askReplaceRun`)
so tests can answer them. Method calls only (setEnabled, isChecked...), which PythonQt and PySide6 share.
"""

from __future__ import annotations

from pathlib import Path

import slicer
from liver_e2net.errors import UserInputError
from LiverE2NetLib.Dependencies import DependencyInstaller, coreRequirements, plotRequirements
from LiverE2NetLib.Models import Device, forgetModelInfo, gpuStatus
from LiverE2NetLib.PanelBase import PanelBase
from LiverE2NetLib.RunState import CANCELLING, IDLE, RUNNING, RunButton

from .Pairs import TrainingPair
from .Plot import plotAvailable, renderHistory
from .Run import FAILED, STOPPING, TrainingSettings, bundledModel, canResume

ERROR_STYLE = "color: #c62828"
COLUMNS = ("Pair", "Slices", "Tumor", "Liver segment", "Tumor segment", "Status")
NONE_CHOICE = "(none)"
PLOT_WIDTH = 440  # pixels; the panel's usual width


def chooseFolderDialog(title: str) -> str:
    import qt

    return qt.QFileDialog.getExistingDirectory(None, title)


def chooseSceneFileDialog() -> str:
    import qt

    return qt.QFileDialog.getOpenFileName(None, "Saved scene with training pairs", "",
                                          "Slicer scenes (*.mrb *.mrml)")[0]


def askReplaceRunDialog(text: str) -> bool:
    import qt

    answer = qt.QMessageBox.question(None, "Liver E2Net Training", text, qt.QMessageBox.Yes | qt.QMessageBox.Cancel)
    return answer == qt.QMessageBox.Yes


class TrainingPanel(PanelBase):
    def __init__(self, ui, logic):
        PanelBase.__init__(self, ui, logic, RunButton(
            ui.startButton, "Start training", "Stop after the current step; the best model so far is kept.",
            runningText="Stop", cancellingText="Stopping..."))
        self.pairs: list[TrainingPair] = []
        self.run = None  # the TrainingRun of this session, running or ended
        self.runtimeOptions: dict = {}  # extra TrainingSettings fields (steps per epoch, threads, cache) for tests
        self.chooseFolder, self.chooseSceneFile = chooseFolderDialog, chooseSceneFileDialog
        self.askReplaceRun = askReplaceRunDialog
        self.dependencies = DependencyInstaller([*coreRequirements(), *plotRequirements()],
                                                onInstalled=self.onDependenciesInstalled)
        self._plottedEpochs = -1
        ui.addFromSceneButton.clicked.connect(self.onAddFromScene)
        ui.addSceneFileButton.clicked.connect(self.onAddSceneFile)
        ui.addFolderButton.clicked.connect(self.onAddFolder)
        ui.removePairsButton.clicked.connect(self.onRemovePairs)
        ui.outputFolderButton.clicked.connect(self.onChooseOutputFolder)
        ui.startButton.clicked.connect(self.onStartButton)
        ui.resumeButton.clicked.connect(self.onResumeButton)
        ui.pairsTable.setHorizontalHeaderLabels(list(COLUMNS))
        ui.progressBar.setVisible(False)
        self.showPlotNote()

    def showPlotNote(self) -> None:
        available, reason = plotAvailable()
        self.ui.plotLabel.setText("" if available else reason)

    def onDependenciesInstalled(self) -> None:
        forgetModelInfo()
        self.refreshDevices()
        self.showPlotNote()

    def onParameterNodeSet(self) -> None:
        self.refreshDevices()

    def refreshDevices(self) -> None:
        """The GPU choice is greyed out, with the reason, where PyTorch reaches no GPU."""
        available, reason = gpuStatus()
        item = self.ui.deviceSelector.model().item(self.ui.deviceSelector.findText(Device.GPU.name))
        item.setEnabled(available)
        item.setToolTip(reason)

    def isRunning(self) -> bool:
        return self.run is not None and self.run.isRunning()

    # -- pairs ----------------------------------------------------------------------------------------------------

    def onAddFromScene(self) -> None:
        self._addPairs(lambda: self.logic.pairsInScene(slicer.mrmlScene), "this scene",
                       " A pair is a CT volume with a segmentation that references it and has liver segments.")

    def onAddSceneFile(self) -> None:
        path = self.chooseSceneFile()
        if path:
            self._addPairs(lambda: self.logic.pairsInSceneFile(path), Path(path).name)

    def onAddFolder(self) -> None:
        folder = self.chooseFolder("Folder of CT + label files")
        if folder:
            self._addPairs(lambda: self.logic.pairsInFolder(folder), folder)

    def _addPairs(self, find, where: str, hint: str = "") -> None:
        try:
            found = find()
        except UserInputError as error:
            self.showStatus(str(error), error=True)
            return
        known = {self._identity(pair) for pair in self.pairs}
        new = [pair for pair in found if self._identity(pair) not in known]
        self.pairs += new
        skipped = sum(not pair.usable for pair in new)
        if not new:
            self.showStatus(f"No new pairs in {where}.{hint}", error=True)
        elif skipped:
            self.showStatus(f"Added {len(new)} pairs from {where}; {skipped} will be skipped (see Status).")
        else:
            self.showStatus(f"Added {len(new)} pairs from {where}.")
        self.populatePairs()

    @staticmethod
    def _identity(pair: TrainingPair):
        return (str(pair.imagePath), str(pair.labelPath)) if pair.fromFiles else (pair.volumeNode, pair.segmentationNode)

    def onRemovePairs(self) -> None:
        rows = sorted({index.row() for index in self.ui.pairsTable.selectedIndexes()}, reverse=True)
        for row in rows:
            del self.pairs[row]
        self.populatePairs()

    def populatePairs(self) -> None:
        import qt

        table = self.ui.pairsTable
        table.setRowCount(len(self.pairs))
        for row, pair in enumerate(self.pairs):
            status = f"skipped: {pair.problem}" if pair.problem else (f"note: {pair.warning}" if pair.warning else "ok")
            cells = {0: pair.name, 1: str(pair.slices or "-"), 2: "yes" if pair.hasTumor else "no", 5: status}
            if pair.fromFiles:
                cells.update({3: "label 1", 4: "label 2"})
            for column, text in cells.items():
                item = qt.QTableWidgetItem(text)
                item.setToolTip(f"{pair.origin}\n{status}")
                if column == 5 and pair.problem:
                    item.setForeground(qt.QBrush(qt.QColor("#c62828")))
                table.setItem(row, column, item)
            for column in (3, 4):
                table.removeCellWidget(row, column)
                if not pair.fromFiles:
                    table.setCellWidget(row, column, self._segmentChooser(pair, tumor=column == 4))
        table.resizeColumnsToContents()
        self.updateGui()

    def _segmentChooser(self, pair: TrainingPair, tumor: bool):
        """Per-pair override: the matched segments, any single segment, or none (tumor only)."""
        import qt

        current = pair.tumorSegmentIds if tumor else pair.liverSegmentIds
        choices = [(", ".join(pair.segmentNames[i] for i in current), current)] if len(current) > 1 else []
        choices += [(name, (segmentId,)) for segmentId, name in pair.segmentNames.items()]
        choices.append((NONE_CHOICE, ()))
        combo = qt.QComboBox()
        for text, _ in choices:
            combo.addItem(text)
        combo.setCurrentIndex(next(index for index, (_, ids) in enumerate(choices) if ids == current))

        def chosen(index: int) -> None:
            ids = choices[index][1]
            others = pair.liverSegmentIds if tumor else pair.tumorSegmentIds
            others = tuple(segmentId for segmentId in others if segmentId not in ids)  # one role per segment
            self.logic.setSegments(pair, others if tumor else ids, ids if tumor else others)
            self.populatePairs()

        combo.currentIndexChanged.connect(chosen)
        return combo

    def usablePairs(self) -> list[TrainingPair]:
        return [pair for pair in self.pairs if pair.usable]

    # -- settings -------------------------------------------------------------------------------------------------

    def onChooseOutputFolder(self) -> None:
        folder = self.chooseFolder("Output folder for the model")
        if folder:
            self._parameterNode.outputFolder = folder

    def settings(self) -> TrainingSettings:
        p = self._parameterNode
        return TrainingSettings(modelName=p.modelName.strip(), outputFolder=Path(p.outputFolder.strip()).expanduser(),
                                fineTune=p.fineTune, config=p.config.value, epochs=p.epochs,
                                validationShare=p.validationShare, device=p.device, batchSize=p.batchSize,
                                **self.runtimeOptions)

    # -- running --------------------------------------------------------------------------------------------------

    def onStartButton(self) -> None:
        if self.isRunning():
            self.run.stop()
            return
        if not self.dependencies.readyFor(self.showStatus):
            return
        settings = self.settings()
        try:
            settings.check()
        except UserInputError as error:
            self.showStatus(str(error), error=True)
            return
        conflict = self.logic.outputConflict(settings)
        if conflict and not self.askReplaceRun(conflict + " Replace it? The old run is kept beside it, renamed."):
            return
        self._startRun(lambda: self.logic.startTraining(self.pairs, settings, self.onRunUpdate, self.onRunFinished,
                                                        replace=bool(conflict)))

    def onResumeButton(self) -> None:
        if not self.dependencies.readyFor(self.showStatus):
            return
        settings = self.settings()
        self._startRun(lambda: self.logic.resumeTraining(settings, self.onRunUpdate, self.onRunFinished))

    def _startRun(self, start) -> None:
        self.showStatus("Preparing the training data...")
        try:
            self.run = start()
        except UserInputError as error:
            self.showStatus(str(error), error=True)
            return
        self._plottedEpochs = -1
        self.ui.progressBar.setValue(0)
        self.ui.progressBar.setVisible(True)
        self.onRunUpdate(self.run)

    def onRunUpdate(self, run) -> None:
        record = run.record
        self.ui.progressBar.setValue(round(100 * run.fraction))
        if record:
            stage = record.get("stage", "")[-1:]
            self.ui.epochLabel.setText(f"stage {stage}, epoch {record.get('epoch', '-')}/{run.settings.epochs}, "
                                       f"step {record.get('step', '-')}")
        last = run.history[-1] if run.history else {}
        if last:
            self.ui.lossLabel.setText(f"train {last['train_loss']:.4f}, validation {last['val_loss']:.4f} "
                                      f"(stage {last['stage'][-1]}, epoch {last['epoch']})")
        elif "loss" in record:
            self.ui.lossLabel.setText(f"train {record['loss']:.4f} (last step)")
        liver, tumor = (_latest(record, last, f"val_dice_{name}") for name in ("liver", "tumor"))
        self.ui.diceLabel.setText(f"liver {_fmt(liver)}, tumor {_fmt(tumor)}" if last or record else "-")
        eta = record.get("eta_s")
        self.ui.etaLabel.setText("-" if eta is None or not run.isRunning() else _duration(eta))
        self.showStatus(run.message, error=run.state == FAILED)
        self.updatePlot(run.history)
        self.updateGui()

    def onRunFinished(self, run) -> None:
        self.ui.progressBar.setVisible(run.fraction > 0)
        self.onRunUpdate(run)

    def updatePlot(self, history: list[dict]) -> None:
        if len(history) == self._plottedEpochs or not plotAvailable()[0]:
            return
        import qt

        self._plottedEpochs = len(history)
        if not history:
            self.ui.plotLabel.clear()
            return
        pixmap = qt.QPixmap()
        pixmap.loadFromData(renderHistory(history, width=PLOT_WIDTH))
        self.ui.plotLabel.setPixmap(pixmap)

    def showStatus(self, text: str, error: bool = False) -> None:
        self.ui.statusLabel.setStyleSheet(ERROR_STYLE if error else "")
        self.ui.statusLabel.setText(text)

    def updateGui(self, caller=None, event=None) -> None:
        running = self.isRunning()
        stopping = running and self.run.state == STOPPING
        usable = len(self.usablePairs())
        tumors = sum(pair.hasTumor for pair in self.usablePairs())
        self.ui.pairsSummaryLabel.setText(f"{len(self.pairs)} pairs: {usable} used ({tumors} with tumor), "
                                          f"{len(self.pairs) - usable} skipped." if self.pairs else
                                          "No pairs yet: add them from the scene, a saved scene or a folder.")
        for widget in (self.ui.dataCollapsibleButton, self.ui.settingsCollapsibleButton):
            widget.setEnabled(not running)
        canStart, reason = (False, "Add at least 2 usable pairs (one trains, one validates).") if usable < 2 else \
            (bool(self._parameterNode), "Export the pairs and train in a child process; Slicer stays usable.")
        self.runButton.state = CANCELLING if stopping else RUNNING if running else IDLE  # the run decides
        self.runButton.show(canStart, reason)
        self.ui.resumeButton.setEnabled(not running and bool(self._parameterNode) and
                                        canResume(self._runFolder()))
        self._updateStartFrom()

    def _runFolder(self) -> Path:
        p = self._parameterNode
        return Path(p.outputFolder.strip() or ".").expanduser() / (p.modelName.strip() or ".")

    def _updateStartFrom(self) -> None:
        """Fine-tuning needs the bundled model and keeps its config, so the config choice is off then."""
        if not self._parameterNode:
            return
        bundled = bundledModel()
        self.ui.fineTuneCheckBox.setEnabled(bundled is not None and not self.isRunning())
        self.ui.fineTuneCheckBox.setToolTip(f"Fine-tune {bundled.name}." if bundled else
                                            "No bundled model in Resources/Models: training starts from scratch.")
        if bundled is None and self._parameterNode.fineTune:
            self._parameterNode.fineTune = False
        self.ui.configSelector.setEnabled(not self._parameterNode.fineTune)


def _latest(record: dict, lastEpoch: dict, key: str):
    """The newest of a progress line's value and the last finished epoch's (metrics.jsonl may be read first)."""
    return record[key] if record.get(key) is not None else lastEpoch.get(key)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s" if minutes else f"{seconds} s"

