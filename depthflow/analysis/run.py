"""``depthflow analyze``: stream a model's depth trajectories into one NetCDF file.

:func:`analyze` streams the images through the model batch by batch: the root group gets
the per-sample trajectory summaries (:mod:`depthflow.analysis.summaries`), every plug-in
(:class:`~depthflow.analysis.context.Analysis`) sees each batch and writes its own group
at the end. Memory is bounded by one batch of states plus the accumulators; the file
appears only when complete (temporary file + rename).

Under ``torchrun`` the same call runs sharded (:mod:`depthflow.core.distributed`): each rank
streams its global batches, rank 0 gathers the per-sample values in global order and
writes. A plug-in takes part through optional methods: ``sums()`` / ``load_sums(sums,
token_kinds)`` (float64 sums reduced onto rank 0; ``update`` then runs on every rank),
``shared_state()`` / ``adopt_shared_state(state, token_kinds, device)`` (values rank 0 sets
on its first batch that every rank must use, e.g. CKA shifts), ``shard_update(tb, ctx,
start=)`` / ``merge(part, ctx)`` (a picklable part computed where the batch is, merged on
rank 0 in global order, instead of ``update``), and ``checkpoint_state()`` /
``load_checkpoint_state(state)`` for ``--resume`` (:mod:`depthflow.analysis.checkpoint`).
A plug-in with neither sums nor ``shard_update`` cannot run distributed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from depthflow.core import vocabulary as D
from depthflow.core._crash import crash_point
from depthflow.core.profiling import stage
from depthflow.core.threads import intra_op_threads, threads_for
from depthflow.analysis.context import Analysis, AnalysisContext, TokenLayout
from depthflow.analysis.summaries import SAMPLE_COORDS, TrajectorySummaries
from depthflow.core._memory import pin_mmap_threshold
from depthflow.data.collections import load_batches
from depthflow.core.config import Options, check_choice, check_int
from depthflow.core.distributed import (DistInfo, broadcast_object, check_step, gather_to_main,
                                        global_spans, my_spans, num_steps, reduce_sums, setup,
                                        teardown)
from depthflow.errors import ConfigError, InputError
from depthflow.data.images import ImageSource
from depthflow.io.files import check_output_path
from depthflow.io.netcdf import StreamingWriter
from depthflow.io.provenance import provenance
from depthflow.core.limits import check_analyze_resources
from depthflow.models.checkpoints import LoadedModel
from depthflow.models.preprocessing import Preprocessing, model_preprocessing
from depthflow.data.trajectory import (DTYPES, TrajectoryBatch, forward_batch, resolve_device,
                                       resolve_dtype)

__all__ = ["AnalyzeConfig", "analyze", "stream_analyses", "auto_batch_size", "STATES"]

STATES = ("none", "cls", "all")
STATE_BUDGET_BYTES = 256 << 20      # one batch of trajectories, when batch_size is automatic
MAX_AUTO_BATCH = 64


def auto_batch_size(loaded: LoadedModel, preprocessing: Preprocessing, *,
                    budget_bytes: int = STATE_BUDGET_BYTES) -> int:
    """Images per batch such that one batch of states ``(B, L+1, T, D)`` fits the budget.

    Large models get small batches (memory bounded): e.g. 52 for ViT-S/14 at 224 px; small
    models get the cap, 64. Larger batches made the peak memory of long runs grow on CPU
    (heap fragmentation), hence the cap.
    """
    cfg = loaded.config
    side = preprocessing.crop or preprocessing.resize or cfg.img_size
    per_image = (cfg.depth + 1) * loaded.model.num_tokens(side, side) * cfg.embed_dim * 4
    return int(max(1, min(MAX_AUTO_BATCH, budget_bytes // per_image)))


@dataclasses.dataclass
class AnalyzeConfig(Options):
    """Options of :func:`analyze` (all recorded, JSON-encoded, in the output)."""

    _what = "analyze option"
    _help = {
        "batch_size": "Images per batch (none: automatic, one batch of states about 256 MiB, "
                      "at most 64 images).",
        "device": "Torch device: cpu, cuda, cuda:1, ...",
        "dtype": "Compute dtype: float32, bfloat16 or float64.",
        "states": "Raw states kept (compressed) besides the summaries: none, cls or all.",
        "limit": "Analyse only the first N images.",
        "seed": "Seed for every random path (recorded in the output).",
        "image_ranks": "Rank measures of each image's update matrix (tokens stacked); costs "
                       "a float64 eigenproblem per image and step.",
        "workers": "Processes decoding images ahead of the forward pass (0: decode in this "
                   "process).",
        "checkpoint_every": "With --resume: steps (global batches per process) between "
                            "checkpoints.",
        "threads": "Intra-op CPU threads of this process (unset: OMP_NUM_THREADS when set, "
                   "else torch's default, one per core).",
    }

    batch_size: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    states: str = "cls"
    limit: int | None = None
    seed: int = 0
    image_ranks: bool = False
    workers: int = 0
    checkpoint_every: int = 20
    threads: int | None = None

    def validate(self) -> AnalyzeConfig:
        check_int(self.batch_size, "batch_size", optional=True)
        check_choice(self.dtype, "dtype", sorted(DTYPES))
        check_choice(self.states, "states", STATES)
        check_int(self.limit, "limit", optional=True)
        check_int(self.seed, "seed", minimum=0)
        check_int(self.workers, "workers", minimum=0)
        check_int(self.checkpoint_every, "checkpoint_every")
        check_int(self.threads, "threads", optional=True)
        resolve_device(self.device)
        return self


def analyze(loaded: LoadedModel, source: ImageSource, output: str | os.PathLike[str], *,
            config: AnalyzeConfig | None = None, analyses: Sequence[Analysis] = (),
            overwrite: bool = False, progress: bool = False,
            command: Sequence[str] | None = None, resume: bool = False,
            before_rename: Callable[[Path], None] | None = None) -> Path | None:
    """Extract trajectories of ``source`` through ``loaded`` and write ``output`` (NetCDF).

    Memory is bounded by one batch of states plus ``O(L K D^2)`` accumulators, whatever the
    number of images. Each plug-in of ``analyses`` sees every batch and writes its group at
    the end. The file appears only when complete; ``source`` is not changed.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this with the same
    arguments: the images are sharded in global batches (:mod:`depthflow.core.distributed`),
    rank 0 writes the file and returns its path, the other ranks return ``None``. The
    file does not depend on the number of processes. ``resume`` continues an interrupted
    run from its last checkpoint (:mod:`depthflow.analysis.checkpoint`). ``before_rename``
    (rank 0) is called with the complete temporary file just before it is renamed onto
    ``output`` (the figures are drawn there, so a crash never leaves a new file with old
    figures).
    """
    config = config or AnalyzeConfig()
    info, device = setup(config.device)
    try:
        with intra_op_threads(_threads(loaded, config)):
            return _Run(loaded, source, output, config=config.replace(device=device),
                    analyses=analyses, overwrite=overwrite, progress=progress,
                    command=command, info=info, resume=resume,
                    before_rename=before_rename).run()
    finally:
        teardown(info)


def _threads(loaded: LoadedModel, config: AnalyzeConfig) -> int | None:
    """``config.threads``; unset, on the CPU, one thread for small models (a batch of states
    at one depth under :data:`depthflow.core.threads.PER_THREAD` numbers per thread, e.g. the
    digits ViT), else the process's count (:mod:`depthflow.core.threads`)."""
    if config.threads is not None:
        return config.threads
    if resolve_device(config.device).type != "cpu":
        return None
    try:
        pre = model_preprocessing(loaded)
        side = pre.crop or pre.resize or loaded.config.img_size
        batch = config.batch_size or auto_batch_size(loaded, pre)
        numbers = batch * loaded.model.num_tokens(side, side) * loaded.config.embed_dim
    except Exception:            # noqa: BLE001 - unusual models: leave the count alone
        return None
    return threads_for(numbers)


class _Run:
    """One (possibly sharded) streaming run of :func:`analyze`."""

    def __init__(self, loaded, source, output, *, config, analyses, overwrite, progress,
                 command, info: DistInfo, resume: bool, trajectories: bool = True,
                 before_rename: Callable[[Path], None] | None = None) -> None:
        self.before_rename = before_rename
        self.loaded, self.analyses = loaded, list(analyses)
        self.output = None if output is None else Path(output)
        self.trajectories = trajectories
        self.overwrite, self.command, self.info = overwrite, command, info
        self.progress = progress and info.main
        self.resume = resume
        self.config = config
        self.source = source.head(config.limit)
        self.summaries: TrajectorySummaries | None = None
        self.ctx: AnalysisContext | None = None
        self.writer: StreamingWriter | None = None
        self.store = None
        self.store_every = 0

    # ---------------------------------------------------------------- helpers
    def _all(self, fn, what: str):
        """Run ``fn`` on every rank; any rank's failure stops all (one error)."""
        error, out = None, None
        try:
            out = fn()
        except Exception as exc:          # noqa: BLE001 - reported through check_step
            error = exc
        check_step(self.info, error, what=what)
        return out

    def _main(self, fn, what: str):
        return self._all(lambda: fn() if self.info.main else None, what)

    def _sum_holders(self) -> list:
        return [a for a in self.analyses if hasattr(a, "sums")]

    # ---------------------------------------------------------------- the run
    def run(self) -> Path | None:
        info, config = self.info, self.config
        for a in self.analyses:
            if info.active and not (hasattr(a, "sums") or hasattr(a, "shard_update")):
                raise ConfigError(f"analysis {a.name!r} cannot run distributed (it has "
                                  "neither sums nor shard_update)")
        if self.output is not None:
            self._main(lambda: check_output_path(self.output, overwrite=self.overwrite),
                       "checking the output")
        torch.manual_seed(config.seed)
        n = len(self.source)
        if n == 0:
            raise InputError("no images to analyse")
        preprocessing = model_preprocessing(self.loaded)
        batch_size = broadcast_object(
            config.batch_size or auto_batch_size(self.loaded, preprocessing), info)
        counts = broadcast_object(n, info)
        self._all(lambda: _same_count(counts, n, info), "checking the images")
        self.config = config = config.replace(batch_size=batch_size)     # recorded as used
        self.preprocessing = preprocessing
        if self.output is not None:
            self._all(lambda: check_analyze_resources(self.loaded, self.source, preprocessing,
                                                      config, self.analyses, self.output),
                      "checking resources")
        spans = global_spans(n, batch_size)
        dev, tdtype = resolve_device(config.device), resolve_dtype(config.dtype)
        pin_mmap_threshold()              # flat resident memory over many batches
        out_dtype = torch.float64 if tdtype == torch.float64 else torch.float32
        model = self.loaded.model.to(device=dev, dtype=out_dtype).eval()
        done = self._open_store() if self.output is not None else 0
        rest = spans[done:]               # global batches still to do (all, unless resumed)
        steps = num_steps(len(rest), info.world)
        self.done, self.rest = done, rest
        batches = load_batches(self.source, my_spans(rest, info), preprocessing=preprocessing,
                               workers=config.workers)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=n, initial=spans[done - 1][1] if done else 0, unit="img",
                       desc="trajectories", leave=False)
        try:
            with contextlib.ExitStack() as stack, torch.inference_mode():
                self.stack = stack
                for step in range(steps):
                    b = step * info.world + info.rank
                    payload = self._step(step, b, rest, batches, model, dev, tdtype,
                                         first=step == 0)
                    parts = gather_to_main(payload, info)
                    self._all(lambda: self._merge(parts, step) if info.main else None,
                              "writing the results")
                    if bar is not None:
                        bar.update(sum(p["count"] for p in parts if p))
                    if self.store_every and (step + 1) % self.store_every == 0 and \
                            step + 1 < steps:
                        self._checkpoint(done + min((step + 1) * info.world, len(rest)))
                    crash_point("analyze.batch", rank=info.rank)
                return self._finish()
        finally:
            if bar is not None:
                bar.close()

    def _step(self, step, b, spans, batches, model, dev, tdtype, *, first: bool):
        """Step ``step``: this rank's batch ``spans[b]`` (if any) through the model and its
        local updates; on the first step rank 0 goes first and shares its CKA shifts."""
        info = self.info
        state = {"tb": None, "payload": None}

        def forward():
            if b < len(spans):
                with stage("images"):
                    batch = next(batches)
                with stage("forward"):
                    state["tb"] = tb = forward_batch(model, batch, dev, tdtype)
                if self.ctx is None:
                    self._setup(tb)
                if not first or info.main or not info.active:
                    state["payload"] = self._local(tb, spans[b][0])
            if info.main and self.writer is None and self.store is None and \
                    self.trajectories:
                self._open_writer()

        self._all(forward, f"step {step}")
        if first and info.active:        # every rank adds the same CKA shifts as rank 0
            shared = broadcast_object(
                {a.name: a.shared_state() for a in self.analyses
                 if hasattr(a, "shared_state")} if info.main else None, info)

            def adopt():
                if not info.main and state["tb"] is not None:
                    for a in self.analyses:
                        if a.name in shared:
                            a.adopt_shared_state(shared[a.name], self.ctx.layout.token_kinds,
                                                 self.ctx.device)
                    state["payload"] = self._local(state["tb"], spans[b][0])

            self._all(adopt, f"step {step}")
        return state["payload"]

    def _setup(self, tb: TrajectoryBatch) -> None:
        config = self.config
        layout = TokenLayout.of(self.loaded.model, *tb.batch.images.shape[-2:])
        if self.trajectories:
            self.summaries = TrajectorySummaries(
                self.loaded.model, layout, self.source.class_names, states=config.states,
                image_ranks=config.image_ranks, device=tb.states.device)
            if self.summaries.has_head:
                self.summaries.num_logits = tb.logits.shape[-1]

        self.ctx = AnalysisContext(
            layout=layout, loaded=self.loaded, source=self.source,
            preprocessing=self.preprocessing, device=tb.states.device, dtype=config.dtype,
            batch_size=config.batch_size, seed=config.seed, progress=self.progress,
            config=config)
        if self.store is not None and self.store.state is not None:
            self._restore()

    def _open_writer(self) -> None:
        self.writer = self.stack.enter_context(StreamingWriter(
            self.output, overwrite=self.overwrite, sample_coords=SAMPLE_COORDS))
        self.summaries.define(self.writer)

    def _local(self, tb: TrajectoryBatch, start: int) -> dict[str, Any]:
        """This rank's part of a batch: per-sample values and plug-in payloads (sums stay
        local)."""
        with stage("summaries"):
            values = self.summaries.values(tb, start=start) if self.trajectories else None
        plugins = {}
        for analysis in self.analyses:
            with stage(f"{analysis.name} (update)"):
                if hasattr(analysis, "shard_update"):
                    plugins[analysis.name] = analysis.shard_update(tb, self.ctx, start=start)
                else:
                    analysis.update(tb, self.ctx)
        return {"values": values, "plugins": plugins, "count": len(tb.batch.names),
                "start": start}

    def _merge(self, parts: list, step: int) -> None:
        """Rank 0: every rank's part of one step, in global order."""
        for part in parts:
            if not part:
                continue
            if not self.trajectories:
                pass
            elif self.store is not None:
                with stage("write"):
                    self.store.save_values(part["start"], part["values"])
            else:
                with stage("write"):
                    self.summaries.append(part["values"], self.writer)
            for analysis in self.analyses:
                if analysis.name in part["plugins"]:
                    analysis.merge(part["plugins"][analysis.name], self.ctx)

    def _reduce(self) -> None:
        """Every rank's sums onto rank 0 (the others keep theirs)."""
        holders = [self.summaries, *self._sum_holders()] if self.trajectories else \
            self._sum_holders()
        for holder in holders:
            local = holder.sums() if holder is not None else {}
            total = reduce_sums(local, self.info)
            if self.info.main and self.info.active:
                self._load(holder, total)

    def _load(self, holder, sums) -> None:
        if holder is self.summaries:
            holder.load_sums(sums)
        else:
            holder.load_sums(sums, self.ctx.layout.token_kinds)

    def _finish(self) -> Path | None:
        self._reduce()
        if not self.info.main:
            return None
        if not self.trajectories:
            return self.ctx
        if self.store is not None:
            self._open_writer()
            self.store.replay(self.summaries, self.writer, len(self.source))
        writer, summaries, ctx = self.writer, self.summaries, self.ctx
        with stage("summaries"):
            accuracy = summaries.finish(writer)
        crash_point("analyze.analyses")
        for analysis in self.analyses:      # in order: later ones may read earlier ones
            with stage(analysis.name):
                ctx.results[analysis.name] = result = analysis.finish(ctx)
            with stage("write"):
                writer.add_tree(result, group=analysis.group)
        attrs = _global_attrs(self.loaded, self.source, self.preprocessing, self.config,
                              writer.n, accuracy, self.command)
        attrs["analyses"] = ",".join(["trajectories", *(a.name for a in self.analyses)])
        attrs["processes"] = self.info.world
        with stage("write"):
            writer.attrs(attrs)
            writer.commit()
        if self.before_rename is not None:       # e.g. figures drawn from the complete file
            self.before_rename(writer.temporary)
        if self.store is not None:
            self.store.remove()
        return self.output

    # ------------------------------------------------------------ checkpoints
    def _open_store(self) -> int:
        """Rank 0 opens the checkpoint directory (fresh, or resumed with ``resume``);
        every rank learns how many global batches are done."""
        from depthflow.analysis.checkpoint import RunStore, fingerprint, store_path

        self.store_every = self.config.checkpoint_every if self.resume else 0
        if not self.resume:              # a stale checkpoint of this output: start afresh
            self._main(lambda: _remove_tree(store_path(self.output)),
                       "removing an old checkpoint")
            return 0

        def open_store():
            meta = fingerprint(loaded=self.loaded, source=self.source, config=self.config,
                               analyses=self.analyses)
            self.store = RunStore(self.output, meta, every=self.config.checkpoint_every)
            return self.store.open(resume=True)

        done = self._main(open_store, "opening the checkpoint")
        return int(broadcast_object(done, self.info))

    def _checkpoint(self, batches_done: int) -> None:
        """Sums reduced onto rank 0 (the other ranks restart theirs from zero), then
        rank 0 saves the state atomically."""
        from depthflow.analysis.checkpoint import to_cpu

        info = self.info
        holders = {"trajectories": self.summaries,
                   **{a.name: a for a in self._sum_holders()}}
        totals = {}
        for name, holder in holders.items():
            local = holder.sums() if holder is not None else {}
            total = reduce_sums(local, info)
            if info.main:
                if info.active:
                    self._load(holder, total)
                totals[name] = to_cpu(total)
            elif holder is not None and self.ctx is not None:     # this rank saw batches
                self._load(holder, _zeros_like(local))

        def save():
            state = {"batches_done": batches_done, "sums": totals,
                     "shared": {a.name: to_cpu(a.shared_state()) for a in self.analyses
                                if hasattr(a, "shared_state")},
                     "gathered": {a.name: to_cpu(a.checkpoint_state()) for a in self.analyses
                                  if hasattr(a, "checkpoint_state")}}
            self.store.save_state(state)

        self._main(save, "saving a checkpoint")

    def _restore(self) -> None:
        """Rank 0, at the first batch of a resumed run: sums, shared values, gathered
        data from the checkpoint."""
        state = self.store.state
        self._load(self.summaries, state["sums"]["trajectories"])
        for a in self.analyses:
            if a.name in state["shared"]:
                a.adopt_shared_state(state["shared"][a.name], self.ctx.layout.token_kinds,
                                     self.ctx.device)
            if a.name in state["sums"]:
                self._load(a, state["sums"][a.name])
            if a.name in state["gathered"]:
                a.load_checkpoint_state(state["gathered"][a.name])


def _zeros_like(sums: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in sums.items():
        if isinstance(value, torch.Tensor):
            out[key] = torch.zeros_like(value)
        elif value is None:
            out[key] = None
        else:
            out[key] = type(value)(0)
    return out


def _remove_tree(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def stream_analyses(loaded: LoadedModel, source: ImageSource, analyses: Sequence[Analysis], *,
                    batch_size: int, device: str = "cpu", dtype: str = "float32",
                    seed: int = 0, progress: bool = False,
                    workers: int = 0) -> AnalysisContext | None:
    """Stream ``source`` through ``loaded`` into the plug-ins ``analyses`` (their
    ``update``) without a result file, sharded under ``torchrun`` like :func:`analyze`.

    Returns the run's context on rank 0 (the plug-ins hold every rank's sums and
    gathered data: call their ``finish``), ``None`` on the other ranks.
    """
    config = AnalyzeConfig(batch_size=batch_size, device=str(device), dtype=dtype, seed=seed,
                           workers=workers, states="none").validate()
    info, dev = setup(config.device)
    try:
        return _Run(loaded, source, None, config=config.replace(device=dev),
                    analyses=analyses, overwrite=False, progress=progress, command=None,
                    info=info, resume=False, trajectories=False).run()
    finally:
        teardown(info)


def _same_count(main_count: int, n: int, info: DistInfo) -> None:
    if main_count != n:
        raise InputError(f"rank {info.rank} sees {n} images, rank 0 sees {main_count}: every "
                         "process must be given the same images")


def _global_attrs(loaded: LoadedModel, source: ImageSource, preprocessing: Preprocessing,
                  config: AnalyzeConfig, n: int, accuracy: float,
                  command: Sequence[str] | None) -> dict[str, Any]:
    extra = {
        "title": f"depthflow trajectories of {Path(loaded.source).name}",
        **loaded.provenance(),
        "preprocessing": preprocessing.to_json(),
        "images": source.describe(),
        "num_samples": n,
        "seed": config.seed,
        "device": config.device,
        "compute_dtype": config.dtype,
        "model_info": loaded.info,
        "depthflow_format_version": D.FORMAT_VERSION,
    }
    if accuracy == accuracy:                  # only when there are a head and labels
        extra["head_accuracy"] = accuracy
    return provenance(config=config.to_dict(), command=command, extra=extra)
