"""`python -m taskadapter_fast.evaluate`: accuracy ± 95% CI of a checkpoint over few-shot episodes.

    python -m taskadapter_fast.evaluate --checkpoint runs/demo/best.safetensors
    python -m taskadapter_fast.evaluate --checkpoint best.safetensors --split test.txt --root /data/ssv2 \\
        --corpus classes_somethingcmn.yml --way 5 --shot 1 --episodes 10000 --output test.json
    python -m taskadapter_fast.evaluate --checkpoint official_best.pth --preset ssv2_small --split ...

Model and data settings come from the checkpoint: our adapter checkpoints store the model config,
and those written by `python -m taskadapter_fast.train` also store the whole run config (metadata
key ``run_config``: model, data and train sections), so `--checkpoint` alone re-tests a training
run on the same test episodes (its ``data`` section and ``train.eval_seed`` / ``train.test_episodes``).
Flags override the stored values; ``model.KEY=VALUE`` / ``data.KEY=VALUE`` arguments override any
other field. Official-implementation checkpoints store no config: pass ``--preset`` and the data flags.

Episodes are `data.episodes.EpisodeLoader` episodes ``0 .. N-1`` of ``--seed``; ``--save-episodes FILE``
writes the exact episodes evaluated (classes, support and query rows, frame indices) and
``--episodes-file FILE`` replays them, so two models are compared on identical episodes.
The work is `taskadapter_fast.evaluation.evaluate`; this module only wires files to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._atomic import atomic_write_text
from ._lock import FileLock
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
from .config import parse_override

DEFAULT_EPISODES = 10000
SUBSETS = ("test", "val", "train")


# ------------------------------------------------------------------------------------------------ data
def data_settings(stored: dict[str, Any] | None, overrides: dict[str, Any]) -> Any:
    """The `data` section (runconfig.DataConfig) from the stored run config and overrides, not validated
    as a training config (evaluation needs one split, not three)."""
    from .config import build_section
    from .runconfig import DataConfig

    tree = dict((stored or {}).get("data") or {})
    tree.update(overrides)
    try:
        data = build_section(DataConfig, tree, "data")  # each value converted to its field's type
        data.validate(require_splits=False)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return data


# ------------------------------------------------------------------------------------------------ command line
def _ways(text: str) -> list[int]:
    try:
        ways = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nway-curve must be comma-separated integers, got {text!r}") from None
    if not ways or min(ways) < 2:
        raise argparse.ArgumentTypeError(f"--nway-curve needs ways >= 2, got {text!r}")
    return sorted(set(ways))


def build_parser(prog: str = "python -m taskadapter_fast.evaluate") -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog,
        description="Few-shot accuracy (mean ± 95% CI over episodes) of a Task-Adapter++ checkpoint.",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--checkpoint", help="our adapter checkpoint (.safetensors) or an official one (.pth)")
    model.add_argument("--preset", help="model preset; needed for official checkpoints (ssv2_small, ..., tiny)")
    model.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    data = parser.add_argument_group("data (default: what the checkpoint's run config stores)")
    data.add_argument("--split", help="split file, folder-per-class directory or manifest to evaluate on")
    data.add_argument("--subset", choices=SUBSETS, default="test", help="which split of the stored config")
    data.add_argument("--dataset", choices=("synthetic", "splits"), help="the built-in synthetic data or --split")
    data.add_argument("--root", help="where the split's relative video paths start")
    data.add_argument("--format", help="split format (auto, official, trx, clipfsar, folder, manifest)")
    data.add_argument("--class-names", help="class names file for index-only split lists")
    data.add_argument("--corpus", help="sub-action corpus (official YAML or JSON)")
    data.add_argument("--way", type=number_at_least(1, "--way"), help="classes per episode (C)")
    data.add_argument("--shot", type=number_at_least(1, "--shot"), help="support videos per class (K)")
    data.add_argument("--query", type=number_at_least(1, "--query"), help="query videos per class (Q)")
    data.add_argument("--decoder", help="auto, pyav, dali_cpu, dali_gpu")
    data.add_argument("--prefetch", type=number_at_least(0, "--prefetch"), help="episodes decoded ahead")
    run = parser.add_argument_group("evaluation")
    run.add_argument(
        "--episodes",
        type=number_at_least(1, "--episodes"),
        help=f"episodes to evaluate (default: the run's train.test_episodes, else {DEFAULT_EPISODES})",
    )
    run.add_argument(
        "--seed", type=number_at_least(0, "--seed"), help="episode seed (default: the run's train.eval_seed)"
    )
    run.add_argument("--inductive", action="store_true", help="classify each query alone (default: transductive)")
    run.add_argument("--no-cache", action="store_true", help="recompute the frozen prefix for every episode")
    run.add_argument("--cache-dir", help="also keep the frozen-prefix cache in this folder (reused across runs)")
    run.add_argument("--cache-gb", type=float, default=4.0, help="memory budget of the prefix cache in GiB (default 4)")
    run.add_argument("--save-episodes", metavar="FILE", help="write the evaluated episodes (JSON) for replay")
    run.add_argument("--episodes-file", metavar="FILE", help="evaluate exactly the episodes of this file")
    run.add_argument("--output", metavar="FILE", help="write accuracy, ci95 and per-episode accuracies as JSON")
    run.add_argument("--nway-curve", type=_ways, metavar="N,N,...", help="N-way 1-shot accuracies, e.g. 5,10,15")
    run.add_argument(
        "--plot", metavar="FILE", default="nway_curve.png", help="PNG of --nway-curve (default: %(default)s)"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    explain = add_explain_arguments(parser, "the predictions of the first --explain-episodes episodes, wrong first")
    explain.add_argument(
        "--explain-episodes",
        type=number_at_least(1, "--explain-episodes"),
        metavar="K",
        help="with --explain: how many of the evaluated episodes to explain, from the first (default: 1)",
    )
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="model.KEY=VALUE or data.KEY=VALUE")
    return parser


def _split_overrides(texts: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for text in texts:
        try:
            parts, value = parse_override(text)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if parts[0] == "model" and len(parts) == 2:
            model[parts[1]] = value
        elif parts[0] == "data" and len(parts) == 2:
            data[parts[1]] = value
        elif parts[0] == "data" and len(parts) == 3 and parts[1] == "synthetic":
            data.setdefault("synthetic", {})[parts[2]] = value
        else:
            raise UsageError(f"override {text!r}: expected model.KEY=VALUE or data.KEY=VALUE")
    return model, data


# ------------------------------------------------------------------------------------------------ the steps of run
@dataclass
class Settings:
    """What the flags and the checkpoint's stored run config settle before the model loads."""

    stored: dict[str, Any] | None  # the checkpoint's run config
    model_overrides: dict[str, Any]
    data: Any  # runconfig.DataConfig
    seed: int
    episodes: int


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Check the flags that exclude each other, then merge flags, overrides and the stored run config."""
    from .checkpoint import stored_run_config

    if args.episodes_file:
        fixed = {"--nway-curve": args.nway_curve, "--episodes": args.episodes, "--seed": args.seed}
        fixed |= {"--way": args.way, "--shot": args.shot, "--query": args.query}
        given = [flag for flag, value in fixed.items() if value is not None and value is not False]
        if given:
            raise UsageError(f"--episodes-file fixes the episodes (way, shot, query, seed): drop {', '.join(given)}")
    if args.nway_curve and args.save_episodes:
        raise UsageError("--save-episodes saves one C-way setting; it cannot be combined with --nway-curve")
    if not math.isfinite(args.cache_gb) or args.cache_gb <= 0:
        raise UsageError(f"--cache-gb must be > 0, got {args.cache_gb}")
    model_overrides, data_overrides = _split_overrides(args.overrides)
    stored = stored_run_config(args.checkpoint) if args.checkpoint else None
    flags = {
        "dataset": args.dataset,
        "root": args.root,
        "format": args.format,
        "class_names": args.class_names,
        "corpus": args.corpus,
        "n_way": args.way,
        "n_shot": args.shot,
        "n_query": args.query,
        "decoder": args.decoder,
        "prefetch": args.prefetch,
    }
    if args.split:
        flags[f"{args.subset}_split"] = args.split
        flags["dataset"] = args.dataset or "splits"
    data_overrides.update({key: value for key, value in flags.items() if value is not None})
    data = data_settings(stored, data_overrides)
    train_section = (stored or {}).get("train") or {}
    seed = args.seed if args.seed is not None else int(train_section.get("eval_seed", 0))
    episodes = args.episodes or int(train_section.get("test_episodes") or DEFAULT_EPISODES)  # 0: tested none
    return Settings(stored, model_overrides, data, seed, episodes)


@dataclass
class Testbed:
    """The loaded model and the split it is tested on: makes the loaders and runs `evaluation.evaluate`."""

    model: Any
    data: Any  # runconfig.DataConfig
    rows: list  # the split's ManifestRows
    split: str  # its description for reports
    corpus: dict[str, list[str]] | None
    cache: Any  # a PrefixCache, or False (--no-cache)
    inductive: bool
    progress: bool

    @property
    def num_frames(self) -> int:
        return int(self.model.config.num_frames)

    @property
    def image_size(self) -> int:
        return int(self.data.image_size or self.model.visual.image_size)

    def loader(self, n_way: int, n_shot: int, n_query: int, seed: int):
        """An evaluation `EpisodeLoader` of C-way K-shot Q-query episodes over the split."""
        from .data.setup import make_loader

        return make_loader(
            self.data,
            self.rows,
            num_frames=self.num_frames,
            image_size=self.image_size,
            train=False,
            seed=seed,
            shape=(n_way, n_shot, n_query),
        )

    def evaluate(self, loader, items):
        """`evaluation.evaluate` of this model on `items` (episode indices or saved plans) of `loader`."""
        from .evaluation import evaluate

        return evaluate(
            self.model, loader, items, self.corpus, cache=self.cache, inductive=self.inductive, progress=self.progress
        )


def open_testbed(args: argparse.Namespace, settings: Settings, device) -> Testbed:
    """Load the model, read the split and corpus, and make the prefix cache."""
    from .data.setup import load_corpus_for, read_splits
    from .evaluation import PrefixCache

    model = load_model(args, settings.model_overrides, device, settings.stored)
    data = settings.data
    if data.dataset != "synthetic" and not getattr(data, f"{args.subset}_split"):
        raise UsageError(
            f"no {args.subset} split: pass --split FILE (and --root DIR, --corpus FILE), or --dataset synthetic"
        )
    splits = read_splits(data, [args.subset])
    rows, split = splits.rows[args.subset], splits.describe(args.subset)
    corpus = load_corpus_for(model.config.needs_corpus, splits.corpus_path)
    cache = False if args.no_cache else PrefixCache(max_bytes=int(args.cache_gb * (1 << 30)), directory=args.cache_dir)
    return Testbed(model, data, rows, split, corpus, cache, args.inductive, not args.no_progress)


def nway_curve(args: argparse.Namespace, testbed: Testbed, settings: Settings) -> dict[str, Any]:
    """--nway-curve: N-way 1-shot accuracy for each N, and its plot -> the report's entries."""
    from .evaluation import plot_nway_curve

    num_classes = len({row.class_name for row in testbed.rows})
    too_many = [way for way in args.nway_curve if way > num_classes]
    if too_many:
        raise UsageError(f"--nway-curve {too_many}: the split has only {num_classes} classes")
    points = []
    for way in args.nway_curve:
        result = testbed.evaluate(testbed.loader(way, 1, testbed.data.n_query, settings.seed), range(settings.episodes))
        print(f"{way}-way 1-shot: {result.summary()}")
        points.append({"n_way": way, "n_shot": 1, **result.to_dict()})
    title = f"{Path(args.checkpoint).name if args.checkpoint else args.preset} on {testbed.split}"
    plot = plot_nway_curve(points, args.plot, title)
    print(f"wrote {plot}")
    return {"seed": settings.seed, "n_query": testbed.data.n_query, "nway_curve": points, "plot": str(plot)}


def replay_loader(path: str, testbed: Testbed):
    """The loader and the saved plans of an episodes file, checked to fit this model and split."""
    from .data.episodes import check_episodes_fit, read_episodes_file

    header, plans = read_episodes_file(path)
    loader = testbed.loader(int(header["n_way"]), int(header["n_shot"]), int(header["n_query"]), int(header["seed"]))
    check_episodes_fit(path, header, loader, testbed.split)
    return loader, plans


def evaluate_once(args: argparse.Namespace, testbed: Testbed, settings: Settings) -> dict[str, Any]:
    """One C-way K-shot evaluation (episodes 0 .. N-1, or an episodes file's) -> the report's entries."""
    from .data.episodes import write_episodes_file

    data = testbed.data
    if args.episodes_file:
        loader, items = replay_loader(args.episodes_file, testbed)
    else:
        loader, items = testbed.loader(data.n_way, data.n_shot, data.n_query, settings.seed), range(settings.episodes)
    result = testbed.evaluate(loader, items)
    queries = f"{loader.n_query} {'query' if loader.n_query == 1 else 'queries'}/class"
    setting = f"{loader.n_way}-way {loader.n_shot}-shot ({queries})"
    print(
        f"accuracy {result.accuracy:.2f} ± {result.ci95:.2f} % (95% CI), {setting}, {result.episodes} episodes, "
        f"{'inductive' if args.inductive else 'transductive'}, {result.episodes_per_second:.2f} episodes/s"
    )
    if result.skipped:
        print(f"note: {result.skipped} unreadable video(s) skipped", file=sys.stderr)
    if args.save_episodes:
        print(f"wrote {write_episodes_file(args.save_episodes, loader, result.plans, testbed.split)}")
    report = {"n_way": loader.n_way, "n_shot": loader.n_shot, "n_query": loader.n_query, "seed": loader.seed}
    if args.explain:
        report["explain"] = explain_first(args, testbed, loader, result.plans[: args.explain_episodes or 1], setting)
    return {**report, **result.to_dict(), "episodes_file": args.episodes_file}


def explain_first(args: argparse.Namespace, testbed: Testbed, loader, plans, setting: str) -> dict[str, Any]:
    """--explain DIR: the report of the queries of `plans` (the first evaluated episodes) -> the report's entry."""
    from .evaluation.explained import explain_episodes, wrong_count
    from .explanation.report import write_report

    explanations = explain_episodes(
        testbed.model, loader, plans, testbed.corpus, inductive=testbed.inductive, rollout=args.rollout,
        static_prompt=args.static_prompt, progress=testbed.progress,
    )  # fmt: skip
    source = Path(args.checkpoint).name if args.checkpoint else args.preset
    title = f"{source} on {testbed.split}: {setting}, episodes {', '.join(str(p.index) for p in plans)}"
    page, pngs = write_report(explanations, args.explain, title)
    queries, wrong = sum(e.num_queries for e in explanations), wrong_count(explanations)
    print(f"wrote {page} and {len(pngs)} PNG(s): {queries} queries of {len(plans)} episode(s), {wrong} wrong")
    return {"page": str(page), "episodes": [p.index for p in plans], "queries": queries, "wrong": wrong}


def finish(report: dict[str, Any], model, output: str | None) -> None:
    """The official-compat note where it applies, and the report as JSON (--output)."""
    if model.config.official_compat_applies:
        from .model.task_adapter import OFFICIAL_COMPAT_NOTE

        report["official_compat_note"] = OFFICIAL_COMPAT_NOTE
        print(f"note: {OFFICIAL_COMPAT_NOTE}", file=sys.stderr)
    if output:
        written = atomic_write_text(output, json.dumps(report, indent=1) + "\n")
        print(f"wrote {written}")


def output_lock(output: str | None) -> contextlib.AbstractContextManager:
    """The lock of `--output FILE` (`FILE.lock` beside it), held from before the evaluation until FILE is written:
    a second evaluation writing the same file is refused at once, not silently overwritten when it ends."""
    if not output:
        return contextlib.nullcontext()
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(path.with_name(path.name + ".lock"), what=f"--output {output}")


def check_explain_args(args: argparse.Namespace) -> None:
    """--explain and its companions, said before any work."""
    if explain_requested(args, explain_episodes=args.explain_episodes) and args.nway_curve:
        raise UsageError("--explain explains one C-way K-shot evaluation; leave out --nway-curve")


def run(args: argparse.Namespace) -> int:
    check_explain_args(args)
    settings = resolve_settings(args)
    device = resolve_device(args.device)
    with output_lock(args.output):
        testbed = open_testbed(args, settings, device)
        report: dict[str, Any] = {
            "checkpoint": args.checkpoint,
            "preset": args.preset,
            "split": testbed.split,
            "num_videos": len(testbed.rows),
            "device": str(device),
            "cache": not args.no_cache,
        }
        measure = nway_curve if args.nway_curve else evaluate_once
        report.update(measure(args, testbed, settings))
        finish(report, testbed.model, args.output)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m taskadapter_fast.evaluate") -> int:
    return run_cli(build_parser(prog).parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
