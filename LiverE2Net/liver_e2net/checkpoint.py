"""One self-describing checkpoint file: config, labels, both stages' weights, training metadata.

Loaded with `torch.load(weights_only=True)`, so a model file can never execute code. Everything but tensors is
plain JSON-compatible data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import LABELS, ModelConfig
from .errors import UserInputError
from .io import atomic_output
from .models import build_network

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "labels", "stage1", "stage2", "metadata")


@dataclass
class Checkpoint:
    config: ModelConfig
    stage1: dict[str, torch.Tensor]
    stage2: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=lambda: dict(LABELS))
    path: Path | None = None

    def build(self, device: torch.device | str = "cpu") -> tuple[nn.Module, nn.Module]:
        """Both networks in eval mode with their weights, float32, on `device`."""
        networks = []
        for stage_config, state in ((self.config.stage1, self.stage1), (self.config.stage2, self.stage2)):
            network = build_network(stage_config)
            network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
            networks.append(network.eval().to(device))
        return networks[0], networks[1]

    def describe(self) -> str:
        """One line for model selectors: name, config, training data, validation Dice."""
        meta = self.metadata
        parts = [meta.get("name", self.path.stem if self.path else "model"), f"{self.config.name} config"]
        if meta.get("training_cases"):
            parts.append(f"{len(meta['training_cases'])} training cases")
        if meta.get("epochs"):
            parts.append(f"{meta['epochs']} epochs")
        dice = meta.get("validation_dice") or {}
        if dice:
            parts.append("val Dice " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items() if v is not None))
        return " | ".join(parts)


def save_checkpoint(checkpoint: Checkpoint, path: str | Path, half: bool = False) -> Path:
    """Atomic write (temp file + rename). `half` stores float weights as fp16 (for the bundled model)."""
    path = Path(path)

    def pack(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().contiguous()
            for k, v in state.items()
        }

    payload = {
        "format_version": FORMAT_VERSION,
        "config": checkpoint.config.to_dict(),
        "labels": dict(checkpoint.labels),
        "stage1": pack(checkpoint.stage1),
        "stage2": pack(checkpoint.stage2),
        "metadata": checkpoint.metadata,
    }
    with atomic_output(path, suffix=".tmp") as temporary:
        torch.save(payload, temporary)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"model file not found: {path}; pass --model with an existing .pt checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated / foreign files
        raise UserInputError(
            f"{path} is not a readable Liver E2Net checkpoint ({type(error).__name__}: {error}); "
            "re-download or re-train the model"
        ) from error
    if not isinstance(payload, dict) or any(key not in payload for key in REQUIRED_KEYS):
        raise UserInputError(
            f"{path} is not a Liver E2Net checkpoint (missing keys); use a model written by liver-e2net train"
        )
    if payload["format_version"] != FORMAT_VERSION:
        raise UserInputError(
            f"{path} has checkpoint format version {payload['format_version']}, this liver-e2net reads "
            f"version {FORMAT_VERSION}; update liver-e2net or re-export the model"
        )
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as error:
        raise UserInputError(f"{path}: the stored model config is invalid ({error})") from error
    checkpoint = Checkpoint(
        config, payload["stage1"], payload["stage2"], payload["metadata"], payload["labels"], path
    )
    try:
        checkpoint.build()
    except RuntimeError as error:
        raise UserInputError(
            f"{path}: weights do not match the stored {config.name} config ({str(error)[:200]})"
        ) from error
    return checkpoint


def random_checkpoint(config: ModelConfig, seed: int = 0, **metadata: Any) -> Checkpoint:
    """Untrained networks of `config`: for tests and speed benchmarks (speed does not depend on weights)."""
    torch.manual_seed(seed)
    stage1, stage2 = build_network(config.stage1), build_network(config.stage2)
    return Checkpoint(
        config, stage1.state_dict(), stage2.state_dict(), {"name": f"random-{config.name}", **metadata}
    )


def default_model_path() -> Path | None:
    """The bundled model: $LIVER_E2NET_MODEL, else Resources/Models/*.pt beside the module or the repository."""
    if os.environ.get("LIVER_E2NET_MODEL"):
        return Path(os.environ["LIVER_E2NET_MODEL"])
    package = Path(__file__).resolve().parent
    for folder in (package.parent / "Resources" / "Models", package.parent.parent / "Resources" / "Models"):
        candidates = sorted(folder.glob("*.pt"))
        if candidates:
            return candidates[0]
    return None
