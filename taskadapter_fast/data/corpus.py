"""Sub-action corpus (docs/method.md §4.1): three stage descriptions per class, its file format, name matching.

The official file format is YAML, one entry per class:

    <class name>:
      label: <display label>
      sub_act_en_li: ['<stage 1>', '<stage 2>', '<stage 3>']

A JSON file (name ending in `.json`) may hold the same nested form or a flat `{name: [s1, s2, s3]}`.
In memory a corpus is `{class name: [stage, ...]}`. Loading accepts any number of stages per entry
(published files are not always tidy); `resolve_subactions` / `validate_corpus` insist on three for
the classes actually used.

Making a corpus is elsewhere: `corpus_generate` asks a chat endpoint, `corpus_fetch` downloads the
authors' published files, and `python -m taskadapter_fast.corpus` is their command line.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import yaml

from .._atomic import atomic_write_bytes

STAGES_PER_CLASS = 3
log = logging.getLogger(__name__)


class Corpus(dict):
    """`{class name: [stage, ...]}` that remembers the file it was read from, for error messages."""

    def __init__(self, entries: Mapping[str, list[str]] | Iterable = (), path: str | None = None):
        super().__init__(entries)
        self.path = path


# --------------------------------------------------------------------------------------------- loading


class _CorpusYamlLoader(yaml.SafeLoader):
    """Safe loader that keeps mapping keys as written and records duplicate keys.

    Keys and `label` values stay the literal text so that class names such as `on`, `null` or `1`
    are not turned into booleans, None or integers. Duplicates are kept last-wins, as PyYAML (and so the official code)
    does, but reported: the published Kinetics and UCF101 files repeat some keys.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self.duplicate_keys: list[tuple[str, list[int]]] = []

    def construct_mapping(self, node, deep=False):
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)
        self.flatten_mapping(node)
        mapping = {}
        lines: dict[str, list[int]] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = key_node.value
            else:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found a non-text key", key_node.start_mark
                )
            lines.setdefault(key, []).append(key_node.start_mark.line + 1)
            if key == "label" and isinstance(value_node, yaml.ScalarNode):
                mapping[key] = value_node.value  # display text too: `label: yes` is not a boolean
            else:
                mapping[key] = self.construct_object(value_node, deep=deep)
        self.duplicate_keys.extend((key, where) for key, where in lines.items() if len(where) > 1)
        return mapping


def _parse_yaml(text: str, source: str) -> tuple[object, list[tuple[str, list[int]]]]:
    loader = None
    try:
        loader = _CorpusYamlLoader(text)  # its reader already refuses characters YAML cannot hold
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{source}: not a valid YAML corpus file{where}: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, loader.duplicate_keys


def _parse_json(text: str, source: str) -> tuple[object, list[tuple[str, list[int]]]]:
    repeated: list[str] = []

    def pairs_hook(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                repeated.append(key)
            seen[key] = value
        return seen

    try:
        data = json.loads(text, object_pairs_hook=pairs_hook)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{source}: not a valid JSON corpus file at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    return data, [(key, []) for key in dict.fromkeys(repeated)]


def _entries(data: object, source: str) -> tuple[Corpus, dict[str, str]]:
    """Checks the parsed file's structure; returns (corpus, display labels). Lists every bad entry."""
    if data is None or data == {}:
        raise ValueError(f"{source}: the corpus file holds no classes")
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: expected a mapping of class name to entry at the top level, got {type(data).__name__}"
        )
    corpus = Corpus(path=source)
    labels: dict[str, str] = {}
    problems: list[str] = []
    for name, entry in data.items():
        if isinstance(entry, dict):
            if "sub_act_en_li" not in entry:
                problems.append(f"{name!r}: no 'sub_act_en_li' (keys: {', '.join(map(str, entry)) or 'none'})")
                continue
            stages = entry["sub_act_en_li"]
            label = entry.get("label", name)
            if not isinstance(label, str):
                problems.append(f"{name!r}: 'label' is {type(label).__name__} {label!r}, not text")
                continue
        elif isinstance(entry, list):
            stages, label = entry, name
        else:
            problems.append(
                f"{name!r}: expected a mapping with 'sub_act_en_li' or a list of stages, "
                f"got {type(entry).__name__} {entry!r}"
            )
            continue
        if not isinstance(stages, list):
            problems.append(f"{name!r}: 'sub_act_en_li' is {type(stages).__name__} {stages!r}, not a list of stages")
            continue
        bad = [
            f"stage {i} is {type(stage).__name__} {stage!r}, not text"
            if not isinstance(stage, str)
            else f"stage {i} is empty"
            for i, stage in enumerate(stages, 1)
            if not isinstance(stage, str) or not stage.strip()
        ]
        if bad:
            problems.append(f"{name!r}: {'; '.join(bad)}")
            continue
        corpus[str(name)] = list(stages)
        labels[str(name)] = label
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        raise ValueError(f"{source}: {len(problems)} bad corpus entr{'y' if len(problems) == 1 else 'ies'}:\n{listing}")
    return corpus, labels


def _duplicate_note(duplicates: list[tuple[str, list[int]]], source: str) -> str:
    parts = [f"{key!r} (lines {', '.join(map(str, lines))})" if lines else repr(key) for key, lines in duplicates]
    return f"{source}: repeated class keys, the last entry of each is used: {', '.join(parts)}"


def parse_corpus_text(text: str, source: str, json_format: bool) -> tuple[Corpus, dict[str, str], str | None]:
    """Parses a corpus file's text; returns (corpus, labels, note about repeated keys or None)."""
    data, duplicates = (_parse_json if json_format else _parse_yaml)(text, source)
    corpus, labels = _entries(data, source)
    return corpus, labels, _duplicate_note(duplicates, source) if duplicates else None


def _read_corpus_file(path: str | os.PathLike) -> tuple[Corpus, dict[str, str], str | None]:
    path = Path(path)
    if not path.is_file():
        reason = "is a directory, not a corpus file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"corpus file {str(path)!r} {reason}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_corpus_text(text, str(path), json_format=path.suffix.lower() == ".json")


def load_corpus(path: str | os.PathLike) -> dict[str, list[str]]:
    """Reads a corpus file: the official YAML format, or JSON when the name ends in `.json`.

    Returns `{class name: [stage 1, stage 2, ...]}` in file order (a `Corpus`, a dict that also
    remembers `path`). Raises FileNotFoundError for a missing file and ValueError naming the file and
    every bad entry (unparsable file, an entry without `sub_act_en_li`, stages that are not
    non-empty text). The number of stages is not checked here; see `resolve_subactions`.
    Keys repeated in the file are reported in one logged warning line and the last one wins, as in PyYAML.
    """
    corpus, _, note = _read_corpus_file(path)
    if note:
        log.warning(note)  # logged, not warnings.warn: that would print a line of Python source under it
    return corpus


# ---------------------------------------------------------------------------------------------- saving


def _yaml_scalar(text: str) -> str:
    # Single quotes as in the official files; double-quoted JSON escapes for what they cannot hold.
    if text.isprintable() and text == text.strip():
        return "'" + text.replace("'", "''") + "'"
    return _NOT_YAML_PRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(text, ensure_ascii=False))


# Characters a YAML stream may not hold literally (DEL, C1 controls, surrogates, U+FFFE/F) or would read as a
# line break (NEL, U+2028/9); JSON leaves them unescaped, a double-quoted YAML scalar takes \uXXXX for them.
_NOT_YAML_PRINTABLE = re.compile("[\x7f-\x9f\u2028\u2029\ud800-\udfff\ufffe\uffff]")


def _yaml_plain(name: str) -> str:
    """The text bare, as the official files write keys and labels, when YAML reads it back unchanged."""
    if name and name.isprintable() and name == name.strip():
        try:  # bare both as a key and as the `label:` value (`x:` reads as a key, `-` as a list)
            if yaml.safe_load(f"{name}: 0\nlabel: {name}\n") == {name: 0, "label": name}:
                return name
        except yaml.YAMLError:
            pass
    return _yaml_scalar(name)


def _check_savable(corpus: Mapping[str, Sequence[str]], labels: Mapping[str, str]) -> None:
    problems = []
    for name, stages in corpus.items():
        if not isinstance(name, str) or not name:
            problems.append(f"class name {name!r} is not non-empty text")
        elif isinstance(stages, str) or not isinstance(stages, Sequence):
            problems.append(f"{name!r}: stages are {type(stages).__name__}, not a list of text")
        elif not all(isinstance(stage, str) and stage.strip() for stage in stages):
            problems.append(f"{name!r}: every stage must be non-empty text, got {list(stages)!r}")
        elif not isinstance(labels.get(name, name), str):
            problems.append(f"{name!r}: label {labels[name]!r} is not text")
    if problems:
        raise ValueError("cannot save the corpus: " + "; ".join(problems))


def _corpus_text(corpus: Mapping[str, Sequence[str]], labels: Mapping[str, str], json_format: bool) -> str:
    if json_format:
        nested = {
            name: {"label": labels.get(name, name), "sub_act_en_li": list(stages)} for name, stages in corpus.items()
        }
        return json.dumps(nested, ensure_ascii=False, indent=2) + "\n"
    blocks = [
        f"{_yaml_plain(name)}:\n"
        f"  label: {_yaml_plain(labels.get(name, name))}\n"
        f"  sub_act_en_li: [{', '.join(_yaml_scalar(stage) for stage in stages)}]\n"
        for name, stages in corpus.items()
    ]
    return "\n".join(blocks)


def save_corpus(
    corpus: Mapping[str, Sequence[str]], path: str | os.PathLike, labels: Mapping[str, str] | None = None
) -> None:
    """Writes `corpus` in the official YAML format, or JSON (same nested form) when `path` ends in `.json`.

    labels: optional `{class name: display label}`; a class without one gets its name as label.
    The file is replaced atomically, so readers never see half a file; `load_corpus` reads it back
    to an equal corpus.
    """
    path = Path(path)
    labels = dict(labels or {})
    _check_savable(corpus, labels)
    json_format = path.suffix.lower() == ".json"
    text = _corpus_text(corpus, labels, json_format)
    reread, reread_labels, _ = parse_corpus_text(text, str(path), json_format)
    assert reread == {name: list(stages) for name, stages in corpus.items()}, "corpus text does not round-trip"
    assert all(reread_labels[name] == labels.get(name, name) for name in corpus), "labels do not round-trip"
    atomic_write_bytes(path, text.encode("utf-8"), fsync=True)


# ----------------------------------------------------------------------------------------- resolving


def normalize_class_name(name: str) -> str:
    """Matching key for class names written differently in split files and corpora.

    CamelCase is split into words (UCF101 folder names such as `ApplyEyeMakeup`), SSv2 template
    brackets are dropped (`Pushing [something]`), then lower case, `_`/`-` become spaces and
    whitespace is collapsed and stripped.
    """
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    name = name.lower().replace("_", " ").replace("-", " ").replace("[", "").replace("]", "")
    return " ".join(name.split())


def compact_class_name(name: str) -> str:
    """The looser key `resolve_subactions` tries when `normalize_class_name` finds nothing: lower case
    with every space and punctuation mark removed, so `HandstandPushups` meets `hand stand pushups`
    (UCF101) and `hurling_sport` meets `hurling (sport)` (Kinetics folders)."""
    return re.sub(r"[\W_]+", "", name.lower())


class KeyIndex:
    """A corpus's keys by `normalize_class_name` and by `compact_class_name`: how a class name finds its entry."""

    def __init__(self, corpus: Mapping[str, object]):
        self.corpus = corpus
        self.by_key: dict[str, list[str]] = {}
        self.by_compact_key: dict[str, list[str]] = {}
        for key in corpus:
            self.by_key.setdefault(normalize_class_name(str(key)), []).append(key)
            self.by_compact_key.setdefault(compact_class_name(str(key)), []).append(key)

    def candidates(self, name: str) -> list[str]:
        """The keys `name` matches: itself, else those equal after `normalize_class_name`, else after
        `compact_class_name` (each a fallback used only when the one before finds nothing)."""
        if name in self.corpus:
            return [name]
        return self.by_key.get(normalize_class_name(str(name))) or self.by_compact_key.get(
            compact_class_name(str(name)), []
        )


def resolve_subactions(corpus: Mapping[str, Sequence[str]], class_names: Sequence[str]) -> list[list[str]]:
    """The three sub-actions of each class in `class_names`, in that order (list of [3] lists of text).

    Each name is looked up exactly first, then by `normalize_class_name`, then by `compact_class_name`
    (each a fallback used only when the one before finds nothing). Raises ValueError listing
    every class that is missing (with the closest corpus keys), ambiguous, or whose entry does not
    hold exactly three non-empty text stages (with the count); it names the corpus file when
    `corpus` came from `load_corpus`.
    """
    if isinstance(class_names, str):
        raise ValueError(f"class_names must be a list of class names, got the single string {class_names!r}")
    index = KeyIndex(corpus)
    by_key = index.by_key

    resolved: list[list[str]] = []
    missing: list[str] = []
    ambiguous: list[str] = []
    wrong_count: list[str] = []
    for name in class_names:
        if name in corpus:
            key = name
        else:
            candidates = index.candidates(name)
            distinct = {tuple(corpus[c]) if isinstance(corpus[c], Sequence) else id(corpus[c]) for c in candidates}
            if not candidates:
                close = difflib.get_close_matches(normalize_class_name(str(name)), list(by_key), n=3, cutoff=0.6)
                hint = f"closest: {', '.join(repr(by_key[c][0]) for c in close)}" if close else "nothing close"
                missing.append(f"{name!r} ({hint})")
                continue
            if len(distinct) > 1:
                ambiguous.append(f"{name!r} matches {', '.join(map(repr, candidates))} with different stages")
                continue
            key = candidates[0]
        stages = corpus[key]
        if isinstance(stages, str) or not isinstance(stages, Sequence):
            wrong_count.append(f"{name!r}: entry is {type(stages).__name__}, not a list of stages")
        elif len(stages) != STAGES_PER_CLASS:
            wrong_count.append(f"{name!r}: {len(stages)} sub-action{'' if len(stages) == 1 else 's'}")
        elif not all(isinstance(stage, str) and stage.strip() for stage in stages):
            wrong_count.append(f"{name!r}: sub-actions must be non-empty text, got {list(stages)!r}")
        else:
            resolved.append(list(stages))

    if missing or ambiguous or wrong_count:
        source = getattr(corpus, "path", None) or "the sub-action corpus"
        sections = []
        for title, items in (
            (f"{len(missing)} class(es) missing", missing),
            (f"{len(ambiguous)} class(es) ambiguous", ambiguous),
            (f"{len(wrong_count)} class(es) without exactly {STAGES_PER_CLASS} sub-actions", wrong_count),
        ):
            if items:
                sections.append(f"{title}:\n" + "\n".join(f"  - {item}" for item in items))
        if missing:
            sections.append(_fill_gaps_hint(getattr(corpus, "path", None)))
        raise ValueError(
            f"{source} does not fit {len(class_names)} class names ({len(corpus)} entries in the corpus); "
            + "\n".join(sections)
        )
    return resolved


def _fill_gaps_hint(path: str | None) -> str:
    """The command that adds missing classes to the corpus file at `path` (a placeholder when it has none)."""
    into = shlex.quote(str(path)) if path else "CORPUS_FILE"
    return (
        f"add the missing classes with: python -m taskadapter_fast.corpus generate --labels SPLIT_FILE --into {into} "
        "(SPLIT_FILE: the split file or a file of class names, one a line; only the missing classes are asked "
        "of the chat endpoint, see --base-url and --model)"
    )


def validate_corpus(corpus: Mapping[str, Sequence[str]], class_names: Sequence[str]) -> None:
    """Checks that every class in `class_names` has exactly three sub-actions; raises as `resolve_subactions`."""
    resolve_subactions(corpus, class_names)
