"""Data-parallel fitting: two gloo processes give the one-process result (same global batch)."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from depthflow.data.images import open_images
from depthflow.raptor import FitConfig, fit_raptor
from depthflow.raptor.io import load_state

from _models import tiny_loaded

CONFIG = dict(k=2, thresholds=(2,), stage1_steps=4, stage2_steps=2, batch_size=8,
              log_every=2, checkpoint_every=3, eval_every=3, eval_batch_size=16, lr=3e-3,
              input_noise=0.01, num_threads=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, output: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    fit_raptor(tiny_loaded(depth=4), open_images("digits:train", limit=40), output,
               config=FitConfig(**CONFIG), eval_source=open_images("digits:test", limit=16))


@pytest.mark.usefixtures("one_thread")
def test_two_gloo_processes_match_one(tmp_path):
    fit_raptor(tiny_loaded(depth=4), open_images("digits:train", limit=40), tmp_path / "one",
               config=FitConfig(**CONFIG), eval_source=open_images("digits:test", limit=16))
    # fork: the children inherit the imported modules (a spawned child re-imports torch)
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2,
                       join=True, start_method="fork")
    one, two = load_state(tmp_path / "one"), load_state(tmp_path / "two")
    assert one["step"] == two["step"] == 6
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-6)
    assert (tmp_path / "two" / "evaluation.json").is_file()
