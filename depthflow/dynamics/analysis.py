"""The dynamics plug-in of ``depthflow analyze``: the ``dynamics`` group of a result file.

Every quantity is defined in ``docs/methods.md`` (section "Dynamics"); each child group
holds per-image values and summaries with their ``n`` and a bootstrap interval over images:

* ``lyapunov``: finite-depth Lyapunov spectra of the real model (directional propagator
  ``d u_e / d u_s``; whole depth and each phase of the selected DP segmentation; all tokens,
  cls -> cls and all -> cls), the state propagator over the whole depth, and the asymptotic
  (QR) spectrum of frozen late layers iterated as autonomous sphere maps;
* ``stretching``: per layer, the top singular values ``sigma`` of the one-layer directional
  Jacobian (largest stretch of a direction perturbation, norms held);
* ``branches``: the attention / MLP split of every layer (update norms per token kind,
  stretching of each half-step, departure from normality of the tangent maps);
* ``basins``: class-dependent angular basins of the cls token (convergence, nearest-class-
  mean accuracy and AMI against a permutation null, entry depth), basin robustness to
  rotations injected at several depths, and the attractor view of the frozen last layer;
* ``fixed_points``: directional fixed points of the frozen last layer (all tokens, and the
  cls token alone) with stability from converged spectra, and their dependence on the
  reference norms (scaled by 0.5, 1, 2);
* ``recovery``: median curves ``angle_l / theta`` of random and adversarial perturbations.

JVP-based analyses run on ``samples`` images (at least ``min_per_class`` of every class when
labelled), class statistics on up to ``class_samples`` labelled images, robustness on up to
``robustness_samples``. Every random draw is keyed by the seed and the global sample index.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import xarray as xr

from depthflow.dynamics import maps
from depthflow.core.config import Options, check_choice, check_int, check_number
from depthflow.dynamics import measures
from depthflow.dynamics.recovery import DIRECTIONS
from depthflow.errors import ConfigError
from depthflow.core.profiling import stage
from depthflow.core.threads import intra_op_threads, threads_for

__all__ = ["DynamicsConfig", "DynamicsAnalysis", "ANALYSES"]

ANALYSES = ("lyapunov", "stretching", "branches", "basins", "fixed_points", "recovery")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclasses.dataclass
class DynamicsConfig(Options):
    """What the dynamics plug-in computes and its budget (layers are 1-based blocks;
    negative layers count from the last; ``None`` picks the default named in the help)."""

    _what = "dynamics option"
    _help = {
        "samples": "images whose trajectories the JVP-based analyses use",
        "min_per_class": "at least this many images of every class among them",
        "class_samples": "labelled images whose cls directions the class statistics use",
        "robustness_samples": "images whose states the basin-robustness test perturbs",
    }

    analyses: tuple[str, ...] = ANALYSES
    samples: int = 64
    min_per_class: int = 5
    class_samples: int = 5000
    robustness_samples: int = 512
    dtype: str = "float64"
    k: int = 8                                   # exponents / singular values per spectrum
    tol: float = 1e-6                            # Lanczos residual tolerance (relative)
    n_boot: int = 1000                           # bootstrap resamples over images
    level: float = 0.95                          # interval level
    state_spectrum: bool = True                  # also the state propagator, whole depth
    frozen_layers: tuple[int, ...] = (-1,)       # layers iterated for the asymptotic QR
    frozen_samples: int = 8
    frozen_steps: int = 100
    frozen_transient: int = 50
    stretching_k: int = 4
    branch_probes: int = 8                       # random projections of the non-normality
    n_perm: int = 1000                           # label permutations of the class null
    robustness_depths: tuple[int, ...] | None = None     # None: L/4, L/2, 3L/4
    robustness_angles: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8, 1.2, 1.6)
    attractor_layer: int = -1
    attractor_steps: int = 100
    attractor_tol: float = 0.1                   # rad
    fixed_point_layer: int = -1
    fixed_point_starts: int = 32
    fixed_point_max_iter: int = 10
    norm_scan_starts: int = 4                    # starts of the reference-norm scan
    fixed_point_token: int = 0                   # the one-token scope (0 = cls)
    norm_scales: tuple[float, ...] = (0.5, 1.0, 2.0)
    recovery_depths: tuple[int, ...] | None = None       # None: L/4, L/2, 3L/4
    recovery_angles: tuple[float, ...] = (0.05, 0.2)
    recovery_directions: tuple[str, ...] = DIRECTIONS
    recovery_draws: int = 2
    seed: int = 0

    #: the analysis that reads each option (``--set`` of an option whose analysis is not
    #: run is refused); options no analysis reads yet are listed under ``None``
    READ_BY = {"lyapunov": ("frozen_layers", "frozen_samples", "frozen_steps",
                            "frozen_transient"),
               "stretching": ("stretching_k",),
               "basins": ("n_perm", "robustness_depths", "robustness_angles",
                          "robustness_samples", "attractor_layer", "attractor_steps",
                          "attractor_tol"),
               "fixed_points": ("fixed_point_layer", "fixed_point_starts",
                                "fixed_point_max_iter", "norm_scan_starts", "norm_scales"),
               "recovery": ("recovery_depths", "recovery_angles", "recovery_directions",
                            "recovery_draws"),
               None: ("fixed_point_token",)}

    def validate(self) -> DynamicsConfig:
        self._set("analyses", tuple(self.analyses))
        bad = [a for a in self.analyses if a not in ANALYSES]
        if bad:
            raise ConfigError(f"unknown dynamics analyses {bad}; choose from {ANALYSES}")
        for name in ("samples", "class_samples", "robustness_samples", "k", "frozen_samples",
                     "frozen_steps", "stretching_k", "branch_probes", "attractor_steps",
                     "fixed_point_starts", "fixed_point_max_iter", "norm_scan_starts",
                     "recovery_draws"):
            check_int(getattr(self, name), name)
        for name in ("min_per_class", "n_boot", "n_perm", "frozen_transient",
                     "fixed_point_token", "seed"):
            check_int(getattr(self, name), name, minimum=0)
        check_choice(self.dtype, "dtype", sorted(DTYPES))
        check_number(self.tol, "tol", low=0, high=0.1, open_low=True)
        check_number(self.level, "level", low=0, high=1, open_low=True)
        check_number(self.attractor_tol, "attractor_tol", low=0, high=math.pi / 2,
                     open_low=True)
        for theta in self.robustness_angles:
            check_number(theta, "robustness_angles", low=0, high=math.pi)
        for scale in self.norm_scales:
            check_number(scale, "norm_scales", low=0, open_low=True)
        for theta in self.recovery_angles:
            check_number(theta, "recovery_angles", low=0, high=math.pi, open_low=True)
        for name in ("frozen_layers", "robustness_depths", "recovery_depths"):
            for value in getattr(self, name) or ():
                check_int(value, name, minimum=-(1 << 20))
        if any(d not in DIRECTIONS for d in self.recovery_directions):
            raise ConfigError(f"recovery_directions must be from {DIRECTIONS}, got "
                              f"{self.recovery_directions}")
        return self


class DynamicsAnalysis:
    """``depthflow analyze`` plug-in: ``update`` keeps what the analyses need of every
    streamed batch (bounded by the budgets), ``finish`` computes the ``dynamics`` group."""

    name = "dynamics"
    group = "dynamics"

    def __init__(self, config: DynamicsConfig | None = None) -> None:
        self.config = config or DynamicsConfig()
        self.kept = measures.Kept()
        self._plan = None

    def update(self, tb, ctx) -> None:
        """Keep (on the CPU, detached) the trajectories of the JVP subset, the cls
        directions of the class subset and the states at the robustness depths (batches
        in global order)."""
        self.merge(self.shard_update(tb, ctx, start=self.kept.seen), ctx)

    def shard_update(self, tb, ctx, *, start: int) -> dict:
        """What the batch of global indices ``start..`` contributes (a picklable dict; in a
        distributed run computed by the rank that owns the batch, merged on rank 0)."""
        L = ctx.loaded.config.depth
        depths = self._robustness_depths(L)
        if self._plan is None:
            cfg = self.config
            self._plan = measures.Kept.plan(
                ctx.source.labels, samples=cfg.samples, min_per_class=cfg.min_per_class,
                class_samples=cfg.class_samples if ctx.layout.has_cls else 0,
                robustness_samples=cfg.robustness_samples, robustness=bool(depths))
        return measures.Kept.select(tb, start=start, plan=self._plan,
                                    robustness_depths=depths)

    def merge(self, part: dict, ctx) -> None:
        """Add a :meth:`shard_update` result (in global order)."""
        self.kept.merge(part)

    def checkpoint_state(self) -> dict:
        """What was gathered so far (for ``depthflow analyze --resume``)."""
        return {f.name: getattr(self.kept, f.name) for f in dataclasses.fields(self.kept)}

    def load_checkpoint_state(self, state: dict) -> None:
        self.kept = measures.Kept(**{k: (dict(v) if k == "per_class" else
                                         (list(v) if isinstance(v, (list, tuple)) else v))
                                     for k, v in state.items()})

    def _robustness_depths(self, L: int) -> list[int]:
        if "basins" not in self.config.analyses:
            return []
        return measures.default_depths(self.config.robustness_depths, L, "robustness_depths")

    # ------------------------------------------------------------------ finish
    def finish(self, ctx) -> xr.DataTree:
        if not self.kept.states:
            raise ConfigError("the dynamics analysis saw no trajectories")
        cfg = self.config
        dtype, device = DTYPES[cfg.dtype], torch.device(ctx.device)
        model = ctx.loaded.model
        param = next(iter(model.parameters()), None)
        if param is not None and (param.dtype != dtype or param.device != device):
            model = copy.deepcopy(model).to(device=device, dtype=dtype)   # never the caller's
        F = maps.from_model(model)
        run = measures.Run(F=F, kept=self.kept.to(device, dtype), cfg=cfg, ctx=ctx)
        clock = _Clock(ctx.progress, len(cfg.analyses))
        children: dict[str, xr.DataTree] = {}
        # small models: one thread (each of the many small JVP operations would otherwise
        # synchronise two threads, which collapses on a busy machine; depthflow.core.threads)
        threads = threads_for(run.traj[:, 0].numel()) if device.type == "cpu" else None
        # one idle core beside a single-threaded dynamics run takes the second half of the
        # analyses (not when the user limited the run to one thread)
        spare = threads == 1 and _cores(getattr(ctx.config, "threads", None)) >= 2
        with intra_op_threads(threads):
            self._compute(run, cfg, clock, children, spare=spare)
        clock.close()
        root = xr.Dataset(attrs={
            "config": cfg.to_json(), "analyses": ",".join(cfg.analyses),
            "seconds": json.dumps(clock.seconds), "map": json.dumps(F.describe()),
            "jvp_samples": run.n, "sphere_wrapper":
                "F_hat(u) = F(r u) / ||F(r u)|| per token (frozen maps; r: mean token norms "
                "of the JVP subset at the layer's input depth)"})
        return xr.DataTree(root, children=children)

    @staticmethod
    def _compute(run, cfg, clock, children, *, spare: bool = False) -> None:
        names = [name for name in ANALYSES if name in cfg.analyses]
        groups = [[n for n in group if n in names] for group in WORKER_GROUPS]
        if spare and all(groups) and _can_fork():
            _compute_in_two(run, cfg, clock, children, groups)
            return
        for name in names:
            children.update(_one(run, cfg, name))
            clock.step(name)

    # ------------------------------------------------------------------ figures
    def plot(self, tree: xr.DataTree, out_dir: Path) -> list[Path]:
        from depthflow.plots.branches import plot_branches
        from depthflow.plots.dynamics import plot_dynamics

        drawn = plot_dynamics(tree[self.group], Path(out_dir))
        if "branches" in tree[self.group].children:
            drawn += plot_branches(tree[self.group]["branches"], Path(out_dir))
        return drawn


# The analyses in two groups of similar cost that share nothing (branches reuses the
# stretching spectra: same group) -- run side by side when a core would otherwise idle.
WORKER_GROUPS = (("lyapunov", "stretching", "branches"), ("basins", "fixed_points", "recovery"))
WORKERS_ENV = "DEPTHFLOW_DYNAMICS_WORKERS"


def _one(run, cfg, name: str) -> dict[str, xr.DataTree]:
    out = {}
    with stage(f"dynamics.{name}"):
        out[name] = getattr(measures, name)(run)
    if name == "lyapunov" and cfg.frozen_layers:
        with stage("dynamics.frozen_lyapunov"):
            out["frozen_lyapunov"] = measures.frozen_lyapunov(run)
    return out


def _cores(threads: int | None) -> int:
    """CPU cores this run may use: ``--threads`` when given, else ``OMP_NUM_THREADS`` when
    set, else the cores the process may run on."""
    import os

    if threads is not None:
        return int(threads)
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit():
        return int(omp)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)


def _can_fork() -> bool:
    """A forked worker is possible and not switched off (``DEPTHFLOW_DYNAMICS_WORKERS=1``)."""
    import multiprocessing
    import os

    text = os.environ.get(WORKERS_ENV, "").strip()
    if text and text not in ("1", "2"):
        from depthflow.errors import ConfigError
        raise ConfigError(f"{WORKERS_ENV} must be 1 (one process) or 2, got {text!r}")
    return text != "1" and "fork" in multiprocessing.get_all_start_methods()


def _child(conn, run, cfg, names) -> None:
    """The forked worker: its analyses and their seconds, or the error, through ``conn``."""
    import os
    import pickle

    from depthflow.core import profiling

    code = 0
    try:
        torch.set_num_threads(1)
        out, seconds = {}, {}
        for name in names:
            tic = time.perf_counter()
            out.update(_one(run, cfg, name))
            seconds[name] = time.perf_counter() - tic
        prof = profiling.active()              # the parent's, copied at the fork: the
        stages = {} if prof is None else {     # stages of these analyses are this worker's
            f"dynamics.{n}": prof.seconds[f"dynamics.{n}"] for n in names
            if f"dynamics.{n}" in prof.seconds}
        conn.send_bytes(pickle.dumps(("ok", out, (seconds, stages))))
    except BaseException as exc:                     # noqa: BLE001 - reported to the parent
        try:
            payload = pickle.dumps(("error", exc, None))
        except Exception:                            # an unpicklable exception: its text
            payload = pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc}"),
                                    None))
        conn.send_bytes(payload)
        code = 1
    finally:
        conn.close()
        os._exit(code)


def _compute_in_two(run, cfg, clock, children, groups) -> None:
    """The first group here, the second in a forked worker (one thread each); results,
    seconds and errors come back through a pipe. The values are those of a sequential
    run: every random draw is keyed by the seed and the sample, not by the order."""
    import multiprocessing
    import pickle

    from depthflow.core import profiling
    from depthflow.errors import DepthflowError

    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe(duplex=False)
    worker = ctx.Process(target=_child, args=(there, run, cfg, groups[1]), daemon=True)
    worker.start()
    there.close()
    try:
        for name in groups[0]:
            children.update(_one(run, cfg, name))
            clock.step(name)
        try:
            status, out, seconds = pickle.loads(here.recv_bytes())
        except EOFError:
            worker.join(5)
            raise DepthflowError(
                f"the dynamics worker process ({', '.join(groups[1])}) ended without a "
                f"result (exit code {worker.exitcode}); rerun with "
                "DEPTHFLOW_DYNAMICS_WORKERS=1 to run every analysis in one process") from None
        if status == "error":
            raise out
        children.update(out)
        seconds, stages = seconds
        prof = profiling.active()
        if prof is not None:                          # --profile: the worker's stages too
            for key, value in stages.items():
                prof.seconds[key] = prof.seconds.get(key, 0.0) + value
                prof.calls[key] = prof.calls.get(key, 0) + 1
        for name in groups[1]:
            clock.step(name, seconds=seconds[name])
    finally:
        here.close()
        if worker.is_alive():
            worker.terminate()
        worker.join(5)


class _Clock:
    """Seconds per analysis (recorded) and a progress bar (when asked)."""

    def __init__(self, show: bool, total: int) -> None:
        self.bar, self.seconds, self.last = None, {}, time.perf_counter()
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="dynamics", leave=False)

    def step(self, what: str, seconds: float | None = None) -> None:
        """``what`` is done: its seconds since the last step (or ``seconds``: measured in
        a worker process)."""
        now = time.perf_counter()
        self.seconds[what] = round(now - self.last if seconds is None else seconds, 3)
        if seconds is None:
            self.last = now
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

