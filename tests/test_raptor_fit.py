"""The Raptor recipe: schedules, loss weighting, fitting, exact resume, NaN and bad input."""

import json

import numpy as np
import pytest
import torch

from depthflow.data.images import open_images
from depthflow.errors import ConfigError, InputError, OutputError
from depthflow.raptor import FitConfig, FitError, RaptorConfig, build_raptor, fit_raptor
from depthflow.raptor.data import batch_indices
from depthflow.raptor.io import load_state
from depthflow.raptor.losses import RaptorObjective, kind_weights, token_mse
from depthflow.raptor.schedules import WarmupCosine, lr_at, teacher_forcing_ratio
from depthflow.raptor.teacher import StateCache, teacher_states

from _models import tiny_loaded, tiny_vit

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(k=2, thresholds=(2,), stage1_steps=8, stage2_steps=4, batch_size=8, log_every=2,
            eval_every=4, checkpoint_every=4, eval_batch_size=32, lr=3e-3)


@pytest.fixture(scope="module")
def data():
    return open_images("digits:train", limit=48), open_images("digits:test", limit=24)


def test_teacher_forcing_ratio_values():
    values = [teacher_forcing_ratio(s, total=100) for s in (0, 5, 10, 20, 25, 26, 99)]
    assert values == pytest.approx([1.0, 0.8, 0.6, 0.2, 0.0, 0.0, 0.0])
    assert teacher_forcing_ratio(50, total=100, anneal_fraction=1.0) == pytest.approx(0.5)
    assert teacher_forcing_ratio(99, total=100, mode="teacher") == 1.0
    assert teacher_forcing_ratio(0, total=100, mode="autoregressive") == 0.0
    with pytest.raises(ConfigError):
        teacher_forcing_ratio(0, total=10, mode="nope")


def test_learning_rate_schedule_values():
    kw = dict(total=110, warmup=10, lr=1e-3, min_lr=1e-6)
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    assert lr_at(59.5, **kw) == pytest.approx((1e-3 + 1e-6) / 2)
    assert lr_at(109, **kw) == pytest.approx(1e-6)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    sched = WarmupCosine(opt, **kw)
    for _ in range(30):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(30, **kw))
    again = WarmupCosine(opt, **kw)
    again.load_state_dict(sched.state_dict())
    assert again.last_step == 30


def test_kind_weighted_loss():
    kinds = ["cls", "register", "register", "patch", "patch", "patch", "patch"]
    w = kind_weights(kinds, cls=0.45, register=0.10, patch=0.45)
    assert w.tolist() == pytest.approx([0.45, 0.05, 0.05] + [0.1125] * 4)
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 7, 5, generator=gen), torch.randn(3, 7, 5, generator=gen)
    err = (pred - target).square()
    expected = (0.45 * err[:, :1].mean() + 0.10 * err[:, 1:3].mean() + 0.45 * err[:, 3:].mean())
    torch.testing.assert_close(token_mse(pred, target, w), expected)
    torch.testing.assert_close(token_mse(pred, target, None), err.mean())
    # no registers: their weight is dropped and the rest renormalised
    w = kind_weights(["cls", "patch", "patch"], cls=0.45, register=0.10, patch=0.45)
    assert w.tolist() == pytest.approx([0.5, 0.25, 0.25])


def test_stage_losses_match_their_definitions():
    teacher = tiny_vit(0, dtype=torch.float64, depth=4)
    raptor = build_raptor(teacher, RaptorConfig(thresholds=(1,), layerscale_init=0.2)).double()
    states = teacher_states(teacher, torch.randn(2, 1, 8, 8, dtype=torch.float64))
    obj = RaptorObjective(raptor, weights=None)
    mse = lambda a, b: (a - b).square().mean()  # noqa: E731
    # block 1 makes layers 2..4: teacher forced and rolled out from a_1
    tf = sum(mse(raptor.step(n, states[:, n - 1]), states[:, n]) for n in (2, 3, 4)) / 3
    x, ar = states[:, 1], 0.0
    for n in (2, 3, 4):
        x = raptor.step(n, x)
        ar = ar + mse(x, states[:, n]) / 3
    b0 = mse(raptor.step(1, states[:, 0]), states[:, 1])
    torch.testing.assert_close(obj(states, stage=1, ratio=1.0), b0 + tf)
    torch.testing.assert_close(obj(states, stage=1, ratio=0.0), b0 + ar)
    torch.testing.assert_close(obj(states, stage=1, ratio=0.3), b0 + 0.3 * tf + 0.7 * ar)
    x, full = states[:, 0], 0.0
    for n in range(1, 5):
        x = raptor.step(n, x)
        full = full + mse(x, states[:, n]) / 4
    torch.testing.assert_close(obj(states, stage=2), full)


def test_batch_order_is_a_function_of_the_step_and_shards_by_rank():
    a = batch_indices(7, num_images=50, batch_size=8, seed=3)
    assert torch.equal(a, batch_indices(7, num_images=50, batch_size=8, seed=3))
    halves = [batch_indices(7, num_images=50, batch_size=8, seed=3, rank=r, world=2)
              for r in (0, 1)]
    assert torch.equal(torch.cat(halves), a)
    epoch = torch.cat([batch_indices(s, num_images=50, batch_size=8, seed=3) for s in range(6)])
    assert len(set(epoch.tolist())) == 48


def test_state_cache_is_lossless_and_bounded(tmp_path):
    teacher = tiny_vit(0, depth=3)
    images = torch.randn(20, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    class Images:
        size = 20

        def __call__(self, idx):
            return images[idx]

    cache = StateCache(teacher, Images(), directory=tmp_path, shard_size=8,
                       max_bytes=150_000, memory_shards=1)
    idx = torch.tensor([3, 17, 9, 0, 19])
    expected = teacher_states(teacher, images[idx])
    for _ in range(2):
        torch.testing.assert_close(cache.get(idx), expected, rtol=1e-6, atol=1e-6)
    assert 0 < cache.disk_bytes() <= 150_000


def fit(tmp_path, data, name="run", **changes):
    train, test = data
    config = FitConfig(**{**TINY, **changes})
    return fit_raptor(tiny_loaded(depth=4), train, tmp_path / name, config=config,
                      eval_source=test)


def test_a_few_steps_lower_the_loss_and_write_everything(tmp_path, data):
    result = fit(tmp_path, data, stage1_steps=16, stage2_steps=8, log_every=4)
    losses = [row["loss"] for row in result.rows]
    assert losses[-1] < losses[0]
    names = {p.name for p in result.directory.iterdir()}
    assert {"model.safetensors", "config.json", "training_state.pt", "fit_config.json",
            "evaluation.json", "evaluation.nc", "log.csv", "fit.log", "curves.png"} <= names
    summary = json.loads((result.directory / "evaluation.json").read_text())
    assert summary["teacher_accuracy"] is not None and summary["task"] == "head"
    import xarray as xr
    with xr.open_dataset(result.directory / "evaluation.nc") as ds:
        assert set(ds["group"].values) == {"all", "cls", "register", "patch"}
        assert ds["r2"].sel(depth=0).values == pytest.approx(1.0)
        assert ds["block"].values.tolist() == [-1, 0, 0, 1, 1]
        assert "r2_paper" in ds and "cosine" in ds


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data):
    """One uninterrupted run, the reference of the resume tests."""
    return fit(tmp_path_factory.mktemp("straight"), data, "straight")


def test_resume_is_bit_identical(tmp_path, data, straight):
    first = fit_raptor(tiny_loaded(depth=4), data[0], tmp_path / "parts",
                       config=FitConfig(**TINY), stop_after=6)
    assert not first.complete and first.steps == 6 and first.fidelity is None
    assert load_state(tmp_path / "parts")["step"] == 6
    resumed = fit_raptor(tiny_loaded(depth=4), data[0], tmp_path / "parts", resume=True,
                         eval_source=data[1])
    assert resumed.complete and resumed.steps == straight.steps
    a, b = load_state(straight.directory), load_state(tmp_path / "parts")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["loss"] for r in straight.rows] == [r["loss"] for r in resumed.rows]


def test_crash_resumes_from_the_last_checkpoint_bit_identical(tmp_path, data, monkeypatch,
                                                              straight):
    calls = {"n": 0}
    original = RaptorObjective.forward

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("injected failure at step 7")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RaptorObjective, "forward", crashing)
    with pytest.raises(RuntimeError, match="injected"):
        fit(tmp_path, data, "crash")
    monkeypatch.setattr(RaptorObjective, "forward", original)
    assert load_state(tmp_path / "crash")["step"] == 4
    fit_raptor(tiny_loaded(depth=4), data[0], tmp_path / "crash", resume=True)
    a, b = load_state(straight.directory), load_state(tmp_path / "crash")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["step"] == b["step"] == straight.steps


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data, monkeypatch):
    original = RaptorObjective.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += 1
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] >= 6 else loss

    monkeypatch.setattr(RaptorObjective, "forward", poisoned)
    with pytest.raises(FitError, match="last good checkpoint"):
        fit(tmp_path, data, "nan")
    state = load_state(tmp_path / "nan")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_bad_inputs_fail_early_and_keep_existing_output(tmp_path, data):
    with pytest.raises(ConfigError, match="k=3 needs 2"):
        fit(tmp_path, data, "a", k=3, thresholds=(2,))
    with pytest.raises(ConfigError, match="partition"):
        fit(tmp_path, data, "b", thresholds=(4,))
    with pytest.raises(ConfigError, match="larger than the teacher depth"):
        fit(tmp_path, data, "c", k=6, thresholds=None)
    with pytest.raises(OutputError, match="does not exist"):
        fit(tmp_path / "missing", data, "d")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "precious.txt").write_text("x")
    with pytest.raises(OutputError, match="--overwrite"):
        fit(tmp_path, data, "kept")
    assert (tmp_path / "kept" / "precious.txt").read_text() == "x"
    with pytest.raises(ConfigError, match="batch_size=64 is larger"):
        fit(tmp_path, (open_images("digits:train", limit=10), data[1]), "e", batch_size=64)


def test_images_that_do_not_match_the_teacher(tmp_path, data):
    from depthflow.models.checkpoints import LoadedModel
    from depthflow.models.preprocessing import Preprocessing

    odd = LoadedModel(tiny_vit(depth=3), source="odd", format="test",
                      preprocessing=Preprocessing(resize=7, crop=7, mean=(0.3,), std=(0.4,),
                                                  mode="L"))
    with pytest.raises(InputError, match="do not match the teacher"):
        fit_raptor(odd, data[0], tmp_path / "o", config=FitConfig(**TINY))
    labels = np.arange(16) % 12               # more classes than the teacher's 10 logits
    np.savez(tmp_path / "many.npz", images=np.zeros((16, 8, 8), np.uint8), labels=labels)
    with pytest.raises(InputError, match="classes"):
        fit_raptor(tiny_loaded(depth=3), open_images(tmp_path / "many.npz"), tmp_path / "m",
                   config=FitConfig(**TINY))


def test_bfloat16_autocast_and_math_attention_paths_train(tmp_path, data):
    result = fit(tmp_path, data, "bf16", dtype="bfloat16", attention="math", stage1_steps=2,
                 stage2_steps=2, log_every=2, checkpoint_every=2)
    assert result.complete and all(np.isfinite(r["loss"]) for r in result.rows)
