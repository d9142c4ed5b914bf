"""Sub-action corpus (SPEC §4): three stage descriptions per class, loaded, saved, generated, fetched.

The official file format is YAML, one entry per class:

    <class name>:
      label: <display label>
      sub_act_en_li: ['<stage 1>', '<stage 2>', '<stage 3>']

A JSON file (name ending in `.json`) may hold the same nested form or a flat `{name: [s1, s2, s3]}`.
In memory a corpus is `{class name: [stage, ...]}`. Loading accepts any number of stages per entry
(published files are not always tidy); `resolve_subactions` / `validate_corpus` insist on three for
the classes actually used.

`main` is the `python -m taskadapter_fast.corpus` command line: `generate` asks an
OpenAI-compatible chat endpoint for each label (cached per label, resumable), `fetch` downloads the
authors' published files.
"""

from __future__ import annotations

import argparse
import difflib
import email.utils
import http.client
import ipaddress
import json
import os
import queue
import random
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .._atomic import atomic_write_bytes

STAGES_PER_CLASS = 3
# The paper's instruction (SPEC §4); {label} is the class label as written in the labels file.
INSTRUCTION = "Given an action label {label}, describe three stages of the action."
FORMAT_HINT = (
    "You describe actions for a video dataset. Answer with exactly three lines, one short sentence "
    "per stage in temporal order (beginning, process, end), and nothing else. "
    'A JSON list of three strings, such as ["...", "...", "..."], is also accepted.'
)
DEFAULT_FETCH_URL = "https://raw.githubusercontent.com/Jaulin-Bage/Task-Adapter-pp/main/corpus/"
PUBLISHED_FILES = {
    "ssv2_small": "classes_somethingcmn.yml",
    "ssv2_full": "classes_somethingotam.yml",
    "kinetics": "classes_kinetics.yml",
    "hmdb51": "classes_hmdb51.yml",
    "ucf101": "classes_ucf101.yml",
}
SSV2_FULL_WARNING = (
    "warning: the authors' SSv2-Full (OTAM) corpus file classes_somethingotam.yml is a byte copy of their "
    "SSv2-Small (CMN) file, although the two class sets differ, so most SSv2-Full classes have no description "
    "in it (or the wrong one); make a corpus for the SSv2-Full classes with "
    "`python -m taskadapter_fast.corpus generate --labels FILE --out FILE ...`"
)
_FETCH_TIMEOUT_S = 60.0
_MAX_BACKOFF_S = 60.0
_MAX_RETRY_AFTER_S = 300.0
_RETRY_STATUS = frozenset({408, 429})  # plus every 5xx
_FATAL_STATUS = frozenset({401, 403, 404})  # wrong key, model or URL: every label would fail the same way


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


def _parse_corpus_text(text: str, source: str, json_format: bool) -> tuple[Corpus, dict[str, str], str | None]:
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
    return _parse_corpus_text(text, str(path), json_format=path.suffix.lower() == ".json")


def load_corpus(path: str | os.PathLike) -> dict[str, list[str]]:
    """Reads a corpus file: the official YAML format, or JSON when the name ends in `.json`.

    Returns `{class name: [stage 1, stage 2, ...]}` in file order (a `Corpus`, a dict that also
    remembers `path`). Raises FileNotFoundError for a missing file and ValueError naming the file and
    every bad entry (unparsable file, an entry without `sub_act_en_li`, stages that are not
    non-empty text). The number of stages is not checked here; see `resolve_subactions`.
    Keys repeated in the file are reported with a UserWarning and the last one wins, as in PyYAML.
    """
    corpus, _, note = _read_corpus_file(path)
    if note:
        warnings.warn(note, UserWarning, stacklevel=2)
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
    reread, reread_labels, _ = _parse_corpus_text(text, str(path), json_format)
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
    by_key: dict[str, list[str]] = {}
    by_compact_key: dict[str, list[str]] = {}
    for key in corpus:
        by_key.setdefault(normalize_class_name(str(key)), []).append(key)
        by_compact_key.setdefault(compact_class_name(str(key)), []).append(key)

    resolved: list[list[str]] = []
    missing: list[str] = []
    ambiguous: list[str] = []
    wrong_count: list[str] = []
    for name in class_names:
        if name in corpus:
            key = name
        else:
            candidates = by_key.get(normalize_class_name(str(name))) or by_compact_key.get(
                compact_class_name(str(name)), []
            )
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
        raise ValueError(
            f"{source} does not fit {len(class_names)} class names ({len(corpus)} entries in the corpus); "
            + "\n".join(sections)
        )
    return resolved


def validate_corpus(corpus: Mapping[str, Sequence[str]], class_names: Sequence[str]) -> None:
    """Checks that every class in `class_names` has exactly three sub-actions; raises as `resolve_subactions`."""
    resolve_subactions(corpus, class_names)


# ------------------------------------------------------------------------------ parsing an LLM answer

_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}
_BULLET_RE = re.compile(r"^[-*\u2022\u00b7\u2013\u2014+>]+\s*")
_NUMBER_RE = re.compile(r"^\(?(?:\d{1,2}|[a-c])\s*[.):\]](?!\d)\s*", re.IGNORECASE)
_STAGE_RE = re.compile(
    r"^(?:stage|step|phase|part)\s*(?:\d{1,2}|one|two|three|first|second|third|i{1,3})?\s*(?:\([^)]*\))?"
    r"\s*(?:[:.)\-\u2013\u2014]\s*|$)",
    re.IGNORECASE,
)
_PHASE_RE = re.compile(
    r"^(?:the\s+)?(?:beginning|begin|start|starting|initial|opening|preparation|first|second|third|middle|process|"
    r"during|progress|ongoing|action|execution|development|climax|main|end|ending|final|finish|finishing|conclusion|"
    r"completion|follow[- ]through|last)"
    r"(?:\s+(?:stage|phase|step|part))?\s*(?:\([^)]*\))?\s*(?::\s*|[\-\u2013\u2014]\s+|$)",
    re.IGNORECASE,
)


def _strip_markers(line: str) -> tuple[str, bool]:
    """Removes bullets, numbering and 'Stage 1:' / 'Beginning:' prefixes; says whether there were any."""
    marked = False
    while True:
        for pattern in (_BULLET_RE, _NUMBER_RE, _STAGE_RE, _PHASE_RE):
            match = pattern.match(line)
            if match and match.end() > 0:
                line = line[match.end() :].lstrip()
                marked = True
                break
        else:
            return line, marked


def _clean(text: str) -> str:
    text = text.strip().rstrip(",").strip()
    while len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return " ".join(text.split())


def _stages_from_json(value: object) -> list[str] | None:
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) == 1:
            return _stages_from_json(lists[0])
        if len(value) == STAGES_PER_CLASS and all(isinstance(v, str) for v in value.values()):
            return _stages_from_json(list(value.values()))
        return None
    if not isinstance(value, list) or len(value) != STAGES_PER_CLASS:
        return None
    stages = []
    for item in value:
        if isinstance(item, dict):
            item = next(
                (item[k] for k in ("description", "text", "stage", "content") if isinstance(item.get(k), str)), None
            )
        if not isinstance(item, str):
            return None
        stages.append(_clean(_strip_markers(_clean(item))[0]))
    return stages if all(stages) else None


def parse_stages(answer: str) -> list[str] | None:
    """Three stage descriptions from a chat answer, or None when it does not hold exactly three.

    Accepts a JSON list (or an object holding one), numbered lines ("1. ..."), labelled lines
    ("Stage 1: ...", "Beginning: ..."), bullet points or three plain lines; quotes, numbering,
    Markdown emphasis and code fences are stripped, preambles such as "Here are the stages:" ignored.
    """
    text = "\n".join(line for line in answer.strip().splitlines() if not line.strip().startswith("```"))
    for start, end in (("[", "]"), ("{", "}")):
        first, last = text.find(start), text.rfind(end)
        if first != -1 and last > first:
            try:
                stages = _stages_from_json(json.loads(text[first : last + 1]))
            except json.JSONDecodeError:
                continue
            if stages:
                return stages

    items: list[tuple[bool, str]] = []
    for raw in text.splitlines():
        line = raw.replace("**", "").replace("__", "").strip()
        if line:
            content, marked = _strip_markers(line)
            items.append((marked, _clean(content)))

    stages: list[str] = []
    if any(marked for marked, _ in items):
        awaiting_text = False  # a marker alone on its line ("Stage 1:") heads the next line
        for marked, content in items:
            if marked and content:
                stages.append(content)
                awaiting_text = False
            elif marked:
                awaiting_text = True
            elif awaiting_text and content:
                stages.append(content)
                awaiting_text = False
            elif stages and content[:1].islower() and not stages[-1].endswith((".", "!", "?")):
                stages[-1] = f"{stages[-1]} {content}"  # a sentence wrapped onto the next line
            # other unmarked lines are preambles or remarks around the list
    else:
        stages = [content for _, content in items if content]
        if len(stages) > STAGES_PER_CLASS:
            stages = [content for content in stages if not content.endswith(":")]
    return stages if len(stages) == STAGES_PER_CLASS and all(stages) else None


# ------------------------------------------------------------------------------------------ generating


class CommandError(Exception):
    """A user-facing failure of the command line; the message is printed as one line."""


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None, connection: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.connection = connection


class _LabelFailed(Exception):
    pass


class _Fatal(Exception):
    pass


class _Stopped(Exception):
    pass


@dataclass(frozen=True)
class _ChatSettings:
    url: str
    model: str
    api_key: str | None
    timeout: float
    max_retries: int
    backoff: float
    opener: urllib.request.OpenerDirector
    answered: threading.Event = field(default_factory=threading.Event)  # the server has answered this run


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _opener(url: str) -> urllib.request.OpenerDirector:
    # A proxy from the environment must not catch requests meant for this machine.
    return (
        urllib.request.build_opener(urllib.request.ProxyHandler({}))
        if _is_loopback(url)
        else urllib.request.build_opener()
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    if seconds != seconds:  # "NaN" parses as a float: no usable hint, so the usual backoff
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _answer_text(body: bytes) -> str:
    """choices[0].message.content of an OpenAI-style chat completion, or _Retryable if malformed."""
    try:
        data = json.loads(body)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Retryable(
            f"malformed response (no choices[0].message.content): {_short(body.decode('utf-8', 'replace'))!r}"
        ) from None
    if isinstance(content, list):  # content given as parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise _Retryable(f"malformed response: content is {type(content).__name__}")
    return content


def _chat_once(settings: _ChatSettings, label: str) -> str:
    body = {
        "model": settings.model,
        "messages": [
            {"role": "system", "content": FORMAT_HINT},
            {"role": "user", "content": INSTRUCTION.format(label=label)},
        ],
    }
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    request = urllib.request.Request(
        settings.url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
    )
    try:
        with settings.opener.open(request, timeout=settings.timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        settings.answered.set()
        detail = _short(exc.read().decode("utf-8", "replace")) if exc.fp is not None else ""
        message = f"HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
        if exc.code in _RETRY_STATUS or exc.code >= 500:
            raise _Retryable(message, _retry_after(exc.headers.get("Retry-After"))) from None
        if exc.code in _FATAL_STATUS:
            raise _Fatal(f"{message} from {settings.url}") from None
        raise _LabelFailed(message) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, TimeoutError):
            reason = f"no answer within --timeout {settings.timeout:g} s"
        raise _Retryable(f"connection error: {reason}", connection=True) from None
    settings.answered.set()
    return _answer_text(payload)


def _ask_stages(settings: _ChatSettings, label: str, stop: threading.Event) -> list[str]:
    """Asks for one label until three stages come back (retrying with backoff); returns them."""
    attempts = settings.max_retries + 1
    last_problem = ""
    only_connection_errors = True
    for attempt in range(attempts):
        if stop.is_set():
            raise _Stopped()
        retry_after = None
        try:
            answer = _chat_once(settings, label)
        except _Retryable as exc:
            last_problem, retry_after = str(exc), exc.retry_after
            only_connection_errors &= exc.connection
        else:
            stages = parse_stages(answer)
            if stages:
                return stages
            last_problem = f"answer without three stages: {_short(answer)!r}"
            only_connection_errors = False
        if attempt + 1 < attempts:
            delay = retry_after
            if delay is None:
                delay = min(settings.backoff * 2**attempt, _MAX_BACKOFF_S) * random.uniform(1.0, 1.25)
            if stop.wait(delay):
                raise _Stopped()
    if only_connection_errors and not settings.answered.is_set():  # once it has answered, one slow label is no reason
        raise _Fatal(f"cannot reach {settings.url} after {attempts} attempts: {last_problem}")
    raise _LabelFailed(f"{last_problem} (after {attempts} attempts)")


def _read_labels(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise CommandError(f"labels file {path!r} does not exist")
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise CommandError(f"labels file {path!r} is not UTF-8 text (byte {exc.start})") from None
    labels = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not labels:
        raise CommandError(f"labels file {path!r} holds no labels (expected one class label per line)")
    return labels


def _cache_path(out: Path) -> Path:
    return out.with_name(out.name + ".cache.jsonl")


def _read_cache(path: Path) -> tuple[dict[str, list[str]], int]:
    """Cached answers `{label: stages}` and the number of unreadable lines (an interrupted write)."""
    cached: dict[str, list[str]] = {}
    unreadable = 0
    if not path.exists():
        return cached, unreadable
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            label, stages = record["label"], record["stages"]
        except (ValueError, KeyError, TypeError):
            unreadable += 1
            continue
        valid = isinstance(stages, list) and len(stages) == STAGES_PER_CLASS
        if isinstance(label, str) and valid and all(isinstance(s, str) and s.strip() for s in stages):
            cached[label] = stages
        else:
            unreadable += 1
    return cached, unreadable


def _open_cache_for_append(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+", encoding="utf-8")
    handle.seek(0, os.SEEK_END)
    if handle.tell() > 0:
        handle.seek(handle.tell() - 1)
        if handle.read(1) != "\n":  # the last line was cut short: start a fresh one
            handle.write("\n")
    return handle


def generate(
    labels_file: str,
    out: str,
    base_url: str,
    model: str,
    api_key_env: str,
    max_retries: int = 5,
    timeout: float = 60.0,
    concurrency: int = 1,
    backoff: float = 1.0,
) -> int:
    """The `generate` command; returns the exit status (0 when every label got three stages)."""
    from tqdm import tqdm

    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CommandError(f"--base-url {base_url!r} is not an http(s) URL such as https://api.openai.com/v1")
    url = urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/chat/completions"))
    api_key = os.environ.get(api_key_env) or None
    if api_key is None and not _is_loopback(base_url):
        raise CommandError(
            f"environment variable {api_key_env} (named by --api-key-env) is not set; it holds the API key"
        )
    labels = _read_labels(labels_file)
    out_path = Path(out)
    cache_path = _cache_path(out_path)
    cached, unreadable = _read_cache(cache_path)
    if unreadable:
        print(f"note: skipped {unreadable} unreadable line(s) in {cache_path} (an interrupted write)", file=sys.stderr)
    todo = [label for label in labels if label not in cached]
    settings = _ChatSettings(url, model, api_key, timeout, max_retries, backoff, _opener(url))

    stop = threading.Event()
    tasks: queue.SimpleQueue = queue.SimpleQueue()
    results: queue.SimpleQueue = queue.SimpleQueue()
    for label in todo:
        tasks.put(label)

    def worker() -> None:
        while not stop.is_set():
            try:
                label = tasks.get_nowait()
            except queue.Empty:
                return
            try:
                outcome: list[str] | BaseException = _ask_stages(settings, label, stop)
            except BaseException as exc:  # handed to the main thread, which decides
                outcome = exc
                if isinstance(exc, _Fatal):
                    stop.set()  # before the next label is taken
            results.put((label, outcome))

    # Daemon threads: an interrupted run exits at once instead of waiting for requests in flight.
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, len(todo)))]
    failed: dict[str, str] = {}
    fatal: str | None = None
    generated = 0
    progress = tqdm(total=len(labels), initial=len(labels) - len(todo), unit="label", desc="sub-actions", disable=None)
    cache = _open_cache_for_append(cache_path) if todo else None
    try:
        for thread in threads:
            thread.start()
        pending = len(todo)
        while pending:
            try:
                label, outcome = results.get(timeout=0.1)
            except queue.Empty:
                if any(thread.is_alive() for thread in threads) or not results.empty():
                    continue
                break  # stopped early: the labels never taken stay undone
            pending -= 1
            if isinstance(outcome, _Stopped):
                continue
            if isinstance(outcome, _Fatal):
                fatal = fatal or str(outcome)
                stop.set()
                continue
            if isinstance(outcome, _LabelFailed):
                failed[label] = str(outcome)
                progress.write(f"failed {label!r}: {outcome}", file=sys.stderr)
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            cached[label] = outcome
            generated += 1
            record = {"label": label, "stages": outcome, "model": model}
            cache.write(json.dumps(record, ensure_ascii=False) + "\n")
            cache.flush()
            os.fsync(cache.fileno())
            progress.update(1)
    except KeyboardInterrupt:
        progress.write(
            f"error: interrupted; finished labels are kept in {cache_path}, run again to resume", file=sys.stderr
        )
        return 130
    finally:
        stop.set()
        progress.close()
        if cache is not None:
            cache.close()

    corpus = {label: cached[label] for label in labels if label in cached}
    if corpus:
        save_corpus(corpus, out_path)
    from_cache = len(corpus) - generated
    if fatal:
        raise CommandError(
            f"stopped: {fatal}; {len(corpus)} of {len(labels)} labels written to {out_path}"
            if corpus
            else f"stopped: {fatal}"
        )
    if failed:
        names = ", ".join(map(repr, failed))
        written = f"the other {len(corpus)} written to {out_path}" if corpus else "nothing written"
        print(
            f"error: {len(failed)} of {len(labels)} labels failed ({names}); {written}; run again to retry them",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {len(corpus)} classes to {out_path} ({generated} generated, {from_cache} from {cache_path.name})")
    return 0


# -------------------------------------------------------------------------------------------- fetching


def fetch(dataset: str, out: str | None = None, base_url: str = DEFAULT_FETCH_URL) -> int:
    """The `fetch` command: downloads the authors' corpus file for `dataset`; returns the exit status."""
    if dataset not in PUBLISHED_FILES:
        raise CommandError(f"unknown dataset {dataset!r}; expected one of {', '.join(PUBLISHED_FILES)}")
    filename = PUBLISHED_FILES[dataset]
    if dataset == "ssv2_full":
        print(SSV2_FULL_WARNING, file=sys.stderr)
    url = base_url.rstrip("/") + "/" + filename
    advice = (
        "pass --base-url with a reachable copy, or make the corpus with `python -m taskadapter_fast.corpus generate`"
    )
    if urllib.parse.urlsplit(url).scheme not in ("http", "https", "file"):
        raise CommandError(f"--base-url {base_url!r} is not an http(s) or file URL")
    try:
        with _opener(url).open(url, timeout=_FETCH_TIMEOUT_S) as response:
            data = response.read()
    except urllib.error.HTTPError as exc:
        raise CommandError(f"could not download {url}: HTTP {exc.code} {exc.reason}; {advice}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise CommandError(f"could not download {url}: {getattr(exc, 'reason', None) or exc}; {advice}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(f"{url} is not UTF-8 text; not a corpus file") from None
    corpus, labels, note = _parse_corpus_text(text, url, json_format=url.lower().endswith(".json"))
    if note:
        print(f"note: {note}", file=sys.stderr)
    out_path = Path(out) if out else Path(filename)
    if out_path.suffix.lower() == ".json":
        save_corpus(corpus, out_path, labels)
    else:
        atomic_write_bytes(out_path, data, fsync=True)
    print(f"wrote {len(corpus)} classes from {url} to {out_path}")
    return 0


# ---------------------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _number(kind, minimum, name):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be at least {minimum}, got {text!r}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m taskadapter_fast.corpus", description="Sub-action corpus tools (SPEC §4).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = commands.add_parser(
        "generate",
        help="ask an OpenAI-compatible chat endpoint for three stages per label",
        description=f'Asks "{INSTRUCTION}" for every label; answers are cached in <out>.cache.jsonl, so an '
        "interrupted run resumes and a second run asks nothing it already has.",
    )
    gen.add_argument("--labels", required=True, help="text file with one class label per line")
    gen.add_argument("--out", required=True, help="corpus file to write (official YAML; JSON when it ends in .json)")
    gen.add_argument(
        "--base-url",
        default="https://api.openai.com/v1",
        help="endpoint base URL, without /chat/completions (default: %(default)s)",
    )
    gen.add_argument(
        "--model", default="gpt-4", help="model name sent to the endpoint (default: %(default)s, as in the paper)"
    )
    gen.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key, needed unless the URL is loopback (default: %(default)s)",
    )
    gen.add_argument(
        "--max-retries",
        type=_number(int, 0, "--max-retries"),
        default=5,
        help="retries per label (default: %(default)s)",
    )
    gen.add_argument(
        "--timeout",
        type=_number(float, 0.001, "--timeout"),
        default=60.0,
        help="seconds to wait for the server to connect or send more of its answer (default: %(default)s)",
    )
    gen.add_argument(
        "--concurrency",
        type=_number(int, 1, "--concurrency"),
        default=1,
        help="requests in flight (default: %(default)s)",
    )
    gen.add_argument(
        "--backoff",
        type=_number(float, 0.0, "--backoff"),
        default=1.0,
        help="first retry wait in seconds, doubled each retry (default: %(default)s)",
    )

    get = commands.add_parser(
        "fetch",
        help="download the authors' published corpus file for a dataset",
        description="Downloads the corpus file the Task-Adapter++ authors published for a dataset. "
        + SSV2_FULL_WARNING.replace("warning: ", "Note: "),
    )
    get.add_argument("--dataset", required=True, choices=sorted(PUBLISHED_FILES))
    get.add_argument("--out", help="where to write it (default: the published file name in the current folder)")
    get.add_argument(
        "--base-url",
        default=DEFAULT_FETCH_URL,
        help="folder URL holding the classes_*.yml files (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            return generate(
                args.labels,
                args.out,
                args.base_url,
                args.model,
                args.api_key_env,
                max_retries=args.max_retries,
                timeout=args.timeout,
                concurrency=args.concurrency,
                backoff=args.backoff,
            )
        return fetch(args.dataset, args.out, args.base_url)
    except (CommandError, ValueError, OSError) as exc:
        print("error: " + "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
