"""Training both stages (separately, as the paper does), with validation, checkpoints, resume and clean stops.

Resume is exact: samples are a function of (seed, stage, epoch, index) and the networks' initial weights of
the seed, so the trainer state is only the position (stage, epoch, step), the optimizer, loss scaler and
schedule of each stage, and the running sums of the epoch in progress.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..config import ModelConfig, get_config
from ..errors import UserInputError
from ..models import build_network
from ..progress import Reporter, null_reporter
from . import distributed, run_folder
from .batchnorm import recalibrate_batchnorm
from .cache import prepare_cases
from .config import TrainConfig
from .losses import stage1_loss, stage2_loss
from .samples import EpochSampler, Stage1Samples, Stage2Samples
from .schedule import PlateauSchedule
from .sources import CasePaths, CaseSource, check_unique, split_cases
from .validation import ValidationResult, validate

log = logging.getLogger("liver_e2net")

REPORT_INTERVAL_S = 0.5
RESUMABLE_FIELDS = {"epochs"}  # the only TrainConfig field a resumed run may change


@dataclass(frozen=True)
class TrainResult:
    output: Path
    validation_dice: dict[str, float | None]  # of best.pt
    stage_epochs: dict[str, int]
    exit_code: int = 0  # 130 / 143 when stopped by SIGINT / SIGTERM (last.pt written, resumable)
    message: str = ""

    @property
    def best(self) -> Path:
        return self.output / run_folder.BEST

    @property
    def last(self) -> Path:
        return self.output / run_folder.LAST


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "liver-e2net" / "training"


def train(
    sources: list[CaseSource] | None,
    output: str | Path,
    config: TrainConfig | None = None,
    *,
    model_config: ModelConfig | None = None,
    init: str | Path | None = None,
    resume: bool = False,
    device: str = "auto",
    workers: int = 0,
    cache: str | Path | None = None,
    progress: Reporter = null_reporter,
    command_line: str | None = None,
) -> TrainResult:
    """Train into `output` (best.pt, last.pt, trainer_state.pt, metrics.jsonl, train.log).

    sources: CasePaths / TrainingCase; None on resume reuses the run's file cases. model_config: default the
    config named by `config.model`; with `init` or `resume` the stored one (a different one is an error).
    On resume `config` may only raise `epochs`.
    """
    trainer = Trainer(
        sources,
        output,
        config,
        model_config=model_config,
        init=init,
        resume=resume,
        device=device,
        workers=workers,
        cache=cache,
        progress=progress,
        command_line=command_line,
    )
    return trainer.run()


class Trainer:
    def __init__(
        self,
        sources: list[CaseSource] | None,
        output: str | Path,
        config: TrainConfig | None = None,
        *,
        model_config: ModelConfig | None = None,
        init: str | Path | None = None,
        resume: bool = False,
        device: str = "auto",
        workers: int = 0,
        cache: str | Path | None = None,
        progress: Reporter = null_reporter,
        command_line: str | None = None,
    ):
        if init and resume:
            raise UserInputError(
                "--init and --resume exclude each other: a resumed run keeps its own weights"
            )
        self.sources, self.output, self.requested = sources, Path(output), config
        self.requested_model, self.init, self.resume = model_config, init, resume
        self.device_name, self.workers = device, workers
        self.cache = Path(cache) if cache else default_cache()
        self.progress, self.command_line = progress, command_line or "liver_e2net.training.train()"
        self.stop_signal: int | None = None
        self.networks: dict[int, torch.nn.Module] = {}  # the trained networks (CPU copies), after run()

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the current step, writing last.pt (also what SIGINT / SIGTERM do during run())."""
        self.stop_signal = signum

    def run(self) -> TrainResult:
        self.dist, self.device = distributed.setup(self.device_name)
        try:
            if self.dist.is_main:
                run_folder.prepare(self.output, self.resume)
            with self._signals(), self._logging():
                self._prepare()
                return self._train_stages()
        finally:
            distributed.teardown(self.dist)

    # -- set-up --------------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        state = run_folder.read_state(self.output) if self.resume else {}
        self.model_config = self._resolve_model_config(state)
        self.config = self._resolve_train_config(state)
        sources = self._resolve_sources(state)
        if self.dist.is_main:
            cases = prepare_cases(sources, self.cache)
        self.dist.barrier()  # rank 0 fills the cache; the others then only map it
        if not self.dist.is_main:
            cases = prepare_cases(sources, self.cache, build=False)
        by_name = {case.name: case for case in cases}
        if state:
            training, validation = state["training_cases"], state["validation_cases"]
        else:
            training, validation = split_cases(
                list(by_name), self.config.val_cases, self.config.val_fraction, self.config.seed
            )
        self.training = [by_name[name] for name in training]
        self.validation = [by_name[name] for name in validation]
        self.file_sources = (
            [{"name": s.name, "image": str(s.image), "label": str(s.label)} for s in sources]
            if all(isinstance(s, CasePaths) for s in sources)
            else None
        )  # for --resume DIR alone
        log.info("training cases: %s; validation cases: %s", ", ".join(training), ", ".join(validation))
        self._initial_weights(state)
        self.stage_states: dict[str, dict[str, Any]] = state.get("stages", {})
        self.best_info: dict[str, dict] = state.get("best_info", {})
        self.last_info: dict[str, dict] = state.get("last_info", {})
        self.seconds_before = state.get("seconds", 0.0)
        self.started = time.monotonic()
        self.fraction_at_start: float | None = None

    def _resolve_model_config(self, state: dict) -> ModelConfig:
        if state:
            stored, origin = ModelConfig.from_dict(state["model_config"]), f"the run in {self.output}"
        elif self.init:
            self.init_checkpoint = load_checkpoint(self.init)
            stored, origin = self.init_checkpoint.config, f"--init {self.init}"
        else:
            return self.requested_model or get_config(self.requested.model if self.requested else "lite")
        if self.requested_model is not None and self.requested_model != stored:
            raise UserInputError(
                f"{origin} uses the {stored.name!r} model config, which differs from the requested "
                f"{self.requested_model.name!r}; leave out --config (it is taken from {origin})"
            )
        return stored

    def _resolve_train_config(self, state: dict) -> TrainConfig:
        if not state:
            return dataclasses.replace(self.requested or TrainConfig(), model=self.model_config.name)
        stored = TrainConfig.from_dict(state["train_config"])
        if self.requested is None:
            return stored
        changed = [
            f.name
            for f in dataclasses.fields(TrainConfig)
            if getattr(self.requested, f.name) != getattr(stored, f.name) and f.name not in RESUMABLE_FIELDS
        ]
        if changed:
            raise UserInputError(
                f"a resumed run keeps its training options; these differ from {self.output}'s: "
                f"{', '.join(changed)} (only --epochs may change)"
            )
        return dataclasses.replace(stored, epochs=self.requested.epochs)

    def _resolve_sources(self, state: dict) -> list[CaseSource]:
        sources = self.sources
        if sources is None and state:
            if state.get("sources") is None:
                raise UserInputError(
                    f"the run in {self.output} was trained on in-memory cases: pass them again"
                )
            sources = [CasePaths(s["name"], Path(s["image"]), Path(s["label"])) for s in state["sources"]]
        if not sources:
            raise UserInputError("no training data: pass --data DIR_OR_JSON or --case CT LABEL")
        check_unique(sources)
        if state:
            expected = set(state["training_cases"]) | set(state["validation_cases"])
            if {s.name for s in sources} != expected:
                raise UserInputError(
                    f"the run in {self.output} was trained on cases {', '.join(sorted(expected))}; "
                    "resume it with the same cases"
                )
        return sources

    def _initial_weights(self, state: dict) -> None:
        """Current and best weights of both stages: seeded random, --init's, or the run's last.pt / best.pt."""
        torch.manual_seed(self.config.seed)
        random_networks = [build_network(self.model_config.stage1), build_network(self.model_config.stage2)]
        self.weights = {1: random_networks[0].state_dict(), 2: random_networks[1].state_dict()}
        if self.init or state:
            source = load_checkpoint(self.output / run_folder.LAST) if state else self.init_checkpoint
            self.weights = {1: source.stage1, 2: source.stage2}
        self.best_weights = dict(self.weights)
        if state and (self.output / run_folder.BEST).is_file():
            best = load_checkpoint(self.output / run_folder.BEST)
            self.best_weights = {1: best.stage1, 2: best.stage2}

    # -- training ------------------------------------------------------------------------------------------

    def _train_stages(self) -> TrainResult:
        if self.stop_signal is not None:
            return self._stopped("before training")
        for stage in self.config.stages:
            saved = self.stage_states.get(f"stage{stage}", {})
            if saved.get("converged") or saved.get("epoch", 0) >= self.config.epochs:
                continue
            exit_code = self._train_stage(stage, saved)
            if exit_code:
                return self._stopped(f"in stage {stage}", exit_code)
        dice = self._validation_dice(self.best_info)
        message = "done: best.pt validation Dice " + ", ".join(f"{k} {_fmt(v)}" for k, v in dice.items())
        log.info("%s (%s)", message, self.output)
        if self.dist.is_main:
            self.progress("done", 1.0, message, val_dice_liver=dice["liver"], val_dice_tumor=dice["tumor"])
        return TrainResult(self.output, dice, self._stage_epochs(), 0, message)

    def _train_stage(self, stage: int, saved: dict[str, Any]) -> int:
        """Epochs of one stage until the schedule stops it or the cap; returns 128 + signal when stopped."""
        config, key = self.config, f"stage{stage}"
        network = build_network(self.model_config.stage1 if stage == 1 else self.model_config.stage2)
        network.load_state_dict(self.weights[stage])
        network = network.to(self.device, memory_format=torch.channels_last)
        model = distributed.wrap(network, self.dist, self.device)
        network = model.module if self.dist.enabled else model
        optimizer = _optimizer(config, network.parameters())
        scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda")
        schedule = PlateauSchedule(config.lr, config.patience, config.lr_drops)
        if saved:
            optimizer.load_state_dict(saved["optimizer"])
            scaler.load_state_dict(saved["scaler"])
            schedule = PlateauSchedule.from_state(saved["schedule"])
        dataset = (Stage1Samples if stage == 1 else Stage2Samples)(self.training, self.model_config, config)
        calibration = dataset.calibration()
        steps = config.steps_per_epoch or math.ceil(len(dataset) / (config.batch_size * self.dist.world_size))
        epoch, step, sums = saved.get("epoch", 0), saved.get("step", 0), saved.get("sums", {})
        log.info(
            "stage %d: %d training slices, %d steps of %d x %d samples per epoch, lr %g",
            stage,
            len(dataset),
            steps,
            config.batch_size,
            self.dist.world_size,
            schedule.lr,
        )

        def save_position(epoch: int, step: int, sums: dict, converged: bool = False) -> None:
            self.weights[stage] = _cpu_state(network)
            self.stage_states[key] = {
                "epoch": epoch,
                "step": step,
                "sums": sums,
                "converged": converged,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "schedule": schedule.state_dict(),
            }
            self._write(run_folder.LAST, self.weights, self.last_info)
            self._write_state(stage)

        while epoch < config.epochs:
            dataset.epoch = epoch
            _set_lr(optimizer, schedule.lr)
            epoch_start = time.monotonic()
            model.train()
            for batch in self._loader(dataset, steps, step):
                loss, parts = self._step(stage, model, optimizer, scaler, batch)
                step += 1
                for name, value in {"loss": loss, **parts, "steps": 1}.items():
                    sums[name] = sums.get(name, 0.0) + value
                self._report(stage, epoch, step, steps, loss)
                if self.dist.any(self.stop_signal is not None):
                    save_position(epoch, step, sums)
                    return 128 + (self.stop_signal or signal.SIGTERM)
            train_seconds = time.monotonic() - epoch_start
            self._calibrate_batchnorm(network, calibration, epoch)
            self.dist.average_buffers(network)
            result = validate(
                stage,
                network,
                self.validation,
                self.model_config,
                config.batch_size,
                self.device,
                self._autocast(),
                self.dist,
            )
            action = schedule.step(result.loss)
            info = {"epoch": epoch + 1, "val_loss": result.loss, "dice": result.dice}
            self.last_info[key] = info
            timing = {"train_seconds": train_seconds, "seconds": time.monotonic() - epoch_start}
            self._log_epoch(
                stage, epoch, steps, sums, result, optimizer.param_groups[0]["lr"], timing, action
            )
            epoch, step, sums = epoch + 1, 0, {}
            save_position(epoch, step, sums, converged=action == "stop")
            if action == "improved":
                self.best_info[key] = info
                self.best_weights[stage] = dict(self.weights[stage])
                self._write(run_folder.BEST, self.best_weights, self.best_info)
            if action == "stop":
                break
            if self.dist.any(self.stop_signal is not None):
                return 128 + (self.stop_signal or signal.SIGTERM)
        self.networks[stage] = network.cpu()
        return 0

    def _loader(self, samples: Dataset, steps: int, start_step: int = 0) -> DataLoader:
        """This process's batches of `steps` global steps, from `start_step` on."""
        batch, rank, world_size = self.config.batch_size, self.dist.rank, self.dist.world_size
        return DataLoader(
            samples,
            batch_size=batch,
            num_workers=self.workers,
            sampler=EpochSampler(steps, batch, rank, world_size, start_step),
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_worker_init,
        )

    def _calibrate_batchnorm(
        self, network: torch.nn.Module, samples: Stage1Samples | Stage2Samples, epoch: int
    ) -> None:
        """Precise BatchNorm statistics for validation and the checkpoints (see batchnorm.py)."""
        count = self.config.bn_calibration_samples
        if count:
            samples.epoch = epoch
            steps = math.ceil(count / (self.config.batch_size * self.dist.world_size))
            images = (batch[0] for batch in self._loader(samples, steps))
            recalibrate_batchnorm(network, images, self.device, self._autocast())

    def _step(
        self,
        stage: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        batch: list[torch.Tensor],
    ) -> tuple[float, dict[str, float]]:
        image, *targets = (t.to(self.device, non_blocking=True) for t in batch)
        image = image.contiguous(memory_format=torch.channels_last)  # (B, 1, H, W)
        autocast = self._autocast()
        with torch.autocast(self.device.type, dtype=autocast) if autocast else nullcontext():
            output = model(image)
        loss, parts = stage1_loss(output, *targets) if stage == 1 else stage2_loss(output, *targets)
        if not torch.isfinite(loss) and not scaler.is_enabled():
            raise UserInputError(f"training diverged (loss {loss.item()}) in stage {stage}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item(), {name: value.item() for name, value in parts.items()}

    def _autocast(self) -> torch.dtype | None:
        return torch.float16 if self.device.type == "cuda" else None  # fp16 + GradScaler on CUDA only

    # -- outputs -------------------------------------------------------------------------------------------

    def _write(self, name: str, weights: dict[int, dict], info: dict[str, dict]) -> None:
        if self.dist.is_main:
            checkpoint = Checkpoint(self.model_config, weights[1], weights[2], self._metadata(info))
            save_checkpoint(checkpoint, self.output / name)

    def _write_state(self, stage: int) -> None:
        if self.dist.is_main:
            run_folder.write_state(
                self.output,
                {
                    "train_config": self.config.to_dict(),
                    "model_config": self.model_config.to_dict(),
                    "training_cases": [c.name for c in self.training],
                    "validation_cases": [c.name for c in self.validation],
                    "sources": self.file_sources,
                    "stage": stage,
                    "stages": self.stage_states,
                    "best_info": self.best_info,
                    "last_info": self.last_info,
                    "seconds": self._seconds(),
                },
            )

    def _metadata(self, info: dict[str, dict]) -> dict[str, Any]:
        stage_epochs = self._stage_epochs()
        return {
            "name": self.output.name,
            "config": self.model_config.name,
            "training_cases": [c.name for c in self.training],
            "validation_cases": [c.name for c in self.validation],
            "epochs": sum(stage_epochs.values()),
            "stage_epochs": stage_epochs,
            "validation_dice": self._validation_dice(info),
            "validation": info,
            "seconds": round(self._seconds(), 1),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "synthetic_tumors": self.config.synthetic_tumors,
            "command_line": self.command_line,
            "train_config": self.config.to_dict(),
        }

    def _validation_dice(self, info: dict[str, dict]) -> dict[str, float | None]:
        """Stage 2's Dice (liver and tumor) once it was validated, else stage 1's liver Dice."""
        if "stage2" in info:
            return dict(info["stage2"]["dice"])
        return {"liver": info.get("stage1", {}).get("dice", {}).get("liver"), "tumor": None}

    def _stage_epochs(self) -> dict[str, int]:
        return {key: state["epoch"] for key, state in self.stage_states.items()}

    def _seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def _log_epoch(
        self,
        stage: int,
        epoch: int,
        steps: int,
        sums: dict,
        result: ValidationResult,
        lr: float,
        timing: dict[str, float],
        action: str,
    ) -> None:
        train = {
            name: self.dist.all_reduce_sum(torch.tensor([value], dtype=torch.float64)).item()
            / self.dist.world_size
            for name, value in sums.items()
            if name != "steps"
        }
        count = max(sums.get("steps", 0), 1)
        record = {
            "stage": f"stage{stage}",
            "epoch": epoch + 1,
            "train_loss": train.get("loss", 0.0) / count,
            "train": {k: v / count for k, v in train.items() if k != "loss"},
            "val_loss": result.loss,
            "val_dice_liver": result.dice["liver"],
            "val_dice_tumor": result.dice["tumor"],
            "lr": lr,
            "steps": steps,
            **{name: round(value, 2) for name, value in timing.items()},
        }
        log.info(
            "stage %d epoch %d: train loss %.4f, val loss %.4f, val Dice liver %s tumor %s, lr %g, %.1f s (%s)",
            stage,
            epoch + 1,
            record["train_loss"],
            result.loss,
            _fmt(result.dice["liver"]),
            _fmt(result.dice["tumor"]),
            lr,
            record["seconds"],
            action,
        )
        if self.dist.is_main:
            run_folder.append_metrics(self.output, record)
            message = (
                f"stage {stage} epoch {epoch + 1}/{self.config.epochs}: val loss {result.loss:.4f}, "
                f"Dice liver {_fmt(result.dice['liver'])} tumor {_fmt(result.dice['tumor'])}"
            )
            self._report(stage, epoch, steps, steps, record["train_loss"], message, dice=result.dice)

    def _report(
        self,
        stage: int,
        epoch: int,
        step: int,
        steps: int,
        loss: float,
        message: str | None = None,
        dice: dict[str, float | None] | None = None,
    ) -> None:
        """Progress of epoch `epoch` (0-based) after `step` of `steps`; throttled, except an epoch's first step
        and reports with a message."""
        now = time.monotonic()
        throttled = (
            message is None and step != 1 and now - getattr(self, "_reported", 0.0) < REPORT_INTERVAL_S
        )
        if not self.dist.is_main or throttled:
            return
        self._reported = now
        stages = self.config.stages
        fraction = min(1.0, (stages.index(stage) + (epoch + step / steps) / self.config.epochs) / len(stages))
        if self.fraction_at_start is None:
            self.fraction_at_start = fraction
        done = fraction - self.fraction_at_start
        eta = (now - self.started) * (1 - fraction) / done if done > 0 else None
        dice = dice or self.last_info.get(f"stage{stage}", {}).get("dice", {})
        message = (
            message
            or f"stage {stage} epoch {epoch + 1}/{self.config.epochs} step {step}/{steps} loss {loss:.4f}"
        )
        self.progress(
            f"stage{stage}",
            fraction,
            message,
            epoch=epoch + 1,
            step=step,
            loss=round(loss, 5),
            val_dice_liver=dice.get("liver"),
            val_dice_tumor=dice.get("tumor"),
            eta_s=None if eta is None else round(eta),
        )

    def _stopped(self, where: str, exit_code: int | None = None) -> TrainResult:
        exit_code = exit_code or 128 + self.stop_signal
        name = signal.Signals(exit_code - 128).name
        message = (
            f"stopped by {name} {where}: last.pt written, best.pt kept; continue with --resume {self.output}"
            if (self.output / run_folder.LAST).exists()
            else f"stopped by {name} {where}"
        )
        log.warning(message)
        if self.dist.is_main:
            self.progress("error", 1.0, message)
        return TrainResult(
            self.output, self._validation_dice(self.best_info), self._stage_epochs(), exit_code, message
        )

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGINT / SIGTERM ask for a stop after the current step; a second one acts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            self.request_stop(signum)
            signal.signal(signum, previous[signum])

        for signum in previous:
            signal.signal(signum, handler)
        try:
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)

    @contextmanager
    def _logging(self) -> Iterator[None]:
        """train.log on rank 0; the other ranks only log warnings (their messages would repeat rank 0's)."""
        if self.dist.is_main:
            with run_folder.file_log(self.output, log):
                yield
            return
        previous = log.level
        log.setLevel(logging.WARNING)
        try:
            yield
        finally:
            log.setLevel(previous)


def _optimizer(config: TrainConfig, parameters) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _cpu_state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu().clone() for name, value in network.state_dict().items()}


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers prepare single samples; threads would only fight the main process


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
