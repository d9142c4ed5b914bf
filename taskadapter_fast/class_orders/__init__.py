"""Published class orders, shipped as data: names for the label ids of index-only split lists.

Selected by `"<source>:<dataset>"` (`data.class_names=official:hmdb51` on the command line):
- `official`: the official Task-Adapter++ code's global order per dataset (`official_<dataset>.txt`); the
  label ids of its `<frame folder> <num frames> <label id>` lists index it (HMDB51: train 0-30, val 31-40,
  test 41-50).
- `clipfsar`: CLIP-FSAR's per-split orders (`clipfsar_<dataset>_<split>.txt`, from its configs' TRAIN and
  TEST `CLASS_NAME`); the class index of `train3/<id>` indexes the train order. CLIP-FSAR publishes none
  for val: its HMDB51 / UCF101 / Kinetics val lists name their classes in their paths, the SSv2-Small val
  order is derived (its file says how), and no public source names the SSv2-Full val classes.
- `trx`: TRX lists name their classes in their paths, except its SSv2-Full (OTAM) lists, which are the
  same files as CLIP-FSAR's SSv2-Full lists (compared byte for byte): `trx:ssv2_full` is CLIP-FSAR's order.
Each file cites its source in its first comment lines.
"""

from __future__ import annotations

from importlib import resources

SOURCES = ("official", "trx", "clipfsar")
DATASETS = ("hmdb51", "ucf101", "kinetics", "ssv2_small", "ssv2_full")
SPLITS = ("train", "val", "test")

# (source, dataset) -> the shipped file stem it reads (one order for all splits, or `<stem>_<split>` files).
_SHIPPED = {("official", dataset): f"official_{dataset}" for dataset in DATASETS if dataset != "ssv2_full"}
_SHIPPED.update({("clipfsar", dataset): f"clipfsar_{dataset}" for dataset in DATASETS})
_SHIPPED[("trx", "ssv2_full")] = "clipfsar_ssv2_full"
# Why a choice that names a real source and dataset has no file.
_NOT_SHIPPED = {
    ("official", "ssv2_full"): "the official code uses its SSv2-Small order for SSv2-Full too, which does not "
    "match the SSv2-Full split's classes; use 'clipfsar:ssv2_full' (or 'trx:ssv2_full') for SSv2-Full lists",
    **{
        ("trx", dataset): "TRX lists name their classes in their paths ('<class name>/<video id>'): leave "
        "class_names unset for them"
        for dataset in DATASETS
        if dataset != "ssv2_full"
    },
}


class GlobalOrder(list):
    """One published order for all splits (the official lists' global label ids index it); remembers its name."""

    def __init__(self, spec: str, names: list[str]) -> None:
        super().__init__(names)
        self.spec = spec


class PublishedOrder(dict):
    """{split: [names]} of a published per-split order; remembers its name to say which splits it lacks."""

    def __init__(self, spec: str, orders: dict[str, list[str]]) -> None:
        super().__init__(orders)
        self.spec = spec

    def missing(self, split: str) -> str:
        key = "; train and evaluate take it as data.val_class_names=FILE" if split == "val" else ""
        return (
            f"class_names {self.spec!r} has no order for split {split!r} (it has {', '.join(self)}): "
            f"no public source names those classes; give a names file for that split (one name a line, line i "
            f"naming the class index i of `{split}<i>/<id>`){key}"
        )


def choices() -> list[str]:
    """Every `<source>:<dataset>` that resolves to a shipped order."""
    return [f"{source}:{dataset}" for source, dataset in _SHIPPED]


def is_spec(text: str) -> bool:
    """Whether `text` is meant as `<source>:<dataset>` rather than a file: a colon, and no path separator or dot
    (so a misspelt choice is answered with the valid ones, not "file not found")."""
    return ":" in text and not any(char in text for char in "/\\.")


def _read(stem: str) -> list[str] | None:
    file = resources.files(__name__).joinpath(f"{stem}.txt")
    if not file.is_file():
        return None
    lines = file.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def load(spec: str) -> GlobalOrder | PublishedOrder:
    """The order `spec` (`"<source>:<dataset>"`) names: a `GlobalOrder` (a list) or a `PublishedOrder` (per split)."""
    source, _, dataset = spec.partition(":")
    key = (source.strip().lower(), dataset.strip().lower())
    if key in _NOT_SHIPPED:
        raise ValueError(f"class_names {spec!r}: no class order is shipped for it: {_NOT_SHIPPED[key]}")
    if key not in _SHIPPED:
        raise ValueError(
            f"class_names {spec!r} names no shipped class order; choose one of {', '.join(choices())} "
            "(or give a names file)"
        )
    stem = _SHIPPED[key]
    whole = _read(stem)
    if whole is not None:
        return GlobalOrder(f"{key[0]}:{key[1]}", whole)
    orders = {split: names for split in SPLITS if (names := _read(f"{stem}_{split}")) is not None}
    return PublishedOrder(f"{key[0]}:{key[1]}", orders)


def check_fits(order, line_kind: str, where: str) -> None:
    """Refuse a shipped order on lists it does not number: the official order indexes global label ids
    (`<folder> <frames> <id>` lines), a per-split order indexes `<split><index>` lines. Other values pass, and
    so do lists that name their classes (`named` lines), which use no order."""
    if line_kind == "named":
        return
    official_lines = line_kind == "official"
    if isinstance(order, GlobalOrder) and not official_lines:
        wanted = "'clipfsar:<dataset>' (or 'trx:ssv2_full')"
    elif isinstance(order, PublishedOrder) and official_lines:
        wanted = "'official:<dataset>'"
    else:
        return
    raise ValueError(
        f"{where}: class_names {order.spec!r} does not number this list's classes (its lines are "
        f"{'official label ids' if official_lines else 'per-split class indices'}); use {wanted}"
    )
