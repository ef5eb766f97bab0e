"""The training Logic's runs on real MRML: export, the child process (QProcess runner), live state, stop, resume,
registration into the segmentation module's model folder, and a clear message for each failure. The scripted
stand-in child (slicer_standins/fake_liver_e2net_train.py) makes these fast and deterministic; the real trainer
runs in the module's self-test (test_slicer_training_selftest.py) and in the real-child test at the end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from core_helpers import shared_case
from test_slicer_training_pairs import addCase

FAKE_TRAINER = Path(__file__).resolve().parent / "slicer_standins" / "fake_liver_e2net_train.py"


@pytest.fixture
def modelFolder(qtApplication, tmp_path):
    """The segmentation module's user model folder, in isolated Qt settings."""
    from PySide6.QtCore import QSettings

    QSettings.setDefaultFormat(QSettings.IniFormat)
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(tmp_path / "settings"))
    QSettings().setValue("LiverE2Net/UserModelFolder", str(tmp_path / "models"))
    return tmp_path / "models"


@pytest.fixture
def logic(mrmlScene, modelFolder, liteModel, monkeypatch):
    import LiverE2NetTraining

    monkeypatch.setenv("FAKE_TRAIN_MODEL", str(liteModel))
    monkeypatch.delenv("LIVER_E2NET_MODEL", raising=False)
    logic = LiverE2NetTraining.LiverE2NetTrainingLogic()
    logic.cliCommand = [sys.executable, str(FAKE_TRAINER)]
    return logic


@pytest.fixture
def pairs(mrmlScene, logic):
    for name in ("first", "second"):
        addCase(mrmlScene, shared_case("case04_ct.nii.gz"), shared_case("case04_label.nii.gz"), name)
    return logic.pairsInScene()


def settings(tmp_path, **changes):
    from LiverE2NetLib.Models import Device
    from LiverE2NetTrainingLib.Run import TrainingSettings

    options = dict(modelName="mine", outputFolder=tmp_path / "runs", fineTune=False, config="lite", epochs=2,
                   device=Device.CPU)
    return TrainingSettings(**{**options, **changes})


def test_a_run_reports_progress_and_registers_its_model(logic, pairs, modelFolder, tmp_path, monkeypatch):
    import LiverE2Net

    updates = []
    run = logic.startTraining(pairs, settings(tmp_path), onUpdate=lambda run: updates.append(
        (run.state, run.fraction, len(run.history))))
    assert run.isRunning() and run.state == "running"  # returns at once: the GUI thread never waits
    assert run.waitForFinished(60) and run.state == "finished", run.message
    fractions = [fraction for state, fraction, _ in updates if state == "running"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [epochs for *_, epochs in updates][-1] == 4 and len(run.history) == 4  # 2 epochs x 2 stages
    assert run.command[run.command.index("--config") + 1] == "lite" and "--init" not in run.command
    runFolder = tmp_path / "runs" / "mine"
    assert sorted(p.name for p in (runFolder / "trainingData" / "imagesTr").iterdir()) == [
        "first_0000.nrrd", "second_0000.nrrd"]
    assert run.modelPath == modelFolder / "mine.pt" and (modelFolder / "mine.log").is_file()
    assert "exit code 0" in (runFolder / "console.log").read_text()
    assert run.message.startswith("Done: model 'mine' (validation Dice liver 0.800, tumor 0.300)")
    # The segmentation module lists it at once, with the checkpoint's description.
    listed = {entry.path: entry.description for entry in LiverE2Net.LiverE2NetLogic().listModels()}
    assert listed[modelFolder / "mine.pt"] == "random-lite | lite config | no held-out real-CT accuracy recorded"
    # Fine-tuning starts from the bundled model and keeps its config.
    monkeypatch.setenv("LIVER_E2NET_MODEL", str(run.modelPath))
    again = logic.startTraining(pairs, settings(tmp_path, modelName="tuned", fineTune=True))
    assert again.command[again.command.index("--init") + 1] == str(run.modelPath) and "--config" not in again.command
    assert again.waitForFinished(60) and again.state == "finished"


def test_stop_keeps_the_best_model_and_resume_goes_on(logic, pairs, modelFolder, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN", "slow")
    runSettings = settings(tmp_path, epochs=2)
    run = logic.startTraining(pairs, runSettings, onUpdate=lambda run: run.history and run.stop())
    assert run.waitForFinished(60)
    assert run.state == "stopped" and run.result.exitCode == 130
    assert run.message == (f"Stopped. The best model so far is kept in {runSettings.runFolder / 'best.pt'}. "
                           "Press Resume to continue from the last saved step.")
    assert not (modelFolder / "mine.pt").exists()  # a stopped run is not registered as a finished model
    monkeypatch.setenv("FAKE_TRAIN", "ok")
    resumed = logic.resumeTraining(runSettings)
    assert resumed.command[resumed.command.index("--resume") + 1] == str(runSettings.runFolder)
    assert "--data" not in resumed.command and "--batch-size" not in resumed.command  # the run keeps its options
    assert len(resumed.history) == 1  # the plot starts with the epochs done before the stop
    assert resumed.waitForFinished(60) and resumed.state == "finished", resumed.message
    assert len(resumed.history) == 4 and (modelFolder / "mine.pt").is_file()


def test_stop_right_after_start_stops_only_the_child(logic, pairs, tmp_path):
    """Stop before the child has a pid: nothing may be signalled as pid 0 (that is this process's own group)."""
    run = logic.startTraining(pairs, settings(tmp_path, modelName="early"))
    run.stop()
    assert run.waitForFinished(60) and run.state == "stopped"
    assert run.message.startswith("Stopped.") and not (tmp_path / "models" / "early.pt").exists()


@pytest.mark.parametrize("mode, message, kept", [
    ("oom", "The GPU ran out of memory. Lower the batch size (now 8; try 4), choose the lite config, or train on "
            "the CPU.", "Nothing was trained yet: start again."),
    ("die", "The training process stopped unexpectedly (it crashed, or was killed", "The best model so far is kept"),
    ("fail", "Training data not found: /nowhere", "Nothing was trained yet"),
])
def test_failures_say_what_happened_and_what_is_kept(logic, pairs, modelFolder, tmp_path, monkeypatch, mode, message,
                                                     kept):
    from LiverE2NetTrainingLib.Run import canResume

    monkeypatch.setenv("FAKE_TRAIN", mode)
    run = logic.startTraining(pairs, settings(tmp_path))
    assert run.waitForFinished(60) and run.state == "failed"
    assert run.message.startswith(message) and kept in run.message, run.message
    assert canResume(run.runFolder) == (mode == "die")
    assert not (modelFolder / "mine.pt").exists()
    assert "[exit code" in (run.runFolder / "console.log").read_text()  # the child's stderr is kept for later


def test_an_existing_run_is_replaced_only_when_asked_and_kept_aside(logic, pairs, modelFolder, tmp_path):
    from liver_e2net.errors import UserInputError

    runSettings = settings(tmp_path)
    assert logic.outputConflict(runSettings) == ""
    assert logic.startTraining(pairs, runSettings).waitForFinished(60)
    assert logic.outputConflict(runSettings) == f"'{runSettings.runFolder}' already holds a training run."
    with pytest.raises(UserInputError, match="Choose another model name or output folder"):
        logic.startTraining(pairs, runSettings)
    run = logic.startTraining(pairs, runSettings, replace=True)
    assert run.waitForFinished(60) and run.state == "finished"
    keptRuns = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("mine-replaced-")]
    keptModels = sorted(p.name.split("-replaced-")[0] + p.suffix for p in modelFolder.glob("mine-replaced-*"))
    assert len(keptRuns) == 1 and (keptRuns[0] / "best.pt").is_file() and keptModels == ["mine.log", "mine.pt"]
    # A model of that name from elsewhere counts as well.
    other = settings(tmp_path, outputFolder=tmp_path / "elsewhere")
    assert logic.outputConflict(other) == "A model named 'mine' is already in the model folder."


def test_bad_settings_and_missing_runs_name_the_fix(logic, pairs, tmp_path, monkeypatch):
    from liver_e2net.errors import UserInputError

    monkeypatch.setenv("LIVER_E2NET_MODEL", str(tmp_path / "absent.pt"))  # an installation without a bundled model

    cases = [(lambda: logic.startTraining(pairs, settings(tmp_path, modelName="my/model")), "Model name 'my/model'"),
             (lambda: logic.startTraining([], settings(tmp_path)), "No usable training pairs"),
             (lambda: logic.startTraining(pairs[:1], settings(tmp_path)), "Only one usable training pair"),
             (lambda: logic.startTraining(pairs, settings(tmp_path, fineTune=True)), "No bundled model to fine-tune"),
             (lambda: logic.startTraining(pairs, settings(tmp_path, validationShare=1.0)), "Validation share 1"),
             (lambda: logic.resumeTraining(settings(tmp_path)), "There is no stopped training run in")]
    for start, message in cases:
        with pytest.raises(UserInputError, match=message):
            start()


def test_register_model_checks_the_file_and_copies_its_log(logic, modelFolder, liteModel, tmp_path):
    from liver_e2net.errors import UserInputError
    from LiverE2NetLib.Models import listModels

    broken = tmp_path / "run" / "best.pt"
    broken.parent.mkdir()
    broken.write_text("not a checkpoint")
    with pytest.raises(UserInputError, match="not a readable Liver E2Net checkpoint"):
        logic.registerModel(broken)
    assert not modelFolder.exists()
    broken.write_bytes(liteModel.read_bytes())
    (broken.parent / "train.log").write_text("stage 1 epoch 1: ...\n")
    assert logic.registerModel(broken) == modelFolder / "run.pt"  # named after its run folder by default
    assert (modelFolder / "run.log").read_text() == "stage 1 epoch 1: ...\n"
    assert [entry.path.name for entry in listModels(modelFolder) if not entry.bundled] == ["run.pt"]


def test_the_real_child_reports_its_own_error(logic, tmp_path):
    """The real `liver_e2net train` (not the stand-in): a resume of a damaged run ends with the core's message."""
    from LiverE2NetTrainingLib.Run import cliCommand

    logic.cliCommand = cliCommand()
    runSettings = settings(tmp_path)
    runSettings.runFolder.mkdir(parents=True)
    (runSettings.runFolder / "trainer_state.pt").write_text("damaged")
    run = logic.resumeTraining(runSettings)
    assert run.waitForFinished(120) and run.state == "failed"
    assert "trainer_state.pt is not readable" in run.message and run.result.exitCode == 2
