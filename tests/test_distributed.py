"""Sharded analysis (depthflow.core.distributed): two gloo processes write the one-process file.

Per-sample variables must be bit-identical, reduced ones equal to float64 rounding; a
different batch size gives per-sample values within the documented tolerance; a failing rank stops every rank
with one error and leaves no file; ``--resume`` after a kill gives the uninterrupted file.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import xarray as xr

from depthflow.core import distributed as dd
from depthflow.analysis.registry import build_analyses
from depthflow.analysis.run import AnalyzeConfig, analyze
from depthflow.errors import ConfigError
from depthflow.data.images import open_images

from _models import tiny_loaded

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("phases.swap_trials=2", "phases.swap_samples=12", "dynamics.samples=4",
            "dynamics.min_per_class=2", "dynamics.stretching_k=2", "dynamics.n_boot=10")
N_IMAGES = 22


def _run(output, *, batch_size=4, images="lfw", resume=False, **kwargs) -> None:
    torch.set_num_threads(1)
    analyze(tiny_loaded(depth=3), open_images(images, limit=N_IMAGES), output,
            config=AnalyzeConfig(batch_size=batch_size, states="all", **kwargs),
            analyses=build_analyses(dynamics="stretching", options=SETTINGS), resume=resume)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, output: str, kwargs: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    _run(output, **kwargs)


def _spawn(world: int, output, **kwargs) -> None:
    # fork: the children inherit the imported modules (a spawned child re-imports torch)
    mp.start_processes(_worker, args=(world, _free_port(), str(output), kwargs), nprocs=world,
                       join=True, start_method="fork")


PER_SAMPLE = ("sample", "label", "sample_name", "class_name", "norm", "gamma", "angular_speed",
              "patch_coherence", "prediction", "logits", "cls_state", "state")


def _compare(a: Path, b: Path, *, per_sample_only: bool = False) -> int:
    """Every variable of every group: per-sample ones identical, the rest within float64
    rounding of sums (1e-12 relative, 1e-14 absolute for values near 0)."""
    compared = 0
    with xr.open_datatree(a) as ta, xr.open_datatree(b) as tb:
        for node in ta.subtree:
            da, db = node.to_dataset(), tb[node.path].to_dataset()
            assert set(da.variables) == set(db.variables), node.path
            for name in da.variables:
                x, y = da[name].values, db[name].values
                exact = node.path == "/" and name in PER_SAMPLE
                if per_sample_only and not exact:
                    continue
                if exact or x.dtype.kind not in "fc":
                    assert x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind
                                                                 in "fc"), (node.path, name)
                else:
                    np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-14,
                                               err_msg=f"{node.path}/{name}")
                compared += 1
    return compared


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "one.nc"
    _run(out)
    return out


def test_two_processes_write_the_one_process_file(single, tmp_path):
    _spawn(2, tmp_path / "two.nc")
    assert not [p for p in tmp_path.iterdir() if p.name != "two.nc"]      # no temp left
    assert _compare(single, tmp_path / "two.nc") > 60
    with xr.open_dataset(tmp_path / "two.nc") as ds:
        assert ds.attrs["processes"] == 2
        assert list(ds["sample"].values) == list(range(N_IMAGES))         # global order
        assert len(set(ds["sample_name"].values)) == N_IMAGES             # each image once


def assert_within_contract(x: np.ndarray, y: np.ndarray, name: str) -> None:
    """The reproducibility contract across batch and world sizes (docs/methods.md,
    "Reproducibility"): integers, strings and labels identical; floats within a relative
    tolerance of the variable's scale, 1e-5 for float32 values and 1e-12 for float64."""
    assert x.shape == y.shape, name
    if x.dtype.kind not in "fc":
        assert np.array_equal(x, y), name
        return
    rtol = 1e-5 if x.dtype == np.float32 else 1e-12
    scale = float(np.nanmax(np.abs(x))) if np.isfinite(x).any() else 0.0
    assert np.array_equal(np.isnan(x), np.isnan(y)), name
    np.testing.assert_allclose(y, x, rtol=0, atol=rtol * max(scale, np.finfo(x.dtype).tiny),
                               equal_nan=True, err_msg=name)


def test_batch_size_changes_per_sample_values_only_within_the_contract(single, tmp_path):
    """The float32 forward is not batch-invariant (BLAS picks kernels by shape), so a
    different batch size may move a per-sample value by rounding, never by more than the
    documented tolerance; the order and identity of the samples do not change."""
    _run(tmp_path / "b3.nc", batch_size=3)
    with xr.open_datatree(single) as ta, xr.open_datatree(tmp_path / "b3.nc") as tb:
        root_a, root_b = ta.to_dataset(), tb.to_dataset()
        for name in PER_SAMPLE:
            assert_within_contract(root_a[name].values, root_b[name].values, name)
        kept = ta["dynamics/stretching"].to_dataset()
        again = tb["dynamics/stretching"].to_dataset()
        np.testing.assert_array_equal(kept["sample_index"], again["sample_index"])
        assert_within_contract(kept["sigma"].values, again["sigma"].values, "sigma")


def test_the_contract_accepts_rounding_and_refuses_a_real_change():
    x = np.linspace(1.0, 2.0, 7, dtype=np.float32)
    assert_within_contract(x, np.nextafter(x, np.float32(3)), "rounding")
    with pytest.raises(AssertionError):
        assert_within_contract(x, x * np.float32(1.001), "changed")
    with pytest.raises(AssertionError):
        assert_within_contract(np.arange(3), np.arange(3)[::-1], "order")


def test_spans_give_every_image_to_one_rank_once():
    for n, batch, world in [(22, 4, 2), (22, 4, 3), (5, 8, 3), (100, 7, 4)]:
        spans = dd.global_spans(n, batch)
        ranks = [dd.my_spans(spans, dd.DistInfo(rank=r, world=world)) for r in range(world)]
        covered = sorted(i for mine in ranks for s, e in mine for i in range(s, e))
        assert covered == list(range(n))
        assert all(ranks[b % world][b // world] == spans[b] for b in range(len(spans)))
        assert dd.num_steps(len(spans), world) == max(len(r) for r in ranks)


# ----------------------------------------------------------------------- failures
def _guarded(rank: int, world: int, port: int, output: str, kwargs: dict, report: str,
             env: dict) -> None:
    os.environ.update(env)
    try:
        _worker(rank, world, port, output, kwargs)
    except Exception as exc:             # noqa: BLE001 - the test reads the report
        Path(report, f"rank{rank}.txt").write_text(f"{type(exc).__name__}: {exc}")
        os._exit(1)
    os._exit(0)


def _processes(world: int, output, report: Path, *, env=None, **kwargs) -> list[int]:
    """Run ``world`` ranks as plain forked processes; their exit codes."""
    ctx = mp.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_guarded, args=(r, world, port, str(output), kwargs,
                                                str(report), env or {}))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():                 # pragma: no cover - a hang is the failure
            p.kill()
    return codes


def _folder(root: Path, bad: int | None = None) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(12):
        path = root / ("a" if i < 6 else "b") / f"img{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(path)
    if bad is not None:
        files = sorted(root.rglob("*.png"))
        files[bad].write_bytes(b"not an image")
    return root


def test_a_failing_rank_stops_every_rank_with_one_error(tmp_path):
    images = _folder(tmp_path / "images", bad=3)           # batch 1 of size 2: rank 1
    out = tmp_path / "out"
    out.mkdir()
    codes = _processes(2, out / "run.nc", tmp_path, images=str(images), batch_size=2)
    assert codes == [1, 1]
    messages = {Path(tmp_path, f"rank{r}.txt").read_text() for r in range(2)}
    assert len(messages) == 1                                # the same error on both
    (message,) = messages
    assert message.startswith("RankError: rank 1 of 2 failed: cannot read image")
    assert "img03.png" in message and "\n" not in message
    assert list(out.iterdir()) == []                          # no file, no temporary
    _run(out / "run.nc", images=str(_folder(tmp_path / "good")), batch_size=2)   # rerun
    assert [p.name for p in out.iterdir()] == ["run.nc"]


def test_a_silently_dead_rank_is_caught_and_nothing_is_left(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = {"DEPTHFLOW_CRASH_AT": "analyze.batch:2@1", dd.TIMEOUT_ENV: "60"}
    codes = _processes(2, out / "run.nc", tmp_path, env=env)
    assert codes[1] == -9                                     # killed without a word
    assert codes[0] == 1
    message = Path(tmp_path, "rank0.txt").read_text()
    assert message.startswith("RankError: rank 0: lost contact with the other processes")
    assert list(out.iterdir()) == []


# ----------------------------------------------------------------------- resume
def test_a_killed_run_resumes_to_the_uninterrupted_file(single, tmp_path):
    out = tmp_path / "run.nc"
    # two processes, checkpoints every 2 steps (4 global batches); rank 1 killed after
    # step 2 (6 batches done, 4 checkpointed): rank 0 stops, the checkpoint stays
    env = {"DEPTHFLOW_CRASH_AT": "analyze.batch:3@1", dd.TIMEOUT_ENV: "60"}
    codes = _processes(2, out, tmp_path, env=env, checkpoint_every=2, resume=True)
    assert codes[1] == -9 and codes[0] == 1
    store = tmp_path / ".run.nc.resume"
    assert not out.exists() and (store / "state.pt").is_file()
    state = torch.load(store / "state.pt", weights_only=True)
    assert state["batches_done"] == 4
    # resumed by one process (any number of processes can resume)
    _run(out, checkpoint_every=2, resume=True)
    assert not store.exists()
    assert _compare(single, out) > 60


def test_resume_refuses_another_run_and_a_plain_rerun_starts_afresh(tmp_path):
    out = tmp_path / "run.nc"
    store = tmp_path / ".run.nc.resume"
    store.mkdir()
    (store / "meta.json").write_text('{"format": 1, "num_images": 3}')
    with pytest.raises(ConfigError, match="belongs to a different run"):
        _run(out, resume=True)
    assert store.is_dir() and not out.exists()
    _run(out, images="digits")                       # no --resume: the old one goes
    assert out.is_file() and not store.exists()


def test_torchrun_command_prints_one_error_line(tmp_path):
    """The command under torchrun: a bad image on rank 1 -> one `Error:` line in all."""
    images = _folder(tmp_path / "images", bad=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1", dd.TIMEOUT_ENV: "120",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         str(ROOT / "cli" / "analyze.py"), "--images", str(images), "--batch-size", "2",
         "--no-phases", "--dynamics", "none", "--no-figures", "-q",
         "-o", str(tmp_path / "run.nc")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode != 0
    errors = [line for line in (run.stdout + run.stderr).splitlines()
              if line.startswith("Error:")]
    assert len(errors) == 1, run.stdout + run.stderr
    assert errors[0].startswith("Error: rank 1 of 2 failed: cannot read image")
    assert not (tmp_path / "run.nc").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".run.nc")]
