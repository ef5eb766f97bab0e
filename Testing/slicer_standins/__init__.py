"""Stand-ins for the parts of 3D Slicer that slicer-core lacks (qt, ctk, qMRML widgets, ScriptedLoadableModule,
parameterNodeWrapper, i18n), so the module file runs here on Slicer's real MRML. Test-only: never shipped.

`install()` puts them where Slicer has them; `newScene()` makes a fresh scene as Slicer's `slicer.mrmlScene`;
`moduleWidget()` opens a module's panel as Slicer's module panel does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]
MODULE_FOLDER = REPOSITORY / "LiverE2Net"
MODULE_FOLDERS = (MODULE_FOLDER, REPOSITORY / "LiverE2NetTraining")
_application = []
_segmentationLogics = []  # a scene needs a live segmentation logic for its converter rules


def install() -> None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import slicer

    from . import ScriptedLoadableModule, ctk, i18n, parameterNodeWrapper, qt, widgets

    sys.modules["qt"], sys.modules["ctk"] = qt, ctk
    for name, module in (("ScriptedLoadableModule", ScriptedLoadableModule), ("i18n", i18n),
                         ("parameterNodeWrapper", parameterNodeWrapper)):
        sys.modules[f"slicer.{name}"] = module
        setattr(slicer, name, module)
    slicer.qMRMLWidget, slicer.qMRMLNodeComboBox = widgets.qMRMLWidget, widgets.qMRMLNodeComboBox
    slicer.util.childWidgetVariables = childWidgetVariables
    for folder in MODULE_FOLDERS:  # Slicer puts every module's folder on sys.path
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    if getattr(slicer, "mrmlScene", None) is None:
        newScene()
    from PySide6.QtWidgets import QApplication

    if QApplication.instance() is None:  # Slicer always runs one; event loops and QProcess signals need it
        _application.append(QApplication([]))


def newScene():
    import slicer

    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    _segmentationLogics[:] = [logic]
    slicer.mrmlScene = scene
    return scene


def childWidgetVariables(widget):
    """Slicer's version reads PythonQt's `.name`; PySide6 calls it objectName()."""
    from PySide6.QtWidgets import QWidget

    ui = type("", (), {})()
    for child in widget.findChildren(QWidget):
        if child.objectName():
            setattr(ui, child.objectName(), child)
    return ui


def moduleWidget(widgetClass):
    """What Slicer's module panel does: a parent qMRMLWidget with a layout, then the widget's setup()."""
    import qt
    import slicer

    parent = slicer.qMRMLWidget()
    parent.setLayout(qt.QVBoxLayout())
    parent.setMRMLScene(slicer.mrmlScene)
    parent.isEntered = True
    widget = widgetClass(parent)
    widget.setup()
    return widget
