"""Crash safety: ``depthflow analyze`` and ``depthflow fit`` killed with SIGKILL at named
points (the ``DEPTHFLOW_CRASH_AT`` hook of :mod:`depthflow.core._crash`, so the kills land at the
same place on a loaded machine) and once at a seeded random time. After every kill the
previous output is byte-identical and readable, the next run removes the stale temporary
files, and an interrupted fit resumes to bit-identical weights with its original command
line kept."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xarray as xr

from depthflow.core._crash import ENV, POINTS

from _models import tiny_checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

CHEAP = ["--no-phases", "--dynamics", "stretching", "--set", "dynamics.samples=3",
         "--set", "dynamics.min_per_class=0", "--set", "dynamics.k=2",
         "--set", "dynamics.stretching_k=1", "--batch-size", "4", "--limit", "12", "--quiet"]


def cli(*args, crash: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "OMP_NUM_THREADS": "1"}
    env.pop(ENV, None)
    if crash:
        env[ENV] = crash
    code = "from depthflow.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def snapshot(root: Path) -> dict[str, bytes]:
    """The visible files (temporaries are hidden, checked separately)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in
                                        p.relative_to(root).parts)}


def inprocess(*args):
    """The next run, in this process (a different pid from the killed one)."""
    from click.testing import CliRunner

    from depthflow.cli.main import main

    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def temporaries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.safetensors", depth=4)


@pytest.fixture(scope="module")
def previous(tmp_path_factory, ckpt):
    """A finished run: the result and figures every kill must leave untouched."""
    d = tmp_path_factory.mktemp("prev")
    done = inprocess("analyze", ckpt, "-o", d / "run.nc", *CHEAP)
    assert done.exit_code == 0, done.output
    return d


def test_hook_names_every_point():
    assert set(POINTS) == {"analyze.start", "analyze.batch", "analyze.analyses",
                           "analyze.written", "fit.step"}


@pytest.mark.parametrize("point", ["analyze.start", "analyze.batch:2", "analyze.analyses",
                                   "analyze.written"])
def test_killed_analyze_keeps_the_previous_output(tmp_path, ckpt, previous, point):
    d = tmp_path / "out"
    d.mkdir()
    for p in previous.iterdir():
        target = d / p.name
        if p.is_dir():
            target.mkdir()
            for f in p.iterdir():
                (target / f.name).write_bytes(f.read_bytes())
        else:
            target.write_bytes(p.read_bytes())
    before = snapshot(d)
    killed = cli("analyze", ckpt, "-o", d / "run.nc", "--overwrite", *CHEAP, crash=point)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr)
    with xr.open_dataset(d / "run.nc") as ds:          # the previous file, readable
        assert ds.sizes["sample"] == 12
    after = snapshot(d)
    if point == "analyze.written":
        # the figures were renamed into place, the file not: the old file stays and the
        # new figure set records another file, which info reports
        assert after["run.nc"] == before["run.nc"]
        info = inprocess("info", d / "run.nc")
        assert info.exit_code == 0 and "DRAWN FROM ANOTHER FILE" in info.output
    else:
        assert after == before
    leftovers = temporaries(d)
    if point != "analyze.start":
        assert leftovers, "a kill mid-write leaves a temporary (removed by the next run)"
    assert all(".depthflow-" in name and f"-{os.getpid()}-" not in name for name in leftovers)
    again = inprocess("analyze", ckpt, "-o", d / "run.nc", "--overwrite", *CHEAP)
    assert again.exit_code == 0, again.output
    assert temporaries(d) == []                        # stale temporaries removed
    info = inprocess("info", d / "run.nc")
    assert "(drawn from this file)" in info.output


def test_stale_temporaries_of_live_processes_and_other_hosts_are_kept(tmp_path):
    from depthflow.io.files import remove_stale_temps, temp_name

    mine = tmp_path / temp_name("run.nc")
    mine.write_text("in progress")
    other_host = tmp_path / ".run.nc.depthflow-elsewhere-1-00ff.tmp"
    other_host.write_text("x")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = tmp_path / mine.name.replace(f"-{os.getpid()}-", f"-{dead}-")
    stale.write_text("x")
    unrelated = tmp_path / stale.name.replace(".run.nc.", ".other.nc.")
    unrelated.write_text("x")
    removed = remove_stale_temps(tmp_path, "run.nc")
    assert removed == [stale]
    assert mine.exists() and other_host.exists() and unrelated.exists()


def test_seeded_random_time_kill(tmp_path, ckpt, previous):
    """SIGKILL after a seeded random delay: whatever the moment, the old output is intact
    (or, when the run had finished, the new one is complete) and the next run cleans up."""
    d = tmp_path / "out"
    d.mkdir()
    (d / "run.nc").write_bytes((previous / "run.nc").read_bytes())
    before = (d / "run.nc").read_bytes()
    delay = random.Random(1234).uniform(2.0, 8.0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "OMP_NUM_THREADS": "1"}
    env.pop(ENV, None)
    proc = subprocess.Popen([sys.executable, "-c", "from depthflow.cli.main import main; main()",
                             "analyze", str(ckpt), "-o", str(d / "run.nc"), "--overwrite",
                             "--no-figures", *CHEAP], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    code = proc.wait(timeout=120)
    with xr.open_dataset(d / "run.nc") as ds:
        assert ds.sizes["sample"] == 12
    if code == -signal.SIGKILL:
        now = (d / "run.nc").read_bytes()
        assert now == before or "depthflow_version" in xr.open_dataset(d / "run.nc").attrs
    again = inprocess("analyze", ckpt, "-o", d / "run.nc", "--overwrite", "--no-figures", *CHEAP)
    assert again.exit_code == 0, again.output
    assert temporaries(d) == []


FIT = ["--limit", 48, "--k", 2, "--thresholds", 1, "--stage1-steps", 4, "--stage2-steps", 2,
       "--batch-size", 8, "--log-every", 2, "--checkpoint-every", 2, "--eval-every", 2,
       "--quiet", "--num-threads", 1]


def test_killed_fit_resumes_bit_identical_and_keeps_its_command_line(tmp_path, ckpt):
    from safetensors.torch import load_file

    whole = inprocess("fit", ckpt, "-o", tmp_path / "whole", *FIT)
    assert whole.exit_code == 0, whole.output
    killed = cli("fit", ckpt, "-o", tmp_path / "cut", *FIT, crash="fit.step:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    original = json.loads((tmp_path / "cut" / "fit_config.json").read_text())["provenance"]
    resumed = inprocess("fit", "--resume", tmp_path / "cut", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    files = sorted(p.name for p in (tmp_path / "whole").glob("*.safetensors"))
    assert files
    for name in files:
        a = load_file(str(tmp_path / "whole" / name))
        b = load_file(str(tmp_path / "cut" / name))
        assert a.keys() == b.keys()
        assert all(a[k].equal(b[k]) for k in a), name
    prov = json.loads((tmp_path / "cut" / "fit_config.json").read_text())["provenance"]
    assert prov["command"] == original["command"] and "--resume" not in prov["command"]
    assert [h["command"].split()[1:3] for h in prov["resume_history"]] == [["fit", "--resume"]]
    with xr.open_dataset(tmp_path / "cut" / "evaluation.nc") as ev:
        assert ev.attrs["command"] == original["command"]
    assert not [p for p in (tmp_path / "cut").rglob(".*")]
    # info on an analysed Raptor shows the Raptor's own architecture
    out = tmp_path / "raptor.nc"
    done = inprocess("analyze", tmp_path / "cut", "-o", out, "--no-phases", "--dynamics",
                     "none", "--limit", 8, "--quiet", "--no-figures")
    assert done.exit_code == 0, done.output
    info = inprocess("info", out).output
    assert "raptor             k=2 blocks, thresholds [1]" in info
