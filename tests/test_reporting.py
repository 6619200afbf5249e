"""``depthflow report``: one self-contained HTML page, checked in a real headless browser
(Chromium from the Debian packages; skipped with a reason where none is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import depthflow as df
from depthflow.cli.main import main
from depthflow.reporting import render_report

from _models import tiny_loaded

pytestmark = pytest.mark.usefixtures("one_thread")

CHEAP = ["phases.swap_trials=2", "dynamics.samples=2", "dynamics.min_per_class=0",
         "dynamics.k=1", "dynamics.tol=0.01", "dynamics.stretching_k=1",
         "dynamics.branch_probes=1", "dynamics.n_boot=5", "probes.folds=2", "probes.c_grid=1.0"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    path = df.analyze(tiny_loaded(0), df.open_images("digits"), tmp / "run.nc",
                      config=df.AnalyzeConfig(limit=24, batch_size=12),
                      analyses=df.build_analyses(dynamics="branches",
                                                 options=CHEAP))
    return Path(path)


@pytest.fixture(scope="module")
def page(result):
    return render_report(result)


def test_the_page_is_self_contained_and_complete(page):
    assert "<script" not in page.lower()
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith(("data:image/png;base64,", "#")) for r in refs), \
        [r[:40] for r in refs if not r.startswith(("data:", "#"))]
    assert not re.search(r"url\(|@import|https?://", page.split("<h2")[0].split("<style>")[1])
    for section in ("Phases", "Token dynamics", "Per-depth probes", "Dynamics",
                    "Model, data and provenance"):
        assert f">{section}</h2>" in page, section
    order = [page.index(f">{s}</h2>") for s in ("Phases", "Token dynamics", "Per-depth probes",
                                                 "Dynamics")]
    assert order == sorted(order)
    assert "dynamics/branches" in page and "best depth" in page and "checkpoint" in page
    assert page.count("<img ") >= 5
    assert ">Basins</h2>" not in page                        # no empty sections


def _browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


PROBE = """<script>window.addEventListener("load", () => { document.body.setAttribute(
"data-probe", JSON.stringify({images: Array.from(document.images).map(i => [i.naturalWidth,
i.naturalHeight, i.complete]), resources: performance.getEntriesByType("resource").map(
e => e.name)})); });</script>"""


def _open_in_browser(html: str, tmp: Path) -> tuple[dict, list[str]]:
    """Load ``html`` (with the measuring script added) in headless Chromium with the
    network disabled; return what the script measured and the page's console lines."""
    browser = _browser()
    tmp.mkdir(parents=True, exist_ok=True)
    target = tmp / "probe.html"
    target.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
           "--v=0", f"--user-data-dir={tmp / 'profile'}", "--proxy-server=127.0.0.1:9",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000",
           "--dump-dom", target.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert found, (done.returncode, done.stderr[-2000:])
    probe = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line
               or "Uncaught" in line]
    return probe, console


@pytest.mark.skipif(_browser() is None, reason="no Chromium installed (apt-get install "
                    "chromium; .ci/run installs it): the browser check of the HTML report "
                    "is skipped")
def test_every_figure_renders_offline_without_console_errors(page, tmp_path):
    probe, console = _open_in_browser(page, tmp_path / "page")
    sizes = probe["images"]
    assert len(sizes) == page.count("<img ")
    assert all(w > 0 and h > 0 and done for w, h, done in sizes), sizes
    assert probe["resources"] == []                         # nothing fetched
    assert console == [], console
    # the check can fail: a broken image and a console error are both seen
    broken = ('<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA">'
              '<script>console.error("planted")</script></body></html>')
    probe, console = _open_in_browser(broken, tmp_path / "control")
    assert probe["images"][0][:2] == [0, 0]
    assert any("planted" in line for line in console)


def test_cli(result, tmp_path):
    out = tmp_path / "r.html"
    res = CliRunner().invoke(main, ["report", str(result), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    res = CliRunner().invoke(main, ["report", str(result), "-o", str(out)])
    assert res.exit_code != 0 and res.output.startswith("Error:"), res.output
    res = CliRunner().invoke(main, ["report", str(tmp_path / "missing.nc"), "-o",
                                    str(tmp_path / "m.html")])
    assert res.exit_code == 1 and res.output.startswith("Error:")
    assert len(res.output.strip().splitlines()) == 1
