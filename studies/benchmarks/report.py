"""The row protocol of the benchmark scripts (``studies/bench_*.py``).

A benchmark script reports each measured comparison by calling :func:`emit`, which prints
one line ``BENCH {json}`` on stdout; ``studies/benchmarks/run.py`` (``make bench``) runs every
``studies/bench_*.py``, collects these lines and writes ``studies/benchmarks/RESULTS.md``.
A script that takes ``--quick`` is run with it by ``make test`` (tiny sizes, a smoke test:
no timing is asserted). Fields of a row:

``benchmark``   what was measured (e.g. "streaming CKA, 4096 x 13 x 384")
``baseline``    the reference's number (e.g. seconds of the naive method); None if none
``ours``        depthflow's number, in the same unit
``unit``        "s", "MB", "x", ... (shown with the numbers)
``target``      the promised ratio baseline/ours (e.g. 5 for "at least 5x faster"), or None
``higher_is_better``  False for times and memory (ratio = baseline / ours), True for rates
"""

from __future__ import annotations

import json
import sys
from typing import Any

PREFIX = "BENCH "


def emit(benchmark: str, ours: float, *, baseline: float | None = None, unit: str = "s",
         target: float | None = None, higher_is_better: bool = False,
         note: str = "") -> dict[str, Any]:
    """Print one result row (see the module docstring) and return it."""
    ratio = None
    if baseline is not None and ours:
        ratio = (ours / baseline) if higher_is_better else (baseline / ours)
    row = {"benchmark": benchmark, "baseline": baseline, "ours": ours, "unit": unit,
           "ratio": ratio, "target": target,
           "met": None if target is None or ratio is None else bool(ratio >= target),
           "note": note}
    print(PREFIX + json.dumps(row), flush=True)
    return row


def parse_rows(text: str) -> list[dict[str, Any]]:
    """The rows in a script's stdout (other lines ignored)."""
    rows = []
    for line in text.splitlines():
        if line.startswith(PREFIX):
            try:
                rows.append(json.loads(line[len(PREFIX):]))
            except ValueError:
                print(f"ignored a malformed row: {line!r}", file=sys.stderr)
    return rows
