"""Writing training pairs as the `train` command reads them: one JSON list (protocol.TRAINING_PAIRS) of
{"name", "image", "label"} entries, with what the panel knew of each pair beside ("pair", "from", "slices", ...).

Scene pairs are written by Slicer's own writers: imagesTr/NAME_0000.nrrd + labelsTr/NAME.nrrd (NRRD keeps each
CT's geometry exactly; labels {0, 1, 2} on the CT's grid). File pairs are listed where they are: `train` reads and
checks them with the readers that checked them for the table (`check-data`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import slicer
from liver_e2net.errors import UserInputError
from liver_e2net.protocol import MIN_TRAINING_CASES, NNUNET_IMAGES, NNUNET_LABELS, TRAINING_PAIRS

from .Pairs import TrainingPair, labelArray


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
    """Writes the usable scene pairs into `folder` and the list of all usable pairs, folder/TRAINING_PAIRS, which
    `train --data` reads; returns the case names."""
    usable = [pair for pair in pairs if pair.usable]
    if not usable:
        reasons = "; ".join(f"{pair.name}: {pair.problem}" for pair in pairs)
        raise UserInputError("No usable training pairs" + (f" ({reasons})" if reasons else "") +
                             ": add CT volumes with a liver segmentation.")
    if len(usable) < MIN_TRAINING_CASES:
        raise UserInputError(f"Only one usable training pair ({usable[0].name}): at least {MIN_TRAINING_CASES} are "
                             "needed, one to train on and one to validate with.")
    folder = Path(folder)
    _removePreviousExport(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = fileSafeNames(usable)
    entries = []
    for name, pair in zip(names, usable):
        if pair.fromFiles:
            image, label = str(Path(pair.imagePath).resolve()), str(Path(pair.labelPath).resolve())
        else:
            image, label = _writeScenePair(pair, folder, name)
        entries.append({"name": name, "image": image, "label": label, "pair": pair.name, "from": pair.origin,
                        "slices": pair.slices, "tumor": pair.hasTumor,
                        "liverSegments": [pair.segmentNames.get(i, i) for i in pair.liverSegmentIds],
                        "tumorSegments": [pair.segmentNames.get(i, i) for i in pair.tumorSegmentIds]})
    partial = folder / f".{TRAINING_PAIRS}.partial"  # renamed into place whole: train never reads half a list
    try:
        partial.write_text(json.dumps(entries, indent=1))
        os.replace(partial, folder / TRAINING_PAIRS)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise UserInputError(f"cannot write {folder / TRAINING_PAIRS}: {error.strerror}. Is there space on the disk?") from None
    return names


def _removePreviousExport(folder: Path) -> None:
    """A re-export must not keep cases removed since; only files this module wrote (relative paths of its list
    under imagesTr/ or labelsTr/) are removed, never a file pair's own files."""
    listing = folder / TRAINING_PAIRS
    if listing.is_file():
        for entry in json.loads(listing.read_text()):
            for written in (Path(entry.get(key, "")) for key in ("image", "label")):
                if written.parts[:1] in ((NNUNET_IMAGES,), (NNUNET_LABELS,)) and ".." not in written.parts:
                    (folder / written).unlink(missing_ok=True)
    elif any((folder / sub).exists() for sub in (NNUNET_IMAGES, NNUNET_LABELS)):
        raise UserInputError(f"{folder} already holds imagesTr/ or labelsTr/ written by something else: "
                             "export the training pairs into an empty folder.")


def _writeScenePair(pair: TrainingPair, folder: Path, name: str) -> tuple[str, str]:
    """Writes CT and label; returns their paths relative to `folder`, as the list holds them."""
    label = labelArray(pair)
    labelNode = slicer.vtkMRMLLabelMapVolumeNode()
    labelNode.CopyOrientation(pair.volumeNode)
    slicer.util.updateVolumeFromArray(labelNode, label)
    image, labelFile = f"{NNUNET_IMAGES}/{name}_0000.nrrd", f"{NNUNET_LABELS}/{name}.nrrd"
    for node, path in ((pair.volumeNode, image), (labelNode, labelFile)):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        _writeVolume(node, folder / path)
    return image, labelFile


def _writeVolume(node, path: Path) -> None:
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()  # not added to the scene: writing leaves no trace there
    storage.SetFileName(str(path))
    storage.SetUseCompression(True)
    if not storage.WriteData(node):
        raise UserInputError(f"cannot write {path}: is the folder writable and is there space on the disk?")
