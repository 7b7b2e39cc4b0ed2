"""A run's pieces built from its config, and the epochs: ``Trainer(cfg, data, run_dir).fit()``.

Model selection (best checkpoint, plateau schedule, early stopping) only ever sees the validation
split; the test set is not touched here (``run.py`` evaluates it once, after training).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet5m.data.augment import build_augment
from resnet5m.data.cifar10 import Cifar10
from resnet5m.data.loader import Batch, BatchLoader
from resnet5m.data.split import stratified_split
from resnet5m.errors import UserError
from resnet5m.evaluation.inference import predict_logits
from resnet5m.evaluation.metrics import evaluate_logits
from resnet5m.io import rundir
from resnet5m.models.budget import check_budget_before_building, count_parameters
from resnet5m.models.registry import build_model
from resnet5m.models.weights import load_trained_model, load_weights_into, save_weights
from resnet5m.runtime.device import precision_dtype, resolve_device
from resnet5m.runtime.distributed import Dist, from_env, sync_batchnorm
from resnet5m.runtime.seeding import mix_seed, seed_everything, set_deterministic
from resnet5m.training.checkpoint import (
    StopRequest,
    TrainingInterrupted,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from resnet5m.training.config import RunConfig, changed_since, resume_fingerprint
from resnet5m.training.ema import WeightAverage
from resnet5m.training.loop import LoopState, Meter, StepLog, StepParts, train_epoch
from resnet5m.training.losses import make_loss
from resnet5m.training.mixing import mix_batch
from resnet5m.training.optim import build_optimizers
from resnet5m.training.progress import EpochProgress
from resnet5m.training.schedule import Schedule, resolution_at
from resnet5m.training.selection import build_proxy, candidate_batch_size, select_hardest, train_proxy

Printer = Callable[[str], None]


class NonFiniteLoss(UserError):
    exit_code = 3


# --- set-up ------------------------------------------------------------------------------------------

@dataclass
class Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


def make_splits(cfg: RunConfig, data: Cifar10, device: torch.device) -> Splits:
    """Stratified train/val split of the training set (and an optional stratified training subset)."""
    train_idx, val_idx = stratified_split(data.train_labels, cfg.data.val_size, cfg.data.split_seed)
    if cfg.data.train_subset is not None:
        if cfg.data.train_subset >= len(train_idx):
            raise UserError(f"data.train_subset {cfg.data.train_subset} must be below the {len(train_idx)} "
                            "training images left after the validation split")
        _, keep = stratified_split(data.train_labels[train_idx], cfg.data.train_subset, cfg.data.split_seed + 1)
        train_idx = train_idx[keep]
    return Splits(data.train_images[train_idx].to(device), data.train_labels[train_idx].to(device),
                  data.train_images[val_idx], data.train_labels[val_idx])


def check_input_sizes(cfg: RunConfig) -> None:
    """Every image size the run feeds the model (its resolution schedule's, its crop's, the full 32 px) must
    pass through it: checked on the meta device (no memory, no time), so a size the model's pooling cannot
    take is a one-line error before training, not a crash in its first epoch."""
    crop = cfg.augment.crop.size if cfg.augment.crop is not None and cfg.augment.crop.size else 32
    sizes = sorted({32, crop, *(s.size for s in cfg.train.resolution_schedule)})
    with torch.device("meta"):
        model = build_model(cfg.model)
        for size in sizes:
            try:
                model(torch.empty(2, 3, size, size))
            except RuntimeError:
                ok = [s for s in (12, 16, 24, 32) if s > size]
                raise UserError(f"images of {size} px (train.resolution_schedule or augment.crop.size) are too "
                                f"small for this model ({cfg.model.family}): its pooling leaves nothing; use larger "
                                f"sizes, e.g. {ok[0] if ok else 32}") from None


def build_network(cfg: RunConfig, device: torch.device, init_images: torch.Tensor | None) -> nn.Module:
    check_budget_before_building(lambda: build_model(cfg.model), cfg.budget, cfg.allow_over_budget,
                                 name=f"model ({cfg.model.family})")
    check_input_sizes(cfg)
    model = build_model(cfg.model)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if init_images is not None and hasattr(model, "init_from_data"):
        model.init_from_data(init_images.float().div(255))  # data-dependent init (e.g. patch whitening)
    return model


def load_teacher(cfg: RunConfig, device: torch.device) -> nn.Module | None:
    if cfg.train.distill is None:
        return None
    teacher, _ = load_trained_model(cfg.train.distill.teacher, device)
    if cfg.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


_LOOP_TYPES: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "batch": int, "step": int, "best_val_acc": (int, float), "best_epoch": int,
    "epochs_since_best": int, "train_time_s": (int, float), "wall_time_s": (int, float), "partial": dict,
    "stopped_early": bool}


def _loop_state(loop: Any, where: Path) -> LoopState:
    """A checkpoint's loop counters, checked field by field (a damaged file is a one-line error)."""
    if not isinstance(loop, dict) or set(loop) != {f.name for f in fields(LoopState)}:
        raise UserError(f"{where}: damaged checkpoint (its loop state is not resnet5m's)")
    for name, value in loop.items():
        if not isinstance(value, _LOOP_TYPES[name]) or (value is True or value is False) != (name == "stopped_early"):
            raise UserError(f"{where}: damaged checkpoint (loop.{name} = {str(value)[:40]})")
    return LoopState(**loop)


def check_same_config(saved: Any, cfg: RunConfig, where: Path) -> None:
    """A resume continues the config its checkpoint was saved with: an edit to config.yaml since (more
    epochs, another lr, EMA added) would silently mix two recipes in one result, so it is refused, naming
    the first changed key. Checkpoints from before the config was recorded (no ``config``) are accepted."""
    if saved is None:
        return
    try:
        saved = json.loads(saved) if isinstance(saved, str) and len(saved) < 1_000_000 else None
    except (ValueError, RecursionError):  # not JSON, absurdly nested, a 5,000-digit number
        saved = None
    if not isinstance(saved, dict):
        raise UserError(f"{where}: damaged checkpoint (its recorded config is not resnet5m's)")
    diff = changed_since(saved, cfg)
    if diff:
        key, old, new = diff
        raise UserError(f"{where.parent}: {key} is {str(new)[:40]} in its {rundir.CONFIG} but was {str(old)[:40]} "
                        f"when {where.name} was saved; --resume continues a run exactly (a new config from its "
                        "weights: a new run, --init-from RUN)")


def check_distributable(cfg: RunConfig, dist: Dist) -> None:
    """What several processes cannot do, as one-line errors (raised identically on every rank)."""
    if cfg.train.batch_size % dist.world:
        raise UserError(f"train.batch_size {cfg.train.batch_size} is not divisible by the {dist.world} processes; "
                        "the batch size is the global batch")
    if cfg.train.mixup or cfg.train.cutmix:
        raise UserError("train.mixup/cutmix pair images across the whole batch; not supported with several processes")
    if cfg.train.select:
        raise UserError("train.select picks the hardest examples of the whole batch; not supported with several "
                        "processes")


# --- the run -----------------------------------------------------------------------------------------

class Trainer:
    """Holds what one run builds from its config; :meth:`fit` runs the epochs."""

    def __init__(self, cfg: RunConfig, data: Cifar10, run_dir: Path, *, out: Printer = print,
                 progress: bool = True, dist: Dist | None = None) -> None:
        self.process_start = time.perf_counter()
        self.dist = dist = dist or from_env()  # one process unless launched by torchrun
        self.cfg, self.data, self.run_dir, self.show_progress = cfg, data, run_dir, progress and dist.is_main
        self.out = out if dist.is_main else (lambda s: None)
        self.device = resolve_device(cfg.device)
        if dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", dist.local_rank)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        set_deterministic(cfg.deterministic)
        seed_everything(cfg.seed)
        self.splits = make_splits(cfg, data, self.device)
        self.dtype = precision_dtype(cfg.precision, self.device)
        self.model = build_network(cfg, self.device, self.splits.train_x[:5000])
        self.params = count_parameters(self.model)
        t = cfg.train
        if len(self.splits.train_x) < t.batch_size:
            raise UserError(f"train.batch_size {t.batch_size} exceeds the {len(self.splits.train_x)} training images")
        if dist.enabled:
            check_distributable(cfg, dist)
        if cfg.sync_batchnorm:  # also in one process: the same statistics code as with several
            self.model = sync_batchnorm(self.model, self.device)
        # train.select: each step draws a larger candidate batch; the model trains on batch_size of it
        candidates = t.batch_size
        if t.select is not None:
            candidates = candidate_batch_size(t.batch_size, t.select.keep)
            if len(self.splits.train_x) < candidates:
                raise UserError(f"train.select: the candidate batch ({candidates} = batch_size {t.batch_size} / keep "
                                f"{t.select.keep:g}) exceeds the {len(self.splits.train_x)} training images")
        self.proxy: nn.Module | None = None  # the trained proxy (train.select), from fit or the checkpoint
        self.loader = BatchLoader(self.splits.train_x, self.splits.train_y, candidates,
                                  augment=build_augment(cfg.augment), seed=cfg.seed, channels_last=cfg.channels_last,
                                  shard=(dist.rank, dist.world))
        self.steps_per_epoch = len(self.loader)
        self.total_steps = max(1, math.ceil(t.epochs * self.steps_per_epoch))
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.optimizers = build_optimizers(self.model, cfg.optimizer, t.batch_size)
        self.schedule = Schedule(cfg.schedule, self.total_steps, self.steps_per_epoch)
        self.average = WeightAverage(self.model, t.ema, self.total_steps, self.steps_per_epoch) if t.ema else None
        teacher = load_teacher(cfg, self.device)
        distill = t.distill
        forward: nn.Module | None = None
        if dist.enabled:  # gradients averaged over ranks (FastNet's whitening bias stops training mid-run)
            forward = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=hasattr(self.model, "on_epoch_start"))
        if cfg.compile:
            forward = torch.compile(forward or self.model)
        self.parts = StepParts(
            model=self.model, optimizers=self.optimizers,
            loss=make_loss(t.label_smoothing, teacher, *((distill.temperature, distill.alpha) if distill else ())),
            forward=forward, schedule=self.schedule.factor,
            device=self.device, dtype=self.dtype, grad_clip=t.grad_clip,
            scaler=torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16))
        self.metrics = rundir.MetricsLog(run_dir, write=dist.is_main)
        self.state = LoopState()
        self.stop = StopRequest()
        self.step_losses: list[float] = []  # this process's steps, global-batch losses (train.log_steps)

    def wall_time(self) -> float:
        """Wall time of the whole run: earlier processes (up to their checkpoint) plus this one."""
        return self.state.wall_time_s + time.perf_counter() - self.process_start

    def resolution(self, step: int) -> tuple[int, str] | None:
        """Progressive resizing at ``step``: ``(size, mode)``, or None for full-size batches."""
        return resolution_at(self.cfg.train.resolution_schedule, step, self.steps_per_epoch)

    def eval_model(self) -> nn.Module:
        return self.average.model_for_eval(self.model) if self.average else self.model

    # -- checkpoints --

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(self.run_dir / rundir.RESUME, {
            "loop": {**asdict(self.state), "wall_time_s": self.wall_time()}, "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers], "schedule": self.schedule.state_dict(),
            "average": self.average.state_dict() if self.average else None,
            "scaler": self.parts.scaler.state_dict(), "rng": rng_state(self.device),
            "config": json.dumps(resume_fingerprint(self.cfg), sort_keys=True),
            **({"proxy": self.proxy.state_dict()} if self.proxy is not None else {})})

    def load_checkpoint(self) -> None:
        path = self.run_dir / rundir.RESUME
        ck = load_checkpoint(path)
        state = _loop_state(ck["loop"], path)
        check_same_config(ck.get("config"), self.cfg, path)
        try:
            self.model.load_state_dict(ck["model"])
            for opt, sd in zip(self.optimizers, ck["optimizers"], strict=True):
                opt.load_state_dict(sd)
            self.schedule.load_state_dict(ck["schedule"])
            if self.average is not None and ck["average"] is not None:
                self.average.load_state_dict(ck["average"], self.device)
            self.parts.scaler.load_state_dict(ck["scaler"])
            set_rng_state(ck["rng"], self.device)
            if self.cfg.train.select is not None:
                self.proxy = build_proxy(self.cfg, self.device, ck["proxy"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise UserError(f"{path}: does not match this run's config "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
        self.state = state
        self.metrics.load(completed_epochs=state.epoch)
        self.step_losses = self.metrics.read_steps()[:state.step]

    def save_weights(self, name: str, epoch: int, val_acc: float | None) -> None:
        if not self.dist.is_main:
            return
        save_weights(self.run_dir / name, self.eval_model(),
                     {"epoch": epoch + 1, "val_acc": val_acc, "seed": self.cfg.seed, "run": self.run_dir.name,
                      "tta": self.cfg.eval.tta,
                      "budget": self.cfg.budget, "allow_over_budget": self.cfg.allow_over_budget})

    # -- one epoch --

    def _prepare(self, epoch: int) -> Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]:
        """Batch -> (inputs, targets): mixup/cutmix (seeded per batch, so resume is exact) or as is."""
        t, seed = self.cfg.train, self.cfg.seed
        if not (t.mixup or t.cutmix):
            return lambda b: (b.images, b.labels)
        return lambda b: mix_batch(b.images, b.labels, self.cfg.model.num_classes, t.mixup, t.cutmix,
                                   torch.Generator().manual_seed(mix_seed(seed, epoch, b.number, 0x313C)))

    def _nonfinite(self, epoch: int) -> Callable[[int, str], None]:
        def stop(batch: int, what: str) -> None:
            last = self.run_dir / rundir.LAST
            kept = f"the last good checkpoint ({last}) is intact" if last.exists() else "no checkpoint was written yet"
            raise NonFiniteLoss(f"loss became {what} at epoch {epoch + 1}, step {batch + 1} of the epoch; "
                                f"stopping ({kept}). Lower the lr or add train.grad_clip")
        return stop

    def prepare_proxy(self) -> None:
        """Train the proxy of ``train.select`` (its time counts as training time: it is part of the recipe)."""
        t0 = time.perf_counter()
        self.proxy = train_proxy(self.cfg, self.data)
        elapsed = time.perf_counter() - t0
        self.state.train_time_s += elapsed
        epochs = self.cfg.train.select.proxy_epochs if self.cfg.train.select else 0
        params = count_parameters(self.proxy, trainable_only=False)
        self.out(f"train.select: proxy of {params:,} params trained for {epochs:g} epochs in {elapsed:.1f}s")

    def _batches(self, epoch: int, start: int) -> Iterator[Batch]:
        batches = self.loader.epoch(epoch, start=start,
                                    resolution=lambda b: self.resolution(epoch * self.steps_per_epoch + b))
        if self.proxy is None:
            return batches
        proxy, keep, dtype = self.proxy, self.cfg.train.batch_size, self.dtype
        return (select_hardest(proxy, b, keep, dtype) for b in batches)  # scoring counts as data time

    def train_epoch(self, epoch: int) -> Meter:
        s = self.state
        if self.cfg.train.select is not None and self.proxy is None:
            self.prepare_proxy()  # once, before the first epoch (a resumed run loads it from the checkpoint)
        self.model.train()
        if hasattr(self.model, "on_epoch_start"):
            self.model.on_epoch_start(epoch)
        meter = Meter.start(self.device, s.partial if self.dist.is_main else None)  # saved sums are global
        progress = EpochProgress(epoch, self.epochs, self.steps_per_epoch - s.batch, enabled=self.show_progress)
        log = StepLog(1 if self.device.type == "cpu" else 25, progress,
                      lambda: self.optimizers[0].param_groups[0]["lr"], self._nonfinite(epoch))
        batches = self._batches(epoch, s.batch)
        t0 = time.perf_counter()
        try:
            train_epoch(self.parts, batches, s, meter, log, total_steps=self.total_steps, prepare=self._prepare(epoch),
                        average=self.average, stop_requested=self.stop_agreed, global_loss=self.dist.mean)
        finally:
            progress.close()
        elapsed = time.perf_counter() - t0
        meter.time += elapsed
        s.train_time_s += elapsed
        self.step_losses += log.losses
        meter = meter.summed(self.dist.sum)
        if self.stop_agreed() and s.batch < self.steps_per_epoch and s.step < self.total_steps:
            s.partial = meter.state()
            self.save_checkpoint()
            raise TrainingInterrupted(self.run_dir, epoch, s.batch)
        s.partial = {}
        return meter

    def stop_agreed(self) -> bool:
        """Whether to stop here: a Ctrl-C/SIGTERM/time limit on any process stops every process at the
        same step (all ranks call this at the same points)."""
        self.stop.requested = self.dist.any(self.stop.requested)
        return self.stop.requested

    def validate(self) -> tuple[float | None, float | None]:
        if len(self.splits.val_y) == 0:
            return None, None
        logits = predict_logits(self.eval_model(), self.splits.val_x, batch_size=self.cfg.train.eval_batch_size,
                                device=self.device, channels_last=self.cfg.channels_last, dtype=self.dtype,
                                dist=self.dist)
        r = evaluate_logits(logits, self.splits.val_y, self.cfg.model.num_classes)
        return r.loss, r.accuracy

    # -- the epochs --

    def fit(self, resume: bool = False, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> LoopState:
        """Run the remaining epochs. ``on_epoch(row)`` sees each finished epoch's metrics row after its
        checkpoint is written (e.g. a search reports it; an exception it raises stops the run there)."""
        if resume:
            self.load_checkpoint()  # a resume needs only its checkpoint (not train.init_from's file)
            if self.state.step > self.total_steps:  # config.yaml edited after the checkpoint: refuse, not mislabel
                raise UserError(f"{self.run_dir}: its checkpoint has {self.state.step} steps done, more than the "
                                f"{self.total_steps} its {rundir.CONFIG} plans (train.epochs "
                                f"{self.cfg.train.epochs:g}); was the config edited? refused")
            self.out(f"resuming {self.run_dir} at epoch {self.state.epoch + 1}, batch {self.state.batch}")
        elif self.cfg.train.init_from:  # every rank loads the same file: their models stay identical
            self.out(f"starting from the weights in {load_weights_into(self.model, self.cfg.train.init_from)}")
        s, patience = self.state, self.cfg.train.early_stopping_patience
        with self.stop.installed():
            while s.epoch < self.epochs and s.step < self.total_steps and not s.stopped_early:
                epoch = s.epoch
                meter = self.train_epoch(epoch)
                val_loss, val_acc = self.validate()
                self.schedule.epoch_end(val_acc)
                values = {"epoch": epoch + 1, "lr": self.optimizers[0].param_groups[0]["lr"], "val_loss": val_loss,
                          "val_acc": val_acc, **meter.row()}
                row = {k: values[k] for k in rundir.METRIC_FIELDS}
                # an epoch whose validation loss is not finite (overflowing logits) is never the best model
                improved = val_acc is not None and val_acc > s.best_val_acc and math.isfinite(val_loss)
                if improved:
                    s.best_val_acc, s.best_epoch, s.epochs_since_best = val_acc, epoch, 0
                    self.save_weights(rundir.BEST, epoch, val_acc)
                elif val_acc is not None:
                    s.epochs_since_best += 1
                s.epoch, s.batch = epoch + 1, 0
                s.stopped_early = patience is not None and val_acc is not None and s.epochs_since_best >= patience
                self.metrics.append(row)
                last_epoch = s.epoch >= self.epochs or s.step >= self.total_steps or s.stopped_early
                stop = self.stop_agreed()
                if last_epoch or s.epoch % self.cfg.train.checkpoint_every == 0 or stop:
                    self.save_weights(rundir.LAST, epoch, val_acc)
                    self.save_checkpoint()
                if self.cfg.train.log_steps:
                    self.metrics.write_steps(self.step_losses)
                self.out(_epoch_line(row, self.epochs, improved))
                if on_epoch is not None:
                    on_epoch(row)
                if stop and not last_epoch:
                    raise TrainingInterrupted(self.run_dir, s.epoch, 0)
        if len(self.splits.val_y) == 0 or s.best_epoch < 0:  # no validation (or no epoch with a finite
            # validation loss): the last epoch is the selected model
            if len(self.splits.val_y):
                self.out("no epoch had a finite validation loss; the last epoch is the selected model")
            self.save_weights(rundir.BEST, s.epoch - 1, None)
            s.best_epoch = s.epoch - 1
        return s


def _epoch_line(row: dict[str, Any], epochs: int, improved: bool) -> str:
    val = f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}{' *' if improved else ''}" \
        if row["val_acc"] is not None else "no validation split"
    return (f"epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.4f}  {val}  {row['time_s']:.1f}s  {row['images_per_s']:.0f} img/s")
