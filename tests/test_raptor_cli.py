"""``depthflow fit`` through click's CliRunner: a tiny fit, resume, analyze, bad input."""

import json

import pytest
import xarray as xr
from click.testing import CliRunner

from depthflow.cli.main import main

from _models import tiny_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--limit", 64, "--k", 2, "--thresholds", 1, "--stage1-steps", 4, "--stage2-steps", 2,
        "--batch-size", 8, "--log-every", 2, "--checkpoint-every", 2, "--eval-every", 2,
        "--quiet"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.safetensors", depth=4)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, match):
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert match.lower() in lines[0].lower(), lines[0]


def test_fit_resume_and_analyze(tmp_path, ckpt):
    out = tmp_path / "r2"
    result = run("fit", ckpt, "-o", out, "--stop-after", 4, *FAST)
    assert result.exit_code == 0, result.output
    assert not (out / "evaluation.json").exists()
    result = run("fit", "--resume", out, "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["k"] == 2 and summary["counts"] == [1, 3]
    assert summary["eval_images"].startswith("scikit-learn digits, split=test")
    record = json.loads((out / "fit_config.json").read_text())
    assert record["config"]["stage1_steps"] == 4 and record["run"]["checkpoint"] == str(ckpt)
    nc = tmp_path / "a.nc"
    result = run("analyze", out, "--limit", 6, "-o", nc, "--no-figures", "--quiet",
                 "--no-phases", "--dynamics", "none")          # those have their own tests
    assert result.exit_code == 0, result.output
    with xr.open_dataset(nc) as ds:
        assert ds.sizes["depth"] == 5 and "raptor" in ds.attrs["model_info"]


def test_fit_bad_input_is_one_line(tmp_path, ckpt):
    assert_one_line_error(run("fit", ckpt, "-o", tmp_path / "a", *FAST, "--thresholds", "1,2"),
                          "k=2 needs 1 threshold")
    assert_one_line_error(run("fit", ckpt, "-o", tmp_path / "b", *FAST, "--thresholds", 4),
                          "do not partition")
    assert_one_line_error(run("fit", ckpt, "-o", tmp_path / "c", *FAST, "--thresholds", "x"),
                          "comma-separated")
    assert_one_line_error(run("fit", ckpt, "-o", tmp_path / "no" / "d", *FAST),
                          "does not exist")
    assert_one_line_error(run("fit", "--resume", tmp_path, "--quiet"), "nothing to resume")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "x.txt").write_text("keep")
    assert_one_line_error(run("fit", ckpt, "-o", tmp_path / "kept", *FAST), "--overwrite")
    assert (tmp_path / "kept" / "x.txt").read_text() == "keep"
    assert_one_line_error(run("fit", ckpt, "-o", tmp_path / "e", *FAST, "--images",
                              tmp_path / "none.npy"), "does not exist")
    assert not any((tmp_path / name).exists() for name in "abcde")
