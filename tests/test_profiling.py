"""``depthflow analyze --profile`` / ``--threads`` and the helpers behind them."""

from __future__ import annotations

import time

import pytest
import torch
from click.testing import CliRunner

from depthflow.analysis.run import AnalyzeConfig
from depthflow.cli.main import main
from depthflow.errors import ConfigError
from depthflow.core.profiling import Profile, profiling, stage
from depthflow.core.threads import intra_op_threads, threads_for

from _models import tiny_checkpoint


def test_stages_add_up_nest_and_cost_nothing_without_a_profile():
    with stage("ignored"):                       # no active profile: a no-op
        pass
    with profiling() as p:
        for _ in range(3):
            with stage("a"):
                time.sleep(0.01)
                with stage("a.b"):
                    time.sleep(0.01)
    assert p.calls == {"a": 3, "a.b": 3}
    assert p.seconds["a"] >= p.seconds["a.b"] >= 0.03
    assert p.total >= p.seconds["a"]
    assert list(p.to_dict()) == ["a", "a.b", "total"]
    table = p.table().splitlines()
    assert table[1].split()[0] == "a" and table[-1].startswith("total (wall)")
    with stage("after"):                          # the profile is no longer active
        pass
    assert "after" not in p.seconds


def test_threads_for_small_work_and_restoring_the_count():
    before = torch.get_num_threads()
    assert threads_for(10) == 1
    assert threads_for(10**12) == before
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with intra_op_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ConfigError):
        AnalyzeConfig(threads=0).validate()


def test_cli_profile_prints_every_stage(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    threads = torch.get_num_threads()
    result = CliRunner().invoke(main, [
        "analyze", str(ckpt), "-o", str(tmp_path / "a.nc"), "--limit", "12",
        "--batch-size", "5", "--no-phases", "--dynamics", "none", "--quiet", "--profile",
        "--threads", "1", "--figures", str(tmp_path / "fig")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads            # restored after the run
    names = [line.split()[0] for line in result.output.splitlines()[1:-1]]
    assert {"load", "images", "forward", "summaries", "figures", "write"} <= set(names)
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:-1]}
    assert rows["forward"][2] == "3" and rows["images"][2] == "3"     # 12 images, batches of 5
    assert (tmp_path / "a.nc").is_file()


@pytest.mark.parametrize("extra, starts", [((), 2), (("--full-size",), 4),
                                           (("--set", "dynamics.norm_scan_starts=3"), 3)])
def test_the_demo_uses_fewer_norm_scan_starts_unless_full_size(monkeypatch, tmp_path, extra,
                                                                starts):
    import depthflow.api.workflows as wf

    seen = {}

    def fake(checkpoint, output, **kwargs):
        seen.update(checkpoint=checkpoint, analyses=kwargs["analyses"])
        return None                            # as on a rank > 0: nothing to report

    monkeypatch.setattr(wf, "analyze_checkpoint", fake)
    result = CliRunner().invoke(main, ["analyze", "-o", str(tmp_path / "d.nc"), "--quiet",
                                       *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    dyn = [a for a in seen["analyses"] if a.name == "dynamics"][0]
    assert seen["checkpoint"] is None and dyn.config.norm_scan_starts == starts
    assert dyn.config.fixed_point_starts == 32                # everything else as default
    full = "--full-size" in extra
    assert dyn.config.samples == (64 if full else 32)
    assert dyn.config.min_per_class == (5 if full else 3)
    assert not [a for a in seen["analyses"] if a.name == "probes"]    # only with --probes


@pytest.mark.parametrize("extra, grid", [((), (1.0,)), (("--full-size",), (0.01, 0.1, 1.0))])
def test_the_demo_probes_use_one_c_unless_full_size(monkeypatch, tmp_path, extra, grid):
    import depthflow.api.workflows as wf

    seen = {}
    monkeypatch.setattr(wf, "analyze_checkpoint",
                        lambda checkpoint, output, **kw: seen.update(kw) or None)
    result = CliRunner().invoke(main, ["analyze", "-o", str(tmp_path / "d.nc"), "--quiet",
                                       "--probes", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    probes = [a for a in seen["analyses"] if a.name == "probes"][0]
    assert probes.config.c_grid == grid
