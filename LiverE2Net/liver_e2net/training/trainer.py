"""Training both stages (separately, as the paper does), with validation, checkpoints, resume and clean stops.

Resume is exact: samples are a function of (seed, stage, epoch, index) and the networks' initial weights of
the seed, so the trainer state is only the position (stage, epoch, step), the optimizer, loss scaler and
schedule of each stage, the weight average (`--ema-decay`) and the running sums of the epoch in progress.
"""

from __future__ import annotations

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
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import Checkpoint, load_checkpoint, non_finite_entries, save_checkpoint
from ..config import ModelConfig
from ..devices import autocast_dtype, dtype_name, limit_blas_threads
from ..errors import UserInputError
from ..models import build_network, channels_last, to_channels_last
from ..progress import Reporter, null_reporter
from . import distributed, resolve, run_folder
from .batchnorm import recalibrate_batchnorm
from .cache import prepare_cases, prepare_usable_cases
from .config import TrainConfig
from .losses import liver_distillation_loss, stage1_loss, stage2_loss
from .reporting import RunReporter, fmt
from .samples import EpochSampler, Stage1Samples, Stage2Samples, samples_of_stage
from .schedule import PlateauSchedule
from .sources import CaseSource, split_cases
from .validation import validate
from .validation_tumors import with_synthetic_tumors

log = logging.getLogger("liver_e2net")


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
    sources: list[CaseSource] | None, output: str | Path, config: TrainConfig | None = None, **options: Any
) -> TrainResult:
    """Train into `output` (best.pt, last.pt, trainer_state.pt, metrics.jsonl, train.log); `options` are
    Trainer's keyword arguments."""
    return Trainer(sources, output, config, **options).run()


class Trainer:
    """sources: CasePaths / TrainingCase (None on resume: the run's file cases). model_config: by default the
    one `config.model` names; with `init` or `resume` the stored one (a different one is an error). On resume
    `config` may only raise `epochs`."""

    def __init__(self, sources: list[CaseSource] | None, output: str | Path,
                 config: TrainConfig | None = None, *, model_config: ModelConfig | None = None,
                 init: str | Path | None = None, resume: bool = False, device: str = "auto", workers: int = 0,
                 cache: str | Path | None = None, progress: Reporter = null_reporter,
                 command_line: str | None = None):  # fmt: skip
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
        self.networks: dict[int, torch.nn.Module] = {}  # the networks trained by run(), on the CPU
        self.teacher: torch.nn.Module | None = None  # --liver-distillation's, during stage 2

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Stop after the current step, writing last.pt (also what SIGINT / SIGTERM do during run())."""
        self.stop_signal = signum

    def run(self) -> TrainResult:
        self.dist, self.device = distributed.setup(self.device_name)
        try:
            if self.dist.is_main:
                run_folder.prepare(self.output, self.resume)
            # Samples are prepared in this process when --workers is 0.
            with self._signals(), self._logging(), limit_blas_threads(torch.get_num_threads()):
                self._prepare()
                return self._train_stages()
        finally:
            distributed.teardown(self.dist)

    # -- set-up --------------------------------------------------------------------------------------------

    def _prepare(self) -> None:
        state = run_folder.read_state(self.output) if self.resume else {}
        init = load_checkpoint(self.init) if self.init else None
        self.model_config = resolve.model_config(
            state, init, self.requested_model, self.requested, self.output
        )
        self.config = resolve.train_config(state, self.requested, self.model_config.name, self.output)
        sources = resolve.sources(state, self.sources, self.output)
        self.file_sources = resolve.file_sources(sources)
        if self.dist.is_main and not state:
            cases, skipped = prepare_usable_cases(sources, self.cache)
            for name, reason in skipped.items():
                log.warning("left out case %s: %s", name, reason)
            if len(cases) < len(sources) and len(cases) < 2:
                raise UserInputError(
                    f"too few usable cases ({len(cases)} of {len(sources)}): "
                    + "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
                )
            sources = [source for source in sources if source.name not in skipped]
            self.file_sources = resolve.file_sources(sources)
        elif self.dist.is_main:
            cases = prepare_cases(sources, self.cache)  # a resumed run needs every one of its cases
        self.dist.barrier()  # rank 0 fills the cache; the others then only map it
        if not self.dist.is_main:
            cases = prepare_usable_cases(sources, self.cache)[0] if not state else prepare_cases(
                sources, self.cache, build=False)
        by_name = {case.name: case for case in cases}
        if state:
            training, validation = state["training_cases"], state["validation_cases"]
        else:
            config = self.config
            training, validation = split_cases(
                list(by_name), config.val_cases, config.val_fraction, config.seed
            )
        self.training = [by_name[name] for name in training]
        self.validation = [by_name[name] for name in validation]
        if self.config.synthetic_tumors > 0 and 2 in self.config.stages:
            self.validation = with_synthetic_tumors(self.validation, *self.config.validation_tumors())
        log.info("training cases: %s; validation cases: %s", ", ".join(training), ", ".join(validation))
        self._initial_weights(state, init)
        self.teacher_weights = self._liver_teacher(state, init)
        self.stage_states: dict[str, dict[str, Any]] = state.get("stages", {})
        self.best_info: dict[str, dict] = state.get("best_info", {})
        self.last_info: dict[str, dict] = state.get("last_info", {})
        self.seconds_before = state.get("seconds", 0.0)
        self.started = time.monotonic()
        self.reporter = RunReporter(self.progress, self.config.stages, self.config.epochs, self.output,
                                    self.dist.is_main)  # fmt: skip

    def _initial_weights(self, state: dict, init: Checkpoint | None) -> None:
        """Current and best weights of both stages: seeded random, --init's, or the run's last/best.pt."""
        torch.manual_seed(self.config.seed)
        random_networks = [build_network(self.model_config.stage1), build_network(self.model_config.stage2)]
        self.weights = {1: random_networks[0].state_dict(), 2: random_networks[1].state_dict()}
        source = load_checkpoint(self.output / run_folder.LAST) if state else init
        if source is not None:
            self.weights = {1: source.stage1, 2: source.stage2}
        if not state and init is not None and init.config != self.model_config:  # more context slices
            self.weights = {stage: resolve.inflate_context(self.weights[stage], network.state_dict())
                            for stage, network in zip((1, 2), random_networks)}  # fmt: skip
        self.best_weights = dict(self.weights)
        if state and (self.output / run_folder.BEST).is_file():
            best = load_checkpoint(self.output / run_folder.BEST)
            self.best_weights = {1: best.stage1, 2: best.stage2}

    def _liver_teacher(self, state: dict, init: Checkpoint | None) -> dict[str, torch.Tensor] | None:
        """Stage-2 weights whose liver output --liver-distillation keeps: --init's, kept in the run's state."""
        if not (self.config.liver_distillation and 2 in self.config.stages):
            return None
        if state:
            return state["liver_teacher"]
        if init is None:
            raise UserInputError(
                "--liver-distillation keeps the liver output of the network the run starts from: "
                "give that model with --init MODEL.pt"
            )
        if init.config != self.model_config:
            raise UserInputError(
                f"--liver-distillation needs the --init model's own config ({init.config.name}, "
                f"{init.config.preprocessing.context_slices} context slices): drop --context-slices"
            )
        return init.stage2

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
        message = "done: best.pt validation Dice " + ", ".join(f"{k} {fmt(v)}" for k, v in dice.items())
        log.info("%s (%s)", message, self.output)
        if self.dist.is_main:
            self.progress("done", 1.0, message, val_dice_liver=dice["liver"], val_dice_tumor=dice["tumor"])
        return TrainResult(self.output, dice, self._stage_epochs(), 0, message)

    def _train_stage(self, stage: int, saved: dict[str, Any]) -> int:
        """Epochs of one stage until the schedule stops it or the cap; returns 128 + signal when stopped."""
        config, key = self.config, f"stage{stage}"
        network = build_network(self.model_config.stage1 if stage == 1 else self.model_config.stage2)
        network.load_state_dict(self.weights[stage])
        network = to_channels_last(network.to(self.device))
        model = distributed.wrap(network, self.dist, self.device)
        network = model.module if self.dist.enabled else model
        optimizer = _optimizer(config, network.parameters())
        scaler = torch.amp.GradScaler("cuda", enabled=self._autocast() is torch.float16)
        schedule = PlateauSchedule(config.lr, config.patience, config.lr_drops)
        average = _weight_average(network, config.ema_decay)
        if saved:
            optimizer.load_state_dict(saved["optimizer"])
            scaler.load_state_dict(saved["scaler"])
            schedule = PlateauSchedule.from_state(saved["schedule"])
            if average is not None and "average" in saved:
                average.load_state_dict(saved["average"])
        # What is validated and saved as best.pt: the averaged weights when --ema-decay is set.
        evaluated = network if average is None else average.module
        self.teacher = self._teacher_network(stage)
        dataset = samples_of_stage(stage, self.model_config)(self.training, self.model_config, config)
        calibration = dataset.calibration()
        steps = config.steps_per_epoch or math.ceil(len(dataset) / (config.batch_size * self.dist.world_size))
        epoch, step, sums = saved.get("epoch", 0), saved.get("step", 0), saved.get("sums", {})
        log.info("stage %d: %d training slices, %d steps of %d x %d samples per epoch, lr %g, %s on %s", stage,
                 len(dataset), steps, config.batch_size, self.dist.world_size, schedule.lr,
                 dtype_name(self._autocast()), self.device)  # fmt: skip

        def save_position(epoch: int, step: int, sums: dict, converged: bool = False) -> None:
            self.weights[stage] = _cpu_state(network)
            self.stage_states[key] = {
                "epoch": epoch, "step": step, "sums": sums, "converged": converged,
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "schedule": schedule.state_dict(),
                **({"average": _cpu_state(average)} if average is not None else {}),
            }  # fmt: skip
            self._write(run_folder.LAST, self.weights, self.last_info)
            self._write_state(stage)

        while epoch < config.epochs:
            dataset.epoch = epoch
            _set_lr(optimizer, schedule.lr)
            epoch_start = time.monotonic()
            model.train()
            for batch in self._loader(dataset, steps, step):
                loss, parts = self._step(stage, model, optimizer, scaler, batch)
                if average is not None:
                    average.update_parameters(network)
                step += 1
                for name, value in {"loss": loss, **parts, "steps": 1}.items():
                    sums[name] = sums.get(name, 0.0) + value
                self.reporter.step(
                    stage, epoch, step, steps, loss, self.last_info.get(key, {}).get("dice", {})
                )
                if self.dist.any(self.stop_signal is not None):
                    save_position(epoch, step, sums)
                    return 128 + (self.stop_signal or signal.SIGTERM)
            train_seconds = time.monotonic() - epoch_start
            if average is not None:  # BatchNorm statistics are not averaged: the raw network's, recalibrated
                for mine, raw in zip(evaluated.buffers(), network.buffers()):
                    mine.copy_(raw)
            self._calibrate_batchnorm(evaluated, calibration, epoch)
            self.dist.average_buffers(evaluated)
            self._refuse_non_finite(stage, epoch, evaluated)
            result = validate(stage, evaluated, self.validation, self.model_config, config.batch_size,
                              self.device, self._autocast(), self.dist, config.edge_target,
                              config.tumor_pos_weight)  # fmt: skip
            action = schedule.step(result.loss)
            info = {"epoch": epoch + 1, "val_loss": result.loss, "dice": result.dice}
            self.last_info[key] = info
            record = self._epoch_record(stage, epoch, steps, sums, optimizer.param_groups[0]["lr"], info)
            record.update(
                train_seconds=round(train_seconds, 2), seconds=round(time.monotonic() - epoch_start, 2)
            )
            self.reporter.epoch(stage, epoch, steps, record, action)
            epoch, step, sums = epoch + 1, 0, {}
            save_position(epoch, step, sums, converged=action == "stop")
            if action == "improved":
                self.best_info[key] = info
                self.best_weights[stage] = _cpu_state(evaluated)
                self._write(run_folder.BEST, self.best_weights, self.best_info)
            if action == "stop":
                break
            if self.dist.any(self.stop_signal is not None):
                return 128 + (self.stop_signal or signal.SIGTERM)
        self.networks[stage] = evaluated.cpu()
        return 0

    def _loader(self, samples: Dataset, steps: int, start_step: int = 0) -> DataLoader:
        """This process's batches of `steps` global steps, from `start_step` on."""
        batch, rank, world_size = self.config.batch_size, self.dist.rank, self.dist.world_size
        return DataLoader(samples, batch_size=batch, num_workers=self.workers, worker_init_fn=_worker_init,
                          sampler=EpochSampler(steps, batch, rank, world_size, start_step),
                          pin_memory=self.device.type == "cuda")  # fmt: skip

    def _calibrate_batchnorm(self, network: torch.nn.Module, samples: Stage1Samples | Stage2Samples,
                             epoch: int) -> None:  # fmt: skip
        """Precise BatchNorm statistics for validation and the checkpoints (see batchnorm.py)."""
        count = self.config.bn_calibration_samples
        if count:
            samples.epoch = epoch
            steps = math.ceil(count / (self.config.batch_size * self.dist.world_size))
            images = (batch[0] for batch in self._loader(samples, steps))
            recalibrate_batchnorm(network, images, self.device, self._autocast())

    def _teacher_network(self, stage: int) -> torch.nn.Module | None:
        if stage != 2 or self.teacher_weights is None:
            return None
        teacher = build_network(self.model_config.stage2)
        teacher.load_state_dict(self.teacher_weights)
        return to_channels_last(teacher.to(self.device)).eval().requires_grad_(False)

    def _step(self, stage: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              scaler: torch.amp.GradScaler, batch: list[torch.Tensor]) -> tuple[float, dict]:  # fmt: skip
        image, *targets = (t.to(self.device, non_blocking=True) for t in batch)
        image = channels_last(image)  # (B, K, H, W): K context slices; a 3D stage 1's (B, 1, D, H, W)
        autocast = self._autocast()
        with torch.autocast(self.device.type, dtype=autocast) if autocast else nullcontext():
            output = model(image)
            if self.teacher is not None:  # stage 2 with --liver-distillation
                with torch.no_grad():
                    teacher_output = self.teacher(image)
        if stage == 1:
            loss, parts = stage1_loss(output, *targets)
        else:
            loss, parts = stage2_loss(
                output,
                *targets,
                tumor_pos_weight=self.config.tumor_pos_weight,
                lesion_loss_weight=self.config.lesion_loss_weight,
            )
            if self.teacher is not None:
                distillation = liver_distillation_loss(output, teacher_output)
                loss = loss + self.config.liver_distillation * distillation
                parts["liver_distillation"] = distillation.detach()
        if not torch.isfinite(loss) and not scaler.is_enabled():
            raise UserInputError(f"training diverged (loss {loss.item()}) in stage {stage}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item(), {name: value.item() for name, value in parts.items()}

    def _refuse_non_finite(self, stage: int, epoch: int, network: torch.nn.Module) -> None:
        """A finite loss does not prove finite weights: activations that overflow leave BatchNorm statistics at inf
        while the loss stays finite (a tiny 3D net in bf16 did). Such weights are never saved."""
        broken = non_finite_entries(network.state_dict())
        if broken:
            hint = " or train with --precision fp32" if self._autocast() is not None else ""
            raise UserInputError(
                f"training diverged in stage {stage}, epoch {epoch + 1}: {', '.join(broken[:3])}"
                f"{' and more' if len(broken) > 3 else ''} became inf or NaN, so this epoch was not saved; "
                f"start a new run with a lower --lr{hint}"
            )

    def _autocast(self) -> torch.dtype | None:
        """fp16 (with the GradScaler) on CUDA, bf16 on CPUs with native bf16 (no scaler: bf16 has fp32's range)."""
        return autocast_dtype(self.device, self.config.precision)

    def _epoch_record(self, stage: int, epoch: int, steps: int, sums: dict[str, float], lr: float,
                      info: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """The metrics.jsonl line: training losses are means over the epoch's steps and all processes."""
        count = max(sums.get("steps", 0), 1) * self.dist.world_size
        means = {name: self.dist.all_reduce_sum(torch.tensor([total], dtype=torch.float64)).item() / count
                 for name, total in sums.items() if name != "steps"}  # fmt: skip
        return {
            "stage": f"stage{stage}", "epoch": epoch + 1, "train_loss": means.pop("loss", float("nan")),
            "train": means, "val_loss": info["val_loss"], "val_dice_liver": info["dice"]["liver"],
            "val_dice_tumor": info["dice"]["tumor"], "lr": lr, "steps": steps,
        }  # fmt: skip

    # -- outputs -------------------------------------------------------------------------------------------

    def _write(self, name: str, weights: dict[int, dict], info: dict[str, dict]) -> None:
        if self.dist.is_main:
            checkpoint = Checkpoint(self.model_config, weights[1], weights[2], self._metadata(info))
            save_checkpoint(checkpoint, self.output / name)

    def _write_state(self, stage: int) -> None:
        if self.dist.is_main:
            run_folder.write_state(self.output, {
                "train_config": self.config.to_dict(), "model_config": self.model_config.to_dict(),
                "training_cases": self._names(self.training),
                "validation_cases": self._names(self.validation),
                "sources": self.file_sources, "stage": stage, "stages": self.stage_states,
                "best_info": self.best_info, "last_info": self.last_info, "seconds": self._seconds(),
                **({"liver_teacher": self.teacher_weights} if self.teacher_weights is not None else {}),
            })  # fmt: skip

    def _metadata(self, info: dict[str, dict]) -> dict[str, Any]:
        stage_epochs = self._stage_epochs()
        return {
            "name": self.output.name, "config": self.model_config.name,
            "training_cases": self._names(self.training), "validation_cases": self._names(self.validation),
            "epochs": sum(stage_epochs.values()), "stage_epochs": stage_epochs,
            "validation_dice": self._validation_dice(info), "validation": info,
            "seconds": round(self._seconds(), 1),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "synthetic_tumors": self.config.synthetic_tumors, "command_line": self.command_line,
            "train_config": self.config.to_dict(),
        }  # fmt: skip

    def _validation_dice(self, info: dict[str, dict]) -> dict[str, float | None]:
        """Stage 2's Dice (liver and tumor) once it was validated, else stage 1's liver Dice."""
        if "stage2" in info:
            return dict(info["stage2"]["dice"])
        return {"liver": info.get("stage1", {}).get("dice", {}).get("liver"), "tumor": None}

    @staticmethod
    def _names(cases: list) -> list[str]:
        return [case.name for case in cases]

    def _stage_epochs(self) -> dict[str, int]:
        return {key: state["epoch"] for key, state in self.stage_states.items()}

    def _seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def _stopped(self, where: str, exit_code: int | None = None) -> TrainResult:
        exit_code = exit_code or 128 + self.stop_signal
        message = f"stopped by {signal.Signals(exit_code - 128).name} {where}"
        if (self.output / run_folder.LAST).exists():
            message += f": last.pt written, best.pt kept; continue with --resume {self.output}"
        log.warning(message)
        if self.dist.is_main:
            self.progress("error", 1.0, message)
        dice = self._validation_dice(self.best_info)
        return TrainResult(self.output, dice, self._stage_epochs(), exit_code, message)

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


def _weight_average(network: torch.nn.Module, decay: float) -> AveragedModel | None:
    """Exponential moving average of the parameters (Polyak averaging): steadier weights to validate and ship
    than the last step's, whose validation Dice swings by 0.1-0.3 between epochs on a few cases."""
    if not decay:
        return None
    return AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _cpu_state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu().clone() for name, value in network.state_dict().items()}


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # workers prepare single samples; threads would only fight the main process
    limit_blas_threads(1)
