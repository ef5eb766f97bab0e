"""Stand-in for Slicer's PythonQt `qt` module: PySide6's classes under the same names, and a QUiLoader that
knows the CTK/qMRML stand-ins and remakes the .ui's VTK-typed connections with Python signals."""

from xml.etree import ElementTree

from PySide6.QtCore import *  # noqa: F403
from PySide6.QtGui import *  # noqa: F403
from PySide6.QtUiTools import QUiLoader as _PySideUiLoader
from PySide6.QtWidgets import *  # noqa: F403

from .widgets import CUSTOM_WIDGETS


class QUiLoader(_PySideUiLoader):
    def __init__(self, parent=None):
        super().__init__(parent)
        for widgetClass in CUSTOM_WIDGETS:
            self.registerCustomWidget(widgetClass)

    def load(self, device, parentWidget=None):
        """PySide6 cannot connect `mrmlSceneChanged(vtkMRMLScene*)` from the .ui, so the <connections> are taken out
        before loading and made again here, signal name to slot name, as Slicer's loader would make them."""
        root = ElementTree.fromstring(bytes(device.readAll().data()))
        connections = root.find("connections")
        if connections is not None:
            root.remove(connections)
        buffer = QBuffer()  # noqa: F405
        buffer.setData(ElementTree.tostring(root))
        buffer.open(QIODevice.ReadOnly)  # noqa: F405
        widget = super().load(buffer, parentWidget)
        for connection in connections if connections is not None else []:
            sender, receiver = (self._named(widget, connection.findtext(role)) for role in ("sender", "receiver"))
            signal = getattr(sender, connection.findtext("signal").split("(")[0])
            signal.connect(getattr(receiver, connection.findtext("slot").split("(")[0]))
        return widget

    @staticmethod
    def _named(widget, name):
        found = widget if widget.objectName() == name else widget.findChild(QObject, name)  # noqa: F405
        if found is None:
            raise RuntimeError(f".ui connection names {name!r}, which is not in the .ui")
        return found
