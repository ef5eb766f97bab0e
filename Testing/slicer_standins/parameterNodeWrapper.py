"""Stand-in for slicer.parameterNodeWrapper: typed parameters on a vtkMRMLScriptedModuleNode, stored as Slicer
stores them (bool as "True"/"False", enums by member name, nodes as node references), and GUI binding through
each widget's "SlicerParameterName" property. Same public surface as Slicer's for the types and widgets this
project uses; an unsupported type or widget raises, as Slicer's does.
"""

from __future__ import annotations

import enum
import typing
from dataclasses import dataclass

import slicer
import vtk

__all__ = ["parameterNodeWrapper", "WithinRange", "Choice", "Default"]

SlicerParameterNamePropertyName = "SlicerParameterName"


@dataclass(frozen=True)
class WithinRange:
    minimum: float
    maximum: float


@dataclass(frozen=True)
class Choice:
    choices: tuple


@dataclass(frozen=True)
class Default:
    value: object


def _isNodeType(datatype) -> bool:
    return isinstance(datatype, type) and issubclass(datatype, slicer.vtkMRMLNode)


class _Parameter:
    def __init__(self, name: str, datatype, annotations: tuple, default):
        self.name, self.datatype, self.annotations = name, datatype, annotations
        self.default = default

    def annotation(self, kind):
        return next((annotation for annotation in self.annotations if isinstance(annotation, kind)), None)

    def write(self, node, value) -> None:
        self.validate(value)
        if _isNodeType(self.datatype):
            node.SetParameter(self.name, "")  # marks the parameter as present, as Slicer does
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
        elif issubclass(self.datatype, enum.Enum):
            node.SetParameter(self.name, value.name)
        elif self.datatype is bool:
            node.SetParameter(self.name, "True" if value else "False")
        else:
            node.SetParameter(self.name, str(value))

    def read(self, node):
        if _isNodeType(self.datatype):
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        if issubclass(self.datatype, enum.Enum):
            return self.datatype[text]
        if self.datatype is bool:
            return text == "True"
        return self.datatype(text)

    def validate(self, value) -> None:
        if _isNodeType(self.datatype):
            if value is not None and not isinstance(value, self.datatype):
                raise ValueError(f"{self.name}: {value.GetClassName()} is not a {self.datatype.__name__}")
            return
        if not isinstance(value, self.datatype):
            raise ValueError(f"{self.name}: {value!r} is not a {self.datatype.__name__}")
        bounds = self.annotation(WithinRange)
        if bounds and not bounds.minimum <= value <= bounds.maximum:
            raise ValueError(f"{self.name}: {value} is outside [{bounds.minimum}, {bounds.maximum}]")
        choice = self.annotation(Choice)
        if choice and value not in choice.choices:
            raise ValueError(f"{self.name}: {value!r} is not one of {choice.choices}")


class _Connector:
    """Widget <-> value for one (widget class, datatype) pair Slicer's connectors also support."""

    def __init__(self, widget, parameter: _Parameter):
        self.widget, self.parameter = widget, parameter
        className = type(widget).__name__
        datatype = parameter.datatype
        if className == "QCheckBox" and datatype is bool:
            self.signal, self.read, self.write = widget.toggled, widget.isChecked, widget.setChecked
        elif className == "QComboBox" and issubclass(datatype, enum.Enum):
            members = list(datatype)
            label = getattr(datatype, "label", lambda member: member.name)  # as Slicer's: an enum may name its items
            widget.clear()
            for member in members:
                widget.addItem(label(member))
            self.signal = widget.currentIndexChanged
            self.read = lambda: members[widget.currentIndex()]
            self.write = lambda value: widget.setCurrentIndex(members.index(value))
        elif className == "ctkSliderWidget" and datatype is float:
            bounds = parameter.annotation(WithinRange)
            if bounds is None:
                raise RuntimeError(f"{parameter.name}: a ctkSliderWidget needs a WithinRange annotation")
            widget.minimum, widget.maximum = bounds.minimum, bounds.maximum
            self.signal, self.read, self.write = widget.valueChanged, lambda: widget.value, widget.setValue
        elif className == "QSpinBox" and datatype is int:
            bounds = parameter.annotation(WithinRange)
            if bounds:
                widget.setRange(int(bounds.minimum), int(bounds.maximum))
            self.signal, self.read, self.write = widget.valueChanged, widget.value, widget.setValue
        elif className == "QLineEdit" and datatype is str:
            self.signal, self.read, self.write = widget.textChanged, widget.text, widget.setText
        elif className == "qMRMLNodeComboBox" and _isNodeType(datatype):
            widget.nodeTypes = [datatype.__name__]
            self.signal, self.read, self.write = widget.currentNodeChanged, widget.currentNode, widget.setCurrentNode
        else:
            raise RuntimeError(f"Unable to create GUI connector from datatype '{datatype}' to widget type '{className}'.")


def parameterNodeWrapper(classtype=None):
    def wrap(cls):
        parameters = {}
        for name, hint in typing.get_type_hints(cls, include_extras=True).items():
            datatype, annotations = hint, ()
            if typing.get_origin(hint) is typing.Annotated:
                datatype, *rest = typing.get_args(hint)
                annotations = tuple(rest)
            default = getattr(cls, name) if hasattr(cls, name) else next(
                (a.value for a in annotations if isinstance(a, Default)),
                None if _isNodeType(datatype) else (next(iter(datatype)) if issubclass(datatype, enum.Enum) else datatype()))
            parameters[name] = _Parameter(name, datatype, annotations, default)
            setattr(cls, name, property(lambda self, n=name: self.getValue(n),
                                        lambda self, value, n=name: self.setValue(n, value)))
        cls.allParameters = parameters
        cls.__init__ = _init
        cls.getValue = lambda self, name: self.allParameters[name].read(self.parameterNode)
        cls.setValue = lambda self, name, value: self.allParameters[name].write(self.parameterNode, value)
        cls.default = lambda self, name: Default(self.allParameters[name].default)
        cls.dataType = classmethod(lambda c, name: c.allParameters[name].datatype)
        cls.connectGui = _connectGui
        cls.disconnectGui = _disconnectGui
        cls.StartModify = lambda self: self.parameterNode.StartModify()
        cls.EndModify = lambda self, wasModified: self.parameterNode.EndModify(wasModified)
        cls.AddObserver = lambda self, event, callback, priority=0.0: self.parameterNode.AddObserver(event, callback, priority)
        cls.RemoveObserver = lambda self, tag: self.parameterNode.RemoveObserver(tag)
        cls.Modified = lambda self: self.parameterNode.Modified()
        return cls

    return wrap if classtype is None else wrap(classtype)


def _init(self, parameterNode):
    self.parameterNode = parameterNode
    self._guis = {}
    self._nextGuiTag = 0
    self._updatingGui = False
    for parameter in self.allParameters.values():
        if not parameterNode.HasParameter(parameter.name):
            parameter.write(parameterNode, parameter.default)


def _connectGui(self, gui) -> int:
    """Binds every widget of `gui` (a widget, or the namespace of slicer.util.childWidgetVariables) that names a
    parameter in its SlicerParameterName property; returns the tag for disconnectGui."""
    from PySide6.QtWidgets import QWidget

    widgets = gui.findChildren(QWidget) if isinstance(gui, QWidget) else list(vars(gui).values())
    connectors = []
    for widget in widgets:
        name = widget.property(SlicerParameterNamePropertyName)
        if name:
            if name not in self.allParameters:
                raise ValueError(f"Cannot find a param with the given name: {name}")
            connectors.append(_Connector(widget, self.allParameters[name]))

    def updateGui(caller=None, event=None):
        self._updatingGui = True
        try:
            for connector in connectors:
                connector.write(self.getValue(connector.parameter.name))
        finally:
            self._updatingGui = False

    def makeCallback(connector):
        def callback(*args):
            if not self._updatingGui:
                with slicer.util.NodeModify(self.parameterNode):
                    self.setValue(connector.parameter.name, connector.read())

        return callback

    callbacks = [(connector.signal, makeCallback(connector)) for connector in connectors]
    updateGui()
    for signal, callback in callbacks:
        signal.connect(callback)
    tag = self._nextGuiTag
    self._nextGuiTag += 1
    self._guis[tag] = (callbacks, self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, updateGui))
    return tag


def _disconnectGui(self, tag) -> None:
    if tag in self._guis:
        callbacks, observerTag = self._guis.pop(tag)
        for signal, callback in callbacks:
            signal.disconnect(callback)
        self.parameterNode.RemoveObserver(observerTag)
