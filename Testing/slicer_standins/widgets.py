"""PySide6 stand-ins for the CTK and qMRML widgets the module's .ui uses.

Each declares, as a QtCore.Property, every property the .ui sets (a test fails on any other), and offers the
slots and signals the module calls. They check layout and wiring, not CTK behaviour. Signals typed with VTK
pointers in C++ (`mrmlSceneChanged(vtkMRMLScene*)`) are `Signal(object)` here.
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Property, Signal


class qMRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """A titled container; `collapsed` hides the contents as CTK's does: once the widget exists (shown), and
    expanding shows again only what collapsing hid, so a child the module hid itself stays hidden."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed = False
        self._folded = []

    def _setCollapsed(self, collapsed: bool) -> None:
        self._collapsed = collapsed
        if self.testAttribute(QtCore.Qt.WA_WState_Created):
            self._fold()

    def _fold(self) -> None:
        if self._collapsed:
            children = self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly)
            self._folded += [child for child in children if not child.isHidden()]
            for child in self._folded:
                child.setVisible(False)
        else:
            for child in self._folded:
                child.setVisible(True)
            self._folded = []

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._fold()

    text = Property(str, QtWidgets.QGroupBox.title, QtWidgets.QGroupBox.setTitle)
    collapsed = Property(bool, lambda self: self._collapsed, _setCollapsed)


class ctkSliderWidget(QtWidgets.QWidget):
    """A slider and a spin box on one double value (CTK's ctkSliderWidget)."""

    valueChanged = Signal(float)
    STEPS = 1000

    def __init__(self, parent=None):
        super().__init__(parent)
        self._slider = QtWidgets.QSlider(QtCore.Qt.Horizontal)
        self._slider.setRange(0, self.STEPS)
        self._spinBox = QtWidgets.QDoubleSpinBox()
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self._slider)
        layout.addWidget(self._spinBox)
        self._spinBox.valueChanged.connect(self._onSpinBox)
        self._slider.valueChanged.connect(self._onSlider)

    def _onSpinBox(self, value: float) -> None:
        span = self._spinBox.maximum() - self._spinBox.minimum()
        position = round(self.STEPS * (value - self._spinBox.minimum()) / span) if span else 0
        blocked = self._slider.blockSignals(True)
        self._slider.setValue(position)
        self._slider.blockSignals(blocked)
        self.valueChanged.emit(value)

    def _onSlider(self, position: int) -> None:
        span = self._spinBox.maximum() - self._spinBox.minimum()
        self._spinBox.setValue(self._spinBox.minimum() + span * position / self.STEPS)

    def setValue(self, value: float) -> None:
        self._spinBox.setValue(value)

    value = Property(float, lambda self: self._spinBox.value(), setValue)
    minimum = Property(float, lambda self: self._spinBox.minimum(), lambda self, v: self._spinBox.setMinimum(v))
    maximum = Property(float, lambda self: self._spinBox.maximum(), lambda self, v: self._spinBox.setMaximum(v))
    singleStep = Property(float, lambda self: self._spinBox.singleStep(), lambda self, v: self._spinBox.setSingleStep(v))
    decimals = Property(int, lambda self: self._spinBox.decimals(), lambda self, v: self._spinBox.setDecimals(v))


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """Lists the scene's nodes of `nodeTypes` (exact class unless showChildNodeTypes) and follows the scene."""

    currentNodeChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self._observers = []
        self._nodes = []
        self._nodeTypes = []
        self._flags = {"showChildNodeTypes": True, "noneEnabled": False, "addEnabled": True,
                       "removeEnabled": True, "renameEnabled": False}
        self.currentIndexChanged.connect(lambda index: self.currentNodeChanged.emit(self.currentNode()))

    def _flag(name):  # noqa: N805 - builds a Property in the class body
        def setFlag(self, value):
            self._flags[name] = value
            self._populate()

        return Property(bool, lambda self: self._flags[name], setFlag)

    showChildNodeTypes = _flag("showChildNodeTypes")
    noneEnabled = _flag("noneEnabled")
    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    renameEnabled = _flag("renameEnabled")
    del _flag

    def _setNodeTypes(self, nodeTypes) -> None:
        self._nodeTypes = list(nodeTypes)
        self._populate()

    nodeTypes = Property("QStringList", lambda self: self._nodeTypes, _setNodeTypes)

    def setMRMLScene(self, scene) -> None:
        for tag in self._observers:
            self._scene.RemoveObserver(tag)
        self._scene = scene
        self._observers = [scene.AddObserver(event, lambda caller, event: self._populate())
                           for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent)] if scene else []
        self._populate()

    def mrmlScene(self):
        return self._scene

    def currentNode(self):
        index = self.currentIndex() - (1 if self._flags["noneEnabled"] else 0)
        return self._nodes[index] if 0 <= index < len(self._nodes) else None

    def setCurrentNode(self, node) -> None:
        offset = 1 if self._flags["noneEnabled"] else 0
        self.setCurrentIndex(self._nodes.index(node) + offset if node in self._nodes else (0 if offset else -1))

    def _populate(self) -> None:
        current = self.currentNode()
        nodes = []
        if self._scene:
            for nodeType in self._nodeTypes:
                for index in range(self._scene.GetNumberOfNodesByClass(nodeType)):
                    node = self._scene.GetNthNodeByClass(index, nodeType)
                    if (self._flags["showChildNodeTypes"] or node.GetClassName() == nodeType) and not node.GetHideFromEditors():
                        nodes.append(node)
        blocked = self.blockSignals(True)
        self.clear()
        self._nodes = nodes
        if self._flags["noneEnabled"]:
            self.addItem("None")
        for node in nodes:
            self.addItem(node.GetName())
        self.setCurrentNode(current if current in nodes else None)
        self.blockSignals(blocked)
        if self.currentNode() is not current:
            self.currentNodeChanged.emit(self.currentNode())


CUSTOM_WIDGETS = (qMRMLWidget, ctkCollapsibleButton, ctkSliderWidget, qMRMLNodeComboBox)
