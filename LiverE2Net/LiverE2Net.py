"""Liver E2Net: segment the liver and liver tumors of a CT into editable segments (3D Slicer scripted module).

Thin on purpose: the network runs in a child process (`liver_e2net segment`), the Slicer-side helpers live in
LiverE2NetLib/, and this file holds the Module, ParameterNode, Widget, Logic and Test classes.
"""

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import slicer
import vtk
from LiverE2NetLib.Batch import BatchFormat, BatchJob, BatchSource, dicomStudies, loadCohortTable
from LiverE2NetLib.BatchPanel import BatchPanel
from LiverE2NetLib.ChildProcess import BlockingProcess, QtProcess, childEnvironment, pythonExecutable
from LiverE2NetLib.Job import SegmentationJob
from LiverE2NetLib.Models import Accuracy, Device, gpuStatus, listModels, userModelFolder
from LiverE2NetLib.Panel import SegmentationPanel
from LiverE2NetLib.Segments import (
    SegmentationCancelled,
    SegmentationError,
    labelArray,
    measureSegments,
    storedReport,
    storeSegments,
    writeVolume,
)
from LiverE2NetLib.Surfaces import CoordinateSystem, exportStl, openEdgeCount
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
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


class LiverE2Net(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Liver E2Net")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["Liver E2Net contributors"]
        self.parent.helpText = _(
            "Segments the liver and liver tumors of an abdominal CT with a two-stage network (R2UNet, then E2Net "
            "with edge enhancement). The result is an ordinary segmentation: edit it in the Segment Editor, "
            "update the lesion table from the edited segments and export closed STL surfaces. The Batch section "
            "segments a whole folder or DICOM studies into a cohort table.")
        self.parent.acknowledgementText = _(
            "E2Net: Tang Y. et al., E2Net: An Edge Enhanced Network for Accurate Liver and Tumor Segmentation on "
            "CT Scans, MICCAI 2020. Res2Net: Gao S.-H. et al., TPAMI 2021.")


@parameterNodeWrapper
class LiverE2NetParameterNode:
    """The panel's state, saved with the scene. model: a checkpoint path, "" for the bundled model (the batch uses
    the same model, device and tumor option)."""

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""
    device: Device = Device.Auto
    accuracy: Accuracy = Accuracy.Fast
    segmentTumors: bool = True
    removeFalsePositives: bool = True  # the model's false-positive filter, where it has one
    smoothing: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    showProbabilities: bool = False
    outputSegmentation: vtkMRMLSegmentationNode
    stlCoordinates: CoordinateSystem = CoordinateSystem.LPS
    batchSource: BatchSource = BatchSource.Folder
    batchInputFolder: str = ""
    batchOutputFolder: str = ""
    batchFormat: BatchFormat = BatchFormat.NIfTI


class LiverE2NetWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.panel = None
        self.batchPanel = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverE2Net.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LiverE2NetLogic()
        self.panel = SegmentationPanel(self.ui, self.logic)
        self.batchPanel = BatchPanel(self.ui, self.logic)
        self.batchPanel.dependencies = self.panel.dependencies  # one offer to install for the module
        # One child at a time: each section greys out its Run button while the other one's child works.
        self.panel.onStateChanged, self.batchPanel.onStateChanged = self.batchPanel.updateGui, self.panel.updateGui
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.panel.cancel()
        self.batchPanel.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.panel.dependencies.noteMissing(self.panel.showStatus)

    def exit(self) -> None:
        """The widgets stop following the parameter node; a run in progress still delivers its result to it."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller, event) -> None:
        self.panel.cancel()  # a batch only writes files: it goes on
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            # Scalar volumes only: label maps and vector volumes are subclasses the selector hides as well.
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            self._parameterNode.inputVolume = next(
                (node for node in volumes if node.GetClassName() == "vtkMRMLScalarVolumeNode"), None)

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        if parameterNode:
            self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)
        self.panel.setParameterNode(parameterNode)
        self.batchPanel.setParameterNode(parameterNode)


class LiverE2NetLogic(ScriptedLoadableModuleLogic):
    """Usable from Python without the panel; raises UserInputError (bad input, the fix in the message),
    SegmentationError (the child's own message) or SegmentationCancelled. Never opens a dialog."""

    def __init__(self, processFactory=QtProcess) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.processFactory = processFactory
        self.cliCommand = [pythonExecutable(), "-m", "liver_e2net"]
        self._process = None
        self._cancelRequested = False

    def getParameterNode(self):
        return LiverE2NetParameterNode(super().getParameterNode())

    def segment(self, volumeNode, model=None, device="auto", accuracy="fast", tumors=True, smoothing=0.5,
                probabilities=False, outputNode=None, progressCallback=None, removeFalsePositives=True):
        """Runs the child and waits: returns the segmentation node (a new one, or `outputNode` replaced).
        accuracy: "fast", or "best" (test-time fusion, about 6x the time)."""
        self._checkIdle()
        job = SegmentationJob.create(self.cliCommand, volumeNode, model, device, accuracy, tumors, smoothing,
                                     probabilities, outputNode, removeFalsePositives)
        try:
            return job.finish(self._runBlocking(job.command, progressCallback))
        finally:
            job.cleanup()

    def startSegmentation(self, volumeNode, model=None, device="auto", accuracy="fast", tumors=True, smoothing=0.5,
                          probabilities=False, outputNode=None, onProgress=None, onFinished=None,
                          removeFalsePositives=True) -> None:
        """Returns at once; `onProgress(record)` follows the child, `onFinished(node, error)` ends the run."""
        self._checkIdle()
        job = SegmentationJob.create(self.cliCommand, volumeNode, model, device, accuracy, tumors, smoothing,
                                     probabilities, outputNode, removeFalsePositives)

        def finished(result):
            node, error = None, None
            try:
                node = job.finish(result)
            except SegmentationError as failure:
                error = failure
            except Exception as failure:  # a bug here must not leave the panel waiting for ever
                logging.exception("Liver E2Net: importing the result failed")
                error = SegmentationError(f"Importing the result failed: {failure}")
            finally:
                job.cleanup()
            if onFinished:
                onFinished(node, error)

        self._start(job.command, onProgress, finished)

    def segmentBatch(self, outputFolder, inputFolder=None, studyUids=None, outputFormat="nifti", model=None,
                     device="auto", tumors=True, progressCallback=None, accuracy="fast"):
        """`liver-e2net segment-batch` on a folder, or on studies of Slicer's DICOM database (`studyUids`), into
        `outputFolder` (one folder per case + cohort.csv). Waits; returns a BatchOutcome. A rerun resumes."""
        self._checkIdle()
        job = BatchJob.create(self.cliCommand, outputFolder, inputFolder, studyUids, self.dicomDatabase(),
                              outputFormat, model, device, tumors, accuracy)
        return job.finish(self._runBlocking(job.command, progressCallback))

    def startBatch(self, outputFolder, inputFolder=None, studyUids=None, outputFormat="nifti", model=None,
                   device="auto", tumors=True, onProgress=None, onFinished=None, accuracy="fast") -> None:
        """As segmentBatch, but returns at once; `onFinished(outcome, error)` ends the run."""
        self._checkIdle()
        job = BatchJob.create(self.cliCommand, outputFolder, inputFolder, studyUids, self.dicomDatabase(),
                              outputFormat, model, device, tumors, accuracy)

        def finished(result):
            outcome, error = None, None
            try:
                outcome = job.finish(result)
            except SegmentationError as failure:
                error = failure
            except Exception as failure:  # a bug here must not leave the panel waiting for ever
                logging.exception("Liver E2Net: reading the cohort table failed")
                error = SegmentationError(f"Reading the cohort table failed: {failure}")
            if onFinished:
                onFinished(outcome, error)

        self._start(job.command, onProgress, finished)

    def _runBlocking(self, command, progressCallback):
        self._cancelRequested = False
        return BlockingProcess().run(command, childEnvironment(), progressCallback, lambda: self._cancelRequested)

    def _start(self, command, onProgress, onFinished) -> None:
        self._cancelRequested = False
        self._process = self.processFactory()
        self._process.start(command, childEnvironment(), onProgress, onFinished)

    def isBusy(self) -> bool:
        """A child (segmentation or batch) started by the panel is running."""
        return self._process is not None and self._process.isRunning()

    def _checkIdle(self) -> None:
        # The last process object stays referenced: dropping it inside its own finished signal would delete the
        # QProcess while Qt is still emitting from it.
        if self.isBusy():
            raise SegmentationError("A segmentation or batch is already running: wait for it or cancel it.")

    def cancel(self) -> None:
        """Kills the child's process tree (segmentation or batch); the scene stays as it was."""
        self._cancelRequested = True
        if self._process:
            self._process.cancel()

    def updateResults(self, segmentationNode) -> dict:
        """Volumes, burden and lesion table of the segments as edited now."""
        return measureSegments(segmentationNode)

    def exportStl(self, segmentationNode, folder, coordinateSystem=CoordinateSystem.LPS) -> list:
        return exportStl(segmentationNode, folder, CoordinateSystem(coordinateSystem))

    def listModels(self) -> list:
        return listModels(self.userModelFolder())

    def userModelFolder(self) -> Path:
        return userModelFolder()

    def gpuStatus(self) -> tuple:
        return gpuStatus()

    def dicomDatabase(self):
        return getattr(slicer, "dicomDatabase", None)

    def dicomStudies(self) -> list:
        return dicomStudies(self.dicomDatabase())

    def loadCohortTable(self, path):
        """cohort.csv of a batch as a table node (the same node again when it was loaded before)."""
        return loadCohortTable(path)


class LiverE2NetTest(ScriptedLoadableModuleTest):
    """End to end on a real CT (six slices of the bundled TotalSegmentator example, or $LIVER_E2NET_TEST_CT) with
    the bundled model: every run below is the real `liver_e2net segment` child process."""

    def setUp(self):
        slicer.mrmlScene.Clear()
        self.folder = Path(tempfile.mkdtemp(prefix="LiverE2NetSelfTest-"))
        self.logic = LiverE2NetLogic()
        self.ct = self._loadCt()

    def tearDown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    def _loadCt(self):
        path = Path(os.environ.get("LIVER_E2NET_TEST_CT") or
                    Path(__file__).resolve().parents[1] / "Resources" / "SampleData" / "totalseg_example_ct.nii.gz")
        if not path.is_file():
            self.skipTest(f"no CT at {path}: set LIVER_E2NET_TEST_CT to a CT file")
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(path))
        self.assertTrue(storage.ReadData(node), f"cannot read {path}")
        # Six middle slices keep each run to seconds; the origin moves so the kept slices stay in place.
        voxels = slicer.util.arrayFromVolume(node)
        first = voxels.shape[0] // 2 - 3
        ijkToRas = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(ijkToRas)
        origin = ijkToRas.MultiplyPoint((0, 0, first, 1))[:3]
        slicer.util.updateVolumeFromArray(node, voxels[first:first + 6].copy())
        node.SetOrigin(origin)
        node.CreateDefaultDisplayNodes()
        return node

    def _model(self) -> str:
        from liver_e2net.protocol import default_model_path

        path = default_model_path()
        if path is None or not path.is_file():
            self.skipTest("no bundled model in Resources/Models: set LIVER_E2NET_MODEL to a model file")
        return str(path)

    def _nodeIds(self) -> list:
        return [slicer.mrmlScene.GetNthNode(index).GetID() for index in range(slicer.mrmlScene.GetNumberOfNodes())]

    def test_SegmentEditMeasureExport(self):
        from liver_e2net.protocol import SEGMENTS

        progress = []
        segmentationNode = self.logic.segment(self.ct, model=self._model(), device="cpu",
                                              progressCallback=progress.append)
        self.assertEqual([record["stage"] for record in progress][-1], "done")
        self.assertEqual(segmentationNode.GetName(), "CT segmentation")
        segmentation = segmentationNode.GetSegmentation()
        for index, info in enumerate(SEGMENTS):
            segment = segmentation.GetNthSegment(index)
            self.assertEqual(segment.GetName(), info.name)
            np.testing.assert_allclose(segment.GetColor(), info.color, atol=1e-6)
            self.assertEqual(segment.GetTerminology(), info.terminology)
        # Geometry: the segments lie on the CT's voxel grid, and Slicer counts what the child reported.
        labelmap = segmentation.GetSegment("Liver").GetRepresentation("Binary labelmap")
        segmentToWorld, ijkToRas = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        labelmap.GetImageToWorldMatrix(segmentToWorld)
        self.ct.GetIJKToRASMatrix(ijkToRas)
        for row in range(4):
            for column in range(4):
                self.assertAlmostEqual(segmentToWorld.GetElement(row, column), ijkToRas.GetElement(row, column), 4)
        label = labelArray(segmentationNode, self.ct)
        voxelMl = float(np.prod(self.ct.GetSpacing())) / 1000.0
        self.assertGreater((label >= 1).sum(), 0)
        self.assertAlmostEqual(storedReport(segmentationNode)["liver_ml"], (label >= 1).sum() * voxelMl, 1)
        display = segmentationNode.GetDisplayNode()
        self.assertTrue(display.GetVisibility2D() and display.GetVisibility3D())
        self.assertTrue(segmentation.ContainsRepresentation("Closed surface"))

        # A user edit, as the Segment Editor would leave it: a ball of radius 2 voxels as the tumor, mid-volume.
        centre = np.array([3, label.shape[1] // 2, label.shape[2] // 2])
        k, j, i = np.ogrid[: label.shape[0], : label.shape[1], : label.shape[2]]
        ball = (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= 4
        label[label == 2] = 1
        label[ball] = 2
        edited = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        edited.CopyOrientation(self.ct)
        slicer.util.updateVolumeFromArray(edited, label)
        storeSegments(edited, self.ct, segmentationNode, tumors=True)
        slicer.mrmlScene.RemoveNode(edited)
        report = self.logic.updateResults(segmentationNode)
        self.assertEqual(len(report["lesions"]), 1)
        self.assertAlmostEqual(report["lesions"][0]["volume_ml"], ball.sum() * voxelMl, 3)
        centreRas = ijkToRas.MultiplyPoint((*centre[::-1], 1))[:3]
        centreLps = report["lesions"][0]["centre_lps_mm"]
        np.testing.assert_allclose(centreLps, [-centreRas[0], -centreRas[1], centreRas[2]], atol=0.01)

        files = self.logic.exportStl(segmentationNode, self.folder / "stl")
        self.assertEqual(sorted(path.name for path in files),
                         ["CT segmentation_Liver tumor_LPS.stl", "CT segmentation_Liver_LPS.stl"])
        for path in files:
            self.assertEqual(openEdgeCount(path), 0, f"{path.name} is not a closed surface")

    def test_BatchFolderToCohortTable(self):
        # Two CTs in a folder -> `liver_e2net segment-batch` -> cohort.csv -> a table node, one row per case.
        inputs = self.folder / "batch-inputs"
        inputs.mkdir()
        for name in ("first", "second"):
            writeVolume(self.ct, inputs / f"{name}.nrrd")
        outcome = self.logic.segmentBatch(self.folder / "batch", inputFolder=inputs, model=self._model(),
                                          device="cpu")
        self.assertEqual(outcome.counts, {"done": 2})
        table = self.logic.loadCohortTable(outcome.tablePath)
        self.assertEqual([table.GetCellText(row, 0) for row in range(table.GetNumberOfRows())], ["first", "second"])
        self.assertEqual([table.GetCellText(row, 1) for row in range(2)], ["done", "done"])  # the status column

    def test_CancelLeavesSceneUnchanged(self):
        before = self._nodeIds()
        with self.assertRaises(SegmentationCancelled):
            self.logic.segment(self.ct, model=self._model(), progressCallback=lambda record: self.logic.cancel())
        self.assertEqual(self._nodeIds(), before)

    def test_BadInputsGiveClearMessages(self):
        from liver_e2net.errors import UserInputError

        scene = slicer.mrmlScene
        mri = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "MRI")
        slicer.util.updateVolumeFromArray(mri, np.linspace(0, 1200, 4 * 8 * 8).reshape(4, 8, 8).astype(np.int16))
        oneSlice = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "slice")
        slicer.util.updateVolumeFromArray(oneSlice, slicer.util.arrayFromVolume(self.ct)[:1].copy())
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "label")
        slicer.util.updateVolumeFromArray(labelmap, np.ones((4, 8, 8), np.uint8))
        rgb = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "photo")
        slicer.util.updateVolumeFromArray(rgb, np.zeros((4, 8, 8, 3), np.uint8))
        cases = [(None, None, "No CT volume selected"), (labelmap, None, "is a label map"),
                 (rgb, None, "components per voxel"), (oneSlice, None, "2D image"),
                 (mri, None, "does not look like CT"), (self.ct, str(self.folder / "missing.pt"), "Model file not found")]
        before = self._nodeIds()
        for volume, model, message in cases:
            with self.assertRaises(UserInputError) as raised:
                self.logic.segment(volume, model=model)
            self.assertIn(message, str(raised.exception))
        self.assertEqual(self._nodeIds(), before)

