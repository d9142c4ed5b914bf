"""Corpus gaps: `corpus generate --into EXISTING` asks only for the classes a corpus lacks and adds them,
the lookup error names that command, and `corpus fetch --dataset ssv2_full` says what its file lacks.

The commands run against real HTTP servers on 127.0.0.1 started here; the corpus and split files are
written by the tests in the published layouts.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest
from helpers import run_main

from taskadapter_fast.corpus import main
from taskadapter_fast.data import load_corpus, resolve_subactions
from taskadapter_fast.data.setup import load_corpus_for

_LABEL_RE = re.compile(r"Given an action label (.*), describe three stages of the action\.")


def _stages(name: str) -> list[str]:
    return [f"Start to {name}.", f"Keep doing {name}.", f"Finish {name}."]


def _official_yaml(entries: list[tuple[str, list[str]]]) -> str:
    """The authors' layout: bare key and label, single-quoted flow list, a blank line between entries."""
    blocks = []
    for key, stages in entries:
        quoted = ", ".join("'" + stage.replace("'", "''") + "'" for stage in stages)
        blocks.append(f"{key}:\n  label: {key}\n  sub_act_en_li: [{quoted}]\n")
    return "\n".join(blocks)


class _ChatServer:
    """An OpenAI-style chat endpoint on 127.0.0.1 answering three numbered stages per label; `asked` lists
    the labels asked, in order. Labels in `refuse` get HTTP 400 (a failed label, not a stopped run)."""

    def __init__(self, refuse: frozenset[str] = frozenset()):
        self.asked: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                label = _LABEL_RE.fullmatch(body["messages"][-1]["content"]).group(1)
                server.asked.append(label)
                if label in refuse:
                    status, payload = 400, {"error": {"message": "refused"}}
                else:
                    content = "\n".join(f"{i}. {stage}" for i, stage in enumerate(_stages(label), 1))
                    status, payload = 200, {"choices": [{"message": {"role": "assistant", "content": content}}]}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def chat():
    servers = []

    def start(refuse=frozenset()):
        servers.append(_ChatServer(frozenset(refuse)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _into(labels, corpus: Path, server, *extra: str):
    return run_main(main, "generate", "--labels", *map(str, labels), "--into", str(corpus),
                    "--base-url", server.base_url, "--backoff", "0.001", "--max-retries", "1", *extra)  # fmt: skip


def _one_line_error(result) -> str:
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[-1]


# The authors' Kinetics-100 corpus knows `trimming beard` and `shaving beard`, not the val class
# `trimming or shaving beard`; split files write classes as folder names (`playing_bagpipes`).
_KINETICS = [
    ("trimming beard", _stages("trim")),
    ("shaving beard", _stages("shave")),
    ("playing bagpipes", _stages("pipe")),
]


def test_into_asks_only_for_the_missing_classes_and_keeps_the_file_bytes(tmp_path, chat):
    corpus = tmp_path / "classes_kinetics.yml"
    original = _official_yaml(_KINETICS).encode()
    corpus.write_bytes(original)
    labels = tmp_path / "val_classes.txt"
    labels.write_text("playing_bagpipes\nTrimming Beard\ntrimming or shaving beard\nPlayingBagpipes\nfolding paper\n")
    server = chat()

    result = _into([labels], corpus, server)
    assert result.returncode == 0, result.stderr
    assert server.asked == ["trimming or shaving beard", "folding paper"]  # the others match existing keys
    assert "added 2 classes" in result.stdout and "the other 3 of the 5 classes were in it" in result.stdout
    data = corpus.read_bytes()
    assert data.startswith(original)  # the existing entries byte for byte
    merged = load_corpus(corpus)
    assert list(merged)[:3] == [key for key, _ in _KINETICS]
    assert merged["trimming or shaving beard"] == _stages("trimming or shaving beard")
    names = labels.read_text().split("\n")[:-1]
    assert resolve_subactions(merged, names)[2] == _stages("trimming or shaving beard")
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary left

    again = _into([labels], corpus, server)
    assert again.returncode == 0, again.stderr
    assert "already has all 5 classes; nothing asked" in again.stdout
    assert len(server.asked) == 2 and corpus.read_bytes() == data


def test_into_takes_split_files_as_labels(tmp_path, chat):
    # TRX's SSv2 lists: `<class name>/<video id>`, the class names with SSv2's bracketed placeholders.
    corpus = tmp_path / "classes_somethingotam.yml"
    corpus.write_text(_official_yaml([("Pouring something into something", _stages("pour"))]))
    train = tmp_path / "trainlist07.txt"
    train.write_text(
        "Pouring [something] into [something]/78687\n"
        "Pretending to open [something] without actually opening it/1234\n"
        "Pouring [something] into [something]/99\n"
    )
    test = tmp_path / "testlist07.txt"
    test.write_text("Tearing [something] into two pieces/5\n")
    server = chat()
    result = _into([train, test], corpus, server)
    assert result.returncode == 0, result.stderr
    lacking = ["Pretending to open [something] without actually opening it", "Tearing [something] into two pieces"]
    assert server.asked == lacking
    merged = load_corpus(corpus)
    classes = ["Pouring [something] into [something]", *server.asked]
    assert resolve_subactions(merged, classes)[0] == _stages("pour")

    # CLIP-FSAR's SSv2 lists hold class indices only: the names come from --class-names.
    index_only = tmp_path / "test_few_shot.txt"
    index_only.write_text("test0/5\ntest1/6\n")
    refused = _into([index_only], corpus, server)
    assert "gives class ids, not class names" in _one_line_error(refused) and "--class-names" in refused.stderr
    names = tmp_path / "names.txt"
    names.write_text("Tearing [something] into two pieces\nSpinning [something] that quickly stops spinning\n")
    named = _into([index_only], corpus, server, "--class-names", str(names))
    assert named.returncode == 0, named.stderr
    assert server.asked[-1] == "Spinning [something] that quickly stops spinning" and len(server.asked) == 3


def test_into_json_and_windows_files_keep_their_bytes(tmp_path, chat):
    server = chat()
    flat = tmp_path / "corpus.json"
    flat.write_text('{\n  "clap": ["a.", "b.", "c."],\n  "yo-yo": ["d.", "e.", "f."]\n}\n')
    labels = tmp_path / "labels.txt"
    labels.write_text("clap\nyo yo\nkick ball\n")
    assert _into([labels], flat, server).returncode == 0
    assert flat.read_text().startswith('{\n  "clap": ["a.", "b.", "c."],\n  "yo-yo": ["d.", "e.", "f."]')
    assert json.loads(flat.read_text())["kick ball"] == _stages("kick ball")  # flat, as the file is

    windows = tmp_path / "windows.yml"
    original = ("\ufeff" + _official_yaml(_KINETICS).replace("\n", "\r\n")).encode()
    windows.write_bytes(original)
    assert _into([labels], windows, server).returncode == 0
    assert windows.read_bytes().startswith(original) and b"\n" not in windows.read_bytes().replace(b"\r\n", b"")
    assert list(load_corpus(windows)) == [key for key, _ in _KINETICS] + ["clap", "yo yo", "kick ball"]

    flow = tmp_path / "flow.yml"  # a layout new blocks cannot follow: rewritten, same keys, labels, stages
    flow.write_text("{on: {label: On!, sub_act_en_li: [a., b., c.]}}\n")
    assert _into([labels], flow, server).returncode == 0
    assert list(load_corpus(flow).items())[0] == ("on", ["a.", "b.", "c."])
    assert "label: On!" in flow.read_text() and len(load_corpus(flow)) == 4


def test_failures_keep_the_file_or_add_what_came(tmp_path, chat):
    corpus = tmp_path / "classes_kinetics.yml"
    original = _official_yaml(_KINETICS).encode()
    corpus.write_bytes(original)
    labels = tmp_path / "labels.txt"
    labels.write_text("trimming or shaving beard\nfolding paper\n")

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    down = types.SimpleNamespace(base_url=f"http://127.0.0.1:{port}/v1")
    line = _one_line_error(_into([labels], corpus, down))
    assert f"cannot reach {down.base_url}/chat/completions" in line
    assert corpus.read_bytes() == original

    server = chat(refuse={"folding paper"})
    line = _one_line_error(_into([labels], corpus, server))
    assert "1 of 2 labels failed ('folding paper')" in line and f"written to {corpus}" in line
    assert list(load_corpus(corpus)) == [key for key, _ in _KINETICS] + ["trimming or shaving beard"]
    fixed = chat()
    assert _into([labels], corpus, fixed).returncode == 0
    assert fixed.asked == ["folding paper"]  # the one added before is not asked again
    assert corpus.read_bytes().startswith(original)

    missing = _into([labels], tmp_path / "none.yml", fixed)
    assert "is not an existing corpus file (use --out" in _one_line_error(missing)


def test_the_lookup_error_says_the_command_that_fills_the_gap(tmp_path, chat):
    corpus = tmp_path / "my corpus" / "classes_kinetics.yml"
    corpus.parent.mkdir()
    corpus.write_text(_official_yaml(_KINETICS))
    classes = ["trimming beard", "trimming or shaving beard", "playing_bagpipes"]
    with pytest.raises(ValueError) as error:
        load_corpus_for(True, corpus, [classes])
    message = str(error.value)
    assert "'trimming or shaving beard' (closest: 'trimming beard'" in message
    command = re.search(
        r"add the missing classes with: (python -m \S+ generate --labels SPLIT_FILE --into .+?) \(", message
    )
    args = shlex.split(command.group(1))
    assert args[:4] == ["python", "-m", "taskadapter_fast.corpus", "generate"] and args[-1] == str(corpus)

    # That command, with a file of the split's classes and a local endpoint, fills the gap.
    labels = tmp_path / "val.txt"
    labels.write_text("\n".join(classes) + "\n")
    server = chat()
    args = [str(labels) if arg == "SPLIT_FILE" else arg for arg in args[4:]]
    result = run_main(main, "generate", *args, "--base-url", server.base_url)
    assert result.returncode == 0, result.stderr
    assert server.asked == ["trimming or shaving beard"]
    assert len(load_corpus_for(True, corpus, [classes])) == 4


def test_fetch_ssv2_full_says_in_one_line_that_the_file_misses_the_split(tmp_path, file_server):
    site, base = file_server
    (site / "classes_somethingotam.yml").write_text(_official_yaml([("Pushing something", _stages("push"))]))
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    for url in (base, f"{base}/gone"):  # a fetch that succeeds, and one that fails, both say it
        result = subprocess.run(
            [sys.executable, "-m", "taskadapter_fast.corpus", "fetch", "--dataset", "ssv2_full",
             "--base-url", url, "--out", str(tmp_path / "ssv2 full.yml")],
            capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
        )  # fmt: skip
        warnings = [line for line in result.stderr.splitlines() if "SSv2-Full" in line]
        assert len(warnings) == 1, result.stderr
        assert warnings[0].startswith("warning: classes_somethingotam.yml does not cover the SSv2-Full (OTAM) split")
        assert f"--into {shlex.quote(str(tmp_path / 'ssv2 full.yml'))}" in warnings[0]
    assert result.returncode == 1 and "HTTP 404" in result.stderr


def test_predict_generate_corpus_completes_an_existing_corpus_and_keeps_its_entries(chat, tmp_path, capsys):
    from taskadapter_fast.predict import generate_corpus

    server = chat()
    corpus = tmp_path / "mine.yml"
    corpus.write_text(
        _official_yaml([("hand written", ["Mine one.", "Mine two.", "Mine three."]), ("clap", _stages("clap"))])
    )
    got = generate_corpus(["clap", "jump"], corpus, server.base_url, "model", "NO_KEY_NEEDED_ON_LOOPBACK")
    assert server.asked == ["jump"]  # only the class the corpus lacks
    assert load_corpus(corpus)["hand written"] == ["Mine one.", "Mine two.", "Mine three."]  # not another user's loss
    assert got["jump"] == _stages("jump") and got["clap"] == _stages("clap")
