"""The command-line layer: `taf <command>` and `python -m taskadapter_fast.<command>` alike, one error format."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

from taskadapter_fast import cli

COMMAND_MODULES = {
    "train": "taskadapter_fast.train",
    "evaluate": "taskadapter_fast.evaluate",
    "predict": "taskadapter_fast.predict",
    "corpus": "taskadapter_fast.corpus",
    "data": "taskadapter_fast.data",
}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


def test_taf_is_the_installed_console_script():
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="taf")
    assert entry.load() is cli.main


def test_taf_lists_every_python_m_command():
    assert set(cli.COMMANDS) == set(COMMAND_MODULES)
    listing = _run("-m", "taskadapter_fast.cli")
    assert listing.returncode == 2 and all(name in listing.stdout for name in COMMAND_MODULES)
    unknown = _run("-m", "taskadapter_fast.cli", "trian")
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown command 'trian'")


@pytest.mark.parametrize("command", sorted(COMMAND_MODULES))
def test_taf_command_help_is_the_python_m_help(command):
    sub = {"corpus": ["generate"], "data": ["prepare"]}.get(command, [])  # their options are a subcommand's
    via_taf = _run("-m", "taskadapter_fast.cli", command, *sub, "--help")
    via_module = _run("-m", COMMAND_MODULES[command], *sub, "--help")
    assert via_taf.returncode == via_module.returncode == 0
    assert f"usage: taf {command}" in via_taf.stdout

    def flags(text: str) -> list[str]:  # the same parser; only the wrapping differs with the prog's length
        return [word.strip(",[]") for word in text.split() if word.startswith(("--", "[--"))]

    module_help = via_module.stdout.replace(f"python -m {COMMAND_MODULES[command]}", "PROG")
    assert flags(via_taf.stdout.replace(f"taf {command}", "PROG")) == flags(module_help)
    assert len(flags(module_help)) > 2


@pytest.mark.parametrize(
    ("command", "bad_flag"),
    [
        ("train", ["--way", "0"]),
        ("evaluate", ["--shot", "x"]),
        ("predict", ["--support"]),
        ("corpus", ["generate", "--labels", "l.txt", "--out", "o.yml", "--concurrency", "0"]),
        ("data", ["prepare", "--split", "s.txt"]),
    ],
)
def test_every_command_reports_bad_arguments_in_one_line(command, bad_flag):
    result = _run("-m", COMMAND_MODULES[command], *bad_flag)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith("--help)"), result.stderr


def test_the_library_never_imports_the_command_line():
    code = (
        "import sys, taskadapter_fast.api, taskadapter_fast.inference, taskadapter_fast.evaluation, "
        "taskadapter_fast.training, taskadapter_fast.data.setup, taskadapter_fast.data.corpus_generate; "
        "print(sorted(m for m in sys.modules if m == 'taskadapter_fast.cli' or m == 'argparse'))"
    )
    result = _run("-c", code)
    assert result.returncode == 0, result.stderr
    assert "taskadapter_fast.cli" not in result.stdout


def test_number_at_least_names_the_flag_and_the_value():
    parse = cli.number_at_least(1, "--way")
    assert parse("3") == 3
    with pytest.raises(Exception, match=r"--way must be >= 1, got 0"):
        parse("0")
    with pytest.raises(Exception, match=r"--way must be an integer, got 'x'"):
        parse("x")
    with pytest.raises(Exception, match=r"--timeout must be >= 0.5, got nan"):
        cli.number_at_least(0.5, "--timeout", float)("nan")


def test_resolve_device():
    import torch

    assert cli.resolve_device("cpu") == torch.device("cpu")
    assert cli.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(cli.UsageError, match="'gpu0' is not a device"):
        cli.resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(cli.UsageError, match="CUDA is not available here"):
            cli.resolve_device("cuda:1")


def test_run_cli_one_line_errors(capsys, monkeypatch):
    monkeypatch.delenv("TAF_TRACEBACK", raising=False)

    def fails(error):
        def run(_args):
            raise error

        return run

    assert cli.run_cli(None, fails(cli.UsageError("bad flag"))) == 2
    assert cli.run_cli(None, fails(FileNotFoundError("no such file:\n  x.txt"))) == 1
    assert cli.run_cli(None, fails(KeyboardInterrupt()), interrupted="stopped") == 130
    assert capsys.readouterr().err.splitlines() == ["error: bad flag", "error: no such file: x.txt", "error: stopped"]
    monkeypatch.setenv("TAF_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        cli.run_cli(None, fails(FileNotFoundError("x")))


def test_run_cli_one_line_for_any_type_a_refused_write_raises_and_tracebacks_for_bugs(capsys, monkeypatch):
    monkeypatch.delenv("TAF_TRACEBACK", raising=False)

    class LibraryError(Exception):  # a library's own type (as safetensors' SafetensorError), none of run_cli's five
        pass

    def refused(_args):
        try:
            raise OSError(28, "No space left on device")
        except OSError:
            raise LibraryError("serializing failed")  # noqa: B904 (as a C++ writer over a Python file object does)

    def says_it(_args):
        raise LibraryError("Error while serializing: I/O error: No space left on device (os error 28)")

    def bug(_args):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    assert cli.run_cli(None, refused) == 1  # the OSError is the context of the library's error
    assert cli.run_cli(None, says_it) == 1  # the errno is in the library's text
    assert capsys.readouterr().err.splitlines() == [
        "error: serializing failed (no space left on device)",
        "error: Error while serializing: I/O error: No space left on device (os error 28)",
    ]
    with pytest.raises(TypeError):  # a bug keeps its traceback
        cli.run_cli(None, bug)
