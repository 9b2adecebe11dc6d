"""The vlsdk trainer: AMP, accumulation, warm-up + cosine, clipping, MoE losses, exact resume."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vlsdk.models.collector import routing_collectors
from vlsdk.models.features import RouterStats
from vlsdk.train.config import TrainConfig
from vlsdk.train.distributed import (
    allreduce_gradients,
    allreduce_mean,
    barrier,
    broadcast_model,
    flagged_ranks,
    init_from_env,
    max_over_ranks,
)
from vlsdk.train.loggers import ExperimentLog, check_loggers
from vlsdk.train.nonfinite import RunningStats, rng_state, trace_nonfinite
from vlsdk.train.routing_log import RoutingLog

__all__ = ["Trainer", "TrainResult", "recover_checkpoint", "warmup_cosine", "to_device"]

LossFn = Callable[[nn.Module, Any], "torch.Tensor | Mapping[str, torch.Tensor]"]
EvalFn = Callable[[nn.Module], Mapping[str, float]]
CHECKPOINT = "checkpoint"
STATE = "trainer_state.pt"  # written last (under a temporary name, then renamed): its presence marks a whole checkpoint
WORLD = "train_world.json"  # beside train_config.json: how many ranks ran it, the global batch, the backend


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    step: int
    train: list[dict[str, float]] = field(default_factory=list)
    eval: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    out_of_time: bool = False  # stopped by ``TrainConfig.max_seconds`` before ``steps``


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                  min_ratio: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a nested batch (dicts, lists, tuples, dataclasses stay as they are)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            # (stacked experts' biases are (E, h): named, not 1-d)
            (no_decay if p.ndim <= 1 or name.endswith("bias") or "router" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _RouterLosses:
    """Collects the MoE losses of every encoder forward in a micro-step (from the encoders' routing collectors)."""

    def __init__(self, model: nn.Module) -> None:
        self.aux: list[torch.Tensor] = []
        self.z: list[torch.Tensor] = []
        self.handles = [c.subscribe(self._collect) for _, c in routing_collectors(model)]

    def _collect(self, encoder: nn.Module, stats: list[RouterStats]) -> None:
        for s in stats:
            if not (s.aux_loss.requires_grad or s.z_loss.requires_grad):
                continue  # a frozen or no-grad encoder forward (a distillation teacher, an eval pass)
            self.aux.append(s.aux_loss)
            self.z.append(s.z_loss)

    def take(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        aux = torch.stack(self.aux).mean() if self.aux else None
        z = torch.stack(self.z).mean() if self.z else None
        self.aux, self.z = [], []
        return aux, z

    def close(self) -> None:
        for h in self.handles:
            h.remove()


class Trainer:
    """Train any vlsdk model with a loss function of your own.

    Args:
        model: the model (a :class:`~vlsdk.VLModel` or any ``nn.Module``).
        loss_fn: ``loss_fn(model, batch) -> loss`` or a dict with ``"loss"`` and other scalars to
            log. MoE load-balancing and z-losses of every encoder call are added automatically.
        train_set: a map-style dataset; batches are drawn in a seeded order, so a resumed run
            sees exactly the batches the uninterrupted run would have. Under ``torchrun`` each
            rank takes its slice of every global batch (``batch_size`` per rank).
        config: the :class:`TrainConfig`.
        eval_fn: ``eval_fn(model) -> {"metric": value}``, called every ``eval_every`` steps and at
            the end, in eval mode without gradients.
        collate_fn: the DataLoader's collate function.

    Rank 0 writes to ``config.out_dir``: ``metrics.jsonl`` (per logged train step ``loss``, ``lr``,
    ``samples_per_s`` over all ranks, ``data_share``, ``elapsed_s`` since this ``fit`` call began; on CUDA
    ``max_memory_mib``, this rank's peak, and under torchrun ``max_memory_mib_all_ranks``),
    ``train_config.json`` and ``train_world.json``
    (``world_size``, ``global_batch``, ``backend``). ``config.loggers`` sends every logged train and eval
    scalar to TensorBoard (``out_dir/tensorboard``) and/or MLflow as well (:mod:`vlsdk.train.loggers`); a
    logger whose package is missing is an ``ImportError`` here, before training.

    A non-finite step is skipped, not fatal: when a micro-batch's loss (on any rank: the ranks agree
    through one all-reduce) or, with ``clip_grad``, the gradient norm is NaN or infinite, the
    optimiser does not step, the gradients are zeroed, BatchNorm's running statistics are put back
    to their values before the step, a warning names the step and the loss terms,
    and the step is logged with ``skipped_steps`` (the run's total; present in rows from the first
    skip on). As ``torch.amp.GradScaler`` does, the skipped step still counts: its data is consumed
    and the learning-rate schedule advances, so the schedule and the data order stay those of the
    step count and resume stays exact. ``config.max_skipped_steps`` skips in a row are tolerated;
    the next one raises ``FloatingPointError`` (every rank at the same step; checkpoints are kept).
    The warning also says where a non-finite loss came from: the forward is replayed on the same
    batch with the same random state (on every rank, in case it holds collectives) and the rank that
    saw the value names the first module whose output was NaN or inf (under autocast, also whether
    the forward is finite without it; :func:`vlsdk.train.nonfinite.trace_nonfinite`).
    With fp16 an infinite gradient norm is the gradient scaler's to handle (it skips the step and
    lowers the scale); it is not counted.

    Checkpoints are written to ``checkpoint.tmp`` and swapped in by renames. A start finds what a
    kill during a save left: a complete ``checkpoint.tmp`` (its ``trainer_state.pt`` present) is
    the newest checkpoint and is moved into place with a warning; nothing complete is deleted.

    Example:
        >>> trainer = Trainer(model, loss_fn, dataset, TrainConfig(steps=100, out_dir="runs/x"))  # doctest: +SKIP
        >>> result = trainer.fit()  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, train_set: Dataset, config: TrainConfig | None = None, *,
                 eval_fn: EvalFn | None = None, collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        self.config = config = config or TrainConfig()
        check_loggers(config.loggers, import_now=True)  # a missing or broken logger package fails here, every rank
        self.rank, self.world = init_from_env(config.device)  # joins torchrun's group when WORLD_SIZE > 1
        self.global_batch = config.batch_size * self.world
        if len(train_set) < self.global_batch:  # type: ignore[arg-type]
            raise ValueError(f"the training set has {len(train_set)} samples, fewer than one global batch "  # type: ignore[arg-type]
                             f"({config.batch_size} x {self.world} ranks)")
        self.device = _resolve_device(config.device, self.world)
        self.model = model.to(self.device)
        self._running_stats = RunningStats(self.model)  # a skipped step puts BatchNorm's statistics back
        self.out_dir = Path(config.out_dir)
        if self.rank == 0:
            recover_checkpoint(self.out_dir / CHECKPOINT)  # before any caller asks whether there is one
        broadcast_model(self.model)
        self.loss_fn, self.eval_fn, self.train_set, self.collate_fn = loss_fn, eval_fn, train_set, collate_fn
        self.amp_dtype = _amp_dtype(config.amp, self.device)
        # On CUDA the fused AdamW: one multi-tensor kernel per step, the bias corrections on the device
        # (foreach's reads every parameter's step count on the host: ~1,000 for base, 973 tensors).
        self.optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr,
                                           fused=True if self.device.type == "cuda" else None)
        self.scheduler = warmup_cosine(self.optimizer, config.warmup_steps, config.steps, config.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.step = 0
        self.samples_seen = 0  # global batches drawn x global batch size: the data position for resume
        self.stop_after: int | None = None  # for tests and callers: stop (as if killed) after this step
        self.batch_indices: list[int] = []  # dataset indices of this rank's current micro-batch
        self.saved_step: int | None = None  # the step of the last checkpoint written or loaded
        self.skipped_steps = 0  # optimiser steps skipped for a non-finite loss or gradient, in this run
        self.skipped_in_a_row = 0

    # -- data ---------------------------------------------------------------------------------
    def _indices(self, samples_seen: int):
        """This rank's dataset indices from data position ``samples_seen`` on, epoch after epoch.

        Each epoch is a seeded permutation cut into global batches, each rank taking its slice, so
        the order depends only on ``(seed, samples_seen)``: what makes resume exact.
        """
        per_rank, size = self.config.batch_size, self.global_batch
        per_epoch = len(self.train_set) // size  # type: ignore[arg-type]
        epoch, offset = divmod(samples_seen // size, per_epoch)
        while True:
            g = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
            order = torch.randperm(len(self.train_set), generator=g)[: per_epoch * size]  # type: ignore[arg-type]
            yield from order.view(per_epoch, self.world, per_rank)[offset:, self.rank].reshape(-1).tolist()
            epoch, offset = epoch + 1, 0

    def _batches(self):
        # One DataLoader over an endless index stream: workers start once and keep prefetching
        # across epoch boundaries (a loader per epoch restarted them every epoch).
        per_rank, start = self.config.batch_size, self.samples_seen
        loader = DataLoader(self.train_set, batch_size=per_rank, sampler=_Stream(self._indices, start),
                            collate_fn=self.collate_fn, num_workers=self.config.num_workers, drop_last=True,
                            pin_memory=self.device.type == "cuda")
        mirror = self._indices(start)  # the same stream in this process: the indices of each batch
        for batch in loader:
            self.samples_seen += self.global_batch
            self.batch_indices = [next(mirror) for _ in range(per_rank)]
            yield batch

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write model weights and the full training state to ``out_dir/checkpoint`` (atomically, rank 0).

        The checkpoint is written to ``checkpoint.tmp`` (``trainer_state.pt`` last, by a rename),
        then swapped in: ``checkpoint`` -> ``checkpoint.old``, ``checkpoint.tmp`` -> ``checkpoint``,
        ``checkpoint.old`` removed. A kill at any point leaves a complete checkpoint that
        :func:`recover_checkpoint` finds.
        """
        final = self.out_dir / CHECKPOINT
        self.saved_step = self.step
        if self.rank != 0:
            barrier()
            return final
        tmp = _sibling(final, ".tmp")
        recover_checkpoint(final)  # a complete checkpoint.tmp left by a kill goes into place, never into the bin
        shutil.rmtree(tmp, ignore_errors=True)  # what is left is a save killed before its state was written
        tmp.mkdir(parents=True)
        if hasattr(self.model, "save_pretrained"):
            self.model.save_pretrained(tmp)
        else:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()},
                      str(tmp / "model.safetensors"))
        state = {
            "step": self.step,
            "samples_seen": self.samples_seen,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "skipped_steps": self.skipped_steps,
            "skipped_in_a_row": self.skipped_in_a_row,
            "config": self.config.to_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": _numpy_state(),
                "python": list(random.getstate()[1]),
                "python_gauss": random.getstate()[2],
            },
        }
        torch.save(state, tmp / (STATE + ".partial"))
        os.replace(tmp / (STATE + ".partial"), tmp / STATE)
        _swap_in(tmp, final)
        barrier()
        return final

    def load_checkpoint(self, directory: str | Path | None = None) -> int:
        """Restore weights and training state; returns the step to continue from.

        Args:
            directory: a checkpoint directory; default ``out_dir/checkpoint``. A complete
                ``<directory>.tmp`` left by a run killed while saving is moved into place first.

        Raises:
            FileNotFoundError: no complete checkpoint (the message says what was found there).
            ValueError: the checkpoint was trained with another model configuration, or its
                state cannot be read.
        """
        directory = Path(directory) if directory is not None else self.out_dir / CHECKPOINT
        if self.rank == 0:
            recover_checkpoint(directory)
        barrier()
        if not (directory / STATE).is_file():
            raise FileNotFoundError(_nothing_to_resume(directory))
        config_path = directory / "config.json"
        if config_path.is_file() and hasattr(self.model, "config"):
            saved = json.loads(config_path.read_text(encoding="utf-8"))["backbone"]
            ours = json.loads(json.dumps(self.model.config.to_dict()))
            diff = {k: (saved.get(k), v) for k, v in ours.items() if saved.get(k) != v}
            if diff:
                raise ValueError(f"{directory} was trained with another model configuration; differs (saved, "
                                 f"this model): {diff}")
        from safetensors.torch import load_file

        weights = load_file(str(directory / "model.safetensors"), device=str(self.device))
        self.model.load_state_dict(weights)
        state = _read_state(directory / STATE)
        saved = [len(g["params"]) for g in state["optimizer"]["param_groups"]]
        ours = [len(g["params"]) for g in self.optimizer.param_groups]
        if saved != ours:
            raise ValueError(f"{directory / STATE}: its optimizer state is for {saved} parameter tensors per group, "
                             f"this model trains {ours}: the model's parameters were laid out differently (a run "
                             "saved before the generic experts were stacked keeps one tensor per expert, as do "
                             "layers given modules per expert for LoRA or int8); its weights load (from_pretrained "
                             f"on {directory}), its optimizer state cannot: start a new run from those weights")
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # (the saved groups carry the implementation they ran with)
            group["fused"] = self.optimizer.defaults["fused"]
            group["foreach"] = self.optimizer.defaults["foreach"]
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])
        self.skipped_steps = int(state.get("skipped_steps", 0))  # absent in checkpoints written before skipping
        self.skipped_in_a_row = int(state.get("skipped_in_a_row", 0))
        self.saved_step = self.step
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(("MT19937", np.array(rng["numpy"][0], dtype=np.uint32), *rng["numpy"][1:]))
        random.setstate((3, tuple(rng["python"]), rng["python_gauss"]))
        return self.step

    # -- loop -----------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Run ``eval_fn`` in eval mode without gradients."""
        if self.eval_fn is None:
            return {}
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                return {k: float(v) for k, v in self.eval_fn(self.model).items()}
        finally:
            self.model.train(was)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def fit(self, resume: bool | str | Path = False) -> TrainResult:
        """Train to ``config.steps`` (or ``config.max_seconds``); ``resume=True`` continues from the checkpoint."""
        cfg = self.config
        if resume:
            self.load_checkpoint(None if resume is True else resume)
        else:
            if self.rank == 0 and (self.out_dir / CHECKPOINT / STATE).is_file():
                warnings.warn(f"training starts afresh in {self.out_dir}, which holds a checkpoint of an earlier run: "
                              f"this run's first save replaces it; fit(resume=True) continues it instead, another "
                              f"out_dir keeps it", stacklevel=2)
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
        lead = self.rank == 0
        log = ExperimentLog(self.out_dir, cfg.loggers, resume=self.step if resume else None,
                            options=cfg.to_dict()) if lead else None  # only rank 0 logs
        if lead:
            (self.out_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            (self.out_dir / WORLD).write_text(json.dumps(self._world_record(), indent=2) + "\n")
        router = _RouterLosses(self.model)
        routing = RoutingLog(self.model, self.out_dir, resume=self.step if resume else None) if lead else None
        result = TrainResult(self.step)
        batches = self._batches()
        bar = _progress(cfg, self.step) if lead else None
        self.model.train()
        started, out_of_time = time.perf_counter(), False
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                row = self._optimizer_step(batches, router)
                step_s = time.perf_counter() - t0
                row["samples_per_s"] = self.global_batch * cfg.grad_accum / step_s
                row["data_share"] = row["data_wait_s"] / step_s
                self.step += 1
                skipped = "skipped_steps" in row and self.skipped_in_a_row > 0
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['samples_per_s']:.1f}",
                                    data=f"{row['data_share']:.0%}")
                if cfg.max_seconds is not None and self.step < cfg.steps:  # every rank stops at the same step
                    out_of_time = bool(flagged_ranks(time.perf_counter() - started >= cfg.max_seconds, self.device))
                if self.step % cfg.log_every == 0 or self.step == cfg.steps or out_of_time or skipped:
                    row |= self._peak_memory()  # every rank is here at the same step: its all-reduce matches
                    row["elapsed_s"] = time.perf_counter() - started  # wall time: host syncs and collectives count
                    result.train.append({"step": self.step, **row})
                    if log is not None:
                        log.write("train", self.step, row)
                    if routing is not None:
                        routing.snapshot(self.step)  # expert token shares since the last logged step
                if out_of_time:
                    break
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step != cfg.steps:
                    metrics = self.evaluate()
                    if log is not None:
                        log.write("eval", self.step, metrics)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
                if self.stop_after is not None and self.step >= self.stop_after:
                    break
        finally:
            router.close()
            if routing is not None:
                routing.close()
            if bar is not None:
                bar.close()
        result.step = self.step
        result.out_of_time = out_of_time
        if self.step >= cfg.steps or out_of_time:
            result.eval = self.evaluate()
            if result.eval and log is not None:
                log.write("eval", self.step, result.eval)
            result.files = {"checkpoint": self.save_checkpoint(), **(log.finish() if log is not None else {}),
                            **(routing.finish() if routing is not None else {})}
        return result

    def _world_record(self) -> dict[str, Any]:
        """What ``train_world.json`` holds: the ranks and batch a log's ``samples_per_s`` was measured with."""
        backend = torch.distributed.get_backend() if self.world > 1 else None
        return {"world_size": self.world, "batch_size_per_rank": self.config.batch_size,
                "global_batch": self.global_batch * self.config.grad_accum,  # samples per optimiser step
                "backend": backend, "device": str(self.device)}

    def _peak_memory(self) -> dict[str, float]:
        """Peak CUDA memory, MiB: this rank's (``max_memory_mib``) and, under torchrun, the largest of any rank.

        ``torch.cuda.max_memory_allocated`` since the process started (or the caller's last
        ``reset_peak_memory_stats``). Called at log steps only, on every rank: the max over ranks
        (``max_memory_mib_all_ranks``) is one all-reduce of a scalar. Nothing on other devices.
        """
        if self.device.type != "cuda":
            return {}
        mine = torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.world == 1:
            return {"max_memory_mib": mine}
        return {"max_memory_mib": mine, "max_memory_mib_all_ranks": max_over_ranks(mine, self.device)}

    def _optimizer_step(self, batches, router: _RouterLosses) -> dict[str, float]:
        cfg = self.config
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        waited = 0.0  # seconds spent waiting for the input pipeline (a starved GPU shows here)
        why: str | None = None  # set when this step is skipped: what was non-finite
        self._running_stats.save()
        for micro in range(cfg.grad_accum):
            t0 = time.perf_counter()
            batch = next(batches)
            if why is not None:  # skipped: still draw the step's micro-batches, so the data order stays the same
                waited += time.perf_counter() - t0
                continue
            batch = to_device(batch, self.device)
            waited += time.perf_counter() - t0
            rng = rng_state(self.device)  # a non-finite loss replays this forward to find where it came from
            with self._autocast():
                out = self.loss_fn(self.model, batch)
            losses = dict(out) if isinstance(out, Mapping) else {"loss": out}
            if "loss" not in losses:
                raise ValueError(f"loss_fn must return a tensor or a dict with 'loss'; got keys {sorted(losses)}")
            total = losses["loss"].float()
            aux, z = router.take()
            if aux is not None:
                total = total + cfg.aux_loss_weight * aux + cfg.z_loss_weight * z
                losses |= {"aux_loss": aux, "z_loss": z}
            # every rank learns which ranks saw a non-finite loss, so all skip (or stop at) this same step
            bad = flagged_ranks(not bool(torch.isfinite(total)), self.device)
            if bad:
                terms = {k: float(v.detach() if isinstance(v, torch.Tensor) else v) for k, v in losses.items()}
                why = self._nonfinite_loss(float(total.detach()), terms, micro, bad)
                del out, losses, total, aux, z  # the failed step's graph, before the replays need memory
                # every rank replays (the forward may hold collectives); the ranks that saw it say where
                autocast = self._autocast if self.amp_dtype is not None else None
                where = trace_nonfinite(self.model, lambda: self.loss_fn(self.model, batch), autocast=autocast,
                                        rng=rng, device=self.device, both=self.world > 1)
                if self.rank in bad:
                    why += "; " + where
                sums = terms  # the row of a skipped step shows the terms that were not finite
                continue
            self.scaler.scale(total / cfg.grad_accum).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v) / cfg.grad_accum
        if why is None:
            allreduce_gradients(self.model)
        sums = allreduce_mean(sums, self.device)
        if cfg.clip_grad is not None and why is None:
            self.scaler.unscale_(self.optimizer)
            sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad))
            if not math.isfinite(sums["grad_norm"]) and not self.scaler.is_enabled():
                # the gradients were averaged over the ranks already: every rank sees the same norm
                why = (f"non-finite gradient norm {sums['grad_norm']} at step {self.step + 1} (loss terms "
                       f"{ {k: v for k, v in sums.items() if k != 'grad_norm'} })")
        if why is None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.skipped_in_a_row = 0
        else:
            self._skip(why)
            sums["skipped_steps"] = self.skipped_steps
        if self.skipped_steps and "skipped_steps" not in sums:
            sums["skipped_steps"] = self.skipped_steps
        sums["lr"] = self.scheduler.get_last_lr()[0]
        sums["data_wait_s"] = waited
        with warnings.catch_warnings():
            # a skipped first step makes torch warn that the schedule stepped before the optimiser: on purpose
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.scheduler.step()
        return sums

    def _skip(self, why: str) -> None:
        """Skip this optimiser step (zero the gradients, put BatchNorm's statistics back, count it, warn) or
        stop after too many in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        self._running_stats.restore()
        self.skipped_steps += 1
        self.skipped_in_a_row += 1
        limit = self.config.max_skipped_steps
        if self.skipped_in_a_row > limit:
            if self.saved_step is None:
                kept = "no checkpoint was written yet"
            else:
                kept = f"the last good checkpoint (step {self.saved_step}) in {self.out_dir / CHECKPOINT} is kept"
            raise FloatingPointError(f"{why}; {self.skipped_in_a_row} non-finite step(s) in a row, more than "
                                     f"max_skipped_steps={limit}: every rank stopped at this step and {kept}")
        warnings.warn(f"{why}; step {self.step + 1} skipped (no parameter update; {self.skipped_in_a_row} in a row "
                      f"of max_skipped_steps={limit}, {self.skipped_steps} in this run)", RuntimeWarning,
                      stacklevel=3)

    def _nonfinite_loss(self, loss: float, terms: dict[str, float], micro: int, ranks: list[int]) -> str:
        where = "" if self.world == 1 else f" on rank(s) {ranks} of {self.world}"
        mine = f"loss {loss}" if self.rank in ranks else f"this rank's loss {loss} was finite"
        return (f"non-finite loss{where} at step {self.step + 1}, micro-batch {micro} ({mine}; loss terms {terms}; "
                f"rank {self.rank}'s batch: dataset indices {self.batch_indices})")


def recover_checkpoint(directory: str | Path) -> bool:
    """Put back the newest complete checkpoint a kill during :meth:`Trainer.save_checkpoint` left beside ``directory``.

    A save writes ``<directory>.tmp`` (its ``trainer_state.pt`` last), then renames
    ``<directory>`` -> ``<directory>.old`` and ``<directory>.tmp`` -> ``<directory>``. A complete
    ``.tmp`` (``trainer_state.pt`` present and readable) is the newest checkpoint: it is swapped in
    with a warning. A ``.old`` is removed only once ``<directory>`` is complete. Nothing else is touched.

    Args:
        directory: the checkpoint directory (``out_dir/checkpoint``).

    Returns:
        Whether a checkpoint was moved into place.
    """
    directory = Path(directory)
    tmp, old = _sibling(directory, ".tmp"), _sibling(directory, ".old")
    moved = False
    if (tmp / STATE).is_file() and (tmp / "model.safetensors").is_file():
        try:
            step = int(torch.load(tmp / STATE, map_location="cpu", weights_only=True)["step"])
        except Exception:  # noqa: BLE001 - a state file cut short by a kill (older vlsdk wrote it in place)
            step = None
        if step is not None:
            where = f"{directory} (step {_saved_step(directory)})" if (directory / STATE).is_file() else \
                f"no complete {directory}"
            warnings.warn(f"{tmp} is a complete checkpoint (step {step}) that a run killed while saving left "
                          f"behind, with {where}: moved into place as {directory}", stacklevel=2)
            _swap_in(tmp, directory)
            moved = True
    if not (directory / STATE).is_file() and (old / STATE).is_file() and not directory.exists():
        warnings.warn(f"{old} (step {_saved_step(old)}) is the only complete checkpoint, left by a run killed while "
                      f"saving: moved back into place as {directory}", stacklevel=2)
        old.rename(directory)
        moved = True
    if (directory / STATE).is_file() and old.exists():
        shutil.rmtree(old, ignore_errors=True)  # the swap finished: the previous checkpoint is superseded
    return moved


def _sibling(directory: Path, suffix: str) -> Path:
    return directory.with_name(directory.name + suffix)


def _swap_in(tmp: Path, final: Path) -> None:
    """``tmp`` becomes ``final``; at every instant one complete checkpoint exists under one of the names."""
    old = _sibling(final, ".old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _saved_step(directory: Path) -> int | str:
    try:
        return int(torch.load(directory / STATE, map_location="cpu", weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - only for a message
        return "unknown"


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types for a damaged file
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); the checkpoint is damaged. Start "
                         f"without resume to train afresh, or resume from a copy of an intact checkpoint") from None


def _nothing_to_resume(directory: Path) -> str:
    """Why ``directory`` cannot be resumed from: what is there and what to do."""
    tmp = _sibling(directory, ".tmp")
    if tmp.exists():
        weights = "with" if (tmp / "model.safetensors").is_file() else "without"
        return (f"{directory / STATE} is missing: nothing to resume from. {tmp} is a checkpoint a run killed while "
                f"saving left unfinished (no readable {STATE}, {weights} model.safetensors). Start without resume "
                f"to train afresh (the next save replaces it); its weights, if complete, load with "
                f"vlsdk.VLModel.from_pretrained({str(tmp)!r})")
    if directory.exists():
        return f"{directory / STATE} is missing: {directory} is not a complete training checkpoint, nothing to resume"
    return f"{directory / STATE} is missing: nothing to resume from (no checkpoint was saved in {directory.parent})"


def _resolve_device(device: str, world: int = 1) -> torch.device:
    if device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device()) if world > 1 else torch.device("cuda")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here; use device='cpu' or 'auto'")
    return dev


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _numpy_state() -> list[Any]:
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _progress(cfg: TrainConfig, start: int):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=start, desc=cfg.progress_label, unit="step", dynamic_ncols=True)


class _Stream:
    """An endless sampler: iterating it starts ``make(start)`` (a generator of indices) afresh."""

    def __init__(self, make: Any, start: int) -> None:
        self.make, self.start = make, start

    def __iter__(self):
        return self.make(self.start)
