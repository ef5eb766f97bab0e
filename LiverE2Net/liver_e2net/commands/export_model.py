"""`liver-e2net export-model`: one shippable checkpoint from trained runs (fp16 weights, merged metadata).

Stage 1 and stage 2 may come from different runs (trained side by side, one process each); both must share
the model config, which is checked, except for stage 1's own part (its network and pixel size): a 3D stage 1
serves any stage 2. Several --stage2 files give the mean of their stage-2 weights (a uniform model soup, Wortsman
et al., ICML 2022): fine-tunes of one network average into one that runs as fast as each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from ..errors import UserInputError

HELD_OUT_SCORES = ("liver_dice", "tumor_dice", "ref_lesions", "chlebus_tp", "chlebus_fp_per_case")


def register(subparsers) -> None:
    parser = subparsers.add_parser("export-model", help="combine trained stages into one (fp16) model file")
    parser.add_argument(
        "--stage1", required=True, metavar="MODEL.pt", help="checkpoint whose stage 1 is taken"
    )
    parser.add_argument(
        "--stage2",
        nargs="+",
        metavar="MODEL.pt",
        help="checkpoint whose stage 2 is taken (default: --stage1's); several: the mean of their stage-2 weights "
        "(fine-tunes of one network; retrain the false-positive filter for the result with train-fp-filter)",
    )
    parser.add_argument("-o", "--output", required=True, metavar="MODEL.pt")
    parser.add_argument("--name", help="model name shown in model selectors")
    parser.add_argument(
        "--held-out",
        action="append",
        default=[],
        metavar="EVALUATION.json",
        help="`liver-e2net evaluate` output on real CTs this model never saw (repeatable): their liver and "
        "tumor Dice, lesions found and false lesions become the figures `info` and the panel show",
    )
    parser.add_argument(
        "--liver-gate-mm",
        type=float,
        metavar="MM",
        help="with a 3D stage 1: keep stage 2's liver and tumors within MM of its coarse liver (0: off; "
        "default: as trained)",
    )
    parser.add_argument(
        "--box-margin-mm",
        type=float,
        metavar="MM",
        help="stage 2's box reaches MM beyond stage 1's liver in-plane (stage 2 still sees 256 x 256 pixels, so "
        "a wider box means coarser pixels; default: as trained)",
    )
    parser.add_argument(
        "--box-margin-z-mm",
        type=float,
        metavar="MM",
        help="let stage 2 look at least MM above and below stage 1's liver (0: only the config's slices; "
        "default: as trained)",
    )
    parser.add_argument(
        "--tta-scales",
        type=float,
        nargs="+",
        metavar="S",
        help="the model's scales for --tta multiscale (the panel's Best), each 0.5-2; 1 alone makes Best equal "
        "Fast, for a model whose fusion did not help it on held-out CT (default: as trained)",
    )
    parser.add_argument(
        "--full-precision", action="store_true", help="keep fp32 weights (default: fp16, half size)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint, without_held_out
    from ..outputs import check_numbers

    first = load_checkpoint(args.stage1)
    sources = [load_checkpoint(path) for path in args.stage2 or ()]
    second = sources[0] if sources else first
    for path, source in zip(args.stage2 or (), sources):
        if beyond_stage1(first.config) != beyond_stage1(source.config):
            raise UserInputError(
                f"{args.stage1} ({first.config.name} config) and {path} ({source.config.name} config) "
                "hold different model configs; export stages of the same config"
            )
    if len(sources) > 1:
        stage2 = average_weights([source.stage2 for source in sources])
        fp_filter = None  # each filter judged one network's output, not the soup's
    else:
        stage2, fp_filter = second.stage2, second.fp_filter
    # Two files: each stage's own history nests under its stage. One file (a settings or figures update): its record
    # already holds its stages' history, and nesting it again would double the record at every re-export.
    metadata = (
        {**first.metadata, "stage1_training": stage_record(first.metadata, 1),
         "stage2_training": stage_record(second.metadata, 2)}  # fmt: skip
        if args.stage2
        else dict(first.metadata)
    )
    for key in ("validation_dice", "synthetic_tumors", "training_cases", "validation_cases"):
        if key in second.metadata:
            metadata[key] = second.metadata[key]
    if args.stage2:  # two runs (often fine-tuning chains): their epochs stay in stage1/2_training, not summed
        metadata.pop("epochs", None)
    if len(sources) > 1:
        metadata["stage2_soup"] = [stage_record(source.metadata, 2) for source in sources]
    if args.name:
        metadata["name"] = args.name
    if args.box_margin_z_mm is not None and args.box_margin_z_mm < 0:
        raise UserInputError(f"--box-margin-z-mm {args.box_margin_z_mm}: use a distance >= 0 (0: slices only)")
    if args.box_margin_mm is not None and args.box_margin_mm < 0:
        raise UserInputError(f"--box-margin-mm {args.box_margin_mm}: use a distance >= 0")
    check_numbers(tta_scales=args.tta_scales or ())
    if args.stage2 or any(v is not None for v in (args.liver_gate_mm, args.box_margin_z_mm, args.box_margin_mm)):
        metadata = without_held_out(metadata)  # another model's figures would describe this one wrongly
    held_out = [row for path in args.held_out for row in held_out_rows(Path(path))]
    if held_out:
        metadata["held_out"] = held_out
    config = dataclasses.replace(
        second.config,
        stage1=first.config.stage1,
        preprocessing=dataclasses.replace(
            second.config.preprocessing,
            stage1_pixel_mm=first.config.preprocessing.stage1_pixel_mm,
            liver_gate_mm=liver_gate(first.config, args.liver_gate_mm, args.stage1),
            box_margin_z_mm=(
                second.config.preprocessing.box_margin_z_mm if args.box_margin_z_mm is None else args.box_margin_z_mm
            ),
            box_margin_mm=second.config.preprocessing.box_margin_mm if args.box_margin_mm is None else args.box_margin_mm,
            tta_scales=tuple(args.tta_scales) if args.tta_scales else second.config.preprocessing.tta_scales,
        ),
    )
    # The false-positive filter judges stage 2's output: it goes with the stage-2 weights it was trained for.
    combined = Checkpoint(config, first.stage1, stage2, metadata, first.labels, fp_filter=fp_filter)
    path = save_checkpoint(combined, args.output, half=not args.full_precision)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {load_checkpoint(path).describe()}")
    return 0


def beyond_stage1(config) -> dict:
    """A model config's settings but stage 1's own (network, pixel size, gate) and the inference settings export
    sets (box margins, TTA scales; taken from --stage2): what two exported stages must share."""
    settings = config.to_dict()
    prep = settings["preprocessing"]
    del settings["stage1"], prep["stage1_pixel_mm"], prep["liver_gate_mm"]
    del prep["box_margin_mm"], prep["box_margin_z_mm"], prep["tta_scales"]
    return settings


def liver_gate(stage1_config, requested_mm: float | None, source: str) -> float | None:
    """The exported gate: as requested (0: off) or as stage 1 was trained; only a 3D stage 1 has a gate."""
    if requested_mm is None:
        return stage1_config.preprocessing.liver_gate_mm
    if requested_mm < 0:
        raise UserInputError(f"--liver-gate-mm {requested_mm}: use a distance >= 0 (0 turns the gate off)")
    if not stage1_config.stage1.volumetric and requested_mm > 0:
        raise UserInputError(
            f"--liver-gate-mm: {source} has a 2D stage 1, and the gate needs a 3D one's coarse liver; "
            "leave the option out or export a 3D stage 1 (train --stage1-net 3d)"
        )
    return requested_mm or None


def average_weights(states: list[dict]) -> dict:
    """The element-wise mean of several networks' weights and BatchNorm statistics (integer counters: the
    first's). Their configs are checked equal, so their layers match; only fine-tunes of one starting network
    average into a working one, and nothing here can check that."""
    return {
        key: torch.stack([state[key].float() for state in states]).mean(0) if tensor.is_floating_point() else tensor
        for key, tensor in states[0].items()
    }


def held_out_rows(path: Path) -> list[dict]:
    """The per-case scores of an evaluation.json that describe a model to its users."""
    try:
        cases = json.loads(path.read_text())["cases"]
        return [{key: case["scores"][key] for key in ("case", *HELD_OUT_SCORES)} for case in cases]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserInputError(
            f"--held-out {path}: not an evaluation.json written by `liver-e2net evaluate` ({error})"
        ) from None


def stage_record(metadata: dict, stage: int) -> dict:
    """The record of the training run that made one stage's weights, however many exports ago. Nesting whole
    exported records instead copied every earlier export twice, so the record doubled at each export (0.8 MB of
    the 2.6 MB bundled lite by 2026-12-03)."""
    nested = metadata.get(f"stage{stage}_training")
    return metadata if nested is None else stage_record(nested, stage)
