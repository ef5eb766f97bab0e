"""The "Liver E2Net Training" panel under PySide6 (offscreen): the real .ui with the stand-in CTK/qMRML widgets, the
real Logic and MRML scene, and either the scripted stand-in trainer (fast, deterministic) or the real trainer (the
last test, which also renders the README screenshot). These check layout and wiring, not CTK/PythonQt behaviour."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from core_helpers import shared_case
from slicer_helpers import waitFor
from test_slicer_panel import uiProblems
from test_slicer_training_pairs import addCase
from test_slicer_training_run import FAKE_TRAINER

REPOSITORY = Path(__file__).resolve().parents[1]
UI_FILE = REPOSITORY / "LiverE2NetTraining" / "Resources" / "UI" / "LiverE2NetTraining.ui"


@pytest.fixture
def panelWidget(mrmlScene, qtApplication, liteModel, tmp_path, monkeypatch):
    """The module panel as Slicer opens it, isolated Qt settings (user model folder in tmp_path), no bundled model,
    the stand-in trainer in place of `python -m liver_e2net` and dialogs answered by the test."""
    from PySide6.QtCore import QSettings
    from slicer_standins import moduleWidget

    import LiverE2NetTraining

    QSettings.setDefaultFormat(QSettings.IniFormat)
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(tmp_path / "settings"))
    QSettings().setValue("LiverE2Net/UserModelFolder", str(tmp_path / "models"))
    monkeypatch.delenv("LIVER_E2NET_MODEL", raising=False)
    monkeypatch.setattr("liver_e2net.protocol.default_model_path", lambda: None)
    monkeypatch.setenv("FAKE_TRAIN_MODEL", str(liteModel))
    widget = moduleWidget(LiverE2NetTraining.LiverE2NetTrainingWidget)
    widget.logic.cliCommand = [sys.executable, str(FAKE_TRAINER)]
    widget.panel.askReplaceRun = lambda text: pytest.fail(f"unexpected question: {text}")
    widget.parent.resize(460, 900)
    yield widget
    widget.cleanup()
    if widget.panel.isRunning():  # a failed test must not leave its child behind
        widget.panel.run.process.cancel()
        waitFor(lambda: not widget.panel.isRunning(), 30)


def addPairs(scene, names=("first", "second")):
    for name in names:
        addCase(scene, shared_case("case04_ct.nii.gz"), shared_case("case04_label.nii.gz"), name)


def texts(combo) -> list[str]:
    return [combo.itemText(index) for index in range(combo.count())]


def test_ui_has_a_stand_in_for_every_class_and_property_and_binds_every_parameter(mrmlScene, qtApplication):
    import LiverE2NetTraining

    assert uiProblems(UI_FILE) == []
    root = ElementTree.parse(UI_FILE).getroot()
    bound = {prop.findtext("string") for prop in root.iter("property") if prop.get("name") == "SlicerParameterName"}
    assert bound == set(LiverE2NetTraining.LiverE2NetTrainingParameterNode.allParameters)


def test_pairs_table_settings_and_enabled_states(panelWidget, mrmlScene, liteModel, tmp_path, monkeypatch):
    import slicer
    from LiverE2NetLib.Models import gpuStatus

    from LiverE2NetTraining import addSegmentation

    ui, panel, parameters = panelWidget.ui, panelWidget.panel, panelWidget.logic.getParameterNode()
    assert ui.startButton.text() == "Start training" and not ui.startButton.isEnabled()
    assert ui.startButton.toolTip() == "Add at least 2 usable pairs (one trains, one validates)."
    assert not ui.resumeButton.isEnabled()
    assert ui.pairsSummaryLabel.text().startswith("No pairs yet")
    assert parameters.outputFolder == str(tmp_path / "models")  # the segmentation module's model folder
    # Settings: no bundled model here, so fine-tuning is off and greyed out; the config choice is open.
    assert not parameters.fineTune and not ui.fineTuneCheckBox.isEnabled() and ui.configSelector.isEnabled()
    assert texts(ui.configSelector) == ["lite", "base", "paper"] and texts(ui.deviceSelector) == ["Auto", "CPU", "GPU"]
    available, reason = gpuStatus()
    gpuItem = ui.deviceSelector.model().item(2)
    assert gpuItem.isEnabled() == available and gpuItem.toolTip() == reason
    ui.epochsSpinBox.setValue(7)
    ui.modelNameLineEdit.setText("liver-v2")
    assert (parameters.epochs, parameters.modelName) == (7, "liver-v2")
    assert ui.epochsSpinBox.maximum() == 1000 and ui.batchSizeSpinBox.value() == 8
    # Pairs from the scene: two good ones and one drawn with a tumor segment only.
    addPairs(mrmlScene)
    ct = slicer.util.getNode("first")
    tumorOnly = addSegmentation(ct, {"Tumor": slicer.util.arrayFromVolume(ct) > 100})
    ui.addFromSceneButton.click()
    table = ui.pairsTable
    assert table.rowCount() == 3
    assert [table.horizontalHeaderItem(c).text() for c in range(6)] == [
        "Pair", "Slices", "Tumor", "Liver segment", "Tumor segment", "Status"]
    assert [table.item(2, c).text() for c in (0, 1, 2)] == ["first", "3", "no"]
    assert table.item(2, 5).text().startswith("skipped: only tumor segments, no liver segment")
    assert ui.pairsSummaryLabel.text() == "3 pairs: 2 used (0 with tumor), 1 skipped."
    assert ui.startButton.isEnabled() and "Added 3 pairs from this scene; 1 will be skipped" in ui.statusLabel.text()
    # The per-pair override: that pair's only segment is chosen as its liver.
    liverChooser = table.cellWidget(2, 3)
    assert texts(liverChooser) == ["Tumor", "(none)"] and liverChooser.currentText() == "(none)"
    liverChooser.setCurrentIndex(0)
    assert table.item(2, 5).text() == "ok" and ui.pairsSummaryLabel.text() == "3 pairs: 3 used (0 with tumor), 0 skipped."
    assert panel.pairs[2].segmentationNode is tumorOnly
    ui.addFromSceneButton.click()  # adding again adds nothing twice
    assert table.rowCount() == 3 and ui.statusLabel.text().startswith("No new pairs in this scene")
    table.selectRow(2)
    ui.removePairsButton.click()
    assert table.rowCount() == 2
    # From a folder and a saved scene, through the dialogs.
    folder = tmp_path / "cases"
    folder.mkdir()
    for kind in ("ct", "label"):
        shutil.copy(shared_case(f"case03_{kind}.nii.gz"), folder / f"case03_{kind}.nii.gz")
    panel.chooseFolder = lambda title: str(folder)
    ui.addFolderButton.click()
    assert table.item(2, 0).text() == "case03" and table.item(2, 3).text() == "label 1"
    assert mrmlScene.WriteToMRB(str(tmp_path / "saved.mrb"))
    panel.chooseSceneFile = lambda: str(tmp_path / "saved.mrb")
    ui.addSceneFileButton.click()
    assert table.rowCount() == 6 and str(tmp_path / "saved.mrb") in table.item(5, 0).toolTip()  # its 3 pairs
    # Fine-tuning once there is a bundled model: the config then comes from it.
    monkeypatch.setattr("liver_e2net.protocol.default_model_path", lambda: liteModel)
    panel.updateGui()
    ui.fineTuneCheckBox.setChecked(True)
    assert parameters.fineTune and ui.fineTuneCheckBox.isEnabled() and not ui.configSelector.isEnabled()


def test_start_becomes_stop_with_live_progress_and_plot_then_resume(panelWidget, mrmlScene, tmp_path, monkeypatch):
    ui, panel = panelWidget.ui, panelWidget.panel
    addPairs(mrmlScene)
    ui.addFromSceneButton.click()
    ui.modelNameLineEdit.setText("mine")
    ui.epochsSpinBox.setValue(2)
    monkeypatch.setenv("FAKE_TRAIN", "slow")
    ui.startButton.click()
    assert ui.startButton.text() == "Stop" and ui.startButton.isEnabled() and not ui.resumeButton.isEnabled()
    assert not ui.dataCollapsibleButton.isEnabled() and not ui.settingsCollapsibleButton.isEnabled()
    assert not ui.progressBar.isHidden()
    waitFor(lambda: len(panel.run.history) == 1 or not panel.isRunning(), 30)
    assert panel.isRunning(), (panel.run.message, panel.run.result)
    assert ui.progressBar.value() == 25 and not ui.plotLabel.pixmap().isNull()
    assert ui.lossLabel.text() == "train 1.0000, validation 1.2000 (stage 1, epoch 1)"
    assert ui.diceLabel.text() == "liver 0.500, tumor n/a" and ui.epochLabel.text().startswith("stage 1, epoch 1/2")
    assert ui.etaLabel.text().endswith(" s")
    ui.startButton.click()  # Stop
    assert ui.startButton.text() == "Stopping..." and not ui.startButton.isEnabled()
    waitFor(lambda: not panel.isRunning(), 30)
    assert ui.statusLabel.text().startswith("Stopped. The best model so far is kept in")
    assert ui.startButton.text() == "Start training" and ui.resumeButton.isEnabled()
    assert ui.settingsCollapsibleButton.isEnabled() and ui.etaLabel.text() == "-"
    monkeypatch.setenv("FAKE_TRAIN", "ok")
    ui.resumeButton.click()
    assert ui.startButton.text() == "Stop"
    waitFor(lambda: not panel.isRunning(), 30)
    assert ui.statusLabel.text().startswith("Done: model 'mine'") and ui.statusLabel.styleSheet() == ""
    assert ui.progressBar.value() == 100 and len(panel.run.history) == 4
    assert (tmp_path / "models" / "mine.pt").is_file()


def test_errors_are_shown_and_nothing_is_overwritten_without_asking(panelWidget, mrmlScene, tmp_path, monkeypatch):
    ui, panel = panelWidget.ui, panelWidget.panel
    addPairs(mrmlScene)
    ui.addFromSceneButton.click()
    ui.modelNameLineEdit.setText("bad/name")
    ui.startButton.click()
    assert ui.statusLabel.text().startswith("Model name 'bad/name'") and "c62828" in ui.statusLabel.styleSheet()
    assert panel.run is None and ui.startButton.text() == "Start training"
    ui.modelNameLineEdit.setText("mine")
    ui.epochsSpinBox.setValue(1)
    monkeypatch.setenv("FAKE_TRAIN", "oom")
    ui.startButton.click()
    waitFor(lambda: not panel.isRunning(), 30)
    assert ui.statusLabel.text().startswith("The GPU ran out of memory. Lower the batch size (now 8; try 4)")
    assert "c62828" in ui.statusLabel.styleSheet() and ui.startButton.isEnabled()
    monkeypatch.setenv("FAKE_TRAIN", "ok")
    ui.startButton.click()
    waitFor(lambda: not panel.isRunning(), 30)
    assert panel.run.state == "finished"
    # The same name again: the panel asks; "no" changes nothing, "yes" keeps the old run beside the new one.
    questions = []
    panel.askReplaceRun = lambda text: questions.append(text) or False
    ui.startButton.click()
    assert questions == [f"'{tmp_path / 'models' / 'mine'}' already holds a training run. Replace it? The old run "
                         "is kept beside it, renamed."] and not panel.isRunning()
    panel.askReplaceRun = lambda text: True
    ui.startButton.click()
    waitFor(lambda: not panel.isRunning(), 30)
    assert panel.run.state == "finished"
    assert len(list((tmp_path / "models").glob("mine-replaced-*"))) == 3  # run folder, model and its log


def test_a_real_run_from_the_panel_lands_in_the_segmentation_module(panelWidget, mrmlScene, tmp_path):
    """The real `liver_e2net train` child (lite config, a few steps per epoch, CPU) on two pairs cut from the bundled
    CT. Mid-run the panel is rendered for the README (into $LIVER_E2NET_SCREENSHOTS when set, else tmp_path)."""
    from LiverE2NetTrainingLib.Run import cliCommand
    from slicer_standins import moduleWidget

    import LiverE2Net
    import LiverE2NetTraining

    LiverE2NetTraining.addSamplePairs()
    segmentationWidget = moduleWidget(LiverE2Net.LiverE2NetWidget)  # open before training, as a user would have it
    ui, panel = panelWidget.ui, panelWidget.panel
    panelWidget.logic.cliCommand = cliCommand()
    panel.runtimeOptions = dict(stepsPerEpoch=2, threads=1, cacheFolder=tmp_path / "cache")
    ui.addFromSceneButton.click()
    ui.modelNameLineEdit.setText("liver-ct-selftrained")
    ui.epochsSpinBox.setValue(3)
    ui.batchSizeSpinBox.setValue(2)
    ui.validationShareSliderWidget.setValue(0.5)
    ui.deviceSelector.setCurrentIndex(1)  # CPU
    ui.startButton.click()
    assert panel.isRunning(), ui.statusLabel.text()
    waitFor(lambda: not panel.isRunning() or len(panel.run.history) >= 5, 300)  # stage 2, epoch 2
    panelWidget.parent.resize(480, 1010)
    panelWidget.parent.show()
    screenshots = Path(os.environ.get("LIVER_E2NET_SCREENSHOTS") or tmp_path)
    assert panelWidget.parent.grab().save(str(screenshots / "training_panel.png"))
    assert panel.isRunning() and ui.startButton.text() == "Stop" and not ui.plotLabel.pixmap().isNull()
    waitFor(lambda: not panel.isRunning(), 300)
    assert panel.run.state == "finished", panel.run.message
    assert ui.statusLabel.text().startswith("Done: model 'liver-ct-selftrained' (validation Dice liver 0.")
    # The segmentation module lists the new model as soon as it is shown again (no restart), with its description.
    segmentationWidget.enter()
    selector = segmentationWidget.ui.modelSelector
    index = texts(selector).index("liver-ct-selftrained")
    selector.setCurrentIndex(index)
    description = segmentationWidget.ui.modelDescriptionLabel.text()
    assert description.startswith("liver-ct-selftrained | lite config | 1 training cases | 6 epochs | no held-out")
    assert "val Dice" not in description  # validation on synthetic tumors is never shown as accuracy
    assert (tmp_path / "models" / "liver-ct-selftrained.log").read_text().count("epoch") >= 6
    segmentationWidget.cleanup()
