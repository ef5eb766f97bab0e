"""`liver-e2net info`: the model, its config, the device and thread count this machine would use."""

from __future__ import annotations

import argparse
import json

import torch

from .. import __version__


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show model, config, device and threads")
    parser.add_argument("--model", help="checkpoint (.pt); default: the bundled model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import default_model_path, load_checkpoint
    from ..devices import autocast_dtype, available_cores, cuda_status, dtype_name, resolve_device
    from ..postprocessing import DEFAULT_MIN_LESION_ML

    device = resolve_device(args.device)
    path = args.model or default_model_path()
    info = {
        "liver_e2net": __version__,
        "torch": torch.__version__,
        "device": str(device),
        "threads": available_cores() if device.type == "cpu" else torch.get_num_threads(),
        "precision": dtype_name(autocast_dtype(device)),
        "cuda": dict(zip(("available", "detail"), cuda_status())),
        "model": None,
    }
    if path:
        checkpoint = load_checkpoint(path)
        parameters = {
            stage: sum(v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)
            for stage, state in (("stage1", checkpoint.stage1), ("stage2", checkpoint.stage2))
        }
        info["model"] = {
            "path": str(path),
            "description": checkpoint.describe(),
            "config": checkpoint.config.to_dict(),
            "parameters": parameters,
            "metadata": checkpoint.metadata,
        }
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"liver-e2net {info['liver_e2net']}  torch {info['torch']}")
    print(
        f"device    {info['device']} ({info['threads']} threads, {info['precision']}); CUDA: {info['cuda']['detail']}"
    )
    if info["model"] is None:
        print("model     none found (pass --model or train one)")
        return 0
    model = info["model"]
    print(f"model     {model['path']}\n          {model['description']}")
    config = checkpoint.config
    for stage in ("stage1", "stage2"):
        network = getattr(config, stage)
        layout = (
            f"3D UNet, {list(network.widths)} ch per level"
            if network.volumetric
            else f"Res2Net layers {list(network.backbone.layers)} width {network.backbone.base_width}"
            f"x{network.backbone.scale}s, decoder {network.decoder_channels} ch"
        )
        print(f"{stage}    {network.arch}, {layout}, {model['parameters'][stage] / 1e6:.2f} M parameters")
    prep = config.preprocessing
    unit = "mm voxels (whole CT in 3D)" if config.stage1.volumetric else "mm/pixel"
    print(
        f"input     HU window {list(prep.hu_window)}, stage 1 at {prep.stage1_pixel_mm} {unit}, stage 2 at "
        f"{prep.stage2_size}x{prep.stage2_size} liver crops, {_context(prep.context_slices)}"
    )
    fp_filter = checkpoint.fp_filter
    size = fp_filter.min_lesion_ml if fp_filter is not None else DEFAULT_MIN_LESION_ML
    why = "the size its false-positive filter was trained at" if fp_filter is not None else "no filter: the default"
    print(f"lesions   tumors under {size:g} ml dropped ({why})")
    return 0


def _context(context_slices: int) -> str:
    if context_slices == 1:
        return "1 slice per input (2D)"
    return f"{context_slices} adjacent slices per input (z-{context_slices // 2}..z+{context_slices // 2})"
