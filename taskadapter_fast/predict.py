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
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .cli import Parser, UsageError, load_model, resolve_device, run_cli
from .inference import check_queries, classify, support_rows


def format_table(results: Sequence[Mapping[str, Any]]) -> str:
    """Human-readable predictions: per query the predicted class, then every class by score."""
    lines = []
    for result in results:
        names = sorted(result["scores"], key=lambda name: -result["scores"][name])
        width = max(len("class"), *(len(name) for name in names))
        lines.append(f"{result['query']}  ->  {result['predicted']}")
        lines.append(f"  {'class':<{width}}  {'score':>8}  {'prob':>7}")
        for name in names:
            lines.append(
                f"  {name:<{width}}  {result['scores'][name]:>8.4f}  {100 * result['probabilities'][name]:>6.2f}%"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ corpus
def generate_corpus(class_names: Sequence[str], out: str | os.PathLike, base_url: str, model: str, api_key_env: str):
    """Generate (or complete) a sub-action corpus for `class_names` at `out`; returns it.

    Its progress and status lines go to stderr, so stdout stays the predictions.
    """
    from .data.corpus import load_corpus, resolve_subactions
    from .data.corpus_generate import GenerationError, generate_corpus_file

    out = Path(out)
    if out.is_file():
        corpus = load_corpus(out)
        try:
            resolve_subactions(corpus, list(class_names))
            return corpus  # already covers every class: nothing to ask
        except ValueError:
            pass
    try:
        corpus = generate_corpus_file(class_names, out, base_url, model, api_key_env)
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
    parser.add_argument("queries", nargs="+", metavar="VIDEO", help="query video files or JPEG frame folders")
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
    parser.add_argument("--base-url", default="https://api.openai.com/v1", help="chat endpoint for --generate-corpus")
    parser.add_argument("--llm-model", default="gpt-4", help="model name for --generate-corpus (default: gpt-4)")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="variable holding the endpoint's API key")
    parser.add_argument("--transductive", action="store_true", help="encode all queries as one set")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--decoder", default="auto", help="auto, pyav, dali_cpu, dali_gpu")
    return parser


def run(args: argparse.Namespace) -> int:
    from .checkpoint import stored_run_config
    from .data.corpus import load_corpus

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
    results = classify(model, support, queries, corpus, args.transductive, args.decoder)
    print(json.dumps(results, indent=1) if args.json else format_table(results))
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m taskadapter_fast.predict") -> int:
    return run_cli(build_parser(prog).parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
