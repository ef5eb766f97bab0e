"""Stand-in for slicer.ScriptedLoadableModule: the same four base classes, minus the application (module
manager, developer section, screenshots), on the real MRML scene from slicer-core."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import unittest

import slicer

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
           "ScriptedLoadableModuleTest"]


def _moduleFile(instance) -> str:
    return sys.modules[type(instance).__module__].__file__


class ScriptedLoadableModule:
    def __init__(self, parent):
        super().__init__()
        self.parent = parent
        self.moduleName = type(self).__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""

    def resourcePath(self, filename: str) -> str:
        return os.path.join(os.path.dirname(self.parent.path), "Resources", filename)

    def runTest(self, msec=100, **kwargs):
        module = importlib.import_module(type(self).__module__)
        testCase = getattr(module, self.moduleName + "Test")()
        testCase.messageDelay = msec
        testCase.runTest(**kwargs)


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        import qt

        super().__init__()  # cooperative, as Slicer's: runs VTKObservationMixin.__init__ of a subclass
        self.moduleName = type(self).__name__.removesuffix("Widget")
        self.developerMode = False
        if parent is None:
            self.parent = slicer.qMRMLWidget()
            self.parent.setLayout(qt.QVBoxLayout())
            self.parent.setMRMLScene(slicer.mrmlScene)
            self.parent.isEntered = True  # Slicer's module panel property
        else:
            self.parent = parent
        self.layout = self.parent.layout()
        if parent is None:
            self.setup()

    def resourcePath(self, filename: str) -> str:
        return os.path.join(os.path.dirname(_moduleFile(self)), "Resources", filename)

    def setup(self):
        pass

    def cleanup(self):
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        super().__init__()
        self.moduleName = type(self).__name__.removesuffix("Logic")
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        parameterNode = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if parameterNode:
            if parameterNode.GetAttribute("ModuleName") != self.moduleName:
                parameterNode.SetAttribute("ModuleName", self.moduleName)
            return parameterNode
        return slicer.mrmlScene.AddNode(self.createParameterNode())

    def createParameterNode(self):
        node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, *args, **kwargs):
        self.moduleTestNames = []
        super().__init__(*args, **kwargs)
        if not self.moduleTestNames:
            self.moduleTestNames = [name for name in dir(self) if "test" in name and callable(getattr(self, name))]

    def delayDisplay(self, message, requestedDelay=None, msec=None):
        logging.info(message)

    def runTest(self):
        """As Slicer's: every test method, each between setUp and tearDown."""
        self.setUpClass()
        for testName in self.moduleTestNames:
            self.setUp()
            try:
                getattr(self, testName)()
            finally:
                self.tearDown()
        self.tearDownClass()
