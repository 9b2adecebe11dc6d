"""The vlsdk trainer: AMP, accumulation, warm-up + cosine, clipping, MoE losses, exact resume."""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from vlsdk.models.encoder import HybridEncoder
from vlsdk.models.features import EncoderFeatures
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
from vlsdk.train.log import MetricsLog
from vlsdk.train.routing_log import RoutingLog

__all__ = ["Trainer", "TrainResult", "warmup_cosine", "to_device"]

LossFn = Callable[[nn.Module, Any], "torch.Tensor | Mapping[str, torch.Tensor]"]
EvalFn = Callable[[nn.Module], Mapping[str, float]]
CHECKPOINT = "checkpoint"
STATE = "trainer_state.pt"
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
            (no_decay if p.ndim <= 1 or "router" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _RouterLosses:
    """Collects the MoE losses of every encoder forward in a micro-step (via forward hooks)."""

    def __init__(self, model: nn.Module) -> None:
        self.aux: list[torch.Tensor] = []
        self.z: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, HybridEncoder)]

    def _hook(self, module: nn.Module, args: Any, out: EncoderFeatures) -> None:
        for s in out.router_stats:
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
    (``world_size``, ``global_batch``, ``backend``).

    Example:
        >>> trainer = Trainer(model, loss_fn, dataset, TrainConfig(steps=100, out_dir="runs/x"))  # doctest: +SKIP
        >>> result = trainer.fit()  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, train_set: Dataset, config: TrainConfig | None = None, *,
                 eval_fn: EvalFn | None = None, collate_fn: Callable[[list[Any]], Any] | None = None) -> None:
        self.config = config = config or TrainConfig()
        self.rank, self.world = init_from_env(config.device)  # joins torchrun's group when WORLD_SIZE > 1
        self.global_batch = config.batch_size * self.world
        if len(train_set) < self.global_batch:  # type: ignore[arg-type]
            raise ValueError(f"the training set has {len(train_set)} samples, fewer than one global batch "  # type: ignore[arg-type]
                             f"({config.batch_size} x {self.world} ranks)")
        self.device = _resolve_device(config.device, self.world)
        self.model = model.to(self.device)
        broadcast_model(self.model)
        self.loss_fn, self.eval_fn, self.train_set, self.collate_fn = loss_fn, eval_fn, train_set, collate_fn
        self.amp_dtype = _amp_dtype(config.amp, self.device)
        self.optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
        self.scheduler = warmup_cosine(self.optimizer, config.warmup_steps, config.steps, config.min_lr_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype is torch.float16)
        self.out_dir = Path(config.out_dir)
        self.step = 0
        self.samples_seen = 0  # global batches drawn x global batch size: the data position for resume
        self.stop_after: int | None = None  # for tests and callers: stop (as if killed) after this step
        self.batch_indices: list[int] = []  # dataset indices of this rank's current micro-batch
        self.saved_step: int | None = None  # the step of the last checkpoint written or loaded

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
        """Write model weights and the full training state to ``out_dir/checkpoint`` (atomically, rank 0)."""
        final = self.out_dir / CHECKPOINT
        self.saved_step = self.step
        if self.rank != 0:
            barrier()
            return final
        tmp = self.out_dir / (CHECKPOINT + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
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
            "config": self.config.to_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": _numpy_state(),
                "python": list(random.getstate()[1]),
                "python_gauss": random.getstate()[2],
            },
        }
        torch.save(state, tmp / STATE)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        barrier()
        return final

    def load_checkpoint(self, directory: str | Path | None = None) -> int:
        """Restore weights and training state; returns the step to continue from."""
        directory = Path(directory) if directory is not None else self.out_dir / CHECKPOINT
        if not (directory / STATE).is_file():
            raise FileNotFoundError(f"{directory / STATE} is missing: nothing to resume from")
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
        state = torch.load(directory / STATE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.samples_seen = int(state["step"]), int(state["samples_seen"])
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
            torch.manual_seed(cfg.seed)
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
        lead = self.rank == 0
        log = MetricsLog(self.out_dir, resume=self.step if resume else None) if lead else None
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
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['samples_per_s']:.1f}",
                                    data=f"{row['data_share']:.0%}")
                if cfg.max_seconds is not None and self.step < cfg.steps:  # every rank stops at the same step
                    out_of_time = bool(flagged_ranks(time.perf_counter() - started >= cfg.max_seconds, self.device))
                if self.step % cfg.log_every == 0 or self.step == cfg.steps or out_of_time:
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
        for micro in range(cfg.grad_accum):
            t0 = time.perf_counter()
            batch = to_device(next(batches), self.device)
            waited += time.perf_counter() - t0
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
            # every rank learns which ranks saw a non-finite loss, so all stop at this same step
            bad = flagged_ranks(not bool(torch.isfinite(total)), self.device)
            if bad:
                raise FloatingPointError(self._nonfinite_message(float(total.detach()), micro, bad))
            self.scaler.scale(total / cfg.grad_accum).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v) / cfg.grad_accum
        allreduce_gradients(self.model)
        sums = allreduce_mean(sums, self.device)
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        sums["lr"] = self.scheduler.get_last_lr()[0]
        sums["data_wait_s"] = waited
        self.scheduler.step()
        return sums

    def _nonfinite_message(self, loss: float, micro: int, ranks: list[int]) -> str:
        where = "" if self.world == 1 else f" on rank(s) {ranks} of {self.world}"
        mine = f"loss {loss}" if self.rank in ranks else f"this rank's loss {loss} was finite"
        if self.saved_step is None:
            kept = "no checkpoint was written yet"
        else:
            kept = f"the last good checkpoint (step {self.saved_step}) in {self.out_dir / CHECKPOINT} is kept"
        return (f"non-finite loss{where} at step {self.step + 1}, micro-batch {micro} ({mine}; rank {self.rank}'s "
                f"batch: dataset indices {self.batch_indices}); every rank stopped at this step and {kept}")


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
