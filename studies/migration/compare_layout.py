"""Check that a result file in the grouped layout (format 2) holds the same numbers as a
file of the flat layout (format 1) written by depthflow 0.1 for the same command.

Usage::

    python studies/migration/compare_layout.py OLD.nc NEW.nc

Every variable of the old file is looked up through :data:`NAMES` (old name -> (group, new
name)); flag variables are compared by their decoded meanings, strings as text, numbers
exactly (NaN equal to NaN). Exits 1 and lists the differences if any number differs or a
mapped variable is missing; variables of the old file that are not in the map are listed
as unmapped (and also fail).

This checks the layout move of depthflow 0.2 (commit 3f2f0b9: flat names -> groups, no
number changed; ``identical numbers`` there). The dynamics corrections that followed
redefined the ``dynamics`` groups (finite-depth spectra, stretching, class basins ...), so
on files of later versions pass ``--skip-dynamics`` to compare the root and phases groups.
"""

from __future__ import annotations

import sys

import numpy as np
import xarray as xr

PHASES = {"phase_cosine_distance": "cosine_distance", "phase_mse": "mse", "phase_cka": "cka",
          "phase_cka_debiased": "cka_debiased", "phase_method": "method",
          "phase_fraction": "fraction", "phase_label": "phase", "phase_count": "count",
          "phase_contiguous": "contiguous", "phase_thresholds": "thresholds",
          "phase_eps": "eps", "phase_split_cut": "split_cut", "phase_cut": "cut",
          "phase_normalized_cut": "normalized_cut", "phase_within": "within",
          "phase_between": "between", "phase_contrast": "contrast",
          "phase_modularity": "modularity", "phase_dp_modularity": "dp_modularity",
          "phase_selected_k": "selected_k", "phase_total": "total_weight",
          "view": "view", "cka_view": "cka_view", "segmentation": "segmentation",
          "num_phases": "num_phases", "depth_i": "depth_i", "depth_j": "depth_j"}
SWAP = {"swap_target": "target", "swap_donor": "donor", "swap_num_layers": "num_layers",
        "swap_cosine": "cosine", "swap_cosine_summary": "cosine_summary", "swap_r2": "r2",
        "swap_r2_summary": "r2_summary", "swap_accuracy": "accuracy",
        "swap_accuracy_summary": "accuracy_summary", "swap_agreement": "agreement",
        "swap_agreement_summary": "agreement_summary",
        "swap_baseline_accuracy": "baseline_accuracy", "swap_phase_label": "phase",
        "swap_family": "swap_family", "swap_trial": "swap_trial", "statistic": "statistic"}
DYNAMICS = {   # the flat dyn_* variables of format 1 -> groups under dynamics/
    "dyn_reference_norm": ("trajectories", "reference_norm"),
    "dyn_label": ("spectra", "label"),
    "dyn_eig_real": ("spectra", "eig_real"), "dyn_eig_imag": ("spectra", "eig_imag"),
    "dyn_spectral_radius": ("spectra", "spectral_radius"),
    "dyn_eig_status": ("spectra", "eig_status"),
    "dyn_lyap_exponent_depth": ("lyapunov", "exponents"),
    "dyn_lyap_running_depth": ("lyapunov", "running"),
    "dyn_lyap_stretch_depth": ("lyapunov", "stretch"),
    "dyn_lyap_change_depth": ("lyapunov", "change"),
    "dyn_lyap_status_depth": ("lyapunov", "status"),
    "dyn_lyap_frozen_exponent": ("lyapunov_frozen", "exponents"),
    "dyn_lyap_frozen_running": ("lyapunov_frozen", "running"),
    "dyn_lyap_frozen_stretch": ("lyapunov_frozen", "stretch"),
    "dyn_lyap_frozen_change": ("lyapunov_frozen", "change"),
    "dyn_lyap_frozen_status": ("lyapunov_frozen", "status"),
    **{f"dyn_fp_{n}": ("fixed_points", n) for n in (
        "status", "residual", "nit", "nfev", "njev", "label", "count", "spectral_radius",
        "stable", "eig_real", "eig_imag")},
    **{f"dyn_fpt_{n}": ("fixed_points_token", n) for n in (
        "status", "residual", "nit", "nfev", "njev", "label", "count", "spectral_radius",
        "stable", "eig_real", "eig_imag")},
    **{f"dyn_basin_{n}": ("basins", n) for n in (
        "label", "status", "distance", "change", "fraction", "fraction_stderr", "count",
        "fraction_by_class", "fraction_by_class_stderr", "fraction_by_kind",
        "fraction_by_kind_stderr")},
    "dyn_basin_attractor": ("basins", "attractors"),
    "dyn_basin_start_sample": ("basins", "start_sample"),
    **{f"dyn_recovery_{n}": ("recovery", n) for n in (
        "angle", "ratio", "token_ratio", "singular_value")},
}
DIM_COORDS = {"dyn_sample", "eig", "exponent", "frozen_layer", "iteration", "fp_start",
              "fixed_point", "fpt_start", "fpt_point", "basin_start", "attractor", "basin",
              "inject_depth", "perturb_angle", "direction", "draw", "swap_slot", "split"}


def names() -> dict[str, tuple[str, str]]:
    """Old variable name -> (group path, new name); '' is the root group."""
    out: dict[str, tuple[str, str]] = {}
    out.update({old: ("phases", new) for old, new in PHASES.items()})
    out.update({old: ("phases/swap", new) for old, new in SWAP.items()})
    out.update({old: (f"dynamics/{g}", new) for old, (g, new) in DYNAMICS.items()})
    return out


NAMES = names()


def decode(var: xr.DataArray) -> np.ndarray:
    """Values of a variable; flag variables as their meanings."""
    values = np.asarray(var.values)
    meanings = var.attrs.get("flag_meanings")
    if meanings is not None and "flag_values" in var.attrs:
        table = dict(zip(np.atleast_1d(var.attrs["flag_values"]).tolist(), str(meanings).split()))
        return np.vectorize(lambda v: table.get(int(v), f"?{v}") if v == v else "nan",
                            otypes=[object])(values)
    return values


def same(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        return bool(np.array_equal(a.astype(float), b.astype(float), equal_nan=True))
    return bool(np.array_equal(a.astype(str), b.astype(str)))


def compare(old_path: str, new_path: str, *, skip_dynamics: bool = False) -> list[str]:
    old = xr.open_dataset(old_path)
    tree = xr.open_datatree(new_path)
    problems = []
    for name in old.variables:
        if name in DIM_COORDS or (skip_dynamics and name.startswith("dyn_")):
            continue
        group, new = NAMES.get(name, ("", name))
        try:
            node = tree[group] if group else tree
        except KeyError:
            problems.append(f"{name}: group {group} missing")
            continue
        ds = node.to_dataset()
        if new not in ds.variables:
            problems.append(f"{name}: missing as {group or '/'}:{new}")
            continue
        a, b = old[name], ds[new]
        if "step" in a.dims and "layer" in b.dims:           # spectra: computed layers only
            a = a.sel(step=b["layer"].values)
        if not same(decode(a), decode(b)):
            problems.append(f"{name}: values differ from {group or '/'}:{new}")
    return problems


def main(argv: list[str]) -> int:
    skip = "--skip-dynamics" in argv
    argv = [a for a in argv if a != "--skip-dynamics"]
    if len(argv) != 2:
        print(__doc__)
        return 2
    problems = compare(*argv, skip_dynamics=skip)
    for line in problems:
        print(line)
    print("identical numbers" if not problems else f"{len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
