"""``depthflow models``: the named models depthflow knows and whether each is cached here.

A thin wrapper over :func:`depthflow.models.names.list_models`; nothing is downloaded or
converted.
"""

from __future__ import annotations

import json

import click

from depthflow.cli import options

COLUMNS = (("name", "name"), ("family", "family"), ("source", "source"), ("size", "size"),
           ("present", "local"), ("licence", "licence"))


@click.command()
@click.option("--present", "present_only", is_flag=True,
              help="Only models found in the local caches.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON list (name, family, source, size, licence, gated, present, path, "
                   "note) instead of a table.")
@click.option("--registry-only", is_flag=True,
              help="Leave out cached Hugging Face repos that are not in depthflow's registry.")
@options.one_line_errors
def models(present_only, as_json, registry_only):
    """Named models (Hugging Face repo ids, torch hub names) and whether each is present in
    the local caches ($HF_HUB_CACHE / $HF_HOME, $TORCH_HOME). Use a name wherever a
    checkpoint path goes, e.g. `depthflow analyze facebook/dinov2-small`."""
    from depthflow.models.names import hf_hub_cache, list_models, torch_hub_checkpoints

    rows = list_models(include_cached=not registry_only)
    if present_only:
        rows = [r for r in rows if r["present"]]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    hub, chosen = hf_hub_cache()
    click.echo(f"Hugging Face hub cache: {hub} ({chosen}); torch hub checkpoints: "
               f"{torch_hub_checkpoints()}")
    click.echo(format_table(rows))
    found = sum(bool(r["present"]) for r in rows)
    click.echo(f"{found} of {len(rows)} present; depthflow never downloads weights "
               "(`hf download <repo>` fetches a Hugging Face model on a connected machine).")


def format_table(rows: list[dict]) -> str:
    """Fixed-width text table of ``rows`` (licence last, not padded)."""
    cells = [[_cell(r, key) for key, _ in COLUMNS] for r in rows]
    header = [title for _, title in COLUMNS]
    widths = [max([len(header[i])] + [len(c[i]) for c in cells]) for i in range(len(header))]
    lines = []
    for row in [header, *cells]:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row[:-1], widths[:-1], strict=True))
                     + "  " + row[-1])
    return "\n".join(lines)


def _cell(row: dict, key: str) -> str:
    if key == "present":
        return "yes" if row["present"] else "no"
    return str(row.get(key, ""))
