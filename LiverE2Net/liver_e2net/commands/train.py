"""`liver-e2net train`: train both stages on CT + label pairs into an output folder (also under torchrun)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from ..config import CONFIGS, CONTEXT_SLICES, STAGE1_NETS, STAGE1_VOXEL_MM
from ..errors import UserInputError
from ..progress import add_progress_argument, make_reporter
from ..training.synthetic_tumors import TUMOR_KINDS, SyntheticTumorConfig
from . import add_data_arguments
from .segment import add_precision_argument

# Options that become TrainConfig fields (None = not given, so a resumed run can tell what was asked for).
CONFIG_OPTIONS = (
    "epochs",
    "steps_per_epoch",
    "batch_size",
    "lr",
    "optimizer",
    "val_cases",
    "val_fraction",
    "synthetic_tumors",
    "synthetic_size_weights",
    "synthetic_kind_weights",
    "synthetic_border_probability",
    "real_tumor_paste",
    "tumor_pos_weight",
    "lesion_loss_weight",
    "liver_distillation",
    "stages",
    "seed",
    "bn_calibration_samples",
    "ema_decay",
    "edge_target",
    "precision",
)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the two-stage model on CT + label pairs",
        description="Train stage 1 (coarse liver) and stage 2 (E2Net liver + tumor) on CT volumes with labels "
        "{0 background, 1 liver, 2 tumor}. Writes best.pt, last.pt, trainer_state.pt, metrics.jsonl "
        "and train.log to the output folder. Runs under torchrun --nproc_per_node=N as well.",
    )
    data = parser.add_argument_group("data")
    add_data_arguments(data)
    data.add_argument(
        "--val-cases", type=_names, metavar="NAME,...", help="comma-separated validation case names"
    )
    data.add_argument(
        "--val-fraction", type=float, metavar="F", help="share of cases held out for validation (default 0.2)"
    )
    data.add_argument(
        "--cache", metavar="DIR", help="preprocessed-case cache (default ~/.cache/liver-e2net/training)"
    )
    model = parser.add_argument_group("model and run")
    model.add_argument("--config", choices=sorted(CONFIGS), help="model config for a new run (default lite)")
    model.add_argument(
        "--context-slices",
        type=_context_slices,
        metavar="{1,3,5}",
        help="adjacent axial slices given to both networks as input channels, edge slices repeated at the "
        "volume's ends (2.5D input; default 1, the slice alone; recorded in the checkpoint)",
    )
    model.add_argument(
        "--stage1-net",
        choices=STAGE1_NETS,
        help="stage 1 as published, slice by slice (2d, default), or a 3D UNet on the whole CT at "
        f"{STAGE1_VOXEL_MM:g} mm voxels (3d), which cannot drop the liver's tip or take the heart above it",
    )
    model.add_argument(
        "--edge-target",
        choices=["distance", "plain"],
        help="target of the stage-2 edge branch: the paper's edge-distance map (default) or the plain binary "
        "edge (its ablation)",
    )
    model.add_argument("-o", "--output", metavar="DIR", help="output folder (must not hold a run already)")
    model.add_argument(
        "--init", metavar="MODEL.pt", help="fine-tune from this checkpoint (its config is used)"
    )
    model.add_argument("--resume", metavar="DIR", help="continue the run in DIR where it stopped")
    model.add_argument("--stages", type=_stages, metavar="1,2", help="stages to train: 1, 2 or 1,2 (default)")
    optimisation = parser.add_argument_group("optimisation")
    optimisation.add_argument("--epochs", type=int, help="at most this many epochs per stage (default 100)")
    optimisation.add_argument(
        "--steps-per-epoch", type=int, help="default: one pass over the training slices"
    )
    optimisation.add_argument("--batch-size", type=int, help="per process (default 8)")
    optimisation.add_argument("--optimizer", choices=["sgd", "adamw"], help="sgd (paper, default) or adamw")
    optimisation.add_argument("--lr", type=float, help="initial learning rate (default 0.01 sgd, 1e-3 adamw)")
    optimisation.add_argument(
        "--synthetic-tumors",
        type=float,
        metavar="P",
        help="probability of painting synthetic tumors into a stage-2 sample (default 0); validation cases "
        "without tumors then get synthetic ones too (fixed seed), so best.pt is chosen on tumors as well",
    )
    optimisation.add_argument(
        "--synthetic-size-weights",
        type=_weights,
        metavar="W,W,W,W",
        help="relative frequency of synthetic tumors of 3-5, 5-10, 10-25 and 25-80 mm (default 0.2,0.35,0.3,0.15)",
    )
    optimisation.add_argument(
        "--synthetic-kind-weights",
        type=_kind_weights,
        metavar="W,...",
        help=f"relative frequency of the synthetic tumor kinds {', '.join(TUMOR_KINDS)} (default "
        f"{','.join(f'{w:g}' for w in SyntheticTumorConfig.kind_weights)})",
    )
    optimisation.add_argument(
        "--synthetic-border-probability",
        type=float,
        metavar="P",
        help="share of samples whose synthetic tumors may touch the liver border (default 0: 3 mm inside it)",
    )
    optimisation.add_argument(
        "--real-tumor-paste",
        type=float,
        metavar="P",
        help="share of the synthetic tumors that are copies of the training cases' real tumors (of 1 ml or more), "
        "scaled, turned and contrast-scaled into other livers (default 0: painted tumors only)",
    )
    optimisation.add_argument(
        "--tumor-pos-weight",
        type=float,
        metavar="W",
        help="weight of tumor pixels in the BCE loss terms (default 1, the paper's loss; >1 is the weighted "
        "cross-entropy of H-DenseUNet and Chlebus et al. against the tumor/background imbalance)",
    )
    optimisation.add_argument(
        "--lesion-loss-weight",
        type=float,
        metavar="W",
        help="weight of a lesion-wise IoU loss that scores each tumor on its own, so that small ones count as "
        "much as large ones (default 0, the paper's loss)",
    )
    optimisation.add_argument(
        "--liver-distillation",
        type=float,
        metavar="W",
        help="weight of a loss that keeps stage 2's liver output at the --init model's while it learns tumors "
        "(learning without forgetting; default 0: off; needs --init)",
    )
    optimisation.add_argument(
        "--acquisition-augmentation",
        choices=["on", "off"],
        help="simulate the acquisitions the training CTs lack: arterial/delayed/unenhanced phases, 2-5 mm "
        "slices, truncated fields of view, sharp kernels (default on for a new run; a resumed run keeps its own)",
    )
    optimisation.add_argument(
        "--ema-decay",
        type=float,
        metavar="D",
        help="validate and save as best.pt an exponential moving average of the weights, updated each step "
        "with this decay (e.g. 0.99; default 0: the last step's weights)",
    )
    optimisation.add_argument(
        "--bn-calibration-samples",
        type=int,
        metavar="N",
        help="un-augmented samples that recompute BatchNorm statistics before each validation (default 64)",
    )
    optimisation.add_argument(
        "--seed", type=int, help="seed of the split, initial weights and samples (default 0)"
    )
    runtime = parser.add_argument_group("runtime")
    runtime.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    add_precision_argument(runtime, default=None)
    runtime.add_argument("--threads", type=int, help="CPU threads per process (default: cores / processes)")
    runtime.add_argument("--workers", type=int, default=0, help="data-loader worker processes (default 0)")
    add_progress_argument(runtime)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..devices import available_cores, configure_threads
    from ..training import TrainConfig, read_state, train
    from ..training.config import ACQUISITION_AUGMENTATION, DEFAULT_LR, AugmentConfig
    from ..training.sources import given_cases

    if args.resume and args.output and Path(args.output).resolve() != Path(args.resume).resolve():
        raise UserInputError("--resume DIR writes into DIR; leave out -o/--output or give the same folder")
    output = args.resume or args.output
    if not output:
        raise UserInputError("give an output folder with -o/--output DIR (or --resume DIR)")
    sources, _ = given_cases(args.data, args.case)
    overrides = {name: getattr(args, name) for name in CONFIG_OPTIONS if getattr(args, name) is not None}
    if "optimizer" in overrides and "lr" not in overrides:
        overrides["lr"] = DEFAULT_LR[overrides["optimizer"]]
    if args.resume:
        base = TrainConfig.from_dict(read_state(args.resume)["train_config"])
    else:
        base = TrainConfig(model=args.config or "lite")
    config = dataclasses.replace(base, **overrides)
    if args.acquisition_augmentation == "on" or (args.acquisition_augmentation is None and not args.resume):
        config = dataclasses.replace(config, augment=ACQUISITION_AUGMENTATION)
    elif args.acquisition_augmentation == "off":
        config = dataclasses.replace(config, augment=AugmentConfig())
    if not args.resume:
        config = dataclasses.replace(config, fixed_validation_tumors=True, validation_tumor_range=True)
    configure_threads(
        args.threads or max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    )
    progress = make_reporter(args.progress)
    try:
        result = train(
            sources or None,
            output,
            config,
            model_config=_model_config(args, config.model),
            init=args.init,
            resume=bool(args.resume),
            device=args.device,
            workers=args.workers,
            cache=args.cache,
            progress=progress,
            command_line=shlex.join(["liver-e2net", *sys.argv[1:]]),
        )
    finally:
        if hasattr(progress, "close"):
            progress.close()
    if result.exit_code:
        print(f"liver-e2net train: {result.message}", file=sys.stderr)
    return result.exit_code


def _model_config(args: argparse.Namespace, default_name: str):
    """The ModelConfig asked for on the command line, or None to take the run's / --init's / the default."""
    from ..config import get_config, with_context_slices, with_stage1_net

    if args.config is None and args.context_slices is None and args.stage1_net is None:
        return None
    config = get_config(args.config or default_name)
    if args.context_slices is not None:
        config = with_context_slices(config, args.context_slices)
    return config if args.stage1_net is None else with_stage1_net(config, args.stage1_net)


def _context_slices(text: str) -> int:
    if text.strip() not in {str(n) for n in CONTEXT_SLICES}:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use one of {', '.join(map(str, CONTEXT_SLICES))} (the slice alone, or with 1 or 2 "
            "neighbours on each side)"
        )
    return int(text)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _stages(text: str) -> tuple[int, ...]:
    try:
        stages = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use 1, 2 or 1,2") from None
    if not stages or not set(stages) <= {1, 2}:
        raise argparse.ArgumentTypeError(f"{text!r}: use 1, 2 or 1,2")
    return stages


def _numbers(text: str, count: int, each: str) -> tuple[float, ...]:
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give {count} comma-separated numbers, one per {each}") from None
    if len(weights) != count:
        raise argparse.ArgumentTypeError(f"{text!r}: give {count} weights, one per {each}")
    return weights


def _weights(text: str) -> tuple[float, ...]:
    return _numbers(text, 4, "size class (3-5, 5-10, 10-25, 25-80 mm)")


def _kind_weights(text: str) -> tuple[float, ...]:
    return _numbers(text, len(TUMOR_KINDS), f"kind ({', '.join(TUMOR_KINDS)})")
