"""`python -m taskadapter_fast.data prepare --split FILE [FILE ...] --root DIR --out MANIFEST.jsonl`.

Reads the split files (any format `read_split` knows), probes every video's frame count once, and
writes the readable videos to a JSON-lines manifest. Every missing or unreadable video is listed at
the end, with counts, instead of stopping at the first one; so are the classes left with fewer usable
videos than shot + query (the episode loader would refuse their split) and the classes or videos that
two splits share (a few-shot test must meet classes never trained on). Exit status: 0 when the manifest was
written (problems or not, so a few vanished Kinetics videos do not block a run), 1 when no video of
the splits could be read, 2 for bad arguments or split files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .._atomic import atomic_write_text
from ..cli import Parser, UsageError, number_at_least, run_cli
from .splits import FORMATS, PREPARE_QUERY, PREPARE_SHOT, SplitFormatError, prepare
from .splits_fetch import (
    DATASETS,
    DEFAULT_BASE_URLS,
    MANIFEST_NAME,
    SOURCES,
    VIDEO_ROOT_PLACEHOLDER,
    UnpublishedSplits,
    corpus_command,
    corpus_gaps_command,
    fetch_splits,
    name_classes_command,
    names_from_ssv2_annotations,
    published_pairs,
    split_paths,
    train_command,
)


def build_parser(prog: str = "python -m taskadapter_fast.data") -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    command = commands.add_parser("prepare", help="probe the videos of split files and write a manifest")
    command.add_argument(
        "--split",
        nargs="+",
        action="extend",
        required=True,
        metavar="FILE",
        help="split file(s) or folder-per-class directories (repeatable)",
    )
    command.add_argument(
        "--root", default=None, help="where relative video paths start (default: each split file's folder)"
    )
    command.add_argument("--out", required=True, help="the manifest to write (.jsonl)")
    command.add_argument("--format", default="auto", choices=FORMATS, help="split format (default: auto-detect)")
    command.add_argument("--class-names", default=None, help="class names file for index-only split lists")
    command.add_argument(
        "--path-map",
        action="append",
        default=None,
        metavar="OLD:NEW",
        help="read listed paths under OLD under NEW instead (repeatable), for absolute paths of another machine "
        "that are not found under --root by their trailing components",
    )
    command.add_argument("--workers", type=int, default=None, help="probing threads (default: 2 x CPUs, at most 8)")
    command.add_argument("--no-progress", action="store_true", help="no progress bar")
    command.add_argument(
        "--shot",
        type=number_at_least(1, "--shot"),
        metavar="K",
        default=PREPARE_SHOT,
        help=f"support videos per class the splits must serve: classes with fewer than shot + query usable videos "
        f"are reported (default: {PREPARE_SHOT}, the larger of the standard 1-shot and 5-shot settings, so a class "
        f"that passes serves both; 1-shot alone needs {1 + PREPARE_QUERY} videos a class)",
    )
    command.add_argument(
        "--query",
        type=number_at_least(1, "--query"),
        metavar="Q",
        default=PREPARE_QUERY,
        help=f"query videos per class, for the same check (default: {PREPARE_QUERY}, as every preset)",
    )
    _add_fetch_splits(commands)
    _add_name_classes(commands)
    return parser


def run(args: argparse.Namespace) -> int:
    if args.command == "fetch-splits":
        return _run_fetch_splits(args)
    if args.command == "name-classes":
        return _run_name_classes(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = prepare(
            args.split,
            args.out,
            root=args.root,
            format=args.format,
            class_names=args.class_names,
            workers=args.workers,
            progress=not args.no_progress,
            n_shot=args.shot,
            n_query=args.query,
            path_map=args.path_map,
        )
    except (SplitFormatError, FileNotFoundError, ValueError) as error:  # the split files are the arguments
        raise UsageError(str(error)) from None
    print(report.format(), file=sys.stderr)
    return 0 if report.rows else 1


def _add_fetch_splits(commands) -> None:
    """The `fetch-splits` subcommand: download the published split lists of a dataset."""
    command = commands.add_parser(
        "fetch-splits",
        help="download the published split lists of a dataset",
        description="Downloads the train / val / test lists one source published for a dataset, writes them to "
        f"--out with {MANIFEST_NAME} (URL, sha256, size, time of each), and prints the train command that uses "
        f"them. Published: {published_pairs()}.",
    )
    command.add_argument("--dataset", required=True, choices=DATASETS)
    command.add_argument(
        "--source",
        required=True,
        choices=SOURCES,
        help="official: the Task-Adapter++ authors; trx: TRX (tobyperrett/trx); clipfsar: CLIP-FSAR",
    )
    command.add_argument("--out", required=True, help="folder to write the lists into")
    command.add_argument(
        "--base-url",
        default=None,
        help="repository root the published paths start from (default: the source's raw GitHub URL: "
        + ", ".join(f"{source}: {url}" for source, url in DEFAULT_BASE_URLS.items())
        + ")",
    )


def _run_fetch_splits(args: argparse.Namespace) -> int:
    try:
        split_paths(args.source, args.dataset)
    except UnpublishedSplits as error:  # a pair of arguments no repository has
        raise UsageError(str(error)) from None
    fetched = fetch_splits(args.source, args.dataset, args.out, args.base_url)
    for split, path in fetched.files.items():
        print(f"wrote {split} list {path}", file=sys.stderr)
    print(f"wrote {fetched.manifest} (where each list came from)", file=sys.stderr)
    print(f"# the authors' sub-action corpus, into the same folder:\n{corpus_command(fetched)}")
    if fetched.val_unnamed:
        print(
            f"# no public source names the {args.dataset} val classes: name them from your SSv2 download's "
            f"annotations (SSV2_LABELS: its labels folder) into {fetched.val_names_file}, where train finds them:\n"
            + name_classes_command(fetched)
        )
    gaps = corpus_gaps_command(fetched)
    if gaps:
        print(f"# the classes the authors' corpus lacks, from an OpenAI-compatible endpoint (URL, NAME, VAR):\n{gaps}")
    print(f"# {VIDEO_ROOT_PLACEHOLDER}: the folder the listed videos or frame folders are under")
    print(train_command(fetched))
    return 0


def _add_name_classes(commands) -> None:
    """The `name-classes` subcommand: names an index-only SSv2 list's classes from the SSv2 annotations."""
    command = commands.add_parser(
        "name-classes",
        help="name the classes of an index-only SSv2 list from the SSv2 annotation files",
        description="Writes the class names of an index-only SSv2 list ('val3/<video id>' lines; the SSv2-Full "
        "val list, whose classes no public source names) one a line in class-index order: each class is the "
        "template of its videos in the SSv2 annotation files.",
    )
    command.add_argument("--split", required=True, help="the index-only list (e.g. vallist07.txt)")
    command.add_argument(
        "--annotations",
        nargs="+",
        required=True,
        metavar="JSON",
        help="the SSv2 download's labels/train.json and labels/validation.json",
    )
    command.add_argument("--out", required=True, help="the names file to write")


def _run_name_classes(args: argparse.Namespace) -> int:
    try:
        names = names_from_ssv2_annotations(args.split, args.annotations)
    except (FileNotFoundError, ValueError) as error:  # the files are the arguments
        raise UsageError(str(error)) from None
    out = atomic_write_text(Path(args.out), "".join(f"{name}\n" for name in names), fsync=True)
    print(f"wrote {len(names)} class names to {out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m taskadapter_fast.data") -> int:
    return run_cli(build_parser(prog).parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
