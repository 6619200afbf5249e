"""The training loop: two stages, checkpoints, exact resume, DDP, speed paths.

Global step ``s`` runs stage 1 for ``s < stage1_steps`` and stage 2 after; each stage has
its own AdamW and warmup + cosine schedule (stage 2 starts from the stage-1 blocks with a
fresh optimiser, as the official code does with two runs). Everything a step depends on is
either saved (weights, optimiser, schedule, RNG states) or a pure function of ``(seed, s)``
(batch order, input noise, teacher-forcing ratio), so a resumed run ends bit-identical on
CPU to an uninterrupted one.

The step loop never synchronises with the host: losses accumulate on the device and are
read (and checked for NaN) every ``log_every`` steps and before every checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from depthflow.core._crash import crash_point
from depthflow.core._signals import deferred_signals
from depthflow.errors import DepthflowError
from depthflow.raptor.data import IndexedImages, batch_indices, step_noise
from depthflow.raptor.distributed import DistInfo, all_mean, barrier
from depthflow.raptor.evaluate import quick_fidelity
from depthflow.raptor.io import save_raptor, save_state
from depthflow.raptor.losses import RaptorObjective
from depthflow.raptor.model import Raptor
from depthflow.raptor.schedules import WarmupCosine, teacher_forcing_ratio
from depthflow.raptor.teacher import StateCache

log = logging.getLogger("depthflow.raptor")


class FitError(DepthflowError, RuntimeError):
    """Training cannot go on (NaN loss...); the last good checkpoint is kept."""


class FitInterrupted(DepthflowError, RuntimeError):
    """Training was interrupted; its resumable state was saved (``signum``: the signal,
    so that the CLI exits with 128 + signum)."""

    signum: int | None = None


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": json.dumps(random.getstate()),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                       "cached": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, inner, gauss = json.loads(state["python"])
    random.setstate((version, tuple(inner), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Runs the Raptor recipe for one :class:`~depthflow.raptor.fit.FitConfig`."""

    def __init__(self, raptor: Raptor, teacher, images: IndexedImages, config, *,
                 directory: Path, dist: DistInfo, device: torch.device,
                 save_info: Callable[[], dict[str, Any]], preprocessing,
                 probe_states: Tensor | None = None, progress: bool = False,
                 cache: StateCache | None = None, probe_cls: int | None = None) -> None:
        self.raptor, self.teacher, self.images, self.cfg = raptor, teacher, images, config
        self.directory, self.dist, self.device = directory, dist, device
        self.save_info, self.preprocessing = save_info, preprocessing
        self.probe_states, self.progress = probe_states, progress
        self.probe_cls = probe_cls              # cls position in the probe states (or None)
        self.total = config.stage1_steps + config.stage2_steps
        self.step = 0
        self.rows: list[dict[str, Any]] = []
        self.elapsed = 0.0
        weights = stage1 = final = None
        if config.token_weighting:
            from depthflow.raptor.losses import kind_weights
            kinds = raptor.token_kinds(*images.shape[-2:])
            weights = kind_weights(kinds, cls=config.cls_weight,
                                   register=config.register_weight, patch=config.patch_weight)
            if config.setting("stage1_weighting") == "final":   # the official runs
                final = kind_weights(kinds, cls=config.final_cls_weight,
                                     register=config.final_register_weight,
                                     patch=config.final_patch_weight)
            else:
                stage1 = final = weights
        self.objective = RaptorObjective(raptor, weights=weights, stage1_weights=stage1,
                                         final_weights=final).to(device)
        self.module: torch.nn.Module = self.objective
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel
            ids = [device.index] if device.type == "cuda" else None
            self.module = DistributedDataParallel(self.objective, device_ids=ids)
        self.cache = cache
        self.stage = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: WarmupCosine | None = None

    # ----------------------------------------------------------------- stages
    def stage_of(self, step: int) -> int:
        return 1 if step < self.cfg.stage1_steps else 2

    def stage_span(self, stage: int) -> tuple[int, int]:
        s1 = self.cfg.stage1_steps
        return (0, s1) if stage == 1 else (s1, self.total)

    def begin_stage(self, stage: int) -> None:
        cfg = self.cfg
        start, stop = self.stage_span(stage)
        params = [p for p in self.raptor.blocks.parameters() if p.requires_grad]
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay, fused=fused or None)
        span = stop - start
        self.scheduler = WarmupCosine(self.optimizer, total=span,
                                      warmup=min(span - 1, round(cfg.warmup_fraction * span)),
                                      lr=cfg.lr, min_lr=cfg.min_lr)
        self.stage = stage

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "stage": self.stage,
                "model": {k: v.detach().cpu().clone()
                          for k, v in self.raptor.state_dict().items()},
                "optimizer": self.optimizer.state_dict() if self.optimizer else {},
                "scheduler": self.scheduler.state_dict() if self.scheduler else {},
                "rng": rng_state(), "rows": json.dumps(self.rows),
                "elapsed": self.elapsed, "config": self.cfg.to_json()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raptor.load_state_dict(state["model"])
        self.step = int(state["step"])
        if state["stage"]:
            self.begin_stage(int(state["stage"]))
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.rows = json.loads(state["rows"])
        self.elapsed = float(state["elapsed"])

    def checkpoint(self) -> None:
        """Rank 0 writes the Raptor and the resume record (each atomically)."""
        if self.dist.main:
            with deferred_signals():        # the weights and their resume record, as a pair
                save_raptor(self.raptor, self.directory, preprocessing=self.preprocessing,
                            info={**self.save_info(), "step": self.step, "complete":
                                  self.step >= self.total})
                save_state(self.state_dict(), self.directory)
        barrier(self.dist)

    # ----------------------------------------------------------------- one step
    def teacher_batch(self, step: int) -> Tensor:
        idx = batch_indices(step, num_images=self.images.size, batch_size=self.cfg.batch_size,
                            seed=self.cfg.seed, rank=self.dist.rank, world=self.dist.world)
        if self.cache is not None:
            return self.cache.get(idx, self.device)
        from depthflow.raptor.teacher import teacher_states
        return teacher_states(self.teacher, self.images(idx).to(self.device))

    def train_step(self, step: int) -> Tensor:
        cfg = self.cfg
        states = self.teacher_batch(step)
        noise = step_noise(step, tuple(states.shape), sigma=cfg.input_noise, seed=cfg.seed,
                           rank=self.dist.rank, world=self.dist.world)
        if noise is not None:
            noise = noise.to(self.device, states.dtype)
        start, stop = self.stage_span(self.stage)
        ratio = teacher_forcing_ratio(step - start, total=stop - start,
                                      anneal_fraction=cfg.anneal_fraction, mode=cfg.tf_mode) \
            if self.stage == 1 else 0.0
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                    if cfg.dtype == "bfloat16" else contextlib.nullcontext())
        with autocast:
            loss = self.module(states, stage=self.stage, ratio=ratio, noise=noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.stage == 1:                  # each block trains alone: clip each alone
            for block in self.raptor.blocks:
                torch.nn.utils.clip_grad_norm_(block.parameters(), cfg.grad_clip)
        else:
            torch.nn.utils.clip_grad_norm_(self.raptor.blocks.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach()

    # ----------------------------------------------------------------- the loop
    def run(self, *, stop_after: int | None = None) -> bool:
        """Train up to the end (True) or to ``stop_after`` total steps (False: resumable)."""
        cfg = self.cfg
        end = self.total if stop_after is None else min(self.total, stop_after)
        bar = self._bar()
        running = torch.zeros((), device=self.device)
        since, good_step = 0, self.step
        tic = time.perf_counter()
        try:
            while self.step < end:
                stage = self.stage_of(self.step)
                if stage != self.stage:
                    self.begin_stage(stage)
                running += self.train_step(self.step)
                since += 1
                self.step += 1
                if bar is not None:
                    bar.update(1)
                boundary = (self.step % cfg.log_every == 0 or self.step == end
                            or self.step == cfg.stage1_steps)
                if boundary:
                    now = time.perf_counter()
                    self.elapsed += now - tic
                    tic = now
                    loss = float(all_mean(running, self.dist)) / since
                    if not np.isfinite(loss):
                        raise FitError(
                            f"the loss became {loss} between steps {self.step - since + 1} and "
                            f"{self.step}; stopped, the last good checkpoint (step "
                            f"{good_step}) is kept in {str(self.directory)!r}; lower --lr or "
                            "--grad-clip, or use --dtype float32")
                    self._log(loss, bar)
                    running.zero_()
                    since = 0
                    if self.step % cfg.checkpoint_every == 0 or self.step == end or \
                            self.step == cfg.stage1_steps:
                        self.checkpoint()
                        good_step = self.step
                crash_point("fit.step")
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            stop = FitInterrupted(
                f"interrupted by {signal.Signals(signum).name} at step {self.step}; the "
                f"resumable state of step {good_step} is in {str(self.directory)!r}; continue "
                f"with --resume {self.directory}")
            stop.signum = signum
            raise stop from None
        finally:
            if bar is not None:
                bar.close()
        return self.step >= self.total

    def _bar(self):
        if not (self.progress and self.dist.main):
            return None
        from tqdm.auto import tqdm
        return tqdm(total=self.total, initial=self.step, unit="step", desc="raptor fit",
                    dynamic_ncols=True)

    def _log(self, loss: float, bar) -> None:
        row: dict[str, Any] = {"step": self.step, "stage": self.stage,
                               "lr": self.optimizer.param_groups[0]["lr"], "loss": loss,
                               "time_s": round(self.elapsed, 2)}
        start, stop = self.stage_span(self.stage)
        if self.stage == 1:
            row["tf_ratio"] = teacher_forcing_ratio(
                self.step - 1 - start, total=stop - start,
                anneal_fraction=self.cfg.anneal_fraction, mode=self.cfg.tf_mode)
        if self.probe_states is not None and self.dist.main and (
                self.step % self.cfg.eval_every < self.cfg.log_every or self.step == self.total):
            self.raptor.eval()
            row.update(quick_fidelity(self.raptor, self.probe_states, cls_index=self.probe_cls))
            self.raptor.train()
        self.rows.append(row)
        if bar is not None:
            post = {"stage": self.stage, "loss": f"{loss:.4g}"}
            if "r2_last" in row:
                post["r2_image"] = f"{row['r2_image_last']:.3f}"
                post["R2"] = f"{row['r2_last']:.3f}"
            bar.set_postfix(post, refresh=False)
        log.info("step %d/%d stage %d lr %.3g loss %.5g%s", self.step, self.total, self.stage,
                 row["lr"], loss,
                 f" r2_image(last) {row['r2_image_last']:.4f} R2(last) {row['r2_last']:.4f}"
                 if "r2_last" in row else "")
