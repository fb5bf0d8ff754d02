"""The fine-tuning loop as a small state object: :class:`Trainer` builds the network, optimiser,
scheduler and loaders of one run, and offers :meth:`~Trainer.step` (one optimiser step),
:meth:`~Trainer.train_epoch`, :meth:`~Trainer.evaluate`, :meth:`~Trainer.checkpoint` and
:meth:`~Trainer.resume`; :class:`~.checkpoint.TrainState` is what a checkpoint carries besides
the tensors, and :mod:`.run_report` turns a finished trainer into ``report.json``.

Resume is exact: a checkpoint (written atomically after every epoch) holds the model, optimiser,
scheduler and scaler states, every rank's dropout RNG state, and the ``TrainState``; batch
order and augmentation are seeded by ``(seed, epoch)``, so a run killed at any moment and resumed
computes the same weights bit for bit (with the same number of ranks).

Under DDP every rank runs the same :class:`Trainer`; collectives (loss checks, failure lists, RNG
states) are called by every rank at the same points, and rank 0 alone writes files.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .._distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
)
from .._distributed import backend as dist_backend
from .._runtime import progress_bar
from ..atomic import atomic_write_json
from ..backbones.registry import get_spec
from ..backbones.weights import weights_sha256
from ..sources.folders import ImageSource
from ..sources.loader import Batch, normalize_batch
from ..stats import format_lr, plural
from .checkpoint import CHECKPOINT_KIND, TrainState, check_resume_precision
from .config import FinetuneConfig
from .data import EpochSampler, SplitDataset, eval_loader, loader_workers, make_loader
from .ddp import convert_sync_bn, gather_rng_states, rank_seed, restore_rng
from .evaluation import (
    Evaluation,
    amp_dtype,
    autocast,
    evaluate,
    finite,
    fmt,
)
from .model_file import atomic_torch_save, read_model_file, save_model_file
from .net import build_finetune_model
from .optim import build_optimizer, build_scheduler, warmup_steps
from .plots import bin_steps, plot_curves
from .split import Split

log = logging.getLogger(__name__)

#: the default warmup (a shortened default warmup is logged as information, not a warning)
DEFAULT_WARMUP_EPOCHS = FinetuneConfig.__dataclass_fields__["warmup_epochs"].default


class Diverged(Exception):
    """The training loss became NaN/inf (raised on every rank at the same step)."""


class Trainer:
    """One fine-tuning run of ``cfg`` on ``split`` into the run folder ``out``.

    ``saved`` (a loaded ``checkpoint.pt``) continues that run. Call inside the run context (the
    global RNG seeded by ``cfg.seed``): the head init and dropout draw from it.
    """

    def __init__(self, split: Split, out: Path, cfg: FinetuneConfig, device: torch.device, *,
                 di: DistInfo, saved: dict[str, Any] | None = None, command: str = "") -> None:
        self.t_start = time.perf_counter()
        self.split, self.out, self.cfg, self.device, self.di = split, out, cfg, device, di
        self.progress, self.command = cfg.runtime.progress, command
        self.train_src: ImageSource = split.source("train")
        self.val_src: ImageSource = split.source("val")
        self.per_rank = -(-len(self.train_src) // di.world)
        if self.per_rank < 2:
            raise ValueError(f"{len(self.train_src)} training images cannot be shared by "
                             f"{di.world} processes (BatchNorm needs two images per step): use "
                             "fewer processes.")
        self.sync_bn = cfg.sync_bn and di.enabled  # CPU + DDP was refused by finetune()
        if cfg.sync_bn and not di.enabled:
            log.info("sync_bn has no effect in one process (BatchNorm already sees the whole "
                     "batch)")
        self._build_model()
        self.state = TrainState()
        self.resumed_from: int | None = None
        if saved is not None:
            self.resume(saved)
        self.first_epoch_this_session = len(self.state.history)
        self._new_failures: list[tuple[str, str]] = []
        self._plotted = -1  # epochs in curves.png as written by this session
        self._prepare()

    # ------------------------------------------------------------------------------ set-up

    def _build_model(self) -> None:
        cfg, di = self.cfg, self.di
        # the same head init on every rank (seeded by cfg.seed; DDP also broadcasts rank 0's)
        net, self.resolved, self.pp = build_finetune_model(cfg, self.split.classes)
        net.freeze(cfg.freeze, backbone=cfg.state == "head-only")
        if self.sync_bn:
            net = convert_sync_bn(net)
        if cfg.channels_last:
            net.to(memory_format=torch.channels_last)
        self.net = net.to(self.device)
        if di.enabled:  # each rank its own dropout stream (one process keeps the plain seed)
            torch.manual_seed(rank_seed(cfg.seed, di.rank, 0))
        self.precision, self.amp = amp_dtype(cfg.runtime.precision, self.device)
        self.optimizer = build_optimizer(self.net, cfg)
        self.drop_last = self.per_rank % cfg.runtime.batch_size == 1
        self.steps = (self.per_rank // cfg.runtime.batch_size if self.drop_last
                      else math.ceil(self.per_rank / cfg.runtime.batch_size))
        self.scheduler = build_scheduler(self.optimizer, cfg, self.steps)
        self.warmup = self._warmup_record()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16"
                                           and self.device.type == "cuda")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    def _warmup_record(self) -> dict[str, Any]:
        """The warmup used (clamped to half of the run's steps; logged when it was)."""
        cfg, steps = self.cfg, self.steps
        used, asked = warmup_steps(cfg, steps)
        rec: dict[str, Any] = {
            "warmup_epochs": cfg.warmup_epochs, "steps_asked": asked, "steps": used,
            "epochs": used / steps if steps else 0.0, "clamped": used < asked,
            "total_steps": cfg.epochs * steps}
        if used < asked and self.di.is_main:
            # the default warmup on a short run is shortened as documented: said, not warned
            level = logging.INFO if cfg.warmup_epochs == DEFAULT_WARMUP_EPOCHS else \
                logging.WARNING
            log.log(level, "warmup_epochs=%g (%d steps) would take %s of the %d-epoch run (%d "
                        "steps): warming up over %d steps (%.2f epochs, half the run) instead",
                        cfg.warmup_epochs, asked, "all" if asked >= cfg.epochs * steps else
                        "more than half", cfg.epochs, cfg.epochs * steps, used, rec["epochs"])
            rec["note"] = ("warmup shortened to half of the run's optimiser steps (a warmup may "
                           "never take more)")
        return rec

    def resume(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimiser, schedule, scaler, RNG and state.

        Exact with the checkpoint's number of ranks; with another, the schedule continues at the
        new steps per epoch and each rank gets a fresh dropout stream (logged as not exact).
        """
        check_resume_precision(saved, self.precision, self.device)
        self.net.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler"):  # an fp32/bf16 run saves the disabled scaler's empty state
            self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainState.from_checkpoint(saved)
        start = self.state.epoch
        saved_world = int(saved.get("world_size", 1))
        if saved_world != self.di.world:
            log.warning("resuming a run trained by %d process(es) with %d: the batches differ "
                        "from here on and the schedule continues from epoch %d at %d steps per "
                        "epoch (not an exact continuation)", saved_world, self.di.world, start,
                        self.steps)
            self.scheduler = build_scheduler(self.optimizer, self.cfg, self.steps,
                                             start_step=start * self.steps)
        restore_rng(saved["rng"], self.di, self.device, seed=self.cfg.seed, epoch=start)
        self.resumed_from = start
        log.info("resuming %s from epoch %d/%d", self.out, start, self.cfg.epochs)

    def _prepare(self) -> None:
        cfg, di, device = self.cfg, self.di, self.device
        if di.is_main:
            atomic_write_json(self.out / "split.json", self.split.to_dict())
            atomic_write_json(self.out / "config.json", {**cfg.to_dict(), "world_size": di.world})
        self.model: nn.Module = self.net
        if di.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.net, device_ids=[device.index] if device.type == "cuda" else None)
        self._log_start()
        self.sampler = EpochSampler(len(self.train_src), cfg.seed, di.rank, di.world)
        dataset = SplitDataset(self.train_src, self.pp, train=True, augment=cfg.augment,
                               crop_scale=cfg.crop_scale, hflip=cfg.hflip, seed=cfg.seed,
                               max_pixels=cfg.runtime.max_pixels)
        self.train_loader: DataLoader | None = make_loader(
            dataset, batch_size=cfg.runtime.batch_size,
            workers=loader_workers(cfg, device, self.per_rank),
            seed=cfg.seed, sampler=self.sampler, drop_last=self.drop_last,
            pin=device.type == "cuda")
        self.val_loader: DataLoader | None = (eval_loader(self.val_src, self.pp, cfg, device, di)
                                              if len(self.val_src) else None)
        self.train_labels = torch.as_tensor(self.train_src.labels)
        self.trainable = [p for p in self.net.parameters() if p.requires_grad]

    def groups(self) -> list[dict[str, Any]]:
        """The optimiser groups: name, base learning rate, parameter count."""
        return [{"name": g["name"], "lr": g.get("initial_lr", g["lr"]),
                 "params": int(sum(p.numel() for p in g["params"]))}
                for g in self.optimizer.param_groups]

    def _log_start(self) -> None:
        cfg, di = self.cfg, self.di
        total = sum(p.numel() for p in self.net.parameters())
        trainable = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        batch = cfg.runtime.batch_size
        ddp = (f", DDP over {di.world} processes ({dist_backend()}), batch {batch} per "
               f"process = {batch * di.world}{', SyncBatchNorm' if self.sync_bn else ''}"
               if di.enabled else "")
        log.info("%s %s on %s (%s%s): %d classes, %d train / %d val / %d test images at %d px; "
                 "%s of %s parameters train (%s)", cfg.state, cfg.backbone, self.device,
                 self.precision, ddp, len(self.split.classes), len(self.train_src),
                 len(self.val_src), len(self.split.test), self.pp.crop, f"{trainable:,}",
                 f"{total:,}", ", ".join(f"{g['name']} lr {format_lr(g['lr'])}"
                                         for g in self.groups()))

    # ------------------------------------------------------------------------------ training

    def step(self, batch: Batch, index: int) -> tuple[float, int, int]:
        """One optimiser step on ``batch`` (and one scheduler step, always).

        Returns ``(loss sum, correct, images)`` of the batch; zeros when it is skipped (fewer than
        two readable images on some rank: under DDP all ranks step, or none does).

        Raises:
            Diverged: the (ranks' mean) loss is NaN/inf.
        """
        self._new_failures.extend((os.fspath(self.train_src.abspath(k)), r)
                                  for k, r in batch.failures)
        usable = len(batch.indices) >= 2
        if self.di.enabled:
            usable = all_reduce_sum([not usable])[0] == 0
        out = (0.0, 0, 0)
        if usable:
            out = self._optimise(batch, index)
        self.scheduler.step()
        return out

    def _optimise(self, batch: Batch, index: int) -> tuple[float, int, int]:
        cfg = self.cfg
        x = normalize_batch(batch.images.to(self.device, non_blocking=True), self.pp,
                            channels_last=cfg.channels_last)
        y = self.train_labels[batch.indices].to(self.device, non_blocking=True)
        with autocast(self.device, self.amp):
            logits = self.model(x)
            loss = self.criterion(logits.float(), y)
        # the ranks' mean loss: NaN/inf on any rank stops every rank at this step (one host sync
        # per step, kept: an fp32 step with a NaN loss would write NaN into the weights)
        local_loss = loss_value = float(loss.detach())
        if self.di.enabled:
            loss_value = all_reduce_sum([loss_value])[0] / self.di.world
        if not math.isfinite(loss_value):
            lrs = ", ".join(f"{g['name']} {format_lr(g['lr'])}"
                            for g in self.optimizer.param_groups)
            raise Diverged(f"the training loss became {loss_value} at epoch "
                           f"{self.state.epoch + 1}, step {index + 1} (learning rates {lrs})")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        n = len(batch.indices)
        return local_loss * n, int((logits.detach().argmax(1) == y).sum()), n

    def train_epoch(self) -> tuple[dict[str, Any], Evaluation | None]:
        """Train one epoch and validate: ``(history record, validation evaluation or None)``."""
        assert self.train_loader is not None
        cfg, di, epoch = self.cfg, self.di, self.state.epoch
        t0 = time.perf_counter()
        self.model.train()
        self.sampler.set_epoch(epoch)
        lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        loss_sum = 0.0
        correct: float = 0  # counts (floats once summed over ranks below)
        seen: float = 0
        steps: list[tuple[float, float]] = []  # per optimiser step: (loss, accuracy), this rank
        bar = progress_bar(self.per_rank, f"epoch {epoch + 1}/{cfg.epochs}",
                           enabled=self.progress and di.is_main, leave=False)
        try:
            for index, batch in enumerate(self.train_loader):
                if bar is not None:
                    bar.update(len(batch.indices) + len(batch.failures))
                dl, dc, dn = self.step(batch, index)
                loss_sum, correct, seen = loss_sum + dl, correct + dc, seen + dn
                if dn:
                    steps.append((dl / dn, dc / dn))
        finally:
            if bar is not None:
                bar.close()
        self.merge_failures()
        step_loss, step_acc = bin_steps([a for a, _ in steps]), bin_steps([b for _, b in steps])
        if di.enabled:
            # whole-job training figures (padding repeats included), and rank 0's BatchNorm
            # statistics everywhere: what the checkpoint holds and validation must use; every
            # rank took the same steps, so the binned step curves have the same length
            loss_sum, correct, seen = all_reduce_sum([loss_sum, correct, seen])
            n = len(step_loss)
            both = all_reduce_sum(step_loss + step_acc) if n else []
            step_loss = [v / di.world for v in both[:n]]
            step_acc = [v / di.world for v in both[n:]]
            broadcast_buffers(self.net)
        rec: dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": loss_sum / max(1, seen),
            "train_acc": correct / max(1, seen), "val_loss": None, "val_acc": None,
            "lr": lrs, "world_size": di.world, "steps": len(steps),
            "step_loss": step_loss, "step_acc": step_acc}
        ev = None
        if self.val_loader is not None:
            ev = self.evaluate(self.val_loader, self.val_src)
            rec["val_loss"], rec["val_acc"] = finite(ev.loss), finite(ev.accuracy)
            if rec["val_acc"] is None:
                rec["val_note"] = (f"no validation image of the {len(self.val_src)} could be "
                                   "read: the epoch counts as an improvement")
        rec["seconds"] = time.perf_counter() - t0
        rec["images_per_s"] = seen / rec["seconds"] if rec["seconds"] > 0 else 0.0
        return rec, ev

    def merge_failures(self) -> None:
        """Every rank's unreadable training images since the last call, logged once (rank 0's
        log); a collective."""
        for path, r in sorted(f for part in all_gather_objects(self._new_failures) for f in part):
            if path not in self.state.failures:
                log.warning("skipping %s: %s", path, r)
                self.state.failures[path] = r
        self._new_failures.clear()

    def evaluate(self, loader: DataLoader, src: ImageSource,
                 progress: str | None = None) -> Evaluation:
        """Loss, accuracy and predictions over ``src`` (whole set, reduced over ranks);
        unreadable images are added to the run's failures."""
        ev = evaluate(self.net, loader, src.labels, self.pp, device=self.device, amp=self.amp,
                      channels_last=self.cfg.channels_last, n_classes=len(self.split.classes),
                      progress=progress, reduce=self.di.enabled)
        for k, r in ev.failures:
            self.state.failures.setdefault(os.fspath(src.abspath(k)), r)
        return ev

    def end_epoch(self, rec: dict[str, Any], ev: Evaluation | None) -> bool:
        """Record the epoch; save ``model.pt`` when validation improved, count patience
        otherwise. Returns whether it improved (always True without a validation part)."""
        st = self.state
        if ev is not None and rec["val_acc"] is None:
            ev = None  # nothing could be validated: as without a validation part
        improved = ev is None or (ev.accuracy > st.best_accuracy or (
            ev.accuracy == st.best_accuracy and ev.loss < st.best_loss))
        st.history.append(rec)
        st.epoch += 1
        if improved:
            st.best_epoch, st.bad_epochs = st.epoch, 0
            if ev is not None:
                st.best_accuracy, st.best_loss = float(rec["val_acc"]), float(rec["val_loss"])
            if self.di.is_main:
                self.save_model(rec["val_acc"])
        else:
            st.bad_epochs += 1
            if self.cfg.early_stopping is not None and st.bad_epochs >= self.cfg.early_stopping:
                st.stopped = "early-stopped"
                log.info("early stopping: no validation improvement for %s (best epoch "
                         "%d)", plural(st.bad_epochs, "epoch"), st.best_epoch)
        return improved

    def save_model(self, val_accuracy: float | None) -> None:
        """Write ``model.pt`` (the best epoch so far)."""
        save_model_file(self.net, self.out / "model.pt", config=self.cfg.to_dict(),
                        family=get_spec(self.cfg.backbone).family,
                        base_weights=self.resolved.id,
                        base_weights_sha256=weights_sha256(self.resolved) or "",
                        preprocessing=self.pp.to_dict(), epoch=self.state.epoch,
                        val_accuracy=val_accuracy, command=self.command, world=self.di.world)

    def checkpoint(self) -> None:
        """Write ``checkpoint.pt`` (rank 0; every rank must call it: the RNG states are
        gathered)."""
        mine, per_rank = gather_rng_states(self.device)
        if not self.di.is_main:
            return
        st = self.state.to_checkpoint()
        atomic_torch_save({
            "format": 1, "kind": CHECKPOINT_KIND, "epoch": st.pop("epoch"),
            "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "rng": {"torch": mine["torch"], "cuda": mine["cuda"], "per_rank": per_rank},
            "world_size": self.di.world, "precision": self.precision,
            "device": str(self.device), **st,
            "config": self.cfg.to_dict(), "split": self.split.to_dict(),
        }, self.out / "checkpoint.pt")

    def fit(self) -> str | None:
        """Train until ``epochs`` or early stopping; returns the divergence message, if any."""
        cfg = self.cfg
        try:
            while self.state.epoch < cfg.epochs and self.state.stopped is None:
                rec, ev = self.train_epoch()
                improved = self.end_epoch(rec, ev)
                self.checkpoint()
                log.info("epoch %d/%d  train loss %.4f acc %.3f  val loss %s acc %s  %s  %.1fs "
                         "(%.0f img/s)%s", self.state.epoch, cfg.epochs, rec["train_loss"],
                         rec["train_acc"], fmt(rec["val_loss"], ".4f"), fmt(rec["val_acc"], ".3f"),
                         epoch_lr(rec.get("lr"), self.optimizer.param_groups[0]["lr"]),
                         rec["seconds"],
                         rec["images_per_s"], "  *best" if improved else "")
                if self.di.is_main:
                    self.plot()
        except Diverged as e:
            self.merge_failures()
            return str(e)
        finally:  # stops the loaders' worker processes
            self.train_loader = self.val_loader = None
        return None

    def plot(self) -> None:
        """Write ``curves.png`` (unless it already shows every epoch of the history)."""
        if self._plotted == len(self.state.history):
            return
        plot_curves(self.state.history, self.out / "curves.png",
                    title=f"{self.cfg.backbone} {self.cfg.state} ({self.pp.crop} px)")
        self._plotted = len(self.state.history)

    def test(self) -> Evaluation | None:
        """The best epoch's ``model.pt`` on the test part (None without either)."""
        test_src = self.split.source("test")
        model_path = self.out / "model.pt"
        barrier()  # rank 0 has written model.pt before any rank looks for it
        if not (model_path.is_file() and len(test_src)):
            return None
        sd, _ = read_model_file(model_path)
        self.net.load_stock_state_dict(sd)
        loader = eval_loader(test_src, self.pp, self.cfg, self.device, self.di)
        return self.evaluate(loader, test_src,
                             progress="test" if self.progress and self.di.is_main else None)


def epoch_lr(start: Any, end: float) -> str:
    """The first group's learning rate over an epoch: ``lr 1e-04`` (its value at the epoch's
    first step, ``start``, the history's ``lr``), or ``lr 6.27e-07->1e-03`` when the schedule
    moved it by more than 5% by the end of the epoch (``end``: a warmup epoch would otherwise
    print only its first, tiny rate); an ``end`` of 0 (a cosine schedule after the run's last
    step) is not shown."""
    first = next(iter(start.values()), None) if isinstance(start, dict) else start
    if first is None:
        return f"lr {format_lr(end)}"
    if end and first and abs(end - first) > 0.05 * max(abs(first), abs(end)):
        return f"lr {format_lr(first)}->{format_lr(end)}"
    return f"lr {format_lr(first)}"
