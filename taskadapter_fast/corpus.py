"""`python -m taskadapter_fast.corpus {generate,fetch}`: make a sub-action corpus file.

`generate` asks an OpenAI-compatible chat endpoint for each label of a labels file or split file (cached
per label, resumable; with `--into`, only for the classes an existing corpus lacks; the work is in
`data.corpus_generate`); `fetch` downloads the authors' published file for a
dataset (`data.corpus_fetch`). The file format itself is in `data.corpus`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import Parser, number_at_least, run_cli
from .data.corpus_fetch import DEFAULT_FETCH_URL, PUBLISHED_FILES, SSV2_FULL_WARNING, fetch_corpus
from .data.corpus_generate import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    INSTRUCTION,
    cache_path,
    fill_corpus_gaps,
    generate_corpus_file,
)
from .data.splits import SplitFormatError, detect_format, read_split

PROG = "python -m taskadapter_fast.corpus"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description="Sub-action corpus tools (docs/method.md §4.1).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    gen = commands.add_parser(
        "generate",
        help="ask an OpenAI-compatible chat endpoint for three stages per label",
        description=f'Asks "{INSTRUCTION}" for every label; answers are cached in <out>.cache.jsonl '
        "(<into>.cache.jsonl with --into), so an interrupted run resumes and a second run asks nothing it already "
        "has. With --into, only the classes the existing corpus lacks are asked for.",
    )
    gen.add_argument(
        "--labels",
        required=True,
        nargs="+",
        metavar="SPLIT_OR_NAMES",
        help="where the class labels come from, one or more files: a split file (any format the splits read: a "
        "folder per class, a manifest, or a list whose first entry reads as a split line, such as "
        "'<frame folder> <num frames> <label id>', '<class>/<id>' or 'train0//<path>'; its class names are used) "
        "or a labels file (any other text file: one class label per line, e.g. a .txt of bare names)",
    )
    gen.add_argument(
        "--class-names",
        help="class names for a split file that lists only class indices or label ids (a names file or JSON)",
    )
    target = gen.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", help="corpus file to write (official YAML; JSON when it ends in .json)")
    target.add_argument(
        "--into",
        metavar="EXISTING",
        help="an existing corpus file: ask only for the labels it lacks (matched as the model's lookup matches "
        "them) and add them to it atomically, its own entries left as they are",
    )
    gen.add_argument(
        "--base-url",
        default=DEFAULT_BASE_URL,
        help="endpoint base URL, without /chat/completions (default: %(default)s)",
    )
    gen.add_argument(
        "--model", default=DEFAULT_MODEL, help="model name sent to the endpoint (default: %(default)s, as in the paper)"
    )
    gen.add_argument(
        "--api-key-env",
        default=DEFAULT_API_KEY_ENV,
        help="environment variable holding the API key, needed unless the URL is loopback (default: %(default)s)",
    )
    gen.add_argument(
        "--max-retries",
        type=number_at_least(0, "--max-retries"),
        default=5,
        help="retries per label (default: %(default)s)",
    )
    gen.add_argument(
        "--timeout",
        type=number_at_least(0.001, "--timeout", float),
        default=60.0,
        help="seconds to wait for the server to connect or send more of its answer (default: %(default)s)",
    )
    gen.add_argument(
        "--concurrency",
        type=number_at_least(1, "--concurrency"),
        default=1,
        help="requests in flight (default: %(default)s)",
    )
    gen.add_argument(
        "--backoff",
        type=number_at_least(0.0, "--backoff", float),
        default=1.0,
        help="first retry wait in seconds, doubled each retry (default: %(default)s)",
    )

    get = commands.add_parser(
        "fetch",
        help="download the authors' published corpus file for a dataset",
        description="Downloads the corpus file the Task-Adapter++ authors published for a dataset. "
        + SSV2_FULL_WARNING.replace("warning: ", "Note: ").format(out="FILE"),
    )
    get.add_argument("--dataset", required=True, choices=sorted(PUBLISHED_FILES))
    get.add_argument("--out", help="where to write it (default: the published file name in the current folder)")
    get.add_argument(
        "--base-url",
        default=DEFAULT_FETCH_URL,
        help="folder URL holding the classes_*.yml files (default: %(default)s)",
    )
    return parser


def read_labels(path: str, class_names: str | None = None) -> list[str]:
    """The labels of a labels file (one per line) or the class names of a split file, each once, in file order.

    A folder, or a file whose first entry `detect_format` reads as a split line, is a split file; anything
    else is a labels file.
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"labels file {path!r} does not exist")
    try:
        detect_format(file)
    except SplitFormatError:
        return _read_labels_file(file, path)
    rows = sorted(read_split(file, class_names=class_names), key=lambda row: (row.split, row.label))
    labels = list(dict.fromkeys(row.class_name for row in rows))
    if all(re.fullmatch(r"(train|val|test)?\d+", label) for label in labels):  # read_split's stand-ins
        raise ValueError(
            f"split file {path!r} gives class ids, not class names ({labels[0]!r}, ...); pass --class-names"
        )
    return labels


def _read_labels_file(file: Path, path: str) -> list[str]:
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"labels file {path!r} is not UTF-8 text (byte {exc.start})") from None
    labels = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not labels:
        raise ValueError(f"labels file {path!r} holds no labels (expected one class label per line)")
    return labels


def run(args: argparse.Namespace) -> int:
    if args.command == "fetch":
        corpus, url, out = fetch_corpus(args.dataset, args.out, args.base_url)
        print(f"wrote {len(corpus)} classes from {url} to {out}")
        return 0
    labels = list(dict.fromkeys(label for path in args.labels for label in read_labels(path, args.class_names)))
    options = {
        "max_retries": args.max_retries,
        "timeout": args.timeout,
        "concurrency": args.concurrency,
        "backoff": args.backoff,
    }
    if args.into:
        added = fill_corpus_gaps(labels, args.into, args.base_url, args.model, args.api_key_env, **options)
        if not added:
            print(f"{args.into} already has all {len(labels)} classes; nothing asked, the file is unchanged")
        else:
            done = added.summary(args.into).replace("wrote", "added", 1)
            print(f"{done}; the other {len(labels) - len(added)} of the {len(labels)} classes were in it")
        return 0
    corpus = generate_corpus_file(labels, args.out, args.base_url, args.model, args.api_key_env, **options)
    print(corpus.summary(args.out))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    interrupted = "interrupted"
    if args.command == "generate":
        cache = cache_path(args.into or args.out)
        interrupted = f"interrupted; finished labels are kept in {cache}, run again to resume"
    return run_cli(args, run, interrupted)


if __name__ == "__main__":
    sys.exit(main())
