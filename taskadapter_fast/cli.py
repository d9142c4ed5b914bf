"""The command-line layer shared by every command: one parser class, one error format, one runner.

Each command is a thin module with ``build_parser()`` and ``run(args)`` (``train``, ``evaluate``,
``predict``, ``corpus``, ``data``); it runs as ``python -m taskadapter_fast.<command>`` or as
``taf <command>`` (the console script, `main` below). Bad input ends any command with one line,
``error: <reason>``, and exit status 2 (usage) or 1 (anything else); ``TAF_TRACEBACK=1`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

# command -> the module holding its build_parser() and run(args)
COMMANDS = {
    "train": "taskadapter_fast.train",
    "evaluate": "taskadapter_fast.evaluate",
    "predict": "taskadapter_fast.predict",
    "corpus": "taskadapter_fast.corpus",
    "data": "taskadapter_fast.data.__main__",
}


class UsageError(ValueError):
    """Bad command-line input (reported in one line, exit status 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one line, no usage block, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def number_at_least(minimum: float, name: str, kind: type = int) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` >= minimum, else a one-line error naming the flag and the value."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{name} must be {what}, got {text!r}") from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"{name} must be >= {minimum}, got {text}")
        return value

    return parse


def resolve_device(name: Any = None, local_rank: int = 0):
    """`devices.resolve_device` for a `--device` flag: a bad value is a usage error (exit status 2)."""
    from .devices import resolve_device as resolve

    try:
        return resolve(name, local_rank)
    except ValueError as error:
        raise UsageError(str(error)) from None


def load_model(args: argparse.Namespace, overrides: dict[str, Any], device, stored: dict[str, Any] | None):
    """`api.load_model` from a command's --checkpoint / --preset flags (one of them is needed)."""
    from .api import load_model as load

    if args.checkpoint is None and args.preset is None:
        raise UsageError("pass --checkpoint FILE (or --preset NAME for an untrained model)")
    return load(args.checkpoint, args.preset, overrides, device, stored)


def add_explain_arguments(parser: argparse.ArgumentParser, what: str) -> argparse._ArgumentGroup:
    """--explain DIR, --rollout and --static-prompt (predict and evaluate); `what`: which predictions it explains."""
    group = parser.add_argument_group("explanations (the paper's Fig. 11)")
    group.add_argument(
        "--explain",
        metavar="DIR",
        help=f"write DIR/index.html (one self-contained page) and a PNG per query explaining {what}: attention maps "
        "over the frames, Task-MSA attention, stage-wise matching scores",
    )
    group.add_argument("--rollout", action="store_true", help="with --explain: also the attention rollout")
    group.add_argument(
        "--static-prompt", action="store_true", help="with --explain: also the stage table with the static prompt"
    )
    return group


def explain_requested(args: argparse.Namespace, **companions: Any) -> bool:
    """Whether --explain DIR was given (its folder then made, or refused if a file); flags that only apply with it
    (`companions`, e.g. rollout=True, given as their argparse names) are refused without it."""
    companions = {"rollout": args.rollout, "static_prompt": args.static_prompt, **companions}
    if not args.explain:
        asked = ["--" + name.replace("_", "-") for name, value in companions.items() if value]
        if asked:
            raise UsageError(f"{' and '.join(asked)} only apply with --explain DIR")
        return False
    if os.path.exists(args.explain) and not os.path.isdir(args.explain):
        raise UsageError(f"--explain {args.explain}: not a folder")
    os.makedirs(args.explain, exist_ok=True)
    return True


def one_line(error: BaseException) -> str:
    """A multi-line message on one line: "; " between lines, a space after a line that ends in ":"."""
    text = ""
    for line in (line.strip() for line in str(error).splitlines()):
        if line:
            text += ("" if not text else " " if text.endswith(":") else "; ") + line
    return text or type(error).__name__


def run_cli(args: argparse.Namespace, run_fn: Callable[[argparse.Namespace], int], interrupted: str = "interrupted"):
    """Run a command; any error ends it with `error: <one line>` (exit 2 usage, 1 other errors), no traceback.

    A write the OS refused (a full disk, ...) is one line whatever type the writing library raised: the
    package's writers raise a `WriteError` (an OSError naming the file), and any other exception that carries
    an OS error is one line too. Other exception types (TypeError, AttributeError, ...) are bugs: they keep
    their traceback, which is what a bug report needs. TAF_TRACEBACK=1 in the environment lets every error
    propagate with its traceback.
    """
    if os.environ.get("TAF_TRACEBACK", "") not in ("", "0"):
        return run_fn(args)
    try:
        return run_fn(args)
    except UsageError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError, ImportError, KeyError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        return 130
    except Exception as error:
        from ._atomic import os_errno, reason

        code = os_errno(error)
        if code is None:
            raise
        text = one_line(error)
        if reason(code).lower() not in text.lower():  # the library's words may not say why
            text += f" ({reason(code)})"
        print(f"error: {text}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """`taf <command> ...`: the same commands as `python -m taskadapter_fast.<command>`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = f"usage: taf {{{','.join(COMMANDS)}}} ... (taf COMMAND --help for a command's options)"
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{usage}\n\nTask-Adapter++ few-shot action recognition: " + ", ".join(COMMANDS) + ".")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; {usage}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])
    return module.main(rest, prog=f"taf {command}")


if __name__ == "__main__":
    raise SystemExit(main())
