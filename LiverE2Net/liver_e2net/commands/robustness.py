"""`liver-e2net robustness`: detection rate and Dice per synthetic tumor size on one labelled case."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import UserInputError
from ..extras import require
from ..outputs import check_numbers, check_writable, write_all
from ..progress import add_progress_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "robustness", help="detection vs tumor size with synthetic tumors in a real liver"
    )
    parser.add_argument("ct", help="CT volume")
    parser.add_argument("label", help="its label map (1 liver, 2 tumor)")
    parser.add_argument("--model", help="checkpoint (.pt); default: the bundled model")
    parser.add_argument("--sizes", type=float, nargs="+", default=[5.0, 10.0, 20.0, 40.0], metavar="MM")
    parser.add_argument("--seeds", type=int, default=3, help="trials (random placements) per size")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads (default: the cores not busy with other processes)")
    parser.add_argument("-o", "--output", metavar="PREFIX", help="write PREFIX.json and PREFIX.png (plot)")
    add_progress_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import check_same_grid, label_array
    from ..io import read_ct, read_image
    from ..pipeline import Segmenter
    from ..progress import make_reporter
    from ..robustness import as_dicts, format_rows, robustness_table

    if args.seeds < 1 or min(args.sizes) <= 0:
        raise UserInputError("--seeds must be >= 1 and every --sizes value > 0 mm")
    check_numbers(args.threads)
    if args.output:  # before minutes of segmentation, not after
        check_writable([f"{args.output}.json", f"{args.output}.png"])
    ct = read_ct(args.ct)
    label_image = read_image(args.label)
    check_same_grid(label_image, Path(args.label), ct, Path(args.ct))
    label = label_array(label_image, Path(args.label))
    if not (label >= 1).any():
        raise UserInputError(f"{args.label} has no liver (label 1): synthetic tumors need a liver to go into")
    segmenter = Segmenter(args.model, device=args.device, threads=args.threads)
    rows = robustness_table(
        segmenter, ct, label, args.sizes, list(range(args.seeds)), make_reporter(args.progress)
    )
    print(format_rows(rows))
    if args.output:  # both files or neither: a report without its plot (or a cut-short one) is never left
        report, figure = Path(f"{args.output}.json"), Path(f"{args.output}.png")
        document = {"ct": args.ct, "model": segmenter.checkpoint.describe(), "rows": as_dicts(rows)}
        write_all({
            report: (lambda temporary: temporary.write_text(json.dumps(document, indent=2)), "json"),
            figure: (lambda temporary: plot(rows, temporary, segmenter.checkpoint.describe()), "size"),
        })  # fmt: skip
    return 0


def plot(rows, path: Path, title: str) -> None:
    require("matplotlib", "the robustness figure").use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row.diameter_mm for row in rows]
    figure, axis = plt.subplots(figsize=(5, 3.5), dpi=120)
    axis.plot(sizes, [row.detection_rate for row in rows], "o-", label="detection rate")
    axis.plot(sizes, [row.mean_dice for row in rows], "s--", label="Dice")
    axis.set_xscale("log")
    axis.set_xticks(sizes, [f"{s:g}" for s in sizes])
    axis.set_ylim(-0.02, 1.02)
    axis.set_xlabel("synthetic tumor diameter (mm)")
    axis.set_title(title[:70], fontsize=7)
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
