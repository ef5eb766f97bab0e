"""`liver-e2net export-model`: one shippable checkpoint from trained runs (fp16 weights, merged metadata).

Stage 1 and stage 2 may come from different runs (trained side by side, one process each); both must share
the model config, which is checked.
"""

from __future__ import annotations

import argparse

from ..errors import UserInputError


def register(subparsers) -> None:
    parser = subparsers.add_parser("export-model", help="combine trained stages into one (fp16) model file")
    parser.add_argument(
        "--stage1", required=True, metavar="MODEL.pt", help="checkpoint whose stage 1 is taken"
    )
    parser.add_argument(
        "--stage2", metavar="MODEL.pt", help="checkpoint whose stage 2 is taken (default: --stage1's)"
    )
    parser.add_argument("-o", "--output", required=True, metavar="MODEL.pt")
    parser.add_argument("--name", help="model name shown in model selectors")
    parser.add_argument(
        "--full-precision", action="store_true", help="keep fp32 weights (default: fp16, half size)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint

    first = load_checkpoint(args.stage1)
    second = load_checkpoint(args.stage2) if args.stage2 else first
    if first.config != second.config:
        raise UserInputError(
            f"{args.stage1} ({first.config.name} config) and {args.stage2} ({second.config.name} config) "
            "hold different model configs; export stages of the same config"
        )
    metadata = {**first.metadata, "stage1_training": first.metadata, "stage2_training": second.metadata}
    for key in ("validation_dice", "synthetic_tumors", "training_cases", "validation_cases"):
        if key in second.metadata:
            metadata[key] = second.metadata[key]
    if args.stage2 and first.metadata.get("epochs") and second.metadata.get("epochs"):
        metadata["epochs"] = f"{first.metadata['epochs']} + {second.metadata['epochs']}"  # stage 1 + stage 2
    if args.name:
        metadata["name"] = args.name
    # The false-positive filter judges stage 2's output: it goes with the stage-2 weights it was trained for.
    combined = Checkpoint(
        first.config, first.stage1, second.stage2, metadata, first.labels, fp_filter=second.fp_filter
    )
    path = save_checkpoint(combined, args.output, half=not args.full_precision)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {load_checkpoint(path).describe()}")
    return 0
