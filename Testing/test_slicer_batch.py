"""The Batch (cohort) section: the Logic on Slicer's real MRML running the real `liver_e2net segment-batch` child
(small real CTs, the session's small biased model), and the section's widgets under PySide6 offscreen (stand-in
CTK/qMRML widgets and DICOM database; these check layout and wiring, not CTK or PythonQt behaviour)."""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk
from core_helpers import SAMPLE_CT, shared_case
from slicer_helpers import isAlive, isolateSettings, waitFor
from test_cohort_helpers import small_ct, write_ct_series


@pytest.fixture
def logic(mrmlScene):
    import LiverE2Net

    return LiverE2Net.LiverE2NetLogic()


@pytest.fixture
def cases(tmp_path) -> Path:
    """Two real CTs (3 slices of the dcmqi demo, 8 slices of the 3 mm TotalSegmentator CT), a cut-short file that
    fails as a case, and a README that is ignored."""
    folder = tmp_path / "cases"
    folder.mkdir()
    shutil.copy(shared_case("case04_ct.nii.gz"), folder / "c1_ct.nii.gz")
    small_ct(folder / "c2_ct.nii.gz", shared_case("case03_ct.nii.gz"), slice(20, 28))
    (folder / "c3_broken.nii.gz").write_bytes((folder / "c2_ct.nii.gz").read_bytes()[:5000])
    (folder / "README.md").write_text("not an image")
    return folder


def tableRows(tableNode) -> list[dict[str, str]]:
    columns = [tableNode.GetColumnName(index) for index in range(tableNode.GetNumberOfColumns())]
    return [
        {name: tableNode.GetCellText(row, column) for column, name in enumerate(columns)}
        for row in range(tableNode.GetNumberOfRows())
    ]


# -- Logic ---------------------------------------------------------------------------------------------------------


def test_a_folder_becomes_a_cohort_table_node_with_one_row_per_case(logic, cases, model, tmp_path, mrmlScene):
    from LiverE2NetLib.Batch import BatchProgress

    records = []
    outcome = logic.segmentBatch(
        tmp_path / "out", inputFolder=cases, model=model, device="cpu", progressCallback=records.append
    )
    assert outcome.counts == {"done": 2, "failed": 1} and outcome.reused == 0
    assert outcome.summary() == "2 cases done, 1 failed"
    fractions = [record["fraction"] for record in records]
    assert fractions == sorted(fractions) and records[-1]["stage"] == "done"
    # Every line about a case carries its position as fields: the panel never parses "[2/3]" out of messages.
    assert all({"index", "total"} <= record.keys() for record in records if record.get("case"))
    progress = BatchProgress()
    for record in records:
        progress.update(record)
        if record["stage"] == "stage2" and record["case"] == "c2_ct":
            assert (progress.caseIndex, progress.caseTotal, progress.caseName) == (2, 3, "c2_ct")
            assert progress.finished == 1 and progress.detail.startswith("slice ")
    assert (progress.finished, progress.failed, progress.tablePath) == (
        3,
        ["c3_broken"],
        str(outcome.tablePath),
    )

    table = logic.loadCohortTable(outcome.tablePath)
    assert table.GetName() == "out cohort" and table.GetStorageNode().GetFileName() == str(outcome.tablePath)
    rows = {row["case"]: row for row in tableRows(table)}
    assert {name: row["status"] for name, row in rows.items()} == {
        "c1_ct": "done",
        "c2_ct": "done",
        "c3_broken": "failed",
    }
    assert "cut short" in rows["c3_broken"]["message"]
    assert float(rows["c2_ct"]["liver_ml"]) > 0 and rows["c2_ct"]["outputs"].endswith("c2_ct/label.nii.gz")
    # Loading it again (after a rerun, say) refreshes the same node.
    assert logic.loadCohortTable(outcome.tablePath) is table
    assert mrmlScene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1 and table.GetNumberOfRows() == 3


def test_cancel_in_the_middle_keeps_finished_cases_and_a_rerun_resumes(logic, model, tmp_path):
    from LiverE2NetLib.Segments import SegmentationCancelled

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(shared_case("case04_ct.nii.gz"), inputs / "c1.nii.gz")
    for index, start in ((2, 20), (3, 26)):
        small_ct(inputs / f"c{index}.nii.gz", shared_case("case03_ct.nii.gz"), slice(start, start + 6))
    out = tmp_path / "out"

    def cancelAfterTheFirstCase(record):
        if record["stage"] == "case":
            logic.cancel()

    with pytest.raises(
        SegmentationCancelled, match=r"Batch cancelled: 1 finished cases are kept in .*resume"
    ):
        logic.segmentBatch(
            out, inputFolder=inputs, model=model, device="cpu", progressCallback=cancelAfterTheFirstCase
        )
    assert sorted(path.parent.name for path in out.glob("*/case.json")) == ["c1"]
    assert not (out / "cohort.csv").exists()
    kept = (out / "c1" / "case.json").read_bytes()

    outcome = logic.segmentBatch(out, inputFolder=inputs, model=model, device="cpu")
    assert outcome.counts == {"done": 3} and outcome.reused == 1
    assert outcome.summary() == "3 cases done (1 from an earlier run), 0 failed"
    assert (out / "c1" / "case.json").read_bytes() == kept  # not recomputed


def test_bad_batch_inputs_are_refused_before_any_child_starts(logic, model, tmp_path, monkeypatch):
    import slicer
    from liver_e2net.errors import UserInputError

    monkeypatch.delattr(slicer, "dicomDatabase", raising=False)
    logic.cliCommand = [str(tmp_path / "no-python-here")]  # a child that started would fail differently
    empty, notes, good = (tmp_path / name for name in ("empty", "notes", "good"))
    for folder in (empty, notes / "sub", good):
        folder.mkdir(parents=True)
    (notes / "sub" / "README.md").write_text("no CT here")
    (good / "ct.nii.gz").write_bytes(b"")  # the panel checks names; the child reads pixels
    blocker = tmp_path / "a file"
    blocker.write_text("in the way")
    out = tmp_path / "out"
    cases = [
        ({"inputFolder": ""}, "Choose an input folder with CT volumes"),
        ({"inputFolder": tmp_path / "missing"}, "Input folder not found: .*missing"),
        (
            {"inputFolder": empty},
            "No CT found in .*empty: it holds no NIfTI, NRRD or MHA volume and no DICOM",
        ),
        ({"inputFolder": notes}, "No CT found in .*notes"),
        ({"inputFolder": good, "outputFolder": " "}, "Choose an output folder for the batch"),
        ({"inputFolder": good, "outputFolder": blocker}, "The output folder .*a file is a file"),
        (
            {"inputFolder": good, "outputFolder": blocker / "out"},
            "Cannot write to the output folder .*Not a directory",
        ),
        ({"inputFolder": good, "outputFolder": good}, "The output folder is the input folder"),
        ({"inputFolder": good, "model": tmp_path / "gone.pt"}, "Model file not found"),
        ({"inputFolder": good, "outputFormat": "jpeg"}, "Unknown format 'jpeg'"),
        ({"studyUids": []}, "Select one or more studies"),
        ({"studyUids": ["1.2.3"]}, "DICOM database is not available"),
    ]
    for arguments, message in cases:
        with pytest.raises(UserInputError, match=message):
            logic.segmentBatch(**{"outputFolder": out, "model": model, **arguments})
    assert not out.exists() and not logic.isBusy()


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores permissions")
def test_a_read_only_output_folder_is_refused(logic, model, tmp_path):
    from liver_e2net.errors import UserInputError

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ct.nrrd").write_bytes(b"")
    readOnly = tmp_path / "read-only"
    readOnly.mkdir(mode=0o500)
    with pytest.raises(UserInputError, match="Cannot write to the output folder .*Permission denied"):
        logic.segmentBatch(readOnly, inputFolder=tmp_path / "in", model=model)


def test_dicom_database_studies_are_segmented_from_a_list_of_their_files(logic, model, tmp_path, monkeypatch):
    import slicer
    from LiverE2NetLib.Batch import DICOM_LIST
    from slicer_standins.dicom import DICOMDatabase

    ct = sitk.ReadImage(str(SAMPLE_CT))[:, :, 24:32]
    liver = write_ct_series(ct, tmp_path / "dicom" / "ct", patient_id="LIVER001")
    other = write_ct_series(ct[:, :, :4], tmp_path / "dicom" / "mr", modality="MR", patient_id="OTHER002")
    monkeypatch.setattr(slicer, "dicomDatabase", DICOMDatabase(liver + other), raising=False)
    studies = logic.dicomStudies()
    assert [study.label for study in studies] == ["Test Liver | 2024-01-01 | 1 series"] * 2
    out = tmp_path / "out"
    outcome = logic.segmentBatch(out, studyUids=[study.uid for study in studies], model=model, device="cpu")
    assert outcome.counts == {"done": 1, "skipped": 1}
    with open(out / DICOM_LIST, newline="") as stream:
        assert [row["path"] for row in csv.DictReader(stream)] == [str(path) for path in liver + other]
    rows = {row["status"]: row for row in tableRows(logic.loadCohortTable(outcome.tablePath))}
    assert rows["done"]["series_uid"] == str(slicer.dicomDatabase.seriesForStudy(studies[0].uid)[0])
    assert "modality MR" in rows["skipped"]["message"]


# -- Panel ---------------------------------------------------------------------------------------------------------


def texts(widget) -> list[str]:
    """The items of a combo box or a list widget."""
    if hasattr(widget, "itemText"):
        return [widget.itemText(index) for index in range(widget.count())]
    return [widget.item(index).text() for index in range(widget.count())]


def shownText(button) -> str:
    """What a Qt button displays: '&&' is one '&', a single '&' marks a shortcut."""
    return button.text().replace("&&", "\0").replace("&", "").replace("\0", "&")


@pytest.fixture
def batchWidget(mrmlScene, qtApplication, model, tmp_path, monkeypatch):
    """The module panel as Slicer opens it, the small biased model as the bundled one plus a copy in the user's
    model folder, the real child; tables are 'shown' into a list."""
    from LiverE2NetLib.Models import Device
    from slicer_standins import moduleWidget

    import LiverE2Net

    (tmp_path / "models").mkdir()
    shutil.copy(model, tmp_path / "models" / "mine.pt")
    isolateSettings(tmp_path / "settings", tmp_path / "models")
    monkeypatch.setenv("LIVER_E2NET_MODEL", str(model))
    widget = moduleWidget(LiverE2Net.LiverE2NetWidget)
    widget.shownTables = []
    widget.batchPanel.showTable = widget.shownTables.append
    widget.logic.getParameterNode().device = Device.CPU
    yield widget
    widget.cleanup()


def test_batch_section_widgets_follow_the_parameters_and_explain_bad_input(
    batchWidget, tmp_path, monkeypatch
):
    import slicer
    from LiverE2NetLib.Batch import BatchFormat, BatchSource
    from slicer_standins.dicom import DICOMDatabase

    ui, panel = batchWidget.ui, batchWidget.batchPanel
    parameters = batchWidget.logic.getParameterNode()
    monkeypatch.delattr(slicer, "dicomDatabase", raising=False)
    batchWidget.parent.show()
    assert ui.batchCollapsibleButton.collapsed and ui.batchInputsWidget.isHidden()  # folded away until needed
    ui.batchCollapsibleButton.collapsed = False
    assert not ui.batchInputsWidget.isHidden() and not ui.batchRunButton.isHidden()
    assert texts(ui.batchSourceSelector) == ["Folder", "DICOM database studies"]
    assert texts(ui.batchFormatSelector) == [
        "NIfTI (.nii.gz)",
        "NRRD (.nrrd)",
        "Slicer segmentation (.seg.nrrd)",
        "MetaImage (.mha)",
        "DICOM SEG (DICOM input only)",
    ]
    ui.batchFormatSelector.setCurrentIndex(2)
    assert parameters.batchFormat == BatchFormat.Segmentation
    # One model choice for both sections.
    assert texts(ui.batchModelSelector) == texts(ui.modelSelector) == ["m (bundled)", "mine"]
    ui.batchModelSelector.setCurrentIndex(1)
    assert parameters.model.endswith("mine.pt") and ui.modelSelector.currentText() == "mine"
    ui.modelSelector.setCurrentIndex(0)
    assert parameters.model == "" and ui.batchModelSelector.currentText() == "m (bundled)"

    assert not ui.batchInputFolderWidget.isHidden() and ui.batchStudiesWidget.isHidden()
    assert shownText(ui.batchRunButton) == "Run batch" and ui.batchRunButton.isEnabled()
    assert not ui.batchOpenTableButton.isEnabled() and ui.batchProgressBar.isHidden()

    def runAndExpect(message: str) -> None:
        ui.batchRunButton.click()
        assert message in ui.batchStatusLabel.text(), ui.batchStatusLabel.text()
        assert ui.batchStatusLabel.styleSheet() == "color: #c62828"
        assert panel.state == "idle" and not batchWidget.logic.isBusy()  # no child started

    runAndExpect("Choose an input folder with CT volumes")
    empty = tmp_path / "empty"
    empty.mkdir()
    panel.chooseFolder = lambda title: str(empty)
    ui.batchInputFolderButton.click()
    assert parameters.batchInputFolder == ui.batchInputFolderLineEdit.text() == str(empty)
    runAndExpect(f"No CT found in {empty}")
    (empty / "ct.nii.gz").write_bytes(b"")
    runAndExpect("Choose an output folder for the batch.")
    blocker = tmp_path / "a file"
    blocker.write_text("in the way")
    panel.chooseFolder = lambda title: str(blocker / "out")
    ui.batchOutputFolderButton.click()
    assert ui.batchOutputFolderLineEdit.text() == str(blocker / "out")
    runAndExpect(f"Cannot write to the output folder {blocker / 'out'}: Not a directory")

    # DICOM database studies instead of a folder.
    ui.batchSourceSelector.setCurrentIndex(1)
    assert parameters.batchSource == BatchSource.DICOM
    assert ui.batchInputFolderWidget.isHidden() and not ui.batchStudiesWidget.isHidden()
    assert (
        ui.batchStudyList.count() == 0
        and "No studies in Slicer's DICOM database" in ui.batchStudiesNoteLabel.text()
    )
    files = write_ct_series(sitk.ReadImage(str(SAMPLE_CT))[:, :, 24:28], tmp_path / "dicom")
    monkeypatch.setattr(slicer, "dicomDatabase", DICOMDatabase(files), raising=False)
    ui.batchRefreshStudiesButton.click()
    assert texts(ui.batchStudyList) == ["Test Liver | 2024-01-01 | 1 series"]
    assert ui.batchStudiesNoteLabel.text() == "1 studies: select the ones to segment."
    runAndExpect("Select one or more studies in the DICOM database list.")
    ui.batchStudyList.item(0).setSelected(True)
    assert panel.selectedStudyUids() == [slicer.dicomDatabase.studiesForPatient("LIVER001")[0]]


def test_batch_run_shows_progress_and_opens_the_cohort_table(batchWidget, cases, sampleCt, tmp_path):
    ui, panel = batchWidget.ui, batchWidget.batchPanel
    parameters = batchWidget.logic.getParameterNode()
    ui.batchCollapsibleButton.collapsed = False
    ui.inputSelector.setCurrentNode(sampleCt)
    parameters.batchInputFolder, parameters.batchOutputFolder = str(cases), str(tmp_path / "out")
    seen = []

    def record():
        state = (shownText(ui.batchRunButton), ui.batchProgressBar.value(), ui.batchStatusLabel.text())
        if not seen or seen[-1] != state:
            seen.append(state)

    ui.batchRunButton.click()
    assert shownText(ui.batchRunButton) == "Cancel" and not ui.batchInputsWidget.isEnabled()
    assert not ui.batchProgressBar.isHidden()
    # One child at a time: the single-case button waits for the batch.
    assert not ui.applyButton.isEnabled() and ui.applyButton.toolTip().startswith("A batch is running")
    waitFor(lambda: panel.state == "idle", timeoutSeconds=300, onEachLoop=record)
    running = [state for state in seen if state[0] == "Cancel"]
    values = [state[1] for state in running]
    assert len(set(values)) >= 3 and values == sorted(values), seen
    assert any(state[2].startswith("Case 2 of 3: c2_ct, finding the liver (slice") for state in running), seen
    assert any(state[2].endswith("1 done, 0 failed.") for state in running), seen
    assert ui.batchStatusLabel.text() == (
        "Done: 2 cases done, 1 failed. Failed: c3_broken. Open the cohort table for the details."
    )
    assert shownText(ui.batchRunButton) == "Run batch" and ui.batchInputsWidget.isEnabled()
    assert ui.applyButton.isEnabled() and ui.batchProgressBar.isHidden()

    assert ui.batchOpenTableButton.isEnabled()
    ui.batchOpenTableButton.click()
    (table,) = batchWidget.shownTables
    assert [row["status"] for row in tableRows(table)] == ["done", "done", "failed"]
    assert (
        ui.batchStatusLabel.text()
        == "Loaded 'out cohort' into the scene: 3 rows, one per case or skipped input."
    )


def test_cancel_from_the_panel_kills_the_child_and_run_batch_again_resumes(batchWidget, tmp_path):
    ui, panel = batchWidget.ui, batchWidget.batchPanel
    parameters = batchWidget.logic.getParameterNode()
    ui.batchCollapsibleButton.collapsed = False
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(shared_case("case04_ct.nii.gz"), inputs / "c1.nii.gz")
    small_ct(inputs / "c2.nii.gz", shared_case("case03_ct.nii.gz"), slice(20, 32))  # long enough to cancel
    parameters.batchInputFolder, parameters.batchOutputFolder = str(inputs), str(tmp_path / "out")

    ui.batchRunButton.click()
    waitFor(lambda: panel.progress.finished >= 1, timeoutSeconds=300)
    child = batchWidget.logic._process.processId()
    ui.batchRunButton.click()
    assert ui.batchStatusLabel.text() == "Cancelling..." and not ui.batchRunButton.isEnabled()
    waitFor(lambda: panel.state == "idle", timeoutSeconds=30)
    assert ui.batchStatusLabel.text() == (
        f"Batch cancelled: 1 finished cases are kept in {tmp_path / 'out'}. Run it again to resume; finished "
        "cases are not recomputed."
    )
    assert not isAlive(child) and ui.batchStatusLabel.styleSheet() == ""
    assert not ui.batchOpenTableButton.isEnabled()  # no cohort table yet

    ui.batchRunButton.click()
    waitFor(lambda: panel.state == "idle", timeoutSeconds=300)
    assert ui.batchStatusLabel.text().startswith("Done: 2 cases done (1 from an earlier run), 0 failed.")
    assert ui.batchOpenTableButton.isEnabled()


def test_the_panels_accuracy_reaches_the_batch_command(logic, cases, model, tmp_path):
    from liver_e2net.errors import UserInputError
    from LiverE2NetLib.Batch import BatchJob

    best = BatchJob.create(logic.cliCommand, tmp_path / "out", cases, model=model, accuracy="best")
    assert best.command[best.command.index("--tta") + 1] == "multiscale"
    fast = BatchJob.create(logic.cliCommand, tmp_path / "out", cases, model=model)
    assert fast.command[fast.command.index("--tta") + 1] == "none"
    with pytest.raises(UserInputError, match="Unknown accuracy .sloppy.: use fast or best"):
        BatchJob.create(logic.cliCommand, tmp_path / "other", cases, model=model, accuracy="sloppy")
    assert not (tmp_path / "other").exists()
