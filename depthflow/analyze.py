"""``depthflow analyze``: stream a model's depth trajectories into one NetCDF file.

The file holds per-sample token dynamics (always), population update ranks and class
structure (always, when defined), optionally the cls-token or full states, and provenance.
Later analyses (phases, dynamics, Raptor) add their variables to the same file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from . import dims as D
from . import tokens
from .checkpoints import LoadedModel
from .data import ImageSource
from .errors import ConfigError, InputError
from .io import check_output_path
from .netcdf import StreamingWriter
from .preprocessing import Preprocessing, dinov2_preprocessing
from .provenance import provenance
from .trajectory import DTYPES, TrajectoryBatch, iter_trajectories, resolve_device

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
class AnalyzeConfig:
    """Options of :func:`analyze` (all recorded, JSON-encoded, in the output)."""

    batch_size: int | None = None
    device: str = "cpu"
    dtype: str = "float32"
    states: str = "cls"
    limit: int | None = None
    seed: int = 0
    image_ranks: bool = False

    def validate(self) -> AnalyzeConfig:
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 (or None: automatic), "
                              f"got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.states not in STATES:
            raise ConfigError(f"states must be one of {STATES}, got {self.states!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        resolve_device(self.device)
        return self


def model_preprocessing(loaded: LoadedModel) -> Preprocessing:
    """The checkpoint's preprocessing, else a default that fits its input size."""
    if loaded.preprocessing is not None:
        return loaded.preprocessing
    cfg = loaded.config
    if cfg.in_chans == 1:
        return Preprocessing(resize=cfg.img_size, crop=cfg.img_size, mean=(0.5,), std=(0.5,),
                             mode="L")
    return dinov2_preprocessing(224 if cfg.patch_size == 14 else cfg.img_size)


def _attrs(long_name: str, units: str = "1", **extra: Any) -> dict[str, Any]:
    return {"long_name": long_name, "units": units, **extra}


class _Schema:
    """Dimensions, coordinates and per-sample variables of an analysis file."""

    def __init__(self, loaded: LoadedModel, source: ImageSource, height: int, width: int,
                 config: AnalyzeConfig) -> None:
        model = loaded.model
        self.depth = model.cfg.depth
        self.kinds_of_token = model.token_kinds(height, width)
        self.kinds = [k for k in D.TOKEN_KINDS if k in self.kinds_of_token]
        self.groups = [torch.tensor([i for i, k in enumerate(self.kinds_of_token) if k == kind])
                       for kind in self.kinds]
        self.patch_slice = slice(model.cfg.num_prefix_tokens, len(self.kinds_of_token))
        self.dim = model.cfg.embed_dim
        self.classes = list(source.class_names)
        self.has_head = model.head is not None
        self.config = config
        self.num_logits = 0

    def define(self, w: StreamingWriter) -> None:
        L, T = self.depth, len(self.kinds_of_token)
        w.dimension(D.DEPTH, L + 1)
        w.dimension(D.STEP, L)
        w.dimension(D.TOKEN, T)
        w.dimension(D.KIND, len(self.kinds))
        w.dimension(D.FEATURE, self.dim)
        w.variable(D.DEPTH, [D.DEPTH], "i4", data=np.arange(L + 1), attrs=_attrs(
            "depth (0 = embedded input, l = after block l)"))
        w.variable(D.STEP, [D.STEP], "i4", data=np.arange(1, L + 1), attrs=_attrs(
            "update step l: depth l-1 -> l (block l)"))
        w.variable(D.TOKEN, [D.TOKEN], "i4", data=np.arange(T), attrs=_attrs("token position"))
        w.variable(D.TOKEN_KIND, [D.TOKEN], str, data=self.kinds_of_token,
                   attrs=_attrs("token kind", ""))
        w.variable(D.KIND, [D.KIND], str, data=self.kinds, attrs=_attrs("token kind group", ""))
        w.variable(D.FEATURE, [D.FEATURE], "i4", data=np.arange(self.dim),
                   attrs=_attrs("feature index"))
        if self.classes:
            w.dimension(D.CLASS, len(self.classes))
            w.variable(D.CLASS, [D.CLASS], str, data=self.classes, attrs=_attrs("class name", ""))
        S = D.SAMPLE
        w.variable(D.LABEL, [S], "i4", attrs=_attrs("class label index (-1 = unknown)", ""))
        w.variable(S, [S], "i4", attrs=_attrs("sample index in the image source"))
        w.variable("sample_name", [S], str, attrs=_attrs("image name or index", ""))
        per_kind = [S, D.DEPTH, D.KIND]
        w.variable("norm", per_kind, "f4", attrs=_attrs(
            "mean token norm ||x|| within token kind", "activation units"))
        w.variable("gamma", per_kind, "f4", attrs=_attrs(
            "directional convergence <x_hat_l, x_hat_L>, mean within token kind"))
        w.variable("angular_speed", [S, D.STEP, D.KIND], "f4", attrs=_attrs(
            "angular speed arccos <x_hat_l, x_hat_(l-1)>, mean within token kind", "rad"))
        if self.patch_slice.stop > self.patch_slice.start:
            w.variable("patch_coherence", [S, D.DEPTH], "f4", attrs=_attrs(
                "patch coherence: mean cosine of patch tokens to the mean patch direction"))
        if self.config.image_ranks:
            for name, text in _RANK_NAMES.items():
                w.variable(f"update_{name}", [S, D.STEP], "f4", attrs=_attrs(
                    f"{text} of the update a_l - a_(l-1), tokens stacked, per image"))
        if self.has_head:
            w.variable("prediction", [S], "i4", attrs=_attrs("predicted class index", ""))
            w.dimension(D.LOGIT, self.num_logits)
            w.variable("logits", [S, D.LOGIT], "f4", attrs=_attrs("classifier logits", ""))
        if self.config.states in ("cls", "all"):
            w.variable("cls_state", [S, D.DEPTH, D.FEATURE], "f4", compress=True,
                       attrs=_attrs("cls token state a_l[cls]", "activation units"))
        if self.config.states == "all":
            w.variable("state", [S, D.DEPTH, D.TOKEN, D.FEATURE], "f4", compress=True,
                       chunks=[1, L + 1, T, self.dim],
                       attrs=_attrs("token state a_l (raw residual stream)", "activation units"))

    def batch_values(self, tb, start: int) -> tuple[dict[str, Any], torch.Tensor]:
        """Per-sample values of one batch (numpy, for the writer) and its updates."""
        traj = tb.states
        measures, updates = tokens.summarize_batch(traj, self.groups, self.patch_slice,
                                                   image_ranks=self.config.image_ranks)
        values: dict[str, Any] = {
            D.SAMPLE: np.arange(start, start + len(tb.batch.names), dtype=np.int32),
            D.LABEL: tb.batch.labels.numpy().astype(np.int32),
            "sample_name": tb.batch.names,
            **measures,
        }
        if self.has_head:
            values["prediction"] = tb.logits.argmax(-1).to(torch.int32)
            values["logits"] = tb.logits
        if self.config.states in ("cls", "all"):
            values["cls_state"] = traj[:, :, 0]
        if self.config.states == "all":
            values["state"] = traj
        values = {k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v
                  for k, v in values.items()}
        return values, updates


_RANK_NAMES = {"stable_rank": "stable rank ||U||_F^2 / ||U||_2^2",
               "effective_rank": "effective rank exp(entropy of normalised singular values)",
               "participation_ratio": "participation ratio (sum s^2)^2 / sum s^4"}


@dataclasses.dataclass
class AnalysisContext:
    """What an :class:`Analysis` plug-in sees of the run it is part of."""

    loaded: LoadedModel
    source: ImageSource
    preprocessing: Preprocessing
    device: torch.device
    dtype: str
    batch_size: int
    progress: bool
    seed: int
    token_kinds: list[str]          # kind of every token: "cls" | "register" | "patch"
    kinds: list[str]                # kind groups present, in D.TOKEN_KINDS order
    groups: list[torch.Tensor]      # token indices of each kind group
    height: int
    width: int


@runtime_checkable
class Analysis(Protocol):
    """A plug-in analysis of ``depthflow analyze`` (phases, dynamics, ...).

    ``update`` sees every streamed batch (accumulate, never keep all states), ``finish``
    returns an ``xr.Dataset`` whose variables join the result file, and ``plot`` draws PNGs
    from the whole re-opened result into a directory.
    """

    name: str

    def update(self, tb: TrajectoryBatch, ctx: AnalysisContext) -> None: ...

    def finish(self, ctx: AnalysisContext) -> Any: ...

    def plot(self, ds: Any, out_dir: Path) -> list[Path]: ...


def analyze(loaded: LoadedModel, source: ImageSource, output: str | os.PathLike[str], *,
            config: AnalyzeConfig | None = None, analyses: Sequence[Analysis] = (),
            overwrite: bool = False, progress: bool = False,
            command: Sequence[str] | None = None) -> Path:
    """Extract trajectories of ``source`` through ``loaded`` and write ``output`` (NetCDF).

    Memory is bounded by one batch of states plus ``O(L K D^2)`` accumulators, whatever the
    number of images. Each plug-in of ``analyses`` sees every batch and adds its variables
    at the end. The file appears only when complete.
    """
    config = (config or AnalyzeConfig()).validate()
    check_output_path(output, overwrite=overwrite)
    torch.manual_seed(config.seed)
    source.limit(config.limit)
    if len(source) == 0:
        raise InputError("no images to analyse")
    preprocessing = model_preprocessing(loaded)
    batch_size = config.batch_size or auto_batch_size(loaded, preprocessing)
    config = dataclasses.replace(config, batch_size=batch_size)      # recorded as used
    stream = iter_trajectories(loaded.model, source, preprocessing=preprocessing,
                               batch_size=batch_size, device=config.device,
                               dtype=config.dtype, progress=progress)
    first = next(stream)
    height, width = first.batch.images.shape[-2:]
    schema = _Schema(loaded, source, height, width, config)
    if schema.has_head:
        schema.num_logits = first.logits.shape[-1]
    device = first.states.device            # accumulate where the states live (CPU or GPU)
    grams = tokens.GramAccumulator(schema.depth, len(schema.kinds), schema.dim, device=device)
    classes = (tokens.ClassDirectionAccumulator(schema.depth + 1, len(schema.classes),
                                                schema.dim, device=device)
               if schema.classes else None)
    ctx = AnalysisContext(loaded, source, preprocessing, device, config.dtype, batch_size,
                          progress, config.seed, schema.kinds_of_token, schema.kinds,
                          schema.groups, height, width)
    correct = total = 0
    with StreamingWriter(output, overwrite=overwrite) as writer:
        schema.define(writer)
        _define_population(writer, classes is not None)
        for tb in _chain(first, stream):
            values, updates = schema.batch_values(tb, writer.n)
            writer.append(values)
            grams.add_updates(updates, schema.groups)
            if classes is not None:
                classes.update(tb.states[:, :, 0], tb.batch.labels)
            for analysis in analyses:
                analysis.update(tb, ctx)
            if schema.has_head:
                labelled = tb.batch.labels >= 0
                pred = tb.logits.argmax(-1).cpu()
                correct += int((pred[labelled] == tb.batch.labels[labelled]).sum())
                total += int(labelled.sum())
        _write_population(writer, grams, classes)
        for analysis in analyses:
            writer.add_dataset(analysis.finish(ctx))
        accuracy = correct / total if total else float("nan")
        attrs = _global_attrs(loaded, source, preprocessing, config, writer.n, accuracy,
                              command)
        attrs["analyses"] = ",".join(["trajectories", *(a.name for a in analyses)])
        writer.attrs(attrs)
        writer.commit()
    return Path(output)


def _chain(first, rest):
    yield first
    yield from rest


_CLASS_TEXTS = {   # variable name: (ClassDirectionAccumulator.result key, long name)
    "cls_within_class": ("within",
                         "mean cosine of cls directions to their class-mean direction"),
    "cls_between_class": ("between", "mean cosine between class-mean cls directions"),
    "cls_class_separation": ("separation",
                             "cls class separation: within - between class cosine"),
}


def _define_population(w: StreamingWriter, has_classes: bool) -> None:
    """Population variables are defined up front: defining variables after data has been
    appended makes HDF5 leave and re-enter define mode, which is slow on large files."""
    for name, text in _RANK_NAMES.items():
        w.variable(f"population_{name}", [D.STEP, D.KIND], "f8", attrs=_attrs(
            f"{text} of the updates a_l - a_(l-1), all images and tokens of a kind stacked"))
    if has_classes:
        for name, (_, text) in _CLASS_TEXTS.items():
            w.variable(name, [D.DEPTH], "f8", attrs=_attrs(text))


def _write_population(writer: StreamingWriter, grams: tokens.GramAccumulator,
                      classes: tokens.ClassDirectionAccumulator | None) -> None:
    for name, value in grams.ranks().items():
        writer.write(f"population_{name}", value.numpy())
    if classes is not None:
        result = classes.result()
        for name, (key, _) in _CLASS_TEXTS.items():
            writer.write(name, result[key].cpu().numpy())


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
    }
    if accuracy == accuracy:                  # only when there are a head and labels
        extra["head_accuracy"] = accuracy
    return provenance(config=dataclasses.asdict(config), command=command, extra=extra)


def build_analyses(*, phases: bool = True, phase_options: Sequence[str] = (),
                   dynamics: str | Sequence[str] = "all", dynamics_options: Sequence[str] = (),
                   seed: int = 0) -> list[Analysis]:
    """The plug-ins of ``depthflow analyze`` from CLI-style choices.

    ``dynamics``: ``"all"``, ``"none"`` or a comma list of
    :data:`depthflow.dynamics.analysis.ANALYSES`; ``*_options``: ``key=value`` overrides of
    :class:`~depthflow.phases.PhaseConfig` / :class:`~depthflow.dynamics.analysis.
    DynamicsConfig` fields. Seeds default to ``seed``.
    """
    from .dynamics.analysis import ANALYSES, DynamicsAnalysis, DynamicsConfig
    from .overrides import apply_overrides
    from .phases import PhaseAnalysis, PhaseConfig

    out: list[Analysis] = []
    if phases:
        cfg = apply_overrides(PhaseConfig(seed=seed), phase_options, what="phase option")
        out.append(PhaseAnalysis(cfg))
    elif phase_options:
        raise ConfigError("phase options were given but phases are switched off")
    chosen = dynamics.split(",") if isinstance(dynamics, str) else list(dynamics)
    chosen = [c.strip() for c in chosen if c.strip()]
    if chosen == ["all"]:
        chosen = list(ANALYSES)
    if chosen in ([], ["none"]):
        if dynamics_options:
            raise ConfigError("dynamics options were given but --dynamics is none")
        return out
    unknown = [c for c in chosen if c not in ANALYSES]
    if unknown:
        raise ConfigError(f"--dynamics: unknown analyses {unknown}; give 'all', 'none' or a "
                          f"comma list of {', '.join(ANALYSES)}")
    cfg = apply_overrides(DynamicsConfig(analyses=tuple(chosen), seed=seed), dynamics_options,
                          what="dynamics option")
    out.append(DynamicsAnalysis(cfg.validate()))
    return out


@dataclasses.dataclass
class AnalysisOutputs:
    """What :func:`analyze_checkpoint` wrote."""

    netcdf: Path
    figures: list[Path]
    num_samples: int
    depth: int


def analyze_checkpoint(checkpoint: str | os.PathLike[str] | None, output: str | os.PathLike[str],
                       *, images: str | os.PathLike[str] | None = None,
                       figures: str | os.PathLike[str] | None = None,
                       arch: str | None = None, config: AnalyzeConfig | None = None,
                       analyses: Sequence[Analysis] = (), overwrite: bool = False,
                       progress: bool = False,
                       command: Sequence[str] | None = None) -> AnalysisOutputs:
    """Load ``checkpoint``, analyse ``images`` into ``output`` and draw ``figures``.

    Every output path is checked before any work starts, so a bad path costs nothing and
    an existing result is never half-replaced.
    """
    from .checkpoints import load_model
    from .data import open_images
    from .plots import check_figure_dir, draw_token_dynamics, write_figures
    from .report import open_result

    config = (config or AnalyzeConfig()).validate()
    check_output_path(output, overwrite=overwrite)
    if figures is not None:
        check_figure_dir(figures, overwrite=overwrite)
    loaded = load_model(checkpoint, arch=arch)
    source = open_images(images)
    path = analyze(loaded, source, output, config=config, analyses=analyses,
                   overwrite=overwrite, progress=progress, command=command)
    drawn: list[Path] = []
    if figures is not None:
        drawers = [draw_token_dynamics, *(a.plot for a in analyses)]
        with open_result(path) as ds:
            drawn = write_figures(ds, figures, drawers, overwrite=overwrite)
    return AnalysisOutputs(path, drawn, len(source), loaded.config.depth)
