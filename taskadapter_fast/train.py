"""`python -m taskadapter_fast.train`: episodic training, validation, best checkpoint, test.

With no arguments it runs the embedded default (the `demo` preset): the built-in synthetic dataset
(generated once into a cache), a tiny randomly initialised CLIP-style model, a few minutes on a CPU,
and the test accuracy ± 95% CI of the trained and of the untrained model on the same episodes.

    python -m taskadapter_fast.train                                   # the embedded default
    python -m taskadapter_fast.train --preset ssv2_small data.root=VIDEOS data.split_dir=DIR  # a benchmark
        # (docs/method.md §7.1) on the lists `python -m taskadapter_fast.data fetch-splits` wrote into DIR
    python -m taskadapter_fast.train --preset ssv2_small data.train_split=... data.val_split=... \\
        data.test_split=... data.root=... data.corpus=...             # ... or on lists of your own
    python -m taskadapter_fast.train --preset hmdb51 --shot 5 train.lr=0.002 ...
    python -m taskadapter_fast.train --config runs/x/config.yaml       # a run's resolved config again
    python -m taskadapter_fast.train --resume runs/x                   # continue an interrupted run
    python -m taskadapter_fast.train --resume runs/x data.decoder=pyav # ... with a runtime-only setting changed
    torchrun --nproc-per-node 4 -m taskadapter_fast.train --preset ...  # one episode per GPU per step

Dotted overrides `section.key=value` (sections model, data, train) set any config field; values are
read as YAML (numbers, true/false, null, [lists]). Unknown keys are an error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli import Parser, number_at_least, run_cli
from .config import preset_names
from .runconfig import RUNTIME_KEYS


def build_parser(prog: str = "python -m taskadapter_fast.train") -> argparse.ArgumentParser:
    parser = Parser(
        prog=prog,
        description="Train Task-Adapter++ episodically, keep the best validation checkpoint, test it.",
        epilog="Overrides: section.key=value, e.g. train.lr=0.01 data.n_way=10 model.adapter_layers=4.",
    )
    parser.add_argument(
        "--preset", help=f"run preset: {', '.join(preset_names())} (default: demo, unless --config is given)"
    )
    parser.add_argument("--config", metavar="FILE", help="run config file (YAML or JSON; sections model, data, train)")
    parser.add_argument("--output-dir", metavar="DIR", help="run directory (default: runs/<timestamp>-<random suffix>)")
    parser.add_argument(
        "--resume",
        metavar="DIR",
        help=f"continue the interrupted run in DIR with its own config; overrides of {', '.join(RUNTIME_KEYS)} "
        "(runtime-only: they do not change what the run computes) are applied",
    )
    parser.add_argument("--seed", type=number_at_least(0, "--seed"), help="training seed (train.seed)")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--way", type=number_at_least(1, "--way"), help="classes per episode (data.n_way)")
    parser.add_argument("--shot", type=number_at_least(1, "--shot"), help="support videos per class (data.n_shot)")
    parser.add_argument("--query", type=number_at_least(1, "--query"), help="query videos per class (data.n_query)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (train.compile=true)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    return parser


def run(args) -> int:
    from .runconfig import resolve_run_config
    from .training import train

    flags = []
    if args.seed is not None:
        flags.append(f"train.seed={args.seed}")
    for name, key in (("way", "n_way"), ("shot", "n_shot"), ("query", "n_query")):
        if getattr(args, name) is not None:
            flags.append(f"data.{key}={getattr(args, name)}")
    if args.compile:
        flags.append("train.compile=true")
    if args.resume is not None:
        run_config = _resume_config(args, [*flags, *args.overrides])
    else:
        run_config = resolve_run_config(args.preset, args.config, [*flags, *args.overrides])
    train(run_config, args.output_dir, resume=args.resume, device=args.device, progress=not args.no_progress)
    return 0


def _resume_config(args, overrides: list[str]):
    """`--resume DIR [key=value ...]`: None (the run's own config), or its config.yaml with runtime-only overrides."""
    from .config import parse_override
    from .runconfig import refuse_fixed_keys
    from .training.run_dir import read_run_config

    if args.preset or args.config:
        raise ValueError("--resume keeps the run's own config; drop --preset/--config")
    keys = [".".join(parse_override(text)[0]) for text in overrides]
    refuse_fixed_keys(keys, "--resume keeps the run's own config: it cannot change")
    return read_run_config(Path(args.resume), overrides) if overrides else None


def main(argv: Sequence[str] | None = None, prog: str = "python -m taskadapter_fast.train") -> int:
    return run_cli(build_parser(prog).parse_args(argv), run, interrupted="interrupted (resume with --resume RUN_DIR)")


if __name__ == "__main__":
    sys.exit(main())
