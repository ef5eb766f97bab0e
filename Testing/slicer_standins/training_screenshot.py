"""Render the "Liver E2Net Training" panel during a real run, offscreen, for the README:

    QT_QPA_PLATFORM=offscreen PYTHONPATH=Testing .venv/bin/python -m slicer_standins.training_screenshot \
        --data /work/shared/data -o Resources/Screenshots/training_panel.png

The labelled pairs CASE_ct.nii.gz + CASE_label.nii.gz of --cases (default: the redistributable case02, case03, case06)
are linked from --data into a folder `liver_cases/` and added with the panel's "From folder..." button. The panel
then fine-tunes the bundled model on CPU with the real `liver_e2net train` child through its QProcess runner, exactly
as in Slicer (PySide6 stand-ins for the CTK/qMRML widgets), writing into --runs/MODEL_NAME. A few steps per epoch
keep it short: once the plot shows --epochs-shown epochs the panel is grabbed, the run is stopped with the panel's
Stop button and the run folder this script made is removed again.
"""

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from slicer_standins import install, moduleWidget

REDISTRIBUTABLE_CASES = ("case02", "case03", "case06")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder of CASE_ct.nii.gz + CASE_label.nii.gz files")
    parser.add_argument("--cases", nargs="+", default=REDISTRIBUTABLE_CASES, help="cases to add (default: %(default)s)")
    parser.add_argument("--runs", default="/tmp/LiverE2NetRuns", help="output folder shown (default: %(default)s)")
    parser.add_argument("--model-name", default="my-liver-model")
    parser.add_argument("--epochs-shown", type=int, default=3, help="finished epochs in the plot before the grab")
    parser.add_argument("--width", type=int, default=600)
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for those epochs")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    args = parser.parse_args()
    install()
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication, QHeaderView

    application = QApplication.instance() or QApplication([])
    scratch = tempfile.TemporaryDirectory(prefix="liver_e2net_screenshot_")
    QSettings.setDefaultFormat(QSettings.IniFormat)  # keep the user's own settings and models out of it
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(Path(scratch.name) / "settings"))
    QSettings().setValue("LiverE2Net/UserModelFolder", str(Path(scratch.name) / "models"))
    cases = Path(scratch.name) / "liver_cases"
    cases.mkdir()
    for case in args.cases:
        for kind in ("ct", "label"):
            source = Path(args.data).resolve() / f"{case}_{kind}.nii.gz"
            if not source.is_file():
                raise SystemExit(f"missing {source}")
            (cases / source.name).symlink_to(source)
    runs = Path(args.runs)
    runFolder = runs / args.model_name
    if runFolder.exists():
        raise SystemExit(f"{runFolder} exists already: remove it or choose another --runs / --model-name")
    runs.mkdir(parents=True, exist_ok=True)

    import slicer  # noqa: F401  (the stand-in scene the module uses)
    from LiverE2NetLib.Models import Device
    from LiverE2NetTrainingLib.Run import cliCommand

    import LiverE2NetTraining

    widget = moduleWidget(LiverE2NetTraining.LiverE2NetTrainingWidget)
    ui, panel = widget.ui, widget.panel
    widget.logic.cliCommand = cliCommand()
    panel.runtimeOptions = dict(stepsPerEpoch=2, threads=2, cacheFolder=Path(scratch.name) / "cache")
    panel.askReplaceRun = lambda text: False  # never replace anything
    panel.chooseFolder = lambda title: str(cases)
    ui.addFolderButton.click()
    panel.chooseFolder = lambda title: str(runs)
    ui.outputFolderButton.click()
    ui.modelNameLineEdit.setText(args.model_name)
    ui.fineTuneCheckBox.setChecked(True)
    if not ui.fineTuneCheckBox.isEnabled():
        raise SystemExit("no bundled model to fine-tune (Resources/Models/*.pt or $LIVER_E2NET_MODEL)")
    ui.epochsSpinBox.setValue(3)
    ui.batchSizeSpinBox.setValue(2)
    ui.deviceSelector.setCurrentIndex(ui.deviceSelector.findText(Device.CPU.name))
    print(ui.pairsSummaryLabel.text())
    ui.startButton.click()
    if not panel.isRunning():
        raise SystemExit(f"training did not start: {ui.statusLabel.text()}")
    try:
        deadline = time.monotonic() + args.timeout
        while panel.isRunning() and len(panel.run.history) < args.epochs_shown and time.monotonic() < deadline:
            application.processEvents()
            time.sleep(0.05)
        if len(panel.run.history) < args.epochs_shown:
            raise SystemExit(f"only {len(panel.run.history)} epochs: {ui.statusLabel.text()}")
        done = panel.run.history[-1]
        deadline = time.monotonic() + 60  # then the first step of the next epoch: the picture is mid-run
        while panel.isRunning() and time.monotonic() < deadline and \
                (panel.run.record.get("stage"), panel.run.record.get("epoch")) == (done["stage"], done["epoch"]):
            application.processEvents()
            time.sleep(0.02)
        application.processEvents()
        table = ui.pairsTable
        table.resizeColumnsToContents()  # every column readable, none clipped
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeToContents)
        widget.parent.resize(args.width, widget.parent.sizeHint().height())
        widget.parent.show()
        application.processEvents()
        progress = ui.progressCollapsibleButton  # the last section: crop the stretch below it
        bottom = progress.mapTo(widget.parent, progress.rect().bottomLeft()).y()
        widget.parent.resize(args.width, bottom + 12)
        application.processEvents()
        if not widget.parent.grab().save(args.output):
            raise SystemExit(f"cannot write {args.output}")
        print(f"{args.output}: {ui.epochLabel.text()} | {ui.statusLabel.text()}")
    finally:
        if panel.isRunning():
            ui.startButton.click()  # Stop, as a user would
            deadline = time.monotonic() + 120
            while panel.isRunning() and time.monotonic() < deadline:
                application.processEvents()
                time.sleep(0.05)
            if panel.isRunning():
                panel.run.process.cancel()
        print(f"run {panel.run.state}: {ui.statusLabel.text()}")
        widget.cleanup()
        shutil.rmtree(runFolder, ignore_errors=True)
        if not any(runs.iterdir()):
            runs.rmdir()
        scratch.cleanup()


if __name__ == "__main__":
    main()
