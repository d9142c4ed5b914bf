"""`python -m taskadapter_fast.predict`: classify videos against a few examples of your own classes.

    python -m taskadapter_fast.predict --checkpoint best.safetensors --support my_classes/ \\
        --corpus my_corpus.yaml clip1.mp4 clip2.webm
    python -m taskadapter_fast.predict --checkpoint best.safetensors --support my_classes/ \\
        --generate-corpus --base-url https://api.openai.com/v1 clip.mp4 --json

``--support DIR`` holds one folder per class (its name is the class name) with a few example videos
(video files or JPEG frame folders). Every class uses the same number of shots K: the smallest
class's count (extra examples, by name order, are left out with a warning). The sub-action corpus
(three stages per class) comes from ``--corpus FILE`` or is generated with ``--generate-corpus``
by asking an OpenAI-compatible chat endpoint (see ``python -m taskadapter_fast.corpus generate``;
answers are cached, so a second run asks nothing).

Each query is classified on its own by default (a query set of one: the prediction for a video
does not depend on which other videos are passed); ``--transductive`` encodes all queries as one
set, as in episodic evaluation. Scores are the model's P ⊙ Ṗ per class; probabilities are
softmax(logit_scale · score).

A folder given as a query stands for its video files and frame folders (by name). Queries are
decoded a few at a time (``--batch-size``), the next batch while the model encodes this one, so
memory does not grow with their number; each result is printed as soon as it is ready (``--json``:
one JSON object per line). A query that cannot be read (corrupt, unsupported codec) gets a row with
its ``error`` and the others are classified; the exit status is then 1. A path that does not exist
is refused before anything loads (most likely a typo).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .cli import (
    Parser,
    UsageError,
    add_explain_arguments,
    explain_requested,
    load_model,
    number_at_least,
    resolve_device,
    run_cli,
)
from .data.corpus_generate import DEFAULT_API_KEY_ENV, DEFAULT_BASE_URL, DEFAULT_MODEL
from .inference import check_queries, classify, support_rows


def format_result(result: Mapping[str, Any]) -> str:
    """One query's lines of the table: the predicted class, then every class by score (or why it was not read)."""
    if "error" in result:
        return f"{result['query']}  ->  error: {result['error']}"
    names = sorted(result["scores"], key=lambda name: -result["scores"][name])
    width = max(len("class"), *(len(name) for name in names))
    lines = [f"{result['query']}  ->  {result['predicted']}", f"  {'class':<{width}}  {'score':>8}  {'prob':>7}"]
    for name in names:
        lines.append(f"  {name:<{width}}  {result['scores'][name]:>8.4f}  {100 * result['probabilities'][name]:>6.2f}%")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ corpus
def generate_corpus(class_names: Sequence[str], out: str | os.PathLike, base_url: str, model: str, api_key_env: str):
    """Generate (or complete) a sub-action corpus for `class_names` at `out`; returns it.

    Its progress and status lines go to stderr, so stdout stays the predictions.
    """
    from .data.corpus import load_corpus
    from .data.corpus_generate import GenerationError, fill_corpus_gaps, generate_corpus_file

    out = Path(out)
    # An existing corpus is completed in place (its entries kept; nothing asked when it covers every class).
    write = fill_corpus_gaps if out.is_file() else generate_corpus_file
    try:
        corpus = write(class_names, out, base_url, model, api_key_env)
    except GenerationError as error:
        if not error.failed or error.fatal:  # bad settings, or the endpoint refused or is out of reach
            raise RuntimeError(f"--generate-corpus: {error}") from None
        print(f"error: {error}", file=sys.stderr)
        raise RuntimeError(
            f"--generate-corpus: not every class got its sub-actions (see above); {out} is incomplete"
        ) from None
    print(corpus.summary(out), file=sys.stderr)
    return load_corpus(out)


# ------------------------------------------------------------------------------------------------ command line
def build_parser(prog: str = "python -m taskadapter_fast.predict") -> argparse.ArgumentParser:
    from .data.decode import VIDEO_EXTENSIONS

    parser = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "queries",
        nargs="+",
        metavar="VIDEO",
        help=f"query video files ({'/'.join(VIDEO_EXTENSIONS)}) or JPEG frame folders; a folder of them stands "
        "for its videos, by name (not its subfolders' contents)",
    )
    parser.add_argument("--checkpoint", help="our adapter checkpoint (.safetensors) or an official one (.pth)")
    parser.add_argument("--preset", help="model preset; needed for official checkpoints")
    parser.add_argument(
        "--support",
        required=True,
        metavar="DIR",
        help=f"a folder per class (named as the class) of example videos ({'/'.join(VIDEO_EXTENSIONS)}) "
        "or JPEG frame folders (img_00001.jpg, ...)",
    )
    parser.add_argument("--corpus", metavar="FILE", help="sub-action corpus; with --generate-corpus: where to write it")
    parser.add_argument(
        "--generate-corpus", action="store_true", help="ask a chat endpoint for the classes' sub-actions"
    )
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="chat endpoint for --generate-corpus")
    parser.add_argument(
        "--llm-model", default=DEFAULT_MODEL, help="model name for --generate-corpus (default: %(default)s)"
    )
    parser.add_argument("--api-key-env", default=DEFAULT_API_KEY_ENV, help="variable holding the endpoint's API key")
    parser.add_argument(
        "--transductive",
        action="store_true",
        help="score all queries as one set; they are all decoded and held in memory before the first result",
    )
    parser.add_argument(
        "--batch-size",
        type=number_at_least(1, "--batch-size"),
        default=8,
        metavar="N",
        help="queries decoded at a time, the next batch while this one is classified (default: 8)",
    )
    add_explain_arguments(parser, "each prediction")
    parser.add_argument("--json", action="store_true", help="JSON lines (an object per query) instead of a table")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--decoder", default="auto", help="auto, pyav, dali_cpu, dali_gpu")
    return parser


def run(args: argparse.Namespace) -> int:
    from .checkpoint import stored_run_config
    from .data.corpus import load_corpus

    explain = explain_options(args)  # before anything loads, as the query paths are
    queries = check_queries(args.queries)  # before the model loads: a typo costs no waiting
    support = support_rows(args.support)
    class_names = support[0]
    stored = stored_run_config(args.checkpoint) if args.checkpoint else None
    model = load_model(args, {}, resolve_device(args.device), stored)
    needs_corpus = model.config.needs_corpus
    if args.generate_corpus:
        out = args.corpus or str(Path(args.support) / "corpus.yaml")
        corpus = generate_corpus(class_names, out, args.base_url, args.llm_model, args.api_key_env)
    elif args.corpus:
        if not Path(args.corpus).is_file():
            raise FileNotFoundError(f"corpus file not found: {args.corpus}")
        corpus = load_corpus(args.corpus)
    elif needs_corpus:
        raise UsageError("this model needs the classes' sub-actions: pass --corpus FILE or --generate-corpus")
    else:
        corpus = None
    results = classify(model, support, queries, corpus, args.transductive, args.decoder, args.batch_size, explain)
    if explain is None:
        return write_results(results, len(queries), args.json, not args.no_progress)
    explanations: list = []
    status = write_results(_keeping_explanations(results, explanations), len(queries), args.json, not args.no_progress)
    if explanations:
        from .explanation.report import write_report

        page, pngs = write_report(explanations, args.explain, title=f"predictions among the classes of {args.support}")
        print(f"wrote {page} and {len(pngs)} PNG(s)", file=sys.stderr)
    return status


def explain_options(args: argparse.Namespace) -> dict[str, bool] | None:
    """--explain's options for `classify` (None without it); its folder made ready before anything loads."""
    return {"rollout": args.rollout, "static_prompt": args.static_prompt} if explain_requested(args) else None


def _keeping_explanations(results: Iterable[dict[str, Any]], kept: list) -> Iterator[dict[str, Any]]:
    """The results without their `explanation`, which is added to `kept` (once when queries share one)."""
    for result in results:
        explanation = result.pop("explanation", None)
        if explanation is not None and not any(explanation is seen for seen in kept):
            kept.append(explanation)
        yield result


def write_results(results: Iterable[Mapping[str, Any]], total: int, as_json: bool, progress: bool) -> int:
    """Prints each result as it comes (a table block or a JSON line, flushed) under a progress bar on stderr.

    Returns the exit status: 1 when a query could not be read (its row says why), else 0.
    """
    from tqdm.auto import tqdm

    failed = 0
    with tqdm(total=total, desc="predict", unit="video", disable=not progress, file=sys.stderr) as bar:
        for result in results:
            failed += "error" in result
            tqdm.write(json.dumps(result) if as_json else format_result(result), file=sys.stdout)
            sys.stdout.flush()  # a reader of the pipe sees each result as it is ready
            bar.update(1)
    if failed:
        print(f"error: {failed} of {total} queries could not be read (see their rows)", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m taskadapter_fast.predict") -> int:
    return run_cli(build_parser(prog).parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
