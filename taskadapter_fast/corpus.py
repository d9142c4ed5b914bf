"""`python -m taskadapter_fast.corpus {generate,fetch}`: make a sub-action corpus file.

`generate` asks an OpenAI-compatible chat endpoint for each label of a labels file (cached per label,
resumable; the work is in `data.corpus_generate`); `fetch` downloads the authors' published file for a
dataset (`data.corpus_fetch`). The file format itself is in `data.corpus`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import Parser, number_at_least, run_cli
from .data.corpus_fetch import DEFAULT_FETCH_URL, PUBLISHED_FILES, SSV2_FULL_WARNING, fetch_corpus
from .data.corpus_generate import INSTRUCTION, cache_path, generate_corpus_file

PROG = "python -m taskadapter_fast.corpus"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description="Sub-action corpus tools (docs/method.md §4.1).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

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


def read_labels(path: str) -> list[str]:
    """The labels of a labels file: one per line, blank lines and repeats left out, in file order."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"labels file {path!r} does not exist")
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
    labels = read_labels(args.labels)
    corpus = generate_corpus_file(
        labels,
        args.out,
        args.base_url,
        args.model,
        args.api_key_env,
        max_retries=args.max_retries,
        timeout=args.timeout,
        concurrency=args.concurrency,
        backoff=args.backoff,
    )
    print(corpus.summary(args.out))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    args = build_parser(prog).parse_args(argv)
    interrupted = "interrupted"
    if args.command == "generate":
        interrupted = f"interrupted; finished labels are kept in {cache_path(args.out)}, run again to resume"
    return run_cli(args, run, interrupted)


if __name__ == "__main__":
    sys.exit(main())
