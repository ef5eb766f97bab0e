"""Render the module panel after a real run, offscreen, for the README and the extension catalogue:

    QT_QPA_PLATFORM=offscreen PYTHONPATH=Testing .venv/bin/python -m slicer_standins.screenshot \
        --ct Resources/SampleData/crlm1004_ct.nii.gz --model MODEL.pt -o Resources/Screenshots/panel.png

The panel runs the real `liver_e2net segment` child through its QProcess runner, exactly as in Slicer (PySide6
stand-ins for the CTK/qMRML widgets); the picture shows whatever that model found.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

from slicer_standins import install, moduleWidget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ct", required=True, help="CT volume file")
    parser.add_argument("--model", required=True, help="checkpoint (.pt), shown as the bundled model")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    args = parser.parse_args()
    os.environ["LIVER_E2NET_MODEL"] = str(Path(args.model).resolve())
    install()
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    application = QApplication.instance() or QApplication([])
    QSettings.setDefaultFormat(QSettings.IniFormat)  # keep the user's own settings out of it
    settings = tempfile.TemporaryDirectory()
    QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, settings.name)
    import slicer

    import LiverE2Net

    ct = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", Path(args.ct).name.split(".")[0])
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(args.ct)
    if not storage.ReadData(ct):
        raise SystemExit(f"cannot read {args.ct}")
    widget = moduleWidget(LiverE2Net.LiverE2NetWidget)
    widget.ui.inputSelector.setCurrentNode(ct)
    widget.ui.applyButton.click()
    while widget.panel.state != "idle":
        application.processEvents()
        time.sleep(0.01)
    if widget.ui.lesionTable.rowCount():
        widget.ui.lesionTable.selectRow(0)
    widget.ui.lesionTable.resizeColumnsToContents()  # every column readable, none clipped
    widget.parent.resize(620, 800)
    widget.parent.show()
    application.processEvents()
    widget.parent.grab().save(args.output)
    print(f"{args.output}: {widget.ui.statusLabel.text()}")


if __name__ == "__main__":
    main()
