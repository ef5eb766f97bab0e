"""The "Segment Liver & Tumors" panel under PySide6 (offscreen): the real .ui loaded with stand-in CTK/qMRML
widgets, the real Logic and MRML scene, and the scripted stand-in child (slicer_standins/fake_liver_e2net.py) for
deterministic progress, cancel and failures. These check layout and wiring, not CTK or PythonQt behaviour."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from slicer_helpers import FAKE_CHILD, isAlive, isolateSettings, nodeIds, waitFor

REPOSITORY = Path(__file__).resolve().parents[1]
UI_FILE = REPOSITORY / "LiverE2Net" / "Resources" / "UI" / "LiverE2Net.ui"
APPLY_TEXT = "Segment Liver & Tumors"


def shownText(button) -> str:
    """What a Qt button displays: '&&' is one '&', a single '&' marks a shortcut."""
    return button.text().replace("&&", "\0").replace("&", "").replace("\0", "&")


def uiProblems(uiPath: Path) -> list[str]:
    """Every widget class of the .ui needs a PySide6 class or a stand-in; every property it sets must be declared
    (QUiLoader would silently make an undeclared one a dynamic property)."""
    import slicer
    from PySide6 import QtWidgets
    from slicer_standins.widgets import CUSTOM_WIDGETS

    standIns = {widgetClass.__name__ for widgetClass in CUSTOM_WIDGETS}
    root = ElementTree.parse(uiPath).getroot()
    problems = [f"no stand-in for {element.findtext('class')}" for element in root.iter("customwidget")
                if element.findtext("class") not in standIns]
    elements = list(root.iter("widget"))
    problems += [f"unknown widget class {element.get('class')}" for element in elements
                 if element.get("class") not in standIns and not hasattr(QtWidgets, element.get("class"))]
    if problems:
        return problems
    loaded = slicer.util.loadUI(str(uiPath))
    for element in elements:
        name = element.get("name")
        widget = loaded if loaded.objectName() == name else loaded.findChild(QtWidgets.QWidget, name)
        for prop in element.findall("property"):
            if prop.get("stdset") != "0" and widget.metaObject().indexOfProperty(prop.get("name")) < 0:
                problems.append(f"{name} ({element.get('class')}) does not declare property {prop.get('name')}")
        dynamic = {bytes(propertyName).decode() for propertyName in widget.dynamicPropertyNames()}
        problems += [f"{name} has undeclared property {extra}" for extra in sorted(dynamic - {"SlicerParameterName"})
                     if not extra.startswith(("_PySide", "_q_"))]  # PySide6 and Qt bookkeeping (QSpinBox)
    return problems


def test_ui_has_a_stand_in_for_every_class_and_property(mrmlScene, qtApplication, tmp_path):
    assert uiProblems(UI_FILE) == []
    # The check itself catches what QUiLoader would let pass without a word.
    doctored = UI_FILE.read_text().replace('<widget class="ctkSliderWidget" name="smoothingSliderWidget">',
                                           '<widget class="ctkSliderWidget" name="smoothingSliderWidget">'
                                           '<property name="tracking"><bool>false</bool></property>')
    (tmp_path / "doctored.ui").write_text(doctored.replace('class="QProgressBar"', 'class="ctkFancyProgressBar"', 1))
    assert uiProblems(tmp_path / "doctored.ui") == ["unknown widget class ctkFancyProgressBar"]
    (tmp_path / "doctored.ui").write_text(doctored)
    assert uiProblems(tmp_path / "doctored.ui") == [
        "smoothingSliderWidget (ctkSliderWidget) does not declare property tracking",
        "smoothingSliderWidget has undeclared property tracking"]


def test_every_bound_widget_names_a_parameter_and_scene_connections_are_made(mrmlScene, qtApplication):
    import slicer

    import LiverE2Net

    root = ElementTree.parse(UI_FILE).getroot()
    bound = {prop.findtext("string") for prop in root.iter("property") if prop.get("name") == "SlicerParameterName"}
    assert bound <= set(LiverE2Net.LiverE2NetParameterNode.allParameters)
    assert set(LiverE2Net.LiverE2NetParameterNode.allParameters) - bound == {"model"}  # the model list is dynamic
    widget = slicer.util.loadUI(str(UI_FILE))
    widget.setMRMLScene(mrmlScene)
    ui = slicer.util.childWidgetVariables(widget)
    assert ui.inputSelector.mrmlScene() is mrmlScene and ui.outputSelector.mrmlScene() is mrmlScene


@pytest.fixture
def panelWidget(mrmlScene, qtApplication, liteModel, tmp_path, monkeypatch):
    """The module panel as Slicer opens it; the bundled model and a user model folder (one good model, one broken
    file) in isolated settings; the stand-in child in place of `python -m liver_e2net`."""
    import shutil

    from slicer_standins import moduleWidget

    import LiverE2Net

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(liteModel, models / "mine.pt")
    (models / "broken.pt").write_text("not a checkpoint")
    isolateSettings(tmp_path / "settings", models)
    monkeypatch.setenv("LIVER_E2NET_MODEL", str(liteModel))
    monkeypatch.setenv("FAKE_LIVER_E2NET_PIDS", str(tmp_path / "pids"))
    widget = moduleWidget(LiverE2Net.LiverE2NetWidget)
    widget.logic.cliCommand = [sys.executable, str(FAKE_CHILD)]
    widget.parent.resize(460, 720)
    yield widget
    widget.cleanup()


def run(widget, mode: str, monkeypatch, onEachLoop=None) -> None:
    monkeypatch.setenv("FAKE_LIVER_E2NET", mode)
    widget.ui.applyButton.click()
    waitFor(lambda: widget.panel.state == "idle", onEachLoop=onEachLoop)


def test_button_states_models_and_devices(panelWidget, mrmlScene, liteModel):
    import shutil

    import slicer

    ui, parameters = panelWidget.ui, panelWidget.logic.getParameterNode()
    assert shownText(ui.applyButton) == APPLY_TEXT
    assert not ui.applyButton.isEnabled() and ui.applyButton.toolTip() == "Select a CT volume first."
    ct = mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "a label map")
    assert [ui.inputSelector.itemText(i) for i in range(ui.inputSelector.count())] == ["None", "CT"]
    ui.inputSelector.setCurrentNode(ct)
    assert parameters.inputVolume is ct and ui.applyButton.isEnabled()
    # Models: the bundled one, then the user's folder, each with its one-line description.
    assert [ui.modelSelector.itemText(i) for i in range(ui.modelSelector.count())] == [
        "random-lite (bundled)", "broken", "mine"]
    assert ui.modelDescriptionLabel.text() == "random-lite | lite config | no held-out real-CT accuracy recorded" and parameters.model == ""
    ui.modelSelector.setCurrentIndex(1)
    assert parameters.model.endswith("broken.pt") and ui.modelDescriptionLabel.text().startswith("unreadable: ")
    ui.modelSelector.setCurrentIndex(2)
    assert parameters.model.endswith("mine.pt") and ui.modelDescriptionLabel.text() == "random-lite | lite config | no held-out real-CT accuracy recorded"
    shutil.copy(liteModel, Path(parameters.model).with_name("newly trained.pt"))
    ui.refreshModelsButton.click()
    assert ui.modelSelector.itemText(3) == "newly trained" and ui.modelSelector.currentText() == "mine"
    # Devices: GPU greyed out with the reason when CUDA is absent (this machine has a CPU-only PyTorch).
    available, reason = panelWidget.logic.gpuStatus()
    gpuItem = ui.deviceSelector.model().item(ui.deviceSelector.findText("GPU"))
    assert [ui.deviceSelector.itemText(i) for i in range(3)] == ["Auto", "CPU", "GPU"]
    assert gpuItem.isEnabled() == available and gpuItem.toolTip() == reason
    assert reason in ui.deviceNoteLabel.text()
    ui.deviceSelector.setCurrentIndex(1)
    assert parameters.device.value == "cpu"
    slicer.mrmlScene.RemoveNode(ct)
    assert parameters.inputVolume is None and not ui.applyButton.isEnabled()


def test_accuracy_choice_goes_to_the_command_line(panelWidget, sampleCt, monkeypatch):
    from LiverE2NetLib.ChildProcess import QtProcess
    from LiverE2NetLib.Models import Accuracy

    commands = []

    class RecordingProcess(QtProcess):
        def start(self, command, *args):
            commands.append(command)
            super().start(command, *args)

    ui, parameters = panelWidget.ui, panelWidget.logic.getParameterNode()
    panelWidget.logic.processFactory = RecordingProcess
    panelWidget.panel.askReplace = lambda name: "new"
    assert [ui.accuracySelector.itemText(i) for i in range(ui.accuracySelector.count())] == ["Fast", "Best"]
    assert "--tta multiscale" in ui.accuracySelector.toolTip() and parameters.accuracy == Accuracy.Fast
    ui.inputSelector.setCurrentNode(sampleCt)
    run(panelWidget, "ok", monkeypatch)
    ui.accuracySelector.setCurrentIndex(ui.accuracySelector.findText("Best"))
    assert parameters.accuracy == Accuracy.Best
    run(panelWidget, "ok", monkeypatch)
    assert [command[command.index("--tta") + 1] for command in commands] == ["none", "multiscale"]
    assert ui.statusLabel.text() == "Done: 'CT segmentation_1' is ready for the Segment Editor."
    assert parameters.removeFalsePositives and ui.removeFalsePositivesCheckBox.isChecked()
    ui.removeFalsePositivesCheckBox.setChecked(False)
    assert not parameters.removeFalsePositives
    run(panelWidget, "ok", monkeypatch)
    assert [command[command.index("--fp-filter") + 1] for command in commands] == ["auto", "auto", "off"]  # the filter, if the model has one
    run(panelWidget, "warn", monkeypatch)  # what the child says about its run is shown, not only logged
    assert ui.statusLabel.text() == (
        "Done: 'CT segmentation_3' is ready for the Segment Editor. Note: first fake warning; second fake warning")


def test_progress_results_lesions_and_stl_export(panelWidget, sampleCt, mrmlScene, monkeypatch, tmp_path):
    ui, panel = panelWidget.ui, panelWidget.panel
    parameters = panelWidget.logic.getParameterNode()
    sliceNode = mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
    ui.inputSelector.setCurrentNode(sampleCt)
    seen = []

    def record():
        state = (shownText(ui.applyButton), ui.progressBar.value(), ui.statusLabel.text(), ui.inputsCollapsibleButton.isEnabled())
        if not seen or seen[-1] != state:
            seen.append(state)

    run(panelWidget, "ok", monkeypatch, onEachLoop=record)
    running = [state for state in seen if state[0] == "Cancel"]
    values = [state[1] for state in running]
    assert len(set(values)) >= 3 and values == sorted(values), seen
    assert any(state[2].startswith("Finding the liver: slice") for state in running)
    assert not any(state[3] for state in running)  # inputs are locked while the child runs
    assert shownText(ui.applyButton) == APPLY_TEXT and ui.inputsCollapsibleButton.isEnabled()

    segmentationNode = parameters.outputSegmentation
    assert segmentationNode.GetName() == "CT segmentation"
    assert ui.statusLabel.text() == "Done: 'CT segmentation' is ready for the Segment Editor."
    assert ui.timeLabel.text().endswith("s on cpu, bfloat16 (1 thread)")
    report = json.loads(segmentationNode.GetAttribute("LiverE2Net.Report"))
    assert ui.liverVolumeLabel.text() == f"{report['liver_ml']:.1f} ml"
    assert ui.tumorBurdenLabel.text().endswith("in 2 lesions)") and ui.lesionTable.rowCount() == 2
    assert ui.lesionTable.item(1, 1).text() == f"{report['lesions'][1]['volume_ml']:.2f}"
    ui.lesionTable.cellClicked.emit(1, 0)
    centre = [float(value) for value in ui.lesionTable.item(1, 4).text().split(", ")]
    sliceToRas = sliceNode.GetSliceToRAS()
    assert [sliceToRas.GetElement(row, 3) for row in range(3)] == pytest.approx(centre, abs=0.06)
    assert panelWidget.parent.grab().save(str(tmp_path / "panel.png"))

    # Edit in the "Segment Editor" (here: delete the tumor segment), then measure again and export.
    segmentationNode.GetSegmentation().RemoveSegment("Liver_tumor")
    ui.updateResultsButton.click()
    assert ui.lesionTable.rowCount() == 0 and ui.tumorBurdenLabel.text().startswith("0.00 %")
    panel.chooseFolder = lambda: str(tmp_path / "stl")
    ui.stlCoordinatesSelector.setCurrentIndex(ui.stlCoordinatesSelector.findText("RAS"))
    ui.exportStlButton.click()
    assert ui.statusLabel.text() == f"Wrote 1 STL files (RAS coordinates) to {tmp_path / 'stl'}."
    assert [path.name for path in (tmp_path / "stl").iterdir()] == ["CT segmentation_Liver_RAS.stl"]
    blocker = tmp_path / "a file"
    blocker.write_text("in the way")
    panel.chooseFolder = lambda: str(blocker / "stl")
    ui.exportStlButton.click()
    assert ui.statusLabel.text().startswith(f"Cannot write STL files to {blocker / 'stl'}")
    assert ui.statusLabel.styleSheet() == "color: #c62828"


def test_the_panel_labels_only_stages_of_the_protocol_and_the_protocol_refuses_others(qtApplication):
    from liver_e2net.protocol import STAGES, progress_record
    from LiverE2NetLib.Panel import STAGE_LABELS

    assert set(STAGE_LABELS) <= set(STAGES)
    assert progress_record("stage2", 0.5, "slice 3/9")["stage"] == "stage2"
    with pytest.raises(ValueError, match="'stage3' is not in protocol.STAGES"):
        progress_record("stage3", 0.5)


def test_cancel_kills_the_child_and_leaves_the_scene_as_it_was(panelWidget, sampleCt, mrmlScene, monkeypatch,
                                                               tmp_path):
    from LiverE2NetLib.Segments import SegmentationError

    ui = panelWidget.ui
    ui.inputSelector.setCurrentNode(sampleCt)
    before = nodeIds(mrmlScene)
    monkeypatch.setenv("FAKE_LIVER_E2NET", "slow")
    ui.applyButton.click()
    waitFor(lambda: ui.statusLabel.text().startswith("Finding the liver"))
    assert shownText(ui.applyButton) == "Cancel" and not ui.progressBar.isHidden()
    with pytest.raises(SegmentationError, match="already running"):
        panelWidget.logic.segment(sampleCt)
    ui.applyButton.click()
    assert ui.statusLabel.text() == "Cancelling..." and not ui.applyButton.isEnabled()
    waitFor(lambda: panelWidget.panel.state == "idle", timeoutSeconds=20)
    assert ui.statusLabel.text() == "Segmentation cancelled: the scene is unchanged."
    assert shownText(ui.applyButton) == APPLY_TEXT and ui.applyButton.isEnabled()
    assert nodeIds(mrmlScene) == before
    child, grandchild = (int(pid) for pid in (tmp_path / "pids").read_text().split())
    assert not isAlive(child) and not isAlive(grandchild)


def test_leaving_the_module_during_a_run_still_delivers_the_result(panelWidget, sampleCt, monkeypatch):
    ui = panelWidget.ui
    ui.inputSelector.setCurrentNode(sampleCt)
    monkeypatch.setenv("FAKE_LIVER_E2NET", "ok")
    ui.applyButton.click()
    panelWidget.exit()  # the user opens another module
    waitFor(lambda: panelWidget.panel.state == "idle")
    assert panelWidget.logic.getParameterNode().outputSegmentation.GetName() == "CT segmentation"
    ui.segmentTumorsCheckBox.setChecked(False)  # not followed while away
    assert panelWidget.logic.getParameterNode().segmentTumors
    panelWidget.enter()
    assert ui.segmentTumorsCheckBox.isChecked() and ui.lesionTable.rowCount() == 2


@pytest.mark.parametrize(("mode", "message"), [
    ("fail", "is not a readable Liver E2Net checkpoint; re-download or re-train the model"),
    ("crash", "RuntimeError: CUDA error: out of memory"),
])
def test_a_failure_shows_the_childs_message_not_a_traceback(panelWidget, sampleCt, mrmlScene, monkeypatch, mode,
                                                             message):
    ui = panelWidget.ui
    ui.inputSelector.setCurrentNode(sampleCt)
    before = nodeIds(mrmlScene)
    run(panelWidget, mode, monkeypatch)
    assert ui.statusLabel.text().endswith(message) and "Traceback" not in ui.statusLabel.text()
    assert ui.statusLabel.styleSheet() == "color: #c62828"
    assert nodeIds(mrmlScene) == before and shownText(ui.applyButton) == APPLY_TEXT


def test_a_child_that_cannot_start_is_reported_in_the_panel(panelWidget, sampleCt, tmp_path):
    ui = panelWidget.ui
    ui.inputSelector.setCurrentNode(sampleCt)
    panelWidget.logic.cliCommand = [str(tmp_path / "no-python-here")]
    ui.applyButton.click()
    waitFor(lambda: panelWidget.panel.state == "idle")
    assert ui.statusLabel.text().startswith(f"cannot start {tmp_path / 'no-python-here'}: ")
    assert shownText(ui.applyButton) == APPLY_TEXT and ui.applyButton.isEnabled()


def test_an_unexpected_import_failure_returns_the_panel_to_idle(panelWidget, sampleCt, mrmlScene, monkeypatch):
    from LiverE2NetLib import Job

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(Job, "importResult", broken)
    ui = panelWidget.ui
    ui.inputSelector.setCurrentNode(sampleCt)
    before = nodeIds(mrmlScene)
    run(panelWidget, "ok", monkeypatch)
    assert ui.statusLabel.text() == "Importing the result failed: boom"
    assert shownText(ui.applyButton) == APPLY_TEXT and nodeIds(mrmlScene) == before


def test_bad_input_is_explained_in_the_panel(panelWidget, mrmlScene):
    import numpy as np
    import slicer
    ui = panelWidget.ui
    mri = mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MRI")
    slicer.util.updateVolumeFromArray(mri, np.linspace(0, 1500, 8 * 16 * 16).reshape(8, 16, 16).astype(np.int16))
    ui.inputSelector.setCurrentNode(mri)
    before = nodeIds(mrmlScene)
    ui.applyButton.click()
    assert "'MRI' does not look like CT in Hounsfield units" in ui.statusLabel.text()
    assert ui.statusLabel.styleSheet() == "color: #c62828"
    assert panelWidget.panel.state == "idle" and nodeIds(mrmlScene) == before


def test_running_again_asks_before_replacing(panelWidget, sampleCt, mrmlScene, monkeypatch):
    import slicer

    ui, panel = panelWidget.ui, panelWidget.panel
    parameters = panelWidget.logic.getParameterNode()
    ui.inputSelector.setCurrentNode(sampleCt)
    run(panelWidget, "ok", monkeypatch)
    first = parameters.outputSegmentation
    answers, asked = [], []
    panel.askReplace = lambda name: asked.append(name) or answers.pop(0)

    answers.append("cancel")
    ui.applyButton.click()
    assert asked == ["CT segmentation"] and panel.state == "idle"
    answers.append("new")
    run(panelWidget, "ok", monkeypatch)
    second = parameters.outputSegmentation
    assert second is not first and second.GetName() == "CT segmentation_1"
    answers.append("replace")
    run(panelWidget, "ok", monkeypatch)
    assert parameters.outputSegmentation is second
    assert len(slicer.util.getNodesByClass("vtkMRMLSegmentationNode")) == 2 and len(asked) == 3


def test_a_saved_scene_restores_the_panel(panelWidget, sampleCt, mrmlScene, monkeypatch, tmp_path):
    from slicer_standins import moduleWidget, newScene

    import LiverE2Net

    ui = panelWidget.ui
    ui.inputSelector.setCurrentNode(sampleCt)
    run(panelWidget, "ok", monkeypatch)
    ui.modelSelector.setCurrentIndex(ui.modelSelector.findText("mine"))
    ui.deviceSelector.setCurrentIndex(ui.deviceSelector.findText("CPU"))
    ui.accuracySelector.setCurrentIndex(ui.accuracySelector.findText("Best"))
    ui.batchSourceSelector.setCurrentIndex(ui.batchSourceSelector.findText("DICOM database studies"))
    ui.batchOutputFolderLineEdit.setText(str(tmp_path / "cohort"))
    ui.batchFormatSelector.setCurrentIndex(ui.batchFormatSelector.findText("Slicer segmentation (.seg.nrrd)"))
    ui.segmentTumorsCheckBox.setChecked(False)
    ui.smoothingSliderWidget.setValue(0.3)
    ui.showProbabilitiesCheckBox.setChecked(True)
    ui.stlCoordinatesSelector.setCurrentIndex(ui.stlCoordinatesSelector.findText("RAS"))
    tumorBurden = ui.tumorBurdenLabel.text()
    mrmlScene.SetURL(str(tmp_path / "scene.mrml"))
    assert mrmlScene.Commit()
    panelWidget.cleanup()

    restoredScene = newScene()
    restoredScene.SetURL(str(tmp_path / "scene.mrml"))
    assert restoredScene.Connect()
    restored = moduleWidget(LiverE2Net.LiverE2NetWidget).ui
    assert restored.inputSelector.currentNode().GetName() == "CT"
    assert restored.modelSelector.currentText() == "mine"
    assert restored.deviceSelector.currentText() == "CPU" and restored.accuracySelector.currentText() == "Best"
    assert restored.batchSourceSelector.currentText() == "DICOM database studies"
    assert restored.batchOutputFolderLineEdit.text() == str(tmp_path / "cohort")
    assert restored.batchFormatSelector.currentText() == "Slicer segmentation (.seg.nrrd)"
    assert restored.batchModelSelector.currentText() == "mine"
    assert not restored.segmentTumorsCheckBox.isChecked() and restored.showProbabilitiesCheckBox.isChecked()
    assert restored.smoothingSliderWidget.value == pytest.approx(0.3)
    assert restored.stlCoordinatesSelector.currentText() == "RAS"
    assert restored.outputSelector.currentNode().GetName() == "CT segmentation"
    assert restored.tumorBurdenLabel.text() == tumorBurden and restored.lesionTable.rowCount() == 2
