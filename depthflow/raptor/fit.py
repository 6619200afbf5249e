"""Fit a Raptor surrogate to a ViT teacher: options, orchestration, outputs.

:func:`fit_raptor` takes a loaded teacher and image sources and writes a directory::

    model.safetensors, config.json   the surrogate (see :mod:`depthflow.raptor.io`)
    training_state.pt                resume record (``resume=True`` continues exactly)
    fit_config.json                  every option, the thresholds used, the run's inputs
    evaluation.json, evaluation.nc   fidelity (see :mod:`depthflow.raptor.evaluate`)
    log.csv, fit.log, curves.png     loss / R^2 curves and readable logs

:func:`fit_checkpoint` does the same from a checkpoint path and image specs (what
``depthflow fit`` calls), and resumes a directory from its own record.

Several processes: ``torchrun --nproc-per-node N -m depthflow.cli.fit ...``; every rank
takes ``batch_size / N`` images of each global batch, rank 0 alone writes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from depthflow.models.checkpoints import LoadedModel
from depthflow.data.images import ImageSource
from depthflow.data.tokens import cls_position
from depthflow.errors import ConfigError, InputError
from depthflow.io.provenance import provenance, resumed_provenance
from depthflow.raptor.digests import check_resume_digests, fit_digests, recipe_digest
from depthflow.raptor.distributed import DistInfo, barrier, broadcast_object, setup, teardown
from depthflow.raptor.evaluate import Fidelity, evaluate_fidelity
from depthflow.raptor.io import CONFIG_FILE, MODEL_FILE, load_state, write_json
from depthflow.raptor.config import RESUMABLE_CHANGES, FitConfig
from depthflow.raptor.model import build_raptor, check_thresholds
from depthflow.raptor.outputs import plot_curves, prepare_output, write_log_csv
from depthflow.raptor.train import FitError, Trainer, log

FIT_CONFIG_FILE = "fit_config.json"

@dataclasses.dataclass
class FitResult:
    """What :func:`fit_raptor` produced."""

    directory: Path
    steps: int
    complete: bool
    thresholds: tuple[int, ...]
    fidelity: Fidelity | None
    config: FitConfig
    rows: list[dict[str, Any]]


def resolve_thresholds(loaded: LoadedModel, source: ImageSource, config: FitConfig, *,
                       progress: bool = False) -> tuple[int, ...]:
    """``config.thresholds`` checked against the teacher, else max-cut on ``source``."""
    depth = loaded.config.depth
    if config.k > depth:
        raise ConfigError(f"k={config.k} is larger than the teacher depth {depth}; "
                          f"choose k in 1..{depth}")
    if config.assignment is not None:
        from depthflow.raptor.model import check_assignment
        check_assignment(config.assignment, depth, k=config.k)
        return ()
    if config.thresholds is not None:
        return check_thresholds(config.thresholds, depth, k=config.k)
    if config.k == 1:
        return ()
    try:
        from depthflow.phases.analysis import suggest_thresholds
    except ImportError as exc:
        raise ConfigError("no thresholds given and depthflow.phases (max-cut segmentation) "
                          "is not available; pass --thresholds") from exc
    found = suggest_thresholds(loaded, source, k=config.k, limit=config.threshold_images,
                               batch_size=config.eval_batch_size, device=config.device,
                               progress=progress)
    return check_thresholds(found, depth, k=config.k)


def check_images(loaded: LoadedModel, images, source: ImageSource) -> None:
    """The teacher must accept the (preprocessed) images and know their classes."""
    sample = images(torch.arange(1))
    try:
        with torch.no_grad():
            loaded.model.embed(sample.to(next(loaded.model.parameters()).device))
    except InputError as exc:
        raise InputError(f"images {source.describe()} do not match the teacher "
                         f"{loaded.source}: {str(exc).splitlines()[0]}") from exc
    check_labels(loaded, source)


def check_labels(loaded: LoadedModel, source: ImageSource) -> None:
    classes = loaded.config.num_classes
    top = int(source.labels.max()) if len(source) else -1
    if loaded.model.head is not None and top >= classes:
        raise InputError(
            f"images {source.describe()} have labels up to {top} but the teacher's head has "
            f"{classes} classes; give images labelled like the teacher's training data (or "
            "unlabelled ones)")


def fit_raptor(loaded: LoadedModel, source: ImageSource, output: str | os.PathLike[str], *,
               config: FitConfig | None = None, eval_source: ImageSource | None = None,
               overwrite: bool = False, resume: bool = False, progress: bool = False,
               stop_after: int | None = None, command: Sequence[str] | None = None,
               run: dict[str, Any] | None = None) -> FitResult:
    """Fit a Raptor to ``loaded`` on ``source``, evaluate on ``eval_source``, write ``output``.

    Parameters
    ----------
    loaded
        The teacher.
    source, eval_source
        Training images; held-out images for the evaluation (None: the training images,
        recorded as in-sample).
    output
        Directory for every output (must be new or empty unless ``overwrite``/``resume``).
    config
        A :class:`FitConfig`; with ``resume`` the saved one is used and ``config`` may only
        differ in :data:`RESUMABLE_CHANGES`.
    stop_after
        Stop after this many steps in all, leaving a resumable directory (no evaluation).
    run
        Free-form record of the inputs (checkpoint path, image specs), kept for ``resume``.

    Raises
    ------
    ConfigError, InputError, OutputError, FitError
        Bad options or thresholds, images the teacher cannot take, unwritable output, NaN
        loss (the last good checkpoint stays).
    """
    config = (config or FitConfig()).validate()
    dist, device_name = setup(config.device)
    try:
        return _fit(loaded, source, output, config=config, eval_source=eval_source,
                    overwrite=overwrite, resume=resume, progress=progress,
                    stop_after=stop_after, command=command, run=run or {}, dist=dist,
                    device_name=device_name)
    finally:
        teardown(dist)


def _fit(loaded, source, output, *, config, eval_source, overwrite, resume, progress,
         stop_after, command, run, dist: DistInfo, device_name: str) -> FitResult:
    from depthflow.models.preprocessing import model_preprocessing
    from depthflow.raptor.data import IndexedImages

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if config.routed or config.k > loaded.config.depth:
        resolve_thresholds(loaded, source, config)          # bad options cost nothing
    preprocessing = model_preprocessing(loaded)
    images = IndexedImages(source, preprocessing)
    check_images(loaded, images, source)
    if eval_source is not None:
        check_labels(loaded, eval_source)
    state = None
    error = None
    digests = fit_digests(loaded, source, images, config) if dist.main else {}
    if dist.main:
        try:
            prepare_output(output, overwrite=overwrite, resume=resume, create=False)
            if resume:
                state = load_state(output)
                config = _resumed_config(state, config)
                check_resume_digests(read_run(output, "digests"),
                                     {**digests, "recipe": recipe_digest(config)}, output)
            elif not config.routed:                   # max-cut phases of the training images
                config = config.replace(thresholds=resolve_thresholds(
                    loaded, source, config, progress=progress))
            prepare_output(output, overwrite=overwrite, resume=resume)
        except Exception as exc:                      # every rank must stop, not hang
            error = exc
    if broadcast_object(error is not None, dist):
        if error is not None:
            raise error
        raise FitError("rank 0 failed to prepare the output; see its message")
    directory = Path(output)
    config = broadcast_object(config, dist)
    if resume and not dist.main:                      # a shared file system, as torchrun's
        state = load_state(directory)
    device = torch.device(device_name)
    teacher = loaded.model.to(device=device, dtype=torch.float32).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.set_attention(config.attention)
    if config.batch_size % dist.world:
        raise ConfigError(f"batch_size={config.batch_size} must be divisible by the "
                          f"{dist.world} processes")
    _setup_logging(directory if dist.main else None, resume=resume)
    cache = make_cache(teacher, images, config, loaded, preprocessing)
    init_states = _init_states(images, cache, teacher, config, device)
    raptor = build_raptor(teacher, config.raptor_config(), seed=config.seed, init=config.init,
                          block_init=config.setting("block_init"),
                          init_layer=config.init_layer, states=init_states)
    raptor = raptor.to(device).train().set_attention(config.attention)
    if config.compile:
        for block in raptor.blocks:
            block.compile()
    probe = _probe_states(teacher, eval_source or source, preprocessing, config, device) \
        if dist.main else None
    record = {"teacher": loaded.provenance(), "images": source.describe(),
              "eval_images": (eval_source or source).describe(), "run": run,
              "thresholds": list(config.thresholds or ()),
              "assignment": list(raptor.assignment), "recipe": config.effective(),
              "digests": {**digests, "recipe": recipe_digest(config)}}

    def save_info() -> dict[str, Any]:
        return {"fit": config.to_json(), "teacher_source": loaded.source,
                "teacher_sha256": loaded.sha256 or "", "teacher_info": loaded.info,
                "thresholds": list(config.thresholds or ()),
                "assignment": list(raptor.assignment)}

    trainer = Trainer(raptor, teacher, images, config, directory=directory, dist=dist,
                      device=device, save_info=save_info, preprocessing=preprocessing,
                      probe_states=probe, progress=progress, cache=cache,
                      probe_cls=cls_position(teacher.token_kinds(*images.shape[-2:])))
    if dist.main:
        prov = provenance(config=config.to_dict(), command=command)
        if resume:     # the original command line stays, next to the resume history
            prov = resumed_provenance(read_run(directory, "provenance"), prov)
        write_json(directory / FIT_CONFIG_FILE, {"config": config.to_dict(), **record,
                                                 "provenance": prov})
    if state is not None:
        trainer.load_state_dict(state)
        log.info("resumed at step %d of %d", trainer.step, trainer.total)
    else:
        log.info("fitting k=%d Raptor (routing %s, counts %s) to %s on %s; %d steps",
                 config.k, list(raptor.assignment), raptor.counts, loaded.source,
                 source.describe(), trainer.total)
        trainer.checkpoint()                          # early write check; step-0 restart point
    complete = trainer.run(stop_after=stop_after)
    fidelity = None
    if dist.main:
        write_log_csv(directory, trainer.rows)
        plot_curves(directory, trainer.rows, config)
    if complete and dist.main:
        fidelity = _evaluate(raptor, teacher, eval_source or source, source, config,
                             preprocessing, device, directory, loaded, record, command,
                             images=images, cache=cache, init_states=init_states)
    barrier(dist)
    return FitResult(directory, trainer.step, complete, tuple(config.thresholds or ()),
                     fidelity, config, trainer.rows)


def _resumed_config(state: dict[str, Any], config: FitConfig) -> FitConfig:
    saved = FitConfig.from_dict(json.loads(state["config"]))
    if config == FitConfig().validate() or config == saved:
        return saved
    mine, theirs = config.to_dict(), saved.to_dict()
    if config.thresholds is None and config.assignment is None:
        mine["thresholds"] = theirs["thresholds"]
    differ = sorted(k for k in mine if mine[k] != theirs[k] and k not in RESUMABLE_CHANGES)
    if differ:
        raise ConfigError(
            f"cannot resume with different options {differ} (saved "
            f"{ {k: theirs[k] for k in differ} }); resume with the saved options")
    return saved.replace(**{k: getattr(config, k) for k in RESUMABLE_CHANGES})


def _setup_logging(directory: Path | None, *, resume: bool) -> None:
    for handler in list(log.handlers):
        if getattr(handler, "_depthflow_fit", False):
            log.removeHandler(handler)
            handler.close()
    log.setLevel(logging.INFO)
    log.propagate = False
    if directory is not None:
        handler = logging.FileHandler(directory / "fit.log", mode="a" if resume else "w")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        handler._depthflow_fit = True
        log.addHandler(handler)


def _probe_states(teacher, source: ImageSource, preprocessing, config: FitConfig,
                  device) -> torch.Tensor:
    """Teacher states of the first held-out batch, for the R^2 curve during training."""
    from depthflow.raptor.teacher import teacher_states
    batch = next(source.batches(config.eval_batch_size, preprocessing=preprocessing))
    return teacher_states(teacher, batch.images.to(device))


def make_cache(teacher, images, config: FitConfig, loaded: LoadedModel, preprocessing):
    """The teacher-state cache of ``images`` under ``config.cache_dir`` (None: no cache)."""
    if not config.cache_dir:
        return None
    from depthflow.raptor.teacher import StateCache, cache_key
    return StateCache(teacher, images, directory=config.cache_dir,
                      max_bytes=int(config.cache_gb * (1 << 30)), dtype=config.cache_dtype,
                      key=cache_key(loaded.sha256 or "", teacher, preprocessing, images))


def _states(images, cache, teacher, indices: torch.Tensor, device) -> torch.Tensor:
    from depthflow.raptor.teacher import teacher_states
    if cache is not None:
        return cache.get(indices, device)
    return teacher_states(teacher, images(indices).to(device))


def _init_states(images, cache, teacher, config: FitConfig, device):
    """Teacher states of the first training images (the ``best`` init layer's criterion)."""
    if config.init != "teacher" or config.init_layer != "best":
        return None
    n = min(images.size, 64, config.baseline_images)
    return _states(images, cache, teacher, torch.arange(n), device)


def baseline_surrogates(raptor, teacher, config: FitConfig, images, cache, device,
                        init_states=None) -> list:
    """identity, mean_trajectory, linear (fitted on the first ``baseline_images`` training
    images), init (the Raptor before training) and loop (one teacher layer per phase)."""
    from depthflow.raptor.model import build_raptor, teacher_init_layers
    from depthflow.raptor.surrogates import (IdentitySurrogate, LoopSurrogate, ModelSurrogate,
                                             TrainStatistics, best_loop_layers)

    kinds = teacher.token_kinds(*images.shape[-2:])
    stats = TrainStatistics(raptor.assignment, kinds)
    n = min(images.size, config.baseline_images)
    for lo in range(0, n, config.eval_batch_size):
        idx = torch.arange(lo, min(lo + config.eval_batch_size, n))
        stats.update(_states(images, cache, teacher, idx, device))
    init = build_raptor(teacher, config.raptor_config(), seed=config.seed, init=config.init,
                        block_init=config.setting("block_init"), init_layer=config.init_layer,
                        states=init_states).to(device).eval()
    if config.init_layer == "best":
        states = init_states if init_states is not None else \
            _states(images, cache, teacher, torch.arange(min(images.size, 64)), device)
        layers = best_loop_layers(teacher, raptor.assignment, states)
    else:
        mode = "middle" if config.init_layer == "mean" else config.init_layer
        layers = teacher_init_layers(teacher, raptor.assignment, mode)
    loop = LoopSurrogate(teacher, layers, raptor.assignment)
    return [IdentitySurrogate(), stats.mean_trajectory(), stats.linear(),
            ModelSurrogate("init", init, raptor.depth), loop]


def _labelled_batches(images, cache, teacher, device, *, limit: int, batch: int):
    """``() -> (states, labels)`` of the first ``limit`` labelled training images."""
    labels = torch.as_tensor(images.source.labels)
    keep = torch.nonzero(labels >= 0).flatten()[:limit]

    def batches():
        for lo in range(0, len(keep), batch):
            idx = keep[lo:lo + batch]
            yield _states(images, cache, teacher, idx, device), labels[idx]
    return batches


def _evaluate(raptor, teacher, eval_source, train_source, config, preprocessing, device,
              directory, loaded, record, command, *, images=None, cache=None,
              init_states=None) -> Fidelity:
    from depthflow.io.netcdf import write_dataset
    from depthflow.raptor.data import IndexedImages
    raptor.eval().set_attention(config.attention)
    baselines = eval_batches = train_batches = None
    if images is not None and config.baselines:
        baselines = baseline_surrogates(raptor, teacher, config, images, cache, device,
                                        init_states)
    if images is not None:
        train_batches = _labelled_batches(images, cache, teacher, device,
                                          limit=config.baseline_images,
                                          batch=config.eval_batch_size)
    if cache is not None:
        held = images if eval_source is train_source else \
            IndexedImages(eval_source, preprocessing)
        held_cache = make_cache(teacher, held, config, loaded, preprocessing)
        labels = torch.as_tensor(eval_source.labels)

        def eval_batches():
            for lo in range(0, held.size, config.eval_batch_size):
                idx = torch.arange(lo, min(lo + config.eval_batch_size, held.size))
                yield held_cache.get(idx, device), labels[idx]
    fidelity = evaluate_fidelity(raptor, teacher, eval_source, preprocessing=preprocessing,
                                 batch_size=config.eval_batch_size, device=device,
                                 probe_source=train_source, baselines=baselines,
                                 eval_batches=eval_batches, train_batches=train_batches,
                                 seed=config.seed, probe_epochs=config.feature_probe_epochs,
                                 bootstrap=config.bootstrap)
    if config.probe_epochs > 0 and teacher.head is not None:
        fidelity.probe = _finetuned_probe(raptor, teacher, train_source, eval_source,
                                          preprocessing, config)
    summary = {**fidelity.summary(), "in_sample": eval_source is train_source,
               "eval_images": eval_source.describe(),
               "thresholds": list(config.thresholds or ()),
               "assignment": list(raptor.assignment), "recipe": config.recipe,
               "recipe_settings": config.effective(),
               "counts": list(raptor.counts), "k": config.k, "init": config.init,
               "init_layer": config.init_layer}
    for b in baselines or []:
        if b.name == "loop":
            summary["loop_layers"] = list(b.layers)
    write_json(directory / "evaluation.json", summary)
    attrs = provenance(config=config.to_dict(), command=command,
                       extra={**loaded.provenance(), "title": "Raptor fidelity",
                              "raptor": raptor.raptor_cfg.to_json(),
                              "images": eval_source.describe(),
                              "in_sample": int(eval_source is train_source)})
    original = read_run(directory, "provenance")       # a resumed run: its first command
    if original.get("resume_history"):
        attrs.update(command=original["command"], resume_history=original["resume_history"])
    write_dataset(fidelity.to_dataset(raptor, attrs=attrs), directory / "evaluation.nc",
                  overwrite=True)
    log.info("evaluation on %s: last-layer r2_image %.4f (cls %s), teacher acc %.4f, raptor "
             "acc %.4f (ratio %.4f), last-layer R2 %.4f (paper form %.4f)",
             eval_source.describe(), fidelity.last("r2_image"),
             _fmt(fidelity.last("r2_image", "cls") if "cls" in fidelity.groups else None),
             fidelity.teacher_accuracy, fidelity.raptor_accuracy, fidelity.accuracy_ratio,
             fidelity.last("r2"), fidelity.last("r2_paper"))
    for name, b in fidelity.baselines.items():
        log.info("baseline %s: last-layer r2_image %.4f (cls %s), R2 %.4f", name,
                 b.last("r2_image"),
                 _fmt(b.last("r2_image", "cls") if "cls" in b.groups else None), b.last("r2"))
    if fidelity.baselines:
        log.info("%s", fidelity.verdict())
    return fidelity


def _finetuned_probe(raptor, teacher, train_source, eval_source, preprocessing,
                     config: FitConfig) -> dict[str, Any]:
    """The paper's fine-tuned-probe readout for the Raptor (and the teacher, same recipe)."""
    from depthflow.raptor.data import IndexedImages
    from depthflow.raptor.probe import ProbeConfig, finetune_probe

    def tensors(source):
        images = IndexedImages(source, preprocessing)
        idx = torch.arange(images.size)
        return images(idx), torch.as_tensor(source.labels, dtype=torch.long)

    train_x, train_y = tensors(train_source)
    eval_x, eval_y = tensors(eval_source)
    keep_t, keep_e = train_y >= 0, eval_y >= 0
    probe_cfg = ProbeConfig(epochs=config.probe_epochs, seed=config.seed)
    out = {}
    for name, model in (("raptor", raptor), ("teacher", teacher)):
        result = finetune_probe(model, train_x[keep_t], train_y[keep_t], eval_x[keep_e],
                                eval_y[keep_e], probe_cfg)
        out[name] = {k: v for k, v in result.items() if k != "curve"}
        out[name]["curve"] = [row["eval_accuracy"] for row in result["curve"]]
    t = out["teacher"]["probe_accuracy"]
    out["ratio_to_teacher_frozen"] = out["raptor"]["probe_accuracy"] / \
        out["teacher"]["frozen_accuracy"] if out["teacher"]["frozen_accuracy"] else None
    out["ratio_to_teacher_probe"] = out["raptor"]["probe_accuracy"] / t if t else None
    log.info("fine-tuned probe (%d epochs): raptor %.4f (frozen head %.4f), teacher %.4f",
             config.probe_epochs, out["raptor"]["probe_accuracy"],
             out["raptor"]["frozen_accuracy"], t)
    return out


def _fmt(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def read_run(directory: str | os.PathLike[str], key: str = "run") -> dict[str, Any]:
    path = Path(directory) / FIT_CONFIG_FILE
    try:
        return json.loads(path.read_text()).get(key, {})
    except (OSError, ValueError):
        return {}


__all__ = ["FitConfig", "FitResult", "fit_raptor", "read_run", "resolve_thresholds",
           "FitError", "CONFIG_FILE", "MODEL_FILE"]
