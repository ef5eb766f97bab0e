"""Liver E2Net Training: train or fine-tune the Liver E2Net model on labelled scenes (3D Slicer scripted module).

Thin on purpose: the core's trainer runs in a child process (`liver_e2net train --progress jsonl`), the Slicer-side
helpers live in LiverE2NetTrainingLib/ (and the child-process runner and model folder in the segmentation module's
LiverE2NetLib/); this file holds the Module, ParameterNode, Widget, Logic and Test classes.
"""

import enum
import shutil
import tempfile
import time
import unittest
from pathlib import Path
from typing import Annotated

import numpy as np
import slicer
import vtk
from liver_e2net.errors import UserInputError
from liver_e2net.protocol import BEST_MODEL, LAST_MODEL, TRAINER_STATE, TRAINING_PAIRS
from LiverE2NetLib.Inputs import checkDependencies
from LiverE2NetLib.Models import Device, userModelFolder
from LiverE2NetTrainingLib.Export import exportTrainingPairs
from LiverE2NetTrainingLib.Pairs import pairsInFolder, pairsInScene, pairsInSceneFile, setSegments
from LiverE2NetTrainingLib.Panel import TrainingPanel
from LiverE2NetTrainingLib.Registry import registerModel
from LiverE2NetTrainingLib.Run import (
    DATA_FOLDER,
    FINISHED,
    STOPPED,
    TrainingProcess,
    TrainingRun,
    TrainingSettings,
    canResume,
    cliCommand,
    resumeCommand,
    trainCommand,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class LiverE2NetTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver E2Net Training")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["LiverE2Net"]
        self.parent.contributors = ["Liver E2Net contributors"]
        self.parent.helpText = _(
            "Trains or fine-tunes the Liver E2Net model on CT volumes with liver (and tumor) segmentations from the "
            "scene, saved scenes or folders. Training runs in a separate process with live progress; Stop keeps the "
            "best model so far and Resume continues. The new model appears in the Liver E2Net module at once.")
        self.parent.acknowledgementText = _(
            "E2Net: Tang Y. et al., E2Net: An Edge Enhanced Network for Accurate Liver and Tumor Segmentation on "
            "CT Scans, MICCAI 2020.")


class ModelConfigName(enum.Enum):
    """Member names are the panel's labels and the CLI's --config."""

    lite = "lite"
    base = "base"
    paper = "paper"


@parameterNodeWrapper
class LiverE2NetTrainingParameterNode:
    """The settings, saved with the scene. outputFolder "": the user model folder of the Liver E2Net module."""

    fineTune: bool = True
    config: ModelConfigName = ModelConfigName.lite
    epochs: Annotated[int, WithinRange(1, 1000)] = 50
    validationShare: Annotated[float, WithinRange(0.05, 0.5)] = 0.2
    batchSize: Annotated[int, WithinRange(1, 64)] = 8
    device: Device = Device.Auto
    modelName: str = "my-liver-model"
    outputFolder: str = ""


class LiverE2NetTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.panel = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverE2NetTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverE2NetTrainingLogic()
        self.panel = TrainingPanel(self.ui, self.logic)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """A running training is asked to stop (it saves its position first); Resume picks it up later."""
        if self.panel.isRunning():
            self.panel.run.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.panel.dependencies.noteMissing(self.panel.showStatus)

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.panel.pairs = [pair for pair in self.panel.pairs if pair.fromFiles or pair.scene is not None]
        self.panel.populatePairs()  # pairs of the closing scene go; pairs from files and saved scenes stay
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.outputFolder:
            self._parameterNode.outputFolder = str(userModelFolder())

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        if parameterNode:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)
        self.panel.setParameterNode(parameterNode)


class LiverE2NetTrainingLogic(ScriptedLoadableModuleLogic):
    """Usable from Python without the panel. Raises UserInputError with the fix in the message; never opens a
    dialog. `modelFolder` None: the Liver E2Net module's user model folder (tests point it elsewhere)."""

    def __init__(self, processFactory=TrainingProcess, modelFolder=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.processFactory = processFactory
        self.modelFolder = modelFolder
        self.cliCommand = cliCommand()

    def getParameterNode(self):
        return LiverE2NetTrainingParameterNode(super().getParameterNode())

    # Pairs

    def pairsInScene(self, scene=None) -> list:
        return pairsInScene(scene or slicer.mrmlScene)

    def pairsInSceneFile(self, path) -> list:
        return pairsInSceneFile(path)

    def pairsInFolder(self, folder) -> list:
        """Pairs of a folder or JSON list, found and checked by the `check-data` child."""
        return pairsInFolder(folder, self.cliCommand)

    def setSegments(self, pair, liverSegmentIds, tumorSegmentIds):
        """Overrides the name matching of one pair and checks it again."""
        return setSegments(pair, liverSegmentIds, tumorSegmentIds)

    def exportTrainingPairs(self, pairs, folder) -> list:
        """The list of usable pairs `train` reads, folder/pairs.json: scene pairs written into folder/imagesTr +
        labelsTr (CT and label 1 liver, 2 tumor, geometry kept), file pairs where they are."""
        return exportTrainingPairs(pairs, folder)

    # Training

    def registeredModelPath(self, settings: TrainingSettings) -> Path:
        return Path(self.modelFolder or userModelFolder()) / f"{settings.modelName}.pt"

    def outputConflict(self, settings: TrainingSettings) -> str:
        """What a new run of `settings` would replace ("" for nothing): a run in its folder, or a model's name."""
        runFolder = settings.runFolder
        if any((runFolder / name).exists() for name in (BEST_MODEL, TRAINER_STATE, LAST_MODEL)):
            return f"'{runFolder}' already holds a training run."
        if self.registeredModelPath(settings).exists():
            return f"A model named '{settings.modelName}' is already in the model folder."
        return ""

    def _setAside(self, settings: TrainingSettings) -> None:
        """Renames the run folder and model file a new run would overwrite: nothing trained is ever deleted."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        model = self.registeredModelPath(settings)
        for path in (settings.runFolder, model, model.with_suffix(".log")):
            if path.exists():
                path.rename(path.with_name(f"{path.stem}-replaced-{stamp}{path.suffix}"))

    def startTraining(self, pairs, settings: TrainingSettings, onUpdate=None, onFinished=None,
                      replace: bool = False) -> TrainingRun:
        """Exports the pairs into the run folder and starts the child; returns at once with the run's handle."""
        settings.check()
        checkDependencies()
        conflict = self.outputConflict(settings)
        if conflict and not replace:
            raise UserInputError(f"{conflict} Choose another model name or output folder.")
        if conflict:
            self._setAside(settings)
        dataFolder = settings.runFolder / DATA_FOLDER
        self.exportTrainingPairs(pairs, dataFolder)
        command = trainCommand(self.cliCommand, settings, dataFolder / TRAINING_PAIRS)
        return self._start(command, settings, onUpdate, onFinished)

    def resumeTraining(self, settings: TrainingSettings, onUpdate=None, onFinished=None) -> TrainingRun:
        """Continues the stopped run in settings.runFolder; only the epoch cap and device may differ."""
        settings.check()
        checkDependencies()
        if not canResume(settings.runFolder):
            raise UserInputError(f"There is no stopped training run in {settings.runFolder} to resume: start a new "
                                 "training instead.")
        return self._start(resumeCommand(self.cliCommand, settings), settings, onUpdate, onFinished)

    def _start(self, command, settings, onUpdate, onFinished) -> TrainingRun:
        return TrainingRun(command, settings, onUpdate, onFinished, self.processFactory,
                           register=self.registerModel).start()

    def registerModel(self, path, name=None) -> Path:
        """Copies a checkpoint into the model folder the Liver E2Net module lists, with its run log beside it."""
        return registerModel(path, name, self.modelFolder)


class LiverE2NetTrainingTest(ScriptedLoadableModuleTest):
    """End to end on the bundled real CT (TotalSegmentator example, automatic liver label): two pairs cut from it,
    the real `liver_e2net train` child (lite config, a few steps on the CPU), stop, resume, and the segmentation
    module's logic running the trained model."""

    def setUp(self):
        slicer.mrmlScene.Clear()
        self.folder = Path(tempfile.mkdtemp(prefix="LiverE2NetTrainingSelfTest-"))
        self.logic = LiverE2NetTrainingLogic(modelFolder=self.folder / "models")

    def tearDown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    def _settings(self, **changes):
        options = dict(modelName="selftest", outputFolder=self.folder / "runs", fineTune=False, config="lite",
                       epochs=1, validationShare=0.5, device=Device.CPU, batchSize=2, stepsPerEpoch=2, threads=1,
                       cacheFolder=self.folder / "cache")
        return TrainingSettings(**{**options, **changes})

    def test_TrainStopResumeAndSegment(self):
        from LiverE2NetLib.Models import listModels

        import LiverE2Net

        addSamplePairs()
        pairs = self.logic.pairsInScene()
        self.assertEqual([(pair.name, pair.usable) for pair in pairs], [("upper", True), ("lower", True)])
        settings = self._settings()
        stopped = self.logic.startTraining(pairs, settings, onUpdate=lambda run: run.record and run.stop())
        self.assertTrue(stopped.waitForFinished(300), "training did not stop")
        self.assertEqual(stopped.state, STOPPED, stopped.message)
        self.assertTrue(canResume(settings.runFolder))
        resumed = self.logic.resumeTraining(settings)
        self.assertTrue(resumed.waitForFinished(300), "resumed training did not finish")
        self.assertEqual(resumed.state, FINISHED, resumed.message)
        self.assertEqual(resumed.modelPath, self.folder / "models" / "selftest.pt")
        self.assertTrue((self.folder / "models" / "selftest.log").is_file())
        entry = next(entry for entry in listModels(self.folder / "models") if entry.path == resumed.modelPath)
        self.assertIn("1 training cases", entry.description)  # validation share 0.5: one pair trains
        segmentationNode = LiverE2Net.LiverE2NetLogic().segment(pairs[0].volumeNode, model=str(resumed.modelPath),
                                                                device="cpu")
        self.assertEqual(segmentationNode.GetSegmentation().GetNthSegment(0).GetName(), "Liver")

    def test_BadPairsAreExplained(self):
        upper, lower = addSamplePairs()
        tumorOnly = addSegmentation(upper, {"Liver tumor": slicer.util.arrayFromVolume(upper) > 100})
        everything = np.ones(slicer.util.arrayFromVolume(lower).shape, bool)
        ijkToRas = vtk.vtkMatrix4x4()
        lower.GetIJKToRASMatrix(ijkToRas)
        farAway = ijkToRas.MultiplyPoint((500, 0, 0, 1))[:3]  # whole voxels away: same grid, no overlap
        outside = addSegmentation(lower, {"Liver": everything}, origin=farAway)
        problems = {pair.segmentationNode.GetID(): pair.problem for pair in self.logic.pairsInScene()}
        self.assertIn("only tumor segments", problems[tumorOnly.GetID()])
        self.assertIn("outside the CT volume", problems[outside.GetID()])
        with self.assertRaises(UserInputError) as raised:
            self.logic.startTraining([], self._settings())
        self.assertIn("No usable training pairs", str(raised.exception))


def addSamplePairs():
    """Two CTs, slices 28-39 and 40-52 of the bundled sample CT, each with a liver segmentation that references it."""
    sample = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    whole, label = slicer.vtkMRMLScalarVolumeNode(), slicer.vtkMRMLLabelMapVolumeNode()
    for node, name in ((whole, "totalseg_example_ct.nii.gz"), (label, "totalseg_example_label.nii.gz")):
        storage.SetFileName(str(sample / name))
        if not storage.ReadData(node):
            raise unittest.SkipTest(f"no sample data at {sample / name}")
    ct, liver = slicer.util.arrayFromVolume(whole), slicer.util.arrayFromVolume(label)
    ijkToRas = vtk.vtkMatrix4x4()
    whole.GetIJKToRASMatrix(ijkToRas)
    volumes = []
    for name, first, last in (("upper", 28, 40), ("lower", 40, 53)):
        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        volume.CopyOrientation(whole)
        volume.SetOrigin(ijkToRas.MultiplyPoint((0, 0, first, 1))[:3])
        slicer.util.updateVolumeFromArray(volume, ct[first:last].copy())
        addSegmentation(volume, {"Liver": liver[first:last] > 0})
        volumes.append(volume)
    return volumes


def addSegmentation(volumeNode, masks: dict, origin=None):
    """A segmentation referencing `volumeNode` with one segment per named [k, j, i] mask on its grid, or on that
    grid moved to `origin` (a segmentation drawn somewhere else)."""
    scene = volumeNode.GetScene()
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volumeNode.GetName()} segmentation")
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    for name, mask in masks.items():
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
        labelmap.CopyOrientation(volumeNode)
        if origin is not None:
            labelmap.SetOrigin(origin)
        slicer.util.updateVolumeFromArray(labelmap, mask.astype(np.uint8))
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentationNode)
        scene.RemoveNode(labelmap)
    return segmentationNode
