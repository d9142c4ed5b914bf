"""Generating a sub-action corpus: asking an OpenAI-compatible chat endpoint for three stages per class label.

`generate_corpus` asks the paper's question (`INSTRUCTION`) for every label, reads the three stages out
of each answer (`parse_stages`) and retries what fails (`http_retry`). Answers are appended to a cache
file (`<out>.cache.jsonl` next to the corpus file) as they arrive, so an interrupted run resumes and a
second run asks nothing it already has. `generate_corpus_file` also writes the corpus file;
`fill_corpus_gaps` asks only for the classes an existing corpus file lacks and adds them to it.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .._atomic import atomic_write_bytes
from .corpus import (
    STAGES_PER_CLASS,
    KeyIndex,
    _corpus_text,
    load_corpus,
    parse_corpus_text,
    save_corpus,
)
from .http_retry import (
    Fatal,
    RequestFailed,
    Retryable,
    Stopped,
    is_loopback,
    opener_for,
    post_json,
    short,
    with_retries,
)

log = logging.getLogger(__name__)

# The paper's instruction (docs/method.md §4.1); {label} is the class label as written in the labels file.
# Where and whom `corpus generate` and `predict --generate-corpus` ask by default (the paper used GPT-4).
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4"
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
INSTRUCTION = "Given an action label {label}, describe three stages of the action."
FORMAT_HINT = (
    "You describe actions for a video dataset. Answer with exactly three lines, one short sentence "
    "per stage in temporal order (beginning, process, end), and nothing else. "
    'A JSON list of three strings, such as ["...", "...", "..."], is also accepted.'
)


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


class GenerationError(RuntimeError):
    """Generating could not start (bad endpoint settings) or left labels without stages.

    corpus: the labels that did get three stages, in label order (cached ones included); failed:
    `{label: reason}`; fatal: why the run stopped early (None when every label was asked); total: the
    number of labels. The message is the one-line summary the command line prints.
    """

    def __init__(
        self,
        message: str,
        corpus: Mapping[str, list[str]] | None = None,
        failed: Mapping[str, str] | None = None,
        fatal: str | None = None,
        total: int = 0,
    ):
        super().__init__(message)
        self.corpus = dict(corpus or {})
        self.failed = dict(failed or {})
        self.fatal = fatal
        self.total = total

    @classmethod
    def summary(
        cls,
        corpus: Mapping[str, list[str]],
        failed: Mapping[str, str],
        fatal: str | None,
        total: int,
        saved_to: Path | None = None,
    ) -> GenerationError:
        """The error for a run that stopped (`fatal`) or had `failed` labels; `saved_to`: where `corpus` went."""
        saved = saved_to is not None and bool(corpus)
        if fatal:
            message = f"stopped: {fatal}" + (
                f"; {len(corpus)} of {total} labels written to {saved_to}" if saved else ""
            )
        else:
            written = f"the other {len(corpus)} written to {saved_to}" if saved else "nothing written"
            names = ", ".join(map(repr, failed))
            message = f"{len(failed)} of {total} labels failed ({names}); {written}; run again to retry them"
        return cls(message, corpus, failed, fatal, total)


class GeneratedCorpus(dict):
    """`{label: [3 stages]}` in label order; `generated`: how many were asked for in this run (the rest were cached)."""

    def __init__(self, entries: Iterable = (), generated: int = 0):
        super().__init__(entries)
        self.generated = generated

    def summary(self, out: str | os.PathLike) -> str:
        """The line that reports the corpus written to `out`."""
        out = Path(out)
        from_cache = len(self) - self.generated
        return (
            f"wrote {len(self)} classes to {out} ({self.generated} generated, {from_cache} from {cache_path(out).name})"
        )


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


def _chat_settings(base_url: str, model: str, api_key_env: str, timeout: float, max_retries: int, backoff: float):
    """Checks the endpoint settings (GenerationError naming the flag) and reads the API key."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise GenerationError(f"--base-url {base_url!r} is not an http(s) URL such as {DEFAULT_BASE_URL}")
    url = urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/chat/completions"))
    api_key = os.environ.get(api_key_env) or None
    if api_key is None and not is_loopback(base_url):
        raise GenerationError(
            f"environment variable {api_key_env} (named by --api-key-env) is not set; it holds the API key"
        )
    return _ChatSettings(url, model, api_key, timeout, max_retries, backoff, opener_for(url))


def _answer_text(body: bytes) -> str:
    """choices[0].message.content of an OpenAI-style chat completion, or Retryable if malformed."""
    try:
        data = json.loads(body)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise Retryable(
            f"malformed response (no choices[0].message.content): {short(body.decode('utf-8', 'replace'))!r}"
        ) from None
    if isinstance(content, list):  # content given as parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise Retryable(f"malformed response: content is {type(content).__name__}")
    return content


def _ask_stages(settings: _ChatSettings, label: str, stop: threading.Event) -> list[str]:
    """Asks for one label until three stages come back (retrying with backoff); returns them."""
    body = {
        "model": settings.model,
        "messages": [
            {"role": "system", "content": FORMAT_HINT},
            {"role": "user", "content": INSTRUCTION.format(label=label)},
        ],
    }
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}

    def attempt() -> list[str]:
        payload = post_json(settings.url, body, headers, settings.timeout, settings.opener, settings.answered)
        answer = _answer_text(payload)
        stages = parse_stages(answer)
        if not stages:
            raise Retryable(f"answer without three stages: {short(answer)!r}")
        return stages

    return with_retries(attempt, settings.max_retries, settings.backoff, stop, settings.url, settings.answered)


def cache_path(out: str | os.PathLike) -> Path:
    """The answer cache kept beside the corpus file `out`: `<out>.cache.jsonl`."""
    out = Path(out)
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


def _ask_all(
    settings: _ChatSettings, todo: list[str], concurrency: int, keep: Callable[[str, list[str]], None], progress
) -> tuple[dict[str, str], str | None]:
    """Asks for every label in `todo` from `concurrency` threads; `keep(label, stages)` takes each answer here.

    Returns the labels that failed (`{label: reason}`, each also reported on stderr) and the reason the
    run stopped early (a Fatal error: the labels not yet asked stay undone), or None.
    """
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
                if isinstance(exc, Fatal):
                    stop.set()  # before the next label is taken
            results.put((label, outcome))

    # Daemon threads: an interrupted run exits at once instead of waiting for requests in flight.
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, len(todo)))]
    failed: dict[str, str] = {}
    fatal: str | None = None
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
            if isinstance(outcome, Stopped):
                continue
            if isinstance(outcome, Fatal):
                fatal = fatal or str(outcome)
                stop.set()
                continue
            if isinstance(outcome, RequestFailed):
                failed[label] = str(outcome)
                progress.write(f"failed {label!r}: {outcome}", file=sys.stderr)
                continue
            if isinstance(outcome, BaseException):
                raise outcome
            keep(label, outcome)
    finally:
        stop.set()
    return failed, fatal


def generate_corpus(
    labels: Iterable[str],
    base_url: str,
    model: str,
    api_key_env: str,
    *,
    cache: str | os.PathLike | None = None,
    max_retries: int = 5,
    timeout: float = 60.0,
    concurrency: int = 1,
    backoff: float = 1.0,
    progress: bool = True,
) -> GeneratedCorpus:
    """Three stages for every label, asked of the chat endpoint at `base_url` (`.../v1`); returns them in label order.

    api_key_env: the environment variable holding the API key (needed unless the endpoint is on this
    machine). cache: a JSON-lines file of earlier answers; only labels not in it are asked, and every
    new answer is appended at once. Status lines (and, with `progress`, a progress bar on a terminal) go
    to stderr. Raises GenerationError for bad settings, or when labels failed or the endpoint refused
    (wrong key, model or URL) or could not be reached; its `corpus` then holds the labels that did get
    stages. KeyboardInterrupt leaves the finished answers in the cache.
    """
    from tqdm import tqdm

    settings = _chat_settings(base_url, model, api_key_env, timeout, max_retries, backoff)
    labels = list(dict.fromkeys(labels))
    cache_file = None if cache is None else Path(cache)
    cached: dict[str, list[str]] = {}
    if cache_file is not None:
        cached, unreadable = _read_cache(cache_file)
        if unreadable:
            print(
                f"note: skipped {unreadable} unreadable line(s) in {cache_file} (an interrupted write)", file=sys.stderr
            )
    todo = [label for label in labels if label not in cached]
    from_cache = len(labels) - len(todo)
    # disable=None: a bar only when stderr is a terminal
    bar = tqdm(
        total=len(labels), initial=from_cache, unit="label", desc="sub-actions", disable=None if progress else True
    )
    handle = _open_cache_for_append(cache_file) if todo and cache_file is not None else None

    def keep(label: str, stages: list[str]) -> None:
        cached[label] = stages
        if handle is not None:
            handle.write(json.dumps({"label": label, "stages": stages, "model": model}, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        bar.update(1)

    try:
        failed, fatal = _ask_all(settings, todo, concurrency, keep, bar)
    finally:
        bar.close()
        if handle is not None:
            handle.close()
    entries = [(label, cached[label]) for label in labels if label in cached]
    corpus = GeneratedCorpus(entries, generated=len(entries) - from_cache)
    if fatal or failed:
        raise GenerationError.summary(dict(corpus), failed, fatal, len(labels))
    return corpus


def generate_corpus_file(
    labels: Iterable[str], out: str | os.PathLike, base_url: str, model: str, api_key_env: str, **options
) -> GeneratedCorpus:
    """`generate_corpus` with its cache beside `out` (`cache_path`), then writes the corpus file `out`.

    When labels failed, the ones that did get stages are still written, and the GenerationError says so.
    options: the keywords of `generate_corpus` after `api_key_env`, less `cache`.
    """
    out = Path(out)
    try:
        corpus = generate_corpus(labels, base_url, model, api_key_env, cache=cache_path(out), **options)
    except GenerationError as error:
        if not error.corpus:
            raise
        save_corpus(error.corpus, out)
        raise GenerationError.summary(error.corpus, error.failed, error.fatal, error.total, saved_to=out) from None
    save_corpus(corpus, out)
    return corpus


# ---------------------------------------------------------------------------------- filling a corpus's gaps


def lacking_classes(corpus: Mapping[str, object], names: Iterable[str]) -> list[str]:
    """The names (in order, each once) that `resolve_subactions` finds no entry for in `corpus`: not a key,
    nor a key's `normalize_class_name`, nor its `compact_class_name`."""
    index = KeyIndex(corpus)
    return [name for name in dict.fromkeys(names) if not index.candidates(name)]


def _appended(existing: bytes, added: Mapping[str, list[str]], json_format: bool) -> bytes:
    """`existing` (a corpus file's bytes) with the `added` entries after its own, its own bytes kept as they are."""
    text = existing.decode("utf-8-sig")
    newline = "\r\n" if "\r\n" in text else "\n"
    if json_format:  # the entries go before the closing brace, flat lists where the file has them
        flat = isinstance(next(iter(json.loads(text).values())), list)
        entries = {name: stages if flat else {"label": name, "sub_act_en_li": stages} for name, stages in added.items()}
        inner = json.dumps(entries, ensure_ascii=False, indent=2)[1:-1].strip("\n").replace("\n", newline)
        end = text.rstrip().rfind("}")
        text = text[:end].rstrip() + "," + newline + inner + newline + text[end:]
    else:  # YAML: new blocks after the last one, a blank line between, as the official files have
        ending = "" if text.endswith("\n") else newline
        text += ending + newline + _corpus_text(added, {}, json_format=False).replace("\n", newline)
    bom = b"\xef\xbb\xbf" if existing.startswith(b"\xef\xbb\xbf") else b""
    return bom + text.encode("utf-8")


def add_to_corpus_file(path: str | os.PathLike, added: Mapping[str, list[str]]) -> None:
    """Adds the `added` entries to the corpus file `path`, atomically; its own entries stay as they are.

    The file's bytes are kept and the new entries written after them; where its layout does not allow
    that (checked by reading the result back), it is rewritten whole with the same keys, labels and stages.
    """
    path = Path(path)
    json_format = path.suffix.lower() == ".json"
    existing = path.read_bytes()
    corpus, labels, _ = parse_corpus_text(existing.decode("utf-8-sig"), str(path), json_format)
    expected = {**corpus, **{name: list(stages) for name, stages in added.items()}}
    try:
        data = _appended(existing, added, json_format)
        reread, reread_labels, _ = parse_corpus_text(data.decode("utf-8-sig"), str(path), json_format)
        kept = list(reread.items()) == list(expected.items()) and all(
            reread_labels[name] == labels.get(name, name) for name in corpus
        )
    except (ValueError, StopIteration, AttributeError):  # a layout the new entries cannot simply follow
        kept = False
    if kept:
        atomic_write_bytes(path, data, fsync=True)
        return
    log.warning("%s: its layout does not take entries appended; rewritten whole (same keys, labels, stages)", path)
    save_corpus(expected, path, labels)


def fill_corpus_gaps(
    labels: Iterable[str], into: str | os.PathLike, base_url: str, model: str, api_key_env: str, **options
) -> GeneratedCorpus:
    """Asks the endpoint only for the `labels` the corpus file `into` lacks (`lacking_classes`) and adds them to it.

    Returns the entries added (none when the corpus already has every label: nothing is asked and the
    file is left alone). The answer cache is `cache_path(into)`. When labels failed, the ones that got
    stages are still added, and the GenerationError says so. options: as for `generate_corpus_file`.
    """
    into = Path(into)
    if not into.is_file():
        raise FileNotFoundError(f"--into {str(into)!r} is not an existing corpus file (use --out to make a new one)")
    todo = lacking_classes(load_corpus(into), labels)
    if not todo:
        return GeneratedCorpus()
    try:
        added = generate_corpus(todo, base_url, model, api_key_env, cache=cache_path(into), **options)
    except GenerationError as error:
        if not error.corpus:
            raise
        add_to_corpus_file(into, error.corpus)
        raise GenerationError.summary(error.corpus, error.failed, error.fatal, error.total, saved_to=into) from None
    add_to_corpus_file(into, added)
    return added
