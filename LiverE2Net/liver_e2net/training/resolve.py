"""What a run trains with when it starts from scratch, from --init, or resumes: model config, training
config and cases, each checked against what the run (or checkpoint) already fixed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint
from ..config import ModelConfig, get_config, with_context_slices
from ..errors import UserInputError
from .config import TrainConfig
from .sources import CasePaths, CaseSource, check_unique

RESUMABLE_FIELDS = {"epochs"}  # the only TrainConfig field a resumed run may change


def model_config(
    state: dict[str, Any],
    init: Checkpoint | None,
    requested: ModelConfig | None,
    train_config: TrainConfig | None,
    output: Path,
) -> ModelConfig:
    """A resumed run's or --init's config (a different requested one is an error), else the requested one."""
    if state:
        stored, origin = ModelConfig.from_dict(state["model_config"]), f"the run in {output}"
    elif init is not None:
        stored, origin = init.config, f"--init {init.path}"
    else:
        return requested or get_config(train_config.model if train_config else "lite")
    if requested is not None and requested != stored:
        if not state and with_context_slices(stored, requested.preprocessing.context_slices) == requested:
            return requested  # --init's weights widened to more context slices: see inflate_context
        raise UserInputError(
            f"{origin} uses the {stored.name!r} model config ({_context(stored)}), which differs from the "
            f"requested {requested.name!r} config ({_context(requested)}); leave out --config, "
            f"--context-slices and --stage1-net (they are taken from {origin})"
        )
    return stored


def inflate_context(weights: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    """--init weights for networks fed more context slices than the checkpoint's. Only the first convolution
    differs: its old input channels go to the middle (the slice itself), the new neighbour channels start at zero,
    so training starts from exactly the --init model and learns what the neighbours add."""
    inflated = {}
    for name, value in weights.items():
        shape = target[name].shape
        if value.shape != shape:
            if value.dim() != 4 or value.shape[0] != shape[0] or value.shape[2:] != shape[2:] or value.shape[1] > shape[1]:
                raise UserInputError(
                    f"--init weights {name} {tuple(value.shape)} cannot start a network with {tuple(shape)}: "
                    "only more context slices than the checkpoint's can be added"
                )
            widened = value.new_zeros(shape)
            offset = (shape[1] - value.shape[1]) // 2
            widened[:, offset : offset + value.shape[1]] = value
            value = widened
        inflated[name] = value
    return inflated


def _context(config: ModelConfig) -> str:
    stage1 = "3d" if config.stage1.volumetric else "2d"
    return f"context_slices {config.preprocessing.context_slices}, stage 1 {stage1}"


def train_config(
    state: dict[str, Any], requested: TrainConfig | None, model_name: str, output: Path
) -> TrainConfig:
    """A resumed run keeps its TrainConfig but for a new epoch cap; a new run gets the requested one."""
    if not state:
        return dataclasses.replace(requested or TrainConfig(), model=model_name)
    stored = TrainConfig.from_dict(state["train_config"])
    if requested is None:
        return stored
    changed = [
        field.name
        for field in dataclasses.fields(TrainConfig)
        if getattr(requested, field.name) != getattr(stored, field.name)
        and field.name not in RESUMABLE_FIELDS
    ]
    if changed:
        raise UserInputError(
            f"a resumed run keeps its training options; these differ from {output}'s: "
            f"{', '.join(changed)} (only --epochs may change)"
        )
    return dataclasses.replace(stored, epochs=requested.epochs)


def sources(state: dict[str, Any], given: list[CaseSource] | None, output: Path) -> list[CaseSource]:
    """The given cases, or on resume the run's file cases; a resumed run must see the same case names."""
    if given is None and state:
        if state.get("sources") is None:
            raise UserInputError(f"the run in {output} was trained on in-memory cases: pass them again")
        given = [CasePaths(s["name"], Path(s["image"]), Path(s["label"])) for s in state["sources"]]
    if not given:
        raise UserInputError("no training data: pass --data DIR_OR_JSON or --case CT LABEL")
    check_unique(given)
    if state:
        expected = set(state["training_cases"]) | set(state["validation_cases"])
        if {s.name for s in given} != expected:
            raise UserInputError(
                f"the run in {output} was trained on cases {', '.join(sorted(expected))}; "
                "resume it with the same cases"
            )
    return given


def file_sources(given: list[CaseSource]) -> list[dict[str, str]] | None:
    """The cases as plain data for trainer_state.pt, so `--resume DIR` alone finds them (None for arrays)."""
    if not all(isinstance(s, CasePaths) for s in given):
        return None
    return [{"name": s.name, "image": str(s.image), "label": str(s.label)} for s in given]
