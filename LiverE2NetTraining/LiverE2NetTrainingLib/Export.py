"""Writing training pairs as the `train` command reads them: imagesTr/NAME_0000.nrrd + labelsTr/NAME.nrrd.

NRRD keeps each CT's geometry exactly (NIfTI stores it in single precision); labels are {0, 1, 2} on the CT's grid.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import slicer
from liver_e2net.errors import UserInputError

from .Pairs import TrainingPair, labelArray, readFilePair

MANIFEST = "pairs.json"


def fileSafeNames(pairs: list[TrainingPair]) -> list[str]:
    """Case names usable as file names, unique ('CT', 'CT' -> 'CT', 'CT_2')."""
    names: list[str] = []
    for pair in pairs:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", pair.name).strip("_") or "case"
        name, count = base, 1
        while name in names:
            count += 1
            name = f"{base}_{count}"
        names.append(name)
    return names


def exportTrainingPairs(pairs: list[TrainingPair], folder: str | Path) -> list[str]:
    """Writes the usable pairs into `folder` (nnU-Net layout) and a manifest; returns the case names."""
    usable = [pair for pair in pairs if pair.usable]
    if not usable:
        reasons = "; ".join(f"{pair.name}: {pair.problem}" for pair in pairs)
        raise UserInputError("No usable training pairs" + (f" ({reasons})" if reasons else "") +
                             ": add CT volumes with a liver segmentation.")
    if len(usable) < 2:
        raise UserInputError(f"Only one usable training pair ({usable[0].name}): at least 2 are needed, one to "
                             "train on and one to validate with.")
    folder = Path(folder)
    _removePreviousExport(folder)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    names = fileSafeNames(usable)
    for name, pair in zip(names, usable):
        if pair.fromFiles:
            _writeFilePair(pair, folder, name)
        else:
            _writeScenePair(pair, folder, name)
    manifest = [{"case": name, "name": pair.name, "from": pair.origin, "slices": pair.slices,
                 "tumor": pair.hasTumor,
                 "liverSegments": [pair.segmentNames.get(i, i) for i in pair.liverSegmentIds],
                 "tumorSegments": [pair.segmentNames.get(i, i) for i in pair.tumorSegmentIds]}
                for name, pair in zip(names, usable)]
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return names


def _removePreviousExport(folder: Path) -> None:
    """A re-export must not keep cases removed since; only files this module wrote (its manifest) are removed."""
    manifest = folder / MANIFEST
    if manifest.is_file():
        for entry in json.loads(manifest.read_text()):
            (folder / "imagesTr" / f"{entry['case']}_0000.nrrd").unlink(missing_ok=True)
            (folder / "labelsTr" / f"{entry['case']}.nrrd").unlink(missing_ok=True)
    elif any((folder / sub).exists() for sub in ("imagesTr", "labelsTr")):
        raise UserInputError(f"{folder} already holds imagesTr/ or labelsTr/ written by something else: "
                             "export the training pairs into an empty folder.")


def _writeScenePair(pair: TrainingPair, folder: Path, name: str) -> None:
    label = labelArray(pair)
    labelNode = slicer.vtkMRMLLabelMapVolumeNode()
    labelNode.CopyOrientation(pair.volumeNode)
    slicer.util.updateVolumeFromArray(labelNode, label)
    _writeVolume(pair.volumeNode, folder / "imagesTr" / f"{name}_0000.nrrd")
    _writeVolume(labelNode, folder / "labelsTr" / f"{name}.nrrd")


def _writeVolume(node, path: Path) -> None:
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()  # not added to the scene: writing leaves no trace there
    storage.SetFileName(str(path))
    storage.SetUseCompression(True)
    if not storage.WriteData(node):
        raise UserInputError(f"cannot write {path}: is the folder writable and is there space on the disk?")


def _writeFilePair(pair: TrainingPair, folder: Path, name: str) -> None:
    import SimpleITK as sitk
    from liver_e2net.io import write_labelmap

    ct, label = readFilePair(pair)  # read again: the files may have changed since they were added
    sitk.WriteImage(ct, str(folder / "imagesTr" / f"{name}_0000.nrrd"), useCompression=True)
    write_labelmap(label, ct, folder / "labelsTr" / f"{name}.nrrd")
