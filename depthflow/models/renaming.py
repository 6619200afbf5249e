"""Renaming foreign state dicts to depthflow's parameter names by regular-expression rules.

A rule is ``(pattern, target)``: a key that fully matches ``pattern`` becomes
``match.expand(target)`` (``None`` drops it). A target may end in ``#part`` (``#q``,
``#k``, ``#v``, ``#gate``, ``#up``): the parts of one tensor stored separately are
concatenated along the output dim, in that order, once all are present. A key no rule
matches is an error naming it: a mixed or half-converted state dict never loads silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from depthflow.errors import ArchitectureError
from depthflow.models.arch import preview

Rules = list[tuple["re.Pattern[str]", "str | None"]]
MERGE_GROUPS = (("q", "k", "v"), ("gate", "up"))


def compile_rules(pairs: list[tuple[str, str | None]]) -> Rules:
    return [(re.compile(pattern), target) for pattern, target in pairs]


def rename(state_dict: Mapping[str, Tensor], rules: Rules, style: str) -> dict[str, Tensor]:
    """Apply ``rules``; ArchitectureError names keys no rule knows and name clashes."""
    out: dict[str, Tensor] = {}
    unexpected = []
    for key, value in state_dict.items():
        for pattern, target in rules:
            match = pattern.fullmatch(key)
            if match:
                if target is not None:
                    name = match.expand(target)
                    if name in out:
                        raise ArchitectureError(
                            f"two {style} keys map to {name.split('#')[0]!r} (one is {key!r}); "
                            "the state dict mixes two models")
                    out[name] = value
                break
        else:
            unexpected.append(key)
    if unexpected:
        raise ArchitectureError(
            f"weights look like a {style} ViT but have keys depthflow does not know: "
            f"unexpected {preview(sorted(unexpected))}")
    return merge_parts(out)


def merge_parts(named: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Concatenate ``name#q``/``#k``/``#v`` (or ``#gate``/``#up``) along the output dim."""
    out: dict[str, Tensor] = {}
    parts: dict[str, dict[str, Tensor]] = {}
    for key, value in named.items():
        base, sep, part = key.partition("#")
        if sep:
            parts.setdefault(base, {})[part] = value
        else:
            out[key] = value
    for base, found in parts.items():
        group = next(g for g in MERGE_GROUPS if set(found) <= set(g))
        if set(found) != set(group):
            raise ArchitectureError(
                f"{base} is stored in parts {'/'.join(group)} but only "
                f"{'/'.join(sorted(found))} are present; the checkpoint is incomplete")
        out[base] = torch.cat([found[p] for p in group], dim=0)
    return out


__all__ = ["Rules", "MERGE_GROUPS", "compile_rules", "rename", "merge_parts"]
