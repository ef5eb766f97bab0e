"""The segmenter options both panels pass to the child: checked once, written as `segment`/`segment-batch`
arguments once (the two commands share them through the core's `add_segmenter_arguments`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from liver_e2net.errors import UserInputError

from .Inputs import resolveModel
from .Models import Accuracy, Device


@dataclass(frozen=True)
class SegmenterOptions:
    model: Path
    device: Device = Device.Auto
    accuracy: Accuracy = Accuracy.Fast
    tumors: bool = True
    removeFalsePositives: bool = True

    @classmethod
    def parse(cls, model=None, device: Device | str = Device.Auto, accuracy: Accuracy | str = Accuracy.Fast,
              tumors: bool = True, removeFalsePositives: bool = True) -> SegmenterOptions:
        """From the panel's values (members, CLI values or labels); UserInputError naming the value otherwise."""
        try:
            device = Device(device)
        except ValueError:
            raise UserInputError(f"Unknown device {device!r}: use auto, cpu or cuda.") from None
        try:
            accuracy = Accuracy.parse(accuracy)
        except ValueError:
            raise UserInputError(f"Unknown accuracy {accuracy!r}: use fast or best.") from None
        return cls(resolveModel(model), device, accuracy, bool(tumors), bool(removeFalsePositives))

    def arguments(self) -> list[str]:
        arguments = ["--model", str(self.model), "--device", self.device.value, "--tta", self.accuracy.value,
                     "--fp-filter", "auto" if self.removeFalsePositives else "off", "--progress", "jsonl"]
        return arguments if self.tumors else [*arguments, "--no-tumors"]
