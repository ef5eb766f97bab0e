"""One self-describing checkpoint file: config, labels, both stages' weights, training metadata.

Loaded with `torch.load(weights_only=True)`, so a model file can never execute code. Everything but tensors is
plain JSON-compatible data. An optional false-positive filter (fp_filter.py) is stored the same way: tree
arrays as tensors, with the fingerprint of the stage-2 weights it was trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import LABELS, ModelConfig
from .errors import UserInputError
from .fp_filter import FalsePositiveFilter
from .io import atomic_output
from .models import build_network
from .protocol import default_model_path  # noqa: F401  (the bundled model; callers import it from here too)

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "labels", "stage1", "stage2", "metadata")
INPUT_CONVOLUTION = "encoder.stem.0.weight"  # every branch's first convolution: (out, in_channels, k, k)


@dataclass
class Checkpoint:
    config: ModelConfig
    stage1: dict[str, torch.Tensor]
    stage2: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=lambda: dict(LABELS))
    path: Path | None = None
    fp_filter: FalsePositiveFilter | None = None  # tumor false-positive filter trained on this model's output

    def build(self, device: torch.device | str = "cpu") -> tuple[nn.Module, nn.Module]:
        """Both networks in eval mode with their weights, float32, on `device`; weights that do not fit the
        stored config are a UserInputError naming the file."""
        networks = []
        for stage_config, state in ((self.config.stage1, self.stage1), (self.config.stage2, self.stage2)):
            network = build_network(stage_config)
            try:
                network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
            except RuntimeError as error:
                raise UserInputError(
                    f"{self.path or 'the model'}: weights do not match the stored {self.config.name} config "
                    f"({str(error)[:200]})"
                ) from error
            networks.append(network.eval().to(device))
        return networks[0], networks[1]

    def describe(self) -> str:
        """One line for model selectors: name, config, training data, accuracy on real CTs it never saw.

        Validation Dice is left out on purpose: it is measured on the validation case's synthetic tumors, and
        a clinician reads any Dice shown beside a model as its accuracy.
        """
        meta = self.metadata
        config = f"{self.config.name} config" + (", 3D stage 1" if self.config.stage1.volumetric else "")
        parts = [meta.get("name", self.path.stem if self.path else "model"), config]
        if meta.get("training_cases"):
            parts.append(f"{len(meta['training_cases'])} training cases")
        if isinstance(meta.get("epochs"), int) and meta["epochs"]:  # one training run's; not a combined model's
            parts.append(f"{meta['epochs']} epochs")
        held_out = meta.get("held_out") or []
        parts += [describe_held_out(row) for row in held_out]
        if not held_out:
            parts.append("no held-out real-CT accuracy recorded")
        if self.fp_filter is not None:
            parts.append("tumor false-positive filter")
        if self.config.preprocessing.best_is_fast:
            parts.append("Best = Fast (its multiscale fusion did not hold up on held-out CT)")
        return " | ".join(parts)


def without_held_out(metadata: dict[str, Any]) -> dict[str, Any]:
    """`metadata` less its held-out figures: for a model whose output differs from the one they measured."""
    return {key: value for key, value in metadata.items() if key != "held_out"}


def describe_held_out(row: dict[str, Any]) -> str:
    """'held-out case01: liver Dice 0.951, tumor Dice 0.612, 2/2 lesions, 1 false' from an export-model row."""
    return (
        f"held-out {row['case']}: liver Dice {row['liver_dice']:.3f}, tumor Dice {row['tumor_dice']:.3f}, "
        f"{row['chlebus_tp']}/{row['ref_lesions']} lesions, {row['chlebus_fp_per_case']:g} false"
    )


def non_finite_entries(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the float tensors of a state dict that hold inf or NaN."""
    return [name for name, value in state.items() if value.is_floating_point() and not value.isfinite().all()]


def save_checkpoint(checkpoint: Checkpoint, path: str | Path, half: bool = False) -> Path:
    """Atomic write (temp file + rename). `half` stores float weights as fp16 (for the bundled model). Weights
    that are, or would become in fp16, inf or NaN are refused before anything is written: such a model would draw
    an empty or garbled liver without any error."""
    path = Path(path)

    def pack(stage: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        broken = non_finite_entries(state)
        if broken:
            raise UserInputError(
                f"{stage} weights {', '.join(broken[:3])} hold inf or NaN (the training run diverged); "
                f"nothing written to {path}"
            )
        packed = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().contiguous()
                  for k, v in state.items()}  # fmt: skip
        overflow = non_finite_entries(packed)
        if overflow:
            largest = max(float(state[k].detach().abs().max()) for k in overflow)
            raise UserInputError(
                f"{stage} weights {', '.join(overflow[:3])} reach {largest:g}, beyond fp16's 65504; export with "
                f"--full-precision; nothing written to {path}"
            )
        return packed

    payload = {
        "format_version": FORMAT_VERSION,
        "config": checkpoint.config.to_dict(),
        "labels": dict(checkpoint.labels),
        "stage1": pack("stage 1", checkpoint.stage1),
        "stage2": pack("stage 2", checkpoint.stage2),
        "metadata": checkpoint.metadata,
    }
    if checkpoint.fp_filter is not None:
        check_fp_filter(checkpoint.fp_filter, checkpoint.stage2, f"the model written to {path}")
        payload["fp_filter"] = checkpoint.fp_filter.to_payload()
    with atomic_output(path, suffix=".tmp") as temporary:
        torch.save(payload, temporary)
    return path


def load_checkpoint(path: str | Path, check_weights: bool = True) -> Checkpoint:
    """Reads and checks a model file. `check_weights=False` leaves the weights-fit-config check to the caller's
    own `build()` (the Segmenter's: building the networks twice costs a segment child ~0.2 s)."""
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
    _check_input_channels(checkpoint, path)
    if check_weights:
        checkpoint.build()
    if payload.get("fp_filter") is not None:  # absent from files written before the filter existed
        checkpoint.fp_filter = FalsePositiveFilter.from_payload(payload["fp_filter"], str(path))
        check_fp_filter(checkpoint.fp_filter, checkpoint.stage2, str(path))
    return checkpoint


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of one stage's weights, float tensors rounded to fp16 first: the fp16 export of a model
    (export-model) keeps its fingerprint, and with it its false-positive filter."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu()
        tensor = (tensor.half() if tensor.is_floating_point() else tensor).reshape(-1).contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tensor.numel()};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_fp_filter(fp_filter: FalsePositiveFilter, stage2: dict[str, torch.Tensor], where: str) -> None:
    """A filter judges one model's output: with other stage-2 weights its decisions would be meaningless."""
    if fp_filter.model_fingerprint != weights_fingerprint(stage2):
        raise UserInputError(
            f"{where}: the false-positive filter was trained for another model (stage-2 weights fingerprint "
            f"{fp_filter.model_fingerprint[:16]}, these weights are {weights_fingerprint(stage2)[:16]}); "
            "retrain it for these weights with liver-e2net train-fp-filter"
        )


def _check_input_channels(checkpoint: Checkpoint, path: Path) -> None:
    """Each stage's first convolution must take context_slices channels: a mismatch means the weights were
    trained with another slice context than the config records, and serving them would be silently wrong."""
    context = checkpoint.config.preprocessing.context_slices
    for stage in ("stage1", "stage2"):
        for name, weight in getattr(checkpoint, stage).items():
            if name.endswith(INPUT_CONVOLUTION) and weight.ndim == 4 and weight.shape[1] != context:
                raise UserInputError(
                    f"{path}: the config records context_slices {context}, but the {stage} weights' first "
                    f"convolution ({name}) takes {weight.shape[1]} input channel(s); the file mixes models "
                    "trained with different --context-slices: re-export or re-train it"
                )


def random_checkpoint(config: ModelConfig, seed: int = 0, **metadata: Any) -> Checkpoint:
    """Untrained networks of `config`: for tests and speed benchmarks (speed does not depend on weights)."""
    torch.manual_seed(seed)
    stage1, stage2 = build_network(config.stage1), build_network(config.stage2)
    return Checkpoint(
        config, stage1.state_dict(), stage2.state_dict(), {"name": f"random-{config.name}", **metadata}
    )
