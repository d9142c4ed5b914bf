"""Few-shot split files → one manifest of videos (path, kind, frame count, class, split, label).

Formats read (`format=`; `"auto"` detects them and every error says which one it assumed):
- `"official"`: Task-Adapter lists, `<frame folder> <num frames> <label id>` per line.
- `"trx"`: TRX lists, `<class name>/<video id>` per line (the id is a file stem, e.g. the SSv2 webm
  name, or a frame folder); OTAM lists in TRX look like `train8/78687` (split, class index, id).
- `"clipfsar"`: CLIP-FSAR / HyRSM lists, `<split><class index>/<id>` (SSv2) or
  `<split><class index>//<relative path>` (e.g. `train0//videos/brush_hair/x.avi`).
- `"folder"`: a directory with a folder per class of video files (`<class>/*.mp4|webm|avi|mkv`) or
  of JPEG frame folders; the directory's name is the split's name.
- `"manifest"`: a JSON-lines manifest written by `prepare` (`python -m taskadapter_fast.data prepare`).

Relative paths resolve against `root` (default: the split file's folder). Absolute paths written on
another machine (the official lists name `/mnt/<disk>/<user>/datasets/hmdb51/frames/<video>`) are
looked up under `root` by their trailing components when they do not exist, or moved by an explicit
`path_map` ("OLD:NEW" prefixes). Official lines with a frame count of 0 (videos whose frame extraction
failed) are skipped and reported. Class names come from
the split itself (a TRX class name, or the parent folder of every video of a class index/label id)
or from `class_names` for index-only lists. Label ids are per split, 0..C-1: the classes of one
split ordered by their index in the file (or by name where the file has none); train and test
labels never share a numbering.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from .. import class_orders
from .._atomic import atomic_path
from .corpus import normalize_class_name
from .decode import VIDEO_EXTENSIONS, VideoDecodeError, count_frame_files, probe_video

logger = logging.getLogger(__name__)

FORMATS = ("auto", "official", "trx", "clipfsar", "folder", "manifest")
SPLIT_NAMES = ("train", "val", "test")

_OFFICIAL_HINT = "'<frame folder> <num frames> <label id>'"
_LINE_HINTS = {
    "official": _OFFICIAL_HINT,
    "named": "'<class name>/<video id>'",
    "indexed": "'<split><class index>/<video id>'",
    "indexed_path": "'<split><class index>//<relative path>'",
}
# The line kinds each format accepts.
_FORMAT_LINES = {
    "official": ("official",),
    "trx": ("named", "indexed"),
    "clipfsar": ("indexed", "indexed_path"),
}
_INDEXED_PATH = re.compile(r"(train|val|test)(\d+)//(.+)")
INDEXED_LINE = re.compile(r"(train|val|test)(\d+)/([^/]+)")  # `train3/51958`: split, class index, id
_NAMED = re.compile(r"(.+)/([^/]+)")


class SplitFormatError(ValueError):
    """A split file line that does not parse; the message starts with `file:line:`."""


@dataclass(frozen=True)
class ManifestRow:
    """One video of a split."""

    path: str  # absolute path of the video file or JPEG frame folder
    kind: str  # "video" | "frames"
    num_frames: int | None  # None until probed (`prepare`); official lists carry it
    class_name: str
    split: str  # "train" | "val" | "test" or the split file's / folder's name
    label: int  # per-split class id, 0..C-1
    source: str = ""  # the split file (or folder) the row came from
    line: int | None = None  # 1-based line in `source`; None for folder layouts


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _classify(text: str) -> str | None:
    fields = text.rsplit(None, 2)
    if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
        return "official"
    if _INDEXED_PATH.fullmatch(text):
        return "indexed_path"
    if INDEXED_LINE.fullmatch(text):
        return "indexed"
    if _NAMED.fullmatch(text):
        return "named"
    return None


def _split_from_name(path: Path) -> str:
    stem = path.stem.lower()
    for name in SPLIT_NAMES:
        if name in stem:
            return name
    return path.stem


def load_class_names(class_names) -> list[str] | dict[str, list[str]] | None:
    """`class_names` as given to `read_split`: a list, a shipped published order by name
    (`"<source>:<dataset>"`, e.g. `"official:hmdb51"`; see `taskadapter_fast.class_orders`), or a file
    (one name a line, or JSON: a list, {split: [names]}, or {name: index} as SSv2's labels.json)."""
    if class_names is None or isinstance(class_names, list | tuple | dict):
        return class_names if not isinstance(class_names, tuple) else list(class_names)
    path = Path(class_names)
    if not path.is_file() and class_orders.is_spec(str(class_names)):
        return class_orders.load(str(class_names))
    if not path.is_file():
        raise FileNotFoundError(f"class names file not found: {path}")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".json":
        data = json.loads(text)
        if isinstance(data, dict) and data and all(isinstance(value, str | int) for value in data.values()):
            by_index = {int(value): name for name, value in data.items()}
            return [by_index[index] for index in sorted(by_index)]
        return data
    return [line.strip() for line in text.splitlines() if line.strip()]


def _names_for_split(class_names, split: str) -> list[str] | None:
    if isinstance(class_names, dict):
        return class_names.get(split)
    return class_names


class _DirIndex:
    """Cached directory listings, so resolving thousands of rows costs one scandir per folder."""

    def __init__(self) -> None:
        self._listings: dict[Path, dict[str, bool]] = {}

    def entries(self, folder: Path) -> dict[str, bool]:
        listing = self._listings.get(folder)
        if listing is None:
            try:
                with os.scandir(folder) as found:
                    listing = {entry.name: entry.is_dir() for entry in found}
            except (FileNotFoundError, NotADirectoryError):
                listing = {}
            self._listings[folder] = listing
        return listing

    def find(self, path: Path) -> tuple[Path, str] | None:
        """(the entry's path, "frames" for a folder or "video" for a file), None when absent.

        A name that differs only in case (`a.MP4` for a list's `a.mp4`) is found too, where only one
        entry of the folder has it: copies made on Windows or macOS often upper-case extensions.
        """
        listing = self.entries(path.parent)
        name = path.name
        if name not in listing:
            folded = [entry for entry in listing if entry.casefold() == name.casefold()]
            if len(folded) != 1:
                return None
            name = folded[0]
        return path.parent / name, "frames" if listing[name] else "video"


def _resolve(candidates: list[Path], index: _DirIndex) -> tuple[Path, str]:
    """The first candidate that exists, else the first one (reported missing by `prepare`)."""
    for candidate in candidates:
        found = index.find(candidate)
        if found is not None:
            return found
    first = candidates[0]
    return first, "video" if first.suffix.lower() in VIDEO_EXTENSIONS else "frames"


def _id_candidates(folder: Path, video_id: str) -> list[Path]:
    if Path(video_id).suffix.lower() in VIDEO_EXTENSIONS:
        return [folder / video_id]
    return [folder / video_id] + [folder / f"{video_id}{extension}" for extension in VIDEO_EXTENSIONS]


def _consistent_parent_names(parents: dict[int, set[str]]) -> dict[int, str] | None:
    """{class id: parent folder name} when every class has one parent folder and no two share one.

    Needs two classes or more: with one class, a shared folder (`frames/`) would pass for a class name.
    """
    if len(parents) < 2 or any(len(names) != 1 for names in parents.values()):
        return None
    names = {class_id: next(iter(found)) for class_id, found in parents.items()}
    return names if len(set(names.values())) == len(names) else None


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


@dataclass
class _Parsed:
    line: int
    kind: str
    split: str
    class_id: int | None  # label id / class index, where the line has one
    class_name: str | None  # class name, where the line has one
    candidates: list[Path] = field(default_factory=list)
    num_frames: int | None = None
    listed_absolute: bool = False  # the list wrote an absolute path (perhaps of another machine)


_SHOWN = 3  # skipped lines and remapping examples shown per split file; the rest are counted


@dataclass
class SplitNotes:
    """What reading one split file left out or found elsewhere than listed: logged once per file at load
    time, and reported by `prepare`."""

    source: str
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, text): frame count 0
    remapped: list[tuple[str, str]] = field(default_factory=list)  # (listed, found under the root)
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (listed, found through path_map)
    not_found: list[str] = field(default_factory=list)  # listed absolute paths found nowhere
    root: str | None = None  # where the listed absolute paths were looked for by their trailing components

    def messages(self) -> list[tuple[int, str]]:
        """(log level, message) per kind of note, one line each."""
        notes = []
        if self.skipped:
            shown = "; ".join(f"line {number}: {text!r}" for number, text in self.skipped[:_SHOWN])
            more = f"; ... ({len(self.skipped)} in all)" if len(self.skipped) > _SHOWN else ""
            notes.append(
                (
                    logging.WARNING,
                    f"{self.source}: {len(self.skipped)} line(s) with a frame count of 0 skipped "
                    f"(no frames were extracted for them): {shown}{more}",
                )
            )
        for found, how, level in (
            (self.remapped, "not found as listed; found under the root by their trailing components", logging.WARNING),
            (self.mapped, "moved by path_map", logging.INFO),
        ):
            if found:
                listed, there = found[0]
                notes.append((level, f"{self.source}: {len(found)} listed path(s) {how}, e.g. {listed} -> {there}"))
        if self.not_found:
            where = f" nor under {self.root} by their trailing components" if self.root else ""
            notes.append(
                (
                    logging.WARNING,
                    f"{self.source}: {len(self.not_found)} listed absolute path(s) not found as written{where}, "
                    f"e.g. {self.not_found[0]}; map their prefix with data.path_map=OLD:NEW "
                    "(prepare: --path-map OLD:NEW)",
                )
            )
        return notes


def _parse_lines(
    path: Path, format: str, base: Path, class_names, index: _DirIndex, notes: SplitNotes
) -> tuple[list[_Parsed], str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise SplitFormatError(f"{path}:1: not a UTF-8 text split file ({error})") from None
    parsed: list[_Parsed] = []
    allowed: tuple[str, ...] | None = _FORMAT_LINES.get(format)
    detected_from: int | None = None
    file_split = _split_from_name(path)
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        kind = _classify(line)
        if allowed is None:  # auto: the first line decides the format for the whole file
            if kind is None:
                raise SplitFormatError(
                    f"{path}:{number}: cannot detect the split format from {line!r}; expected one of "
                    "official " + _OFFICIAL_HINT + ", trx '<class name>/<video id>', clipfsar "
                    "'<split><class index>/<id>' or '<split><class index>//<relative path>'"
                )
            allowed = (kind,)
            format = "official" if kind == "official" else "clipfsar" if kind == "indexed_path" else "trx"
            detected_from = number
        if kind not in allowed:
            how = f"auto-detected from line {detected_from}" if detected_from else "as requested"
            expected = " or ".join(_LINE_HINTS[name] for name in allowed)
            raise SplitFormatError(f"{path}:{number}: expected {expected} (format {format!r}, {how}), got {line!r}")
        entry = _parse_line(line, kind, number, base, file_split, class_names, index, path)
        if entry is None:
            notes.skipped.append((number, line))
        else:
            parsed.append(entry)
    if not parsed:
        skipped = f" ({len(notes.skipped)} line(s) with a frame count of 0 skipped)" if notes.skipped else ""
        raise SplitFormatError(f"{path}:1: the split file lists no videos{skipped}")
    return parsed, format


def _parse_line(line, kind, number, base, file_split, class_names, index, path) -> _Parsed | None:
    """The line's entry; None for an official line with a frame count of 0 (its frame extraction failed:
    the authors' HMDB51 lists hold such lines for names with `[` `]`), which the caller reports."""
    if kind == "official":
        folder, num_frames, label = line.rsplit(None, 2)
        if int(num_frames) < 1:
            return None
        return _Parsed(
            number, kind, file_split, int(label), None, [base / folder], int(num_frames), Path(folder).is_absolute()
        )
    if kind == "named":
        match = _NAMED.fullmatch(line)
        class_name, video_id = match.group(1).strip(), match.group(2).strip()
        candidates = _id_candidates(base / class_name, video_id) + _id_candidates(base, video_id)
        return _Parsed(number, kind, file_split, None, class_name, candidates)
    match = (_INDEXED_PATH if kind == "indexed_path" else INDEXED_LINE).fullmatch(line)
    split, class_index, rest = match.group(1), int(match.group(2)), match.group(3).strip()
    names = _names_for_split(class_names, split)
    name = None
    if names is not None:
        if class_index >= len(names):
            raise SplitFormatError(
                f"{path}:{number}: class index {class_index} in {line!r}, but class_names has {len(names)} names"
            )
        name = names[class_index]
    if kind == "indexed_path":
        candidates = [base / rest]
    else:
        candidates = _id_candidates(base, rest) + (_id_candidates(base / name, rest) if name else [])
    return _Parsed(number, kind, split, class_index, name, candidates, listed_absolute=Path(rest).is_absolute())


def parse_path_map(path_map: str | Sequence[str] | None) -> list[tuple[Path, Path]]:
    """`"OLD:NEW"` (or several) → [(OLD, NEW)]: a listed path starting with the folders OLD is read under NEW."""
    if not path_map:
        return []
    pairs = []
    for item in [path_map] if isinstance(path_map, str) else path_map:
        old, colon, new = item.partition(":")
        if not colon or not old.strip() or not new.strip():
            raise ValueError(
                f"path_map must be OLD:NEW (a listed path prefix and where those files are here), got {item!r}"
            )
        pairs.append((Path(old.strip()), Path(new.strip()).absolute()))
    return pairs


def _mapped(candidate: Path, pairs: list[tuple[Path, Path]]) -> Path | None:
    for old, new in pairs:
        if candidate.parts[: len(old.parts)] == old.parts:  # whole folder names, not a string prefix
            return new.joinpath(*candidate.parts[len(old.parts) :])
    return None


def _under_root(listed: Path, root: Path, index: _DirIndex) -> tuple[Path, str] | None:
    """A listed absolute path looked up under `root` by its trailing components: the name, then
    `<class>/<name>`, then more, so a copy of the authors' `.../frames/<class>/<video>` tree is found
    wherever its top folder is."""
    parts = listed.parts[1:]  # without the anchor
    for count in range(1, len(parts)):
        found = index.find(root.joinpath(*parts[-count:]))
        if found is not None:
            return found
    return None


def _locate(
    parsed: list[_Parsed], index: _DirIndex, root: Path | None, pairs: list[tuple[Path, Path]], notes: SplitNotes
) -> list[tuple[Path, str]]:
    """(path, kind) of each entry: as listed, else through `pairs`, else (a listed absolute path, with a
    root given) under the root by its trailing components; else the listed (or mapped) path, reported missing."""
    located = []
    for entry in parsed:
        found = next((hit for candidate in entry.candidates if (hit := index.find(candidate))), None)
        mapped = [target for candidate in entry.candidates if (target := _mapped(candidate, pairs)) is not None]
        if found is None and mapped:
            found = next((hit for target in mapped if (hit := index.find(target))), None)
            if found is not None:
                notes.mapped.append((str(entry.candidates[0]), str(found[0])))
        if found is None and root is not None and entry.listed_absolute:
            found = _under_root(entry.candidates[0], root, index)
            if found is not None:
                notes.remapped.append((str(entry.candidates[0]), str(found[0])))
        if found is None:
            if entry.listed_absolute:
                notes.not_found.append(str(entry.candidates[0]))
            found = _resolve(mapped or entry.candidates, index)
        located.append(found)
    notes.root = str(root) if root is not None else None
    return located


def _rows_from_parsed(
    parsed: list[_Parsed], resolved: list[tuple[Path, str]], path: Path, class_names
) -> list[ManifestRow]:
    if parsed:
        class_orders.check_fits(class_names, parsed[0].kind, str(path))
    by_split: dict[str, list[int]] = {}
    for position, entry in enumerate(parsed):
        by_split.setdefault(entry.split, []).append(position)
    rows: list[ManifestRow | None] = [None] * len(parsed)
    for split, positions in by_split.items():
        if parsed[positions[0]].class_id is None:  # named classes: labels in name order
            names = sorted({parsed[p].class_name for p in positions})
            label_of = {name: label for label, name in enumerate(names)}
            for p in positions:
                rows[p] = _row(parsed[p], resolved[p], parsed[p].class_name, label_of[parsed[p].class_name], path)
            continue
        class_ids = sorted({parsed[p].class_id for p in positions})
        label_of_id = {class_id: label for label, class_id in enumerate(class_ids)}
        names = _names_for_split(class_names, split)
        parents: dict[int, set[str]] = {}
        for p in positions:
            parents.setdefault(parsed[p].class_id, set()).add(resolved[p][0].parent.name)
        # SSv2 index lists name flat files (`<id>.webm`): their folders say nothing about the class.
        from_folders = None if parsed[positions[0]].kind == "indexed" else _consistent_parent_names(parents)
        if names is None and from_folders is None:
            if isinstance(class_names, class_orders.PublishedOrder):  # a shipped order chosen, but not for this split
                raise SplitFormatError(f"{path}: {class_names.missing(split)}")
            logger.warning(
                "%s: no class names given and the video folders do not name the classes; using %s",
                path,
                "label ids" if parsed[positions[0]].kind == "official" else f"'{split}<index>'",
            )
        for p in positions:
            class_id = parsed[p].class_id
            if names is not None:
                if class_id >= len(names):
                    raise SplitFormatError(
                        f"{path}:{parsed[p].line}: class id {class_id}, but class_names has {len(names)} names"
                    )
                name = names[class_id]
            elif from_folders is not None:
                name = from_folders[class_id]
            else:
                name = str(class_id) if parsed[p].kind == "official" else f"{split}{class_id}"
            rows[p] = _row(parsed[p], resolved[p], name, label_of_id[class_id], path)
    return rows


def _row(entry: _Parsed, resolved: tuple[Path, str], class_name: str, label: int, source: Path) -> ManifestRow:
    video_path, kind = resolved
    return ManifestRow(
        path=str(video_path),
        kind=kind,
        num_frames=entry.num_frames,
        class_name=class_name,
        split=entry.split,
        label=label,
        source=str(source),
        line=entry.line,
    )


def _read_folder(folder: Path) -> list[ManifestRow]:
    folder = folder.absolute()
    split = folder.resolve().name
    index = _DirIndex()
    classes = sorted(name for name, is_dir in index.entries(folder).items() if is_dir and not name.startswith("."))
    rows = []
    for label, class_name in enumerate(classes):
        class_dir = folder / class_name
        for name, is_dir in sorted(index.entries(class_dir).items()):
            if name.startswith("."):  # hidden files, macOS's ._x.mp4 resource forks among them
                continue
            item = class_dir / name
            if not is_dir and item.suffix.lower() in VIDEO_EXTENSIONS:
                kind = "video"
            elif is_dir:  # a frame folder; one not named img_00001.jpg... is reported by prepare (and decoding)
                kind = "frames"
            else:
                continue
            rows.append(ManifestRow(str(item), kind, None, class_name, split, label, str(folder), None))
    if not rows:
        raise SplitFormatError(
            f"{folder}: no videos found (format 'folder' expects <class>/<video>{'|'.join(VIDEO_EXTENSIONS)} "
            "or <class>/<frame folder>/img_00001.jpg)"
        )
    return rows


def rows_of_split(rows: list[ManifestRow], wanted: str, source: str | os.PathLike) -> list[ManifestRow]:
    """The rows of split `wanted` when `rows` hold several splits (a manifest `prepare` wrote from several
    split files), else all of them. Raises ValueError when several are there and none is `wanted`."""
    found = sorted({row.split for row in rows})
    if len(found) <= 1:
        return rows
    chosen = [row for row in rows if row.split == wanted]
    if not chosen:
        raise ValueError(f"{source} holds the splits {found}, none of them {wanted!r}: pass that split's own file")
    return chosen


def read_manifest(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[ManifestRow]:
    """Rows of a JSON-lines manifest (as `write_manifest` writes them)."""
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    rows = []
    names = {item.name for item in fields(ManifestRow)}
    for number, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
            missing = {"path", "kind", "class_name", "split", "label"} - set(data)
            if missing:
                raise ValueError(f"missing keys {sorted(missing)}")
            row = ManifestRow(**{key: value for key, value in data.items() if key in names})
        except (ValueError, TypeError) as error:
            raise SplitFormatError(f"{path}:{number}: not a manifest row (format 'manifest'): {error}") from None
        if not Path(row.path).is_absolute():
            row = replace(row, path=str(base / row.path))
        rows.append(row)
    return rows


def write_manifest(rows: Iterable[ManifestRow], path: str | os.PathLike) -> Path:
    """Write rows as JSON lines, atomically (a temporary file renamed into place)."""
    path = Path(path)
    with atomic_path(path) as temporary, temporary.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
    return path


def _first_listed_line(path: Path) -> tuple[int, str] | None:
    """(line number, text) of the first line of a list file that is neither blank nor a comment."""
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if line and not line.startswith("#"):
                return number, line
    return None


def detect_format(path: str | os.PathLike) -> str:
    """The format `read_split(path, format="auto")` would use."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() == ".jsonl":
        return "manifest"
    first = _first_listed_line(path)
    if first is None:
        raise SplitFormatError(f"{path}:1: the split file lists no videos")
    number, line = first
    if line.startswith("{"):
        return "manifest"
    kind = _classify(line)
    if kind is None:
        raise SplitFormatError(f"{path}:{number}: cannot detect the split format from {line!r}")
    return "official" if kind == "official" else "clipfsar" if kind == "indexed_path" else "trx"


def published_order_for(path: str | os.PathLike, dataset: str) -> str | None:
    """The shipped class order (`"<source>:<dataset>"`) that names the label ids of the list at `path`, a list of
    the benchmark `dataset` (a preset name); None when its lines name their classes, no order is shipped for it,
    or the file cannot be read (reading it later says why). Official lines index the official order, indexed
    lines (`train3/51958`, `train0//videos/...`) CLIP-FSAR's (TRX's SSv2-Full lists are CLIP-FSAR's)."""
    path = Path(path)
    try:
        first = None if path.is_dir() or path.suffix.lower() == ".jsonl" else _first_listed_line(path)
    except OSError:
        return None
    kind = None if first is None else _classify(first[1])
    source = {"official": "official", "indexed_path": "clipfsar", "indexed": "clipfsar"}.get(kind or "")
    spec = f"{source}:{dataset}"
    return spec if source is not None and spec in class_orders.choices() else None


def read_split(
    path: str | os.PathLike,
    format: str = "auto",
    root: str | os.PathLike | None = None,
    class_names: Sequence[str] | str | os.PathLike | dict | None = None,
    path_map: str | Sequence[str] | None = None,
) -> list[ManifestRow]:
    """Read a split file (or a folder-per-class directory, or a manifest) → manifest rows.

    `root`: where relative video paths start (default: the split file's folder); listed absolute paths
    that do not exist are looked up under it by their trailing components.
    `class_names`: names for index-only lists (a list, a names file, or JSON; see `load_class_names`).
    `path_map`: "OLD:NEW" (or several): listed paths under OLD are read under NEW.
    Rows whose video is not on disk are still returned (`prepare` reports them all); official lines with
    a frame count of 0 are left out. Both, and any remapping, are logged once per file.
    Raises `SplitFormatError` (a ValueError) naming `file:line` and the format assumed.
    """
    rows, notes = read_split_with_notes(path, format, root, class_names, path_map)
    for level, message in notes.messages():
        logger.log(level, "%s", message)
    return rows


def read_split_with_notes(
    path: str | os.PathLike,
    format: str = "auto",
    root: str | os.PathLike | None = None,
    class_names: Sequence[str] | str | os.PathLike | dict | None = None,
    path_map: str | Sequence[str] | None = None,
) -> tuple[list[ManifestRow], SplitNotes]:
    """`read_split`, with what it skipped or remapped returned instead of logged."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    pairs = parse_path_map(path_map)
    path = Path(path)
    notes = SplitNotes(str(path))
    if not path.exists():
        raise FileNotFoundError(f"split file not found: {path}")
    if format == "auto":
        detected = detect_format(path)
        if detected in ("folder", "manifest"):
            format = detected
    if format == "folder":
        if not path.is_dir():
            raise SplitFormatError(f"{path}: format 'folder' needs a directory with a folder per class")
        return _read_folder(path), notes
    if path.is_dir():
        raise SplitFormatError(f"{path}: is a directory; format {format!r} needs a split file")
    if format == "manifest":
        return read_manifest(path, root), notes
    names = load_class_names(class_names)
    base = Path(root) if root is not None else path.parent
    index = _DirIndex()
    parsed, _ = _parse_lines(path, format, base.absolute(), names, index, notes)
    resolved = _locate(parsed, index, Path(root).absolute() if root is not None else None, pairs, notes)
    return _without_repeats(_rows_from_parsed(parsed, resolved, path, names), path), notes


def _without_repeats(rows: list[ManifestRow], path: Path) -> list[ManifestRow]:
    """Each video once per split: a repeated line would let an episode use one video as a support and
    its own query. The first line wins; the repeats are reported."""
    first_line: dict[tuple[str, str], int | None] = {}
    kept, repeats = [], []
    for row in rows:
        key = (row.split, row.path)
        if key in first_line:
            repeats.append(f"line {row.line} repeats line {first_line[key]}")
            continue
        first_line[key] = row.line
        kept.append(row)
    if repeats:
        shown = "; ".join(repeats[:3]) + (f"; ... ({len(repeats)} in all)" if len(repeats) > 3 else "")
        logger.warning("%s: %d repeated video(s) read once: %s", path, len(repeats), shown)
    return kept


# --------------------------------------------------------------------------------------------
# prepare: probe once, report every problem, write the manifest
# --------------------------------------------------------------------------------------------


# The class-size bar `prepare` checks by default: 5-shot, the larger of the two settings the benchmarks
# report (1-shot and 5-shot), with 1 query as every preset; a class that passes serves either setting.
PREPARE_SHOT, PREPARE_QUERY = 5, 1
_VIDEOS_SHOWN = 10  # shared videos listed per pair of splits; the rest are counted


@dataclass
class PrepareReport:
    """What `prepare` wrote, what it could not read, and what the episode loader would refuse or a
    few-shot evaluation must not have (classes too small for shot + query, splits that share classes)."""

    out: Path
    rows: list[ManifestRow]  # written, with probed frame counts
    missing: list[tuple[ManifestRow, str]]  # (row, why) for videos not on disk
    unreadable: list[tuple[ManifestRow, str]]  # (row, why) for videos that exist but do not decode
    count_mismatches: int = 0  # official-list frame counts that differ from the folder (probed value kept)
    n_shot: int = PREPARE_SHOT
    n_query: int = PREPARE_QUERY
    # split -> [(class, usable videos)] for the classes with fewer than n_shot + n_query usable videos
    small_classes: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    # (split, split) -> the classes both list (as written in each, "a / b" where they differ)
    shared_classes: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # (split, split) -> the video paths both list
    shared_videos: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    notes: list[SplitNotes] = field(default_factory=list)  # per split file: lines skipped, paths remapped

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unreadable

    def format(self) -> str:
        total = len(self.rows) + len(self.missing) + len(self.unreadable)
        skipped = sum(len(notes.skipped) for notes in self.notes)
        lines = [
            f"prepare: {total} videos listed, {len(self.rows)} written to {self.out}; "
            f"{len(self.missing)} missing, {len(self.unreadable)} unreadable"
            + (f"; {skipped} line(s) skipped (frame count 0)" if skipped else "")
        ]
        if self.count_mismatches:
            lines.append(
                f"  {self.count_mismatches} frame counts differ from the split file (the probed count is kept)"
            )
        lines += [f"  {message}" for notes in self.notes for _, message in notes.messages()]
        for title, problems in (("missing", self.missing), ("unreadable", self.unreadable)):
            if problems:
                lines.append(f"{title} ({len(problems)}):")
                for row, why in problems:
                    where = f"{row.source}:{row.line}" if row.line is not None else row.source
                    lines.append(f"  {row.path}  [{where}]  {why}")
        return "\n".join(lines + self._warning_lines())

    def _warning_lines(self) -> list[str]:
        """The split-level warnings, last so they are not lost above a long list of missing videos."""
        lines = []
        if self.small_classes:
            per_class = self.n_shot + self.n_query
            lines.append(
                f"warning: classes with fewer usable videos than shot + query = {self.n_shot} + {self.n_query} = "
                f"{per_class} (the episode loader refuses a split holding one; --shot/--query set this bar):"
            )
            for split, small in self.small_classes.items():
                shown = [
                    f"{name!r} has {count}" + (" (left out of the manifest)" if not count else "")
                    for name, count in small
                ]
                lines.append(f"  {split}: {', '.join(shown)}")
        if self.shared_classes:
            lines.append(
                "warning: classes in more than one split (few-shot splits must not share classes: validation "
                "and test measure classes never trained on):"
            )
            for (first, second), names in self.shared_classes.items():
                lines.append(f"  {first} and {second} share {len(names)} class(es): {', '.join(names)}")
        if self.shared_videos:
            lines.append("warning: videos in more than one split:")
            for (first, second), paths in self.shared_videos.items():
                more = f", ... ({len(paths)} in all)" if len(paths) > _VIDEOS_SHOWN else ""
                lines.append(
                    f"  {first} and {second} share {len(paths)} video(s): {', '.join(paths[:_VIDEOS_SHOWN])}{more}"
                )
        return lines


def _small_classes(listed: list[ManifestRow], good: list[ManifestRow], per_class: int) -> dict:
    """split -> [(class, usable videos)] below `per_class`, in listing order; a class whose every video
    is missing or unreadable counts 0 (it is not in the manifest at all)."""
    usable: dict[tuple[str, str], int] = dict.fromkeys(((row.split, row.class_name) for row in listed), 0)
    for row in good:
        usable[row.split, row.class_name] += 1
    small: dict[str, list[tuple[str, int]]] = {}
    for (split, name), count in usable.items():
        if count < per_class:
            small.setdefault(split, []).append((name, count))
    return small


def _shared_between_splits(rows: list[ManifestRow]) -> tuple[dict, dict]:
    """({(split, split): shared class names}, {(split, split): shared video paths}) over the listed rows.

    Classes meet by `normalize_class_name` (as the corpus matches them). Names that are bare numbers are
    left out: they are the label-id placeholders of lists without class names, per split by design.
    """
    class_names: dict[str, dict[str, set[str]]] = {}  # split -> {class key: names as written}
    videos: dict[str, set[str]] = {}  # split -> real paths
    for row in rows:
        if not row.class_name.isdigit():
            names = class_names.setdefault(row.split, {})
            names.setdefault(normalize_class_name(row.class_name), set()).add(row.class_name)
        videos.setdefault(row.split, set()).add(os.path.realpath(row.path))
    splits = list(videos)  # listing order
    shared_classes, shared_videos = {}, {}
    for i, first in enumerate(splits):
        for second in splits[i + 1 :]:
            keys = sorted(class_names.get(first, {}).keys() & class_names.get(second, {}).keys())
            if keys:
                shared_classes[first, second] = [
                    " / ".join(repr(name) for name in sorted(class_names[first][key] | class_names[second][key]))
                    for key in keys
                ]
            paths = sorted(videos[first] & videos[second])
            if paths:
                shared_videos[first, second] = paths
    return shared_classes, shared_videos


def probe_row(row: ManifestRow) -> tuple[ManifestRow, str | None, str | None]:
    """→ (row with its probed frame count, problem kind "missing"/"unreadable" or None, reason)."""
    try:
        if row.kind == "frames":
            num_frames = count_frame_files(row.path)
            if num_frames == 0:
                return row, "unreadable", "frame folder holds no img_*.jpg frames"
        else:
            info = probe_video(row.path, check_decode=True)
            if info.truncated:
                return (
                    row,
                    "unreadable",
                    (f"truncated: {info.num_frames} frames present, the header promises {info.expected_frames}"),
                )
            num_frames = info.num_frames
    except FileNotFoundError as error:  # MissingVideoError included
        reason = getattr(error, "reason", str(error))
        if row.kind == "frames" and not Path(row.path).exists():
            # The list named no extension, so the video file was looked for too.
            reason = f"no frame folder or video file ({'/'.join(VIDEO_EXTENSIONS)}) of that name"
        return row, "missing", reason
    except VideoDecodeError as error:
        return row, "unreadable", error.reason
    return replace(row, num_frames=num_frames), None, None


def prepare(
    split_files: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    root: str | os.PathLike | None = None,
    format: str = "auto",
    class_names=None,
    workers: int | None = None,
    progress: bool = True,
    n_shot: int = PREPARE_SHOT,
    n_query: int = PREPARE_QUERY,
    path_map: str | Sequence[str] | None = None,
) -> PrepareReport:
    """Read split files, probe every video's frame count once, write the readable ones to `out`.

    Missing and unreadable videos do not stop the run: they are all collected in the report, with the
    classes left with fewer than `n_shot + n_query` usable videos and the classes or videos that two
    splits share; so are the lines skipped (frame count 0) and the listed paths found elsewhere or nowhere.
    """
    from tqdm.auto import tqdm

    rows, notes = [], []
    for split_file in split_files:
        file_rows, file_notes = read_split_with_notes(split_file, format, root, class_names, path_map)
        rows += file_rows
        notes.append(file_notes)
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    good: list[ManifestRow] = []
    missing: list[tuple[ManifestRow, str]] = []
    unreadable: list[tuple[ManifestRow, str]] = []
    mismatches = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(probe_row, rows)
        for original, (row, problem, why) in zip(
            rows,
            tqdm(results, total=len(rows), desc="probing videos", disable=not progress, file=sys.stderr),
            strict=True,
        ):
            if problem == "missing":
                missing.append((row, why))
            elif problem == "unreadable":
                unreadable.append((row, why))
            else:
                mismatches += original.num_frames is not None and original.num_frames != row.num_frames
                good.append(row)
    written = write_manifest(good, out)
    shared_classes, shared_videos = _shared_between_splits(rows)
    small = _small_classes(rows, good, n_shot + n_query)
    return PrepareReport(
        written, good, missing, unreadable, mismatches, n_shot, n_query, small, shared_classes, shared_videos, notes
    )
