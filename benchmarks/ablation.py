"""The E2Net ablation (Tang et al. 2020, Table 3; issue 10) on this project's data: one command trains every
stage-2 variant on the same split, seed and budget, then measures each on the held-out real-tumor case.

Variants, cumulative as Table 3 reads: the 1st stage alone; stage-2 baseline R2UNet; + edge branch with the plain
edge target; + edge-distance target; + DCFF (= E2Net); E2Net + TTA; + tumor false-positive filter; + 3 context
slices. Stage 1 is the bundled model's for all of them and only stage 2 is trained, so each row differs from the
one above by its stage-2 change alone.

    .venv/bin/python benchmarks/ablation.py [--data ../shared/data] [--out runs/ablation] [--resume-friendly]

Writes into OUT: settings.json, runs/<training>/ (train.log, metrics.jsonl, best.pt), models/<training>.pt,
predictions/<variant>/, results/<variant>.json, results.json and ablation.md (the table, also printed). The
defaults (5 x 40 steps of 8 samples per variant) take an estimated 40-60 minutes on a 2-core CPU: about 30 of
training (0.5 s per R2UNet step, 1.6 s per E2Net step) and 25 of measuring (TTA runs stage 2 six times). On a
CPU shared with another job use --threads 1: two two-thread jobs on two cores run many times slower than one.
On a GPU (--device cuda) raise the budget. Helpers: ablation_models.py (model surgery) and ablation_report.py
(the markdown), beside this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ablation_models import initial_checkpoint, stage1_liver, stage1_training, stage2_config
from ablation_report import markdown
from liver_e2net import evaluation
from liver_e2net.checkpoint import (
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
    weights_fingerprint,
)
from liver_e2net.config import ModelConfig
from liver_e2net.devices import available_cores, configure_threads, resolve_device
from liver_e2net.errors import UserInputError
from liver_e2net.io import read_ct, read_image, write_labelmap
from liver_e2net.pipeline import TTA_MODES, Segmenter, TestTimeAugmentation
from liver_e2net.robustness import as_dicts, robustness_table
from liver_e2net.training import CasePaths, TrainConfig, Trainer, read_state

REPO = Path(__file__).resolve().parents[1]
BUNDLED_MODEL = REPO / "Resources" / "Models" / "liver_e2net_lite.pt"
log = logging.getLogger("ablation")


@dataclass(frozen=True)
class Variant:
    key: str  # its --variants name
    label: str  # its table row
    paper: str | None  # the Table 3 row it reproduces
    stage2: str | None  # "r2unet", "e2net", or None: the first stage alone
    dcff: bool = True
    edge_target: str = "distance"
    context_slices: int = 1
    tta: bool = False
    fp_filter: bool = False

    @property
    def training(self) -> str | None:
        """The stage-2 training it needs: variants that change only inference share one."""
        if self.stage2 is None:
            return None
        name = "r2unet" if self.stage2 == "r2unet" else f"e2net-{self.edge_target}" + "-dcff" * self.dcff
        return name + (f"-context{self.context_slices}" if self.context_slices > 1 else "")


VARIANTS = (
    Variant("stage1", "1st stage alone (bundled R2UNet, 2 mm pixels)", "1st stage", None),
    Variant("baseline", "Baseline: stage-2 R2UNet", "Baseline (2nd stage)", "r2unet"),
    Variant("edge", "+ edge branch, plain edge target", "+ edge", "e2net", dcff=False, edge_target="plain"),
    Variant("dist", "+ edge-distance target", "+ dist", "e2net", dcff=False),
    Variant("edge-dcff", "+ edge + DCFF (plain edge target)", "+ edge + DCFF", "e2net", edge_target="plain"),
    Variant("e2net", "+ DCFF (= E2Net)", "+ dist + DCFF", "e2net"),
    Variant("tta", "E2Net + TTA", None, "e2net", tta=True),
    Variant("fp-filter", "+ FP filter", None, "e2net", tta=True, fp_filter=True),
    Variant("context3", "+ 3 context slices", None, "e2net", context_slices=3, tta=True, fp_filter=True),
)
BY_KEY = {variant.key: variant for variant in VARIANTS}
DEFAULT_VARIANTS = tuple(v.key for v in VARIANTS if v.key != "edge-dcff")  # the paper's extra row: on request


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add(
        "--data", type=Path, default=REPO.parent / "shared" / "data", help="folder of caseNN_ct/_label.nii.gz"
    )
    add("--train-cases", type=names, default=("case03", "case04", "case05"), metavar="A,B,...")
    add("--val-case", default="case02", help="validation case: best.pt and the learning-rate schedule")
    add("--test-case", default="case01", help="held-out test case with real tumors, never trained on")
    add(
        "--out",
        type=Path,
        default=REPO / "runs" / "ablation",
        help="output folder (new, or --resume-friendly)",
    )
    add("--variants", type=names, default=DEFAULT_VARIANTS, metavar="A,B,...",
        help=f"subset of {', '.join(BY_KEY)} (default: all but edge-dcff)")  # fmt: skip
    add("--resume-friendly", action="store_true",
        help="continue the ablation in --out: finished models and results are kept, stopped trainings resume")  # fmt: skip
    budget = parser.add_argument_group("training budget, the same for every variant").add_argument
    budget("--epochs", type=int, default=5)
    budget("--steps-per-epoch", type=int, default=40)
    budget("--batch-size", type=int, default=8)
    budget("--lr", type=float, default=1e-3, help="AdamW learning rate")
    budget("--synthetic-tumors", type=float, default=0.8, help="share of samples with synthetic tumors")
    budget("--synthetic-size-weights", type=floats, default=(0.05, 0.15, 0.4, 0.4), metavar="W,W,W,W")
    budget("--tumor-pos-weight", type=float, default=10.0)
    budget("--bn-calibration-samples", type=int, default=64)
    budget("--seed", type=int, default=0)
    measure = parser.add_argument_group("measurements").add_argument
    measure(
        "--stage1-model", type=Path, default=BUNDLED_MODEL, help="the model whose stage 1 all variants use"
    )
    measure("--tta", default="flip+multiscale", choices=[mode for mode in TTA_MODES if mode != "none"])
    measure("--robustness-sizes", type=floats, default=(5.0, 10.0, 15.0), metavar="MM,MM,...")
    measure("--robustness-seeds", type=int, default=2, help="synthetic tumor placements per size")
    measure("--fp-synthetic-copies", type=int, default=2, help="as train-fp-filter --synthetic-copies")
    measure("--fp-trees", type=int, default=256)
    runtime = parser.add_argument_group("runtime").add_argument
    runtime("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    runtime("--threads", type=int, help="CPU threads (default: all cores)")
    runtime("--cache", type=Path, help="preprocessed-case cache (default OUT/cache)")
    return parser.parse_args(argv)


def names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers") from None


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        return Ablation(args, sys.argv[1:] if argv is None else argv).run()
    except UserInputError as error:
        print(f"ablation: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ablation: interrupted; continue with --resume-friendly", file=sys.stderr)
        return 130


class Stopped(Exception):
    """A training stopped by SIGINT / SIGTERM: --resume-friendly continues it."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code


class Ablation:
    """Checks every input first (nothing is written for bad input), then runs the variants in table order."""

    def __init__(self, args: argparse.Namespace, argv: list[str]):
        self.args, self.out = args, args.out
        self.command_line = shlex.join(["benchmarks/ablation.py", *argv])
        self.variants = select_variants(args.variants)
        self.stage1 = load_checkpoint(args.stage1_model)
        self.settings = settings_of(args, self.stage1)
        self.sources = [case_paths(args.data, name) for name in (*args.train_cases, args.val_case)]
        self.test = TestCase.read(args.data, args.test_case)
        self.device = resolve_device(args.device)
        self.threads = configure_threads(args.threads)

    def run(self) -> int:
        prepare_out(self.out, self.settings, self.args.resume_friendly)
        started, results = time.monotonic(), {}
        try:
            for variant in self.variants:
                results[variant.key] = self.variant_result(variant)
        except Stopped as stop:
            print(f"ablation: {stop}; continue with --resume-friendly", file=sys.stderr)
            return stop.exit_code
        not_run = {"status": "not run"}
        rows = [
            results.get(v.key) or {"variant": v.key, "label": v.label, "paper": v.paper, **not_run}
            for v in VARIANTS
            if v.key in results or v.paper
        ]
        summary = {
            "settings": self.settings,
            "machine": self.machine(),
            "stage1_training": stage1_training(self.stage1),
            "command_line": self.command_line,
            "minutes_this_invocation": round((time.monotonic() - started) / 60, 1),
            "variants": rows,
        }
        write_json(self.out / "results.json", summary)
        report = markdown(summary)
        write_text(self.out / "ablation.md", report + "\n")
        print(report)
        return 0

    def variant_result(self, variant: Variant) -> dict[str, Any]:
        """Its results/<variant>.json, made now (training what it needs) unless an earlier run left it."""
        path = self.out / "results" / f"{variant.key}.json"
        if path.exists():
            log.info("%s: results of an earlier run kept (%s)", variant.key, path)
            return json.loads(path.read_text())
        log.info("== %s: %s", variant.key, variant.label)
        result = {"variant": variant.key, "label": variant.label, "paper": variant.paper, "status": "done"}
        if variant.stage2 is None:
            result |= self.measure_stage1()
        else:
            model, minutes = self.trained_model(variant)
            notes, filter_minutes, fp_mode = [], None, "off"
            if variant.fp_filter:
                model, filter_minutes, problem = self.filtered_model(model, variant)
                fp_mode = "on" if problem is None else "off"
                if problem:
                    notes.append(f"evaluated without the FP filter, which could not be trained: {problem}")
            result |= self.measure(model, variant, fp_mode)
            result |= {"training_minutes": minutes, "filter_minutes": filter_minutes, "notes": notes}
        write_json(path, result)
        return result

    # -- training --------------------------------------------------------------------------------------------

    def trained_model(self, variant: Variant) -> tuple[Path, float]:
        """models/<training>.pt (its run's best.pt) and the run's minutes; trains or resumes it if needed."""
        model = self.out / "models" / f"{variant.training}.pt"
        run = self.out / "runs" / variant.training
        if not model.exists():
            self.train(variant, run, model)
        return model, round(read_state(run)["seconds"] / 60, 2)

    def train(self, variant: Variant, run: Path, model: Path) -> None:
        config = variant_config(self.stage1.config, variant)
        resume = (run / "trainer_state.pt").exists()
        init = None
        if not resume:
            initial = initial_checkpoint(self.stage1, config, self.settings["seed"])
            init = save_checkpoint(initial, self.out / "init" / model.name)
        log.info("training %s (%s) in %s", variant.training, "resumed" if resume else "new", run)
        options = train_config(self.settings, config.name, variant.edge_target)
        cache = self.args.cache or self.out / "cache"
        trainer = Trainer(self.sources, run, options, init=init, resume=resume, device=str(self.device),
                          cache=cache, command_line=self.command_line)  # fmt: skip
        result = trainer.run()
        if result.exit_code:
            raise Stopped(result.exit_code, f"training {variant.training}: {result.message}")
        best = load_checkpoint(result.best)
        metadata = {**best.metadata, "name": f"ablation {variant.training}"}
        save_checkpoint(dataclasses.replace(best, metadata=metadata, path=None), model)

    def filtered_model(self, model: Path, variant: Variant) -> tuple[Path, float | None, str | None]:
        """The model with a tumor FP filter trained, as `liver-e2net train-fp-filter` trains one, on its own
        output (with this variant's TTA) on the training and validation cases: (model, minutes, None), or
        (the model without a filter, minutes, why) when too few candidates exist to train one."""
        from liver_e2net.fp_filter import FalsePositiveFilter, fit_filter
        from liver_e2net.training.fp_candidates import collect_candidates

        filtered = model.with_name(f"{model.stem}-{self.settings['tta']}-fp.pt")
        if filtered.exists():
            return filtered, load_checkpoint(filtered).fp_filter.training["minutes"], None
        s, started = self.settings, time.monotonic()
        checkpoint = load_checkpoint(model)
        segmenter = self.segmenter(checkpoint, variant, "off")
        candidates = collect_candidates(segmenter, self.sources, s["fp_synthetic_copies"], s["seed"])
        try:
            ensemble, accuracy = fit_filter(candidates.features, candidates.is_true, s["seed"], s["fp_trees"])
        except UserInputError as error:
            return model, round((time.monotonic() - started) / 60, 2), str(error)
        minutes = round((time.monotonic() - started) / 60, 2)
        training = {
            "cases": [source.name for source in self.sources],
            "tta": s["tta"],
            "synthetic_copies": s["fp_synthetic_copies"],
            "candidates": int(candidates.is_true.size),
            "true_positives": int(candidates.is_true.sum()),
            "minutes": minutes,
            **accuracy,
        }
        fp_filter = FalsePositiveFilter(ensemble, weights_fingerprint(checkpoint.stage2), training=training)
        save_checkpoint(dataclasses.replace(checkpoint, fp_filter=fp_filter, path=None), filtered)
        return filtered, minutes, None

    # -- measurements ----------------------------------------------------------------------------------------

    def segmenter(self, checkpoint: Checkpoint | Path, variant: Variant, fp_filter: str) -> Segmenter:
        tta = TestTimeAugmentation.from_mode(self.settings["tta"] if variant.tta else "none")
        return Segmenter(
            checkpoint, device=str(self.device), threads=self.threads, tta=tta, fp_filter=fp_filter
        )

    def measure(self, model: Path, variant: Variant, fp_filter: str) -> dict[str, Any]:
        """Robustness first (it also warms the model up), then the timed segmentation of the test case."""
        segmenter = self.segmenter(model, variant, fp_filter)
        robustness = self.robustness(segmenter)
        started = time.perf_counter()
        label = segmenter.segment(self.test.ct).label
        seconds = round(time.perf_counter() - started, 2)
        tta = self.settings["tta"] if variant.tta else None
        extra = {"model": str(model), "tta": tta, "fp_filter": fp_filter == "on", "robustness": robustness}
        return {**self.scores(variant, label), "seconds_per_case": seconds, **extra}

    def measure_stage1(self) -> dict[str, Any]:
        started = time.perf_counter()
        liver = stage1_liver(self.stage1, self.test.ct, self.device)
        seconds = round(time.perf_counter() - started, 2)
        scores = self.scores(BY_KEY["stage1"], liver)
        scores |= dict.fromkeys(
            ("tumor_dice", "lesion_recall", "recall_10mm", "fp_per_case")
        )  # no tumor output
        notes = [
            "liver only: stage 1 has no tumor output; trained beforehand (see the set-up), not in this run"
        ]
        extra = {"model": str(self.stage1.path), "robustness": None, "training_minutes": None, "notes": notes}
        return {**scores, "seconds_per_case": seconds, **extra}

    def robustness(self, segmenter: Segmenter) -> list[dict[str, Any]]:
        """Issue 8's detection per synthetic tumor size; a size with no room in this liver is recorded as such."""
        rows, seeds = [], list(range(self.settings["robustness_seeds"]))
        for size in self.settings["robustness_sizes"]:
            try:
                rows += as_dicts(robustness_table(segmenter, self.test.ct, self.test.label, [size], seeds))
            except UserInputError as error:
                rows.append({"diameter_mm": size, "error": str(error)})
        return rows

    def scores(self, variant: Variant, label: np.ndarray) -> dict[str, Any]:
        """LiTS / Chlebus scores of one prediction, which is kept in predictions/<variant>/."""
        prediction = self.out / "predictions" / variant.key / f"{self.test.name}_pred.nii.gz"
        write_labelmap(label, self.test.ct, prediction)
        ct = self.test.ct
        case = evaluation.CaseVolumes(
            self.test.name, label, self.test.label, ct.GetSpacing(), ct.GetOrigin(), ct.GetDirection()
        )
        row = evaluation.case_row(evaluation.evaluate_case(case))
        keys = {"liver_dice": "liver_dice", "liver_assd_mm": "liver_assd_mm", "tumor_dice": "tumor_dice",
                "lesion_recall": "chlebus_recall", "recall_10mm": "chlebus_recall_10mm",
                "fp_per_case": "chlebus_fp_per_case", "ref_lesions": "ref_lesions",
                "pred_lesions": "pred_lesions"}  # fmt: skip
        return {"prediction": str(prediction), **finite({ours: row[theirs] for ours, theirs in keys.items()})}

    def machine(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        else:
            name = f"{cpu_name()}, {available_cores()} cores"
        return {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
            "device": str(self.device),
            "threads": self.threads,
            "description": f"{name}, torch {torch.__version__}, {platform.system()}",
        }


@dataclass(frozen=True)
class TestCase:
    __test__ = False  # not a pytest class
    name: str
    ct: Any  # sitk.Image
    label: np.ndarray  # [z, y, x] {0, 1, 2} on the CT grid

    @classmethod
    def read(cls, data: Path, name: str) -> TestCase:
        paths = case_paths(data, name)
        ct = read_ct(paths.image)
        label_image = read_image(paths.label)
        evaluation.check_same_grid(label_image, paths.label, ct, paths.image)
        label = evaluation.label_array(label_image, paths.label)
        if not (label >= 1).any():
            raise UserInputError(f"{paths.label} has no liver (label 1): it cannot be the test case")
        return cls(name, ct, label)


# -- inputs and outputs --------------------------------------------------------------------------------------


def variant_config(base: ModelConfig, variant: Variant) -> ModelConfig:
    """The bundled config with this variant's stage 2 (and slice context for both stages)."""
    return stage2_config(base, variant.training, variant.stage2, variant.dcff, variant.context_slices)


def select_variants(keys: tuple[str, ...]) -> list[Variant]:
    unknown = [key for key in keys if key not in BY_KEY]
    if unknown or not keys:
        raise UserInputError(f"--variants {','.join(unknown) or '(none)'}: choose from {', '.join(BY_KEY)}")
    return [variant for variant in VARIANTS if variant.key in keys]


def settings_of(args: argparse.Namespace, stage1: Checkpoint) -> dict[str, Any]:
    """Everything that shapes the results (not the runtime): a resumed ablation must keep them."""
    if args.test_case in (*args.train_cases, args.val_case):
        raise UserInputError(
            f"--test-case {args.test_case} is also a training or validation case: hold it out"
        )
    if args.val_case in args.train_cases or not args.train_cases:
        raise UserInputError(
            f"--val-case {args.val_case} must differ from --train-cases, which must not be empty"
        )
    checks = [
        (args.robustness_seeds >= 1, "--robustness-seeds", ">= 1"),
        (args.fp_trees >= 1, "--fp-trees", ">= 1"),
        (args.fp_synthetic_copies >= 0, "--fp-synthetic-copies", ">= 0"),
        (bool(args.robustness_sizes) and min(args.robustness_sizes) > 0, "--robustness-sizes", "> 0 mm"),
    ]
    for ok, option, rule in checks:
        if not ok:
            raise UserInputError(f"{option} {getattr(args, option[2:].replace('-', '_'))}: must be {rule}")
    settings = {"data": str(args.data.resolve()), "train_cases": list(args.train_cases),
                "val_case": args.val_case, "test_case": args.test_case,
                "stage1_model": str(args.stage1_model.resolve()),
                "stage1_fingerprint": weights_fingerprint(stage1.stage1)}  # fmt: skip
    for name in ("epochs", "steps_per_epoch", "batch_size", "lr", "synthetic_tumors", "tumor_pos_weight",
                 "bn_calibration_samples", "seed", "tta", "robustness_seeds", "fp_synthetic_copies", "fp_trees"):  # fmt: skip
        settings[name] = getattr(args, name)
    settings["synthetic_size_weights"] = list(args.synthetic_size_weights)
    settings["robustness_sizes"] = list(args.robustness_sizes)
    train_config(settings)  # refuses bad budget options now, not after the first variant
    return settings


def train_config(settings: dict[str, Any], model: str = "lite", edge_target: str = "distance") -> TrainConfig:
    """Stage 2 only, AdamW, the same budget, split and seed for every variant."""
    s = settings
    return TrainConfig(
        model=model, stages=(2,), epochs=s["epochs"], steps_per_epoch=s["steps_per_epoch"],
        batch_size=s["batch_size"], optimizer="adamw", lr=s["lr"], val_cases=(s["val_case"],),
        synthetic_tumors=s["synthetic_tumors"], synthetic_size_weights=tuple(s["synthetic_size_weights"]),
        tumor_pos_weight=s["tumor_pos_weight"], bn_calibration_samples=s["bn_calibration_samples"],
        seed=s["seed"], edge_target=edge_target,
    )  # fmt: skip


def case_paths(data: Path, name: str) -> CasePaths:
    paths = CasePaths(name, data / f"{name}_ct.nii.gz", data / f"{name}_label.nii.gz")
    for path in (paths.image, paths.label):
        if not path.is_file():
            raise UserInputError(f"case {name}: {path} not found (--data needs {name}_ct.nii.gz and _label)")
    return paths


def prepare_out(out: Path, settings: dict[str, Any], resume: bool) -> None:
    """A new folder, or with --resume-friendly one this script made with the same settings."""
    stored_path = out / "settings.json"
    if stored_path.exists():
        if not resume:
            raise UserInputError(
                f"{out} holds an ablation already: continue it with --resume-friendly or use another --out"
            )
        stored = json.loads(stored_path.read_text())
        changed = sorted(
            key for key in stored.keys() | settings.keys() if stored.get(key) != settings.get(key)
        )
        if changed:
            raise UserInputError(
                f"{out} was made with other settings ({', '.join(changed)} differ): use them or another --out"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise UserInputError(f"--out {out} is not empty and holds no settings.json: choose a new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserInputError(f"cannot create --out {out}: {error.strerror}") from error
    write_json(stored_path, settings)


def finite(values: dict[str, Any]) -> dict[str, Any]:
    """NaN (undefined, e.g. recall without reference lesions) -> None, so the JSON is strict."""
    return {key: None if isinstance(v, float) and np.isnan(v) else v for key, v in values.items()}


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Atomic: a result file is whole or absent, which --resume-friendly relies on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


if __name__ == "__main__":
    sys.exit(main())
