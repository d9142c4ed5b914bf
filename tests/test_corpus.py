"""Sub-action corpus: loading, saving, resolving, and the `generate` / `fetch` commands.

The commands run as real subprocesses against real HTTP servers on 127.0.0.1 started here; the
files they read are written by the tests.
"""

from __future__ import annotations

import collections
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from helpers import run_main

from taskadapter_fast.corpus import main
from taskadapter_fast.data import http_retry, load_corpus, resolve_subactions, save_corpus
from taskadapter_fast.data.corpus import validate_corpus
from taskadapter_fast.data.corpus_generate import INSTRUCTION, parse_stages

# ------------------------------------------------------------------------------------------- helpers


def _official_yaml(entries: list[tuple[str, str, list[str]]]) -> str:
    """The authors' layout: bare key, bare label, single-quoted flow list, blank line between entries."""
    blocks = []
    for key, label, stages in entries:
        quoted = ", ".join("'" + stage.replace("'", "''") + "'" for stage in stages)
        blocks.append(f"{key}:\n  label: {label}\n  sub_act_en_li: [{quoted}]\n")
    return "\n".join(blocks)


def _stages(name: str) -> list[str]:
    return [f"Start to {name}.", f"Keep doing {name}.", f"Finish {name}."]


def _run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60):
    clean_env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("TAF_TEST_")}
    clean_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "taskadapter_fast.corpus", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env,
        cwd=cwd,
    )


def _run_main(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    """The same command in this process (no interpreter start-up), with the same kind of result."""
    return run_main(main, *args, cwd=cwd, env=env)


def _assert_one_line_error(result) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) >= 1 and lines[-1].startswith("error: "), result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_LABEL_RE = re.compile(r"Given an action label (.*), describe three stages of the action\.")


class ChatServer:
    """An OpenAI-style chat completions endpoint on 127.0.0.1.

    `behaviour(label, n)` answers the n-th request (1-based) for `label` with: a string (the
    message content of a 200 completion), a `(status, headers, body bytes)` tuple, or "DROP"
    (close the connection without an answer).
    """

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.counts: collections.Counter[str] = collections.Counter()
        self.log: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                path, _, query = self.path.partition("?")
                if path != "/v1/chat/completions":
                    return self._send(404, {}, b'{"error": "not found"}')
                label = _LABEL_RE.fullmatch(body["messages"][-1]["content"]).group(1)
                with server.lock:
                    server.counts[label] += 1
                    n = server.counts[label]
                    server.log.append(
                        {
                            "label": label,
                            "time": time.monotonic(),
                            "body": body,
                            "auth": self.headers["Authorization"],
                            "query": query,
                        }
                    )
                reply = server.behaviour(label, n)
                if reply == "DROP":
                    self.close_connection = True
                    return
                if isinstance(reply, str):
                    completion = {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}],
                    }
                    reply = (200, {}, json.dumps(completion).encode())
                self._send(*reply)

            def _send(self, status, headers, payload):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                # A client that gave up (--timeout) before a slow answer: nothing to report, and the default
                # traceback would land in whatever stderr a later in-process run has redirected.
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def chat_server():
    servers = []

    def start(behaviour):
        servers.append(ChatServer(behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _generate(tmp_path, server, labels, *extra, out="corpus.yml", env=None, run=_run_cli):
    labels_file = tmp_path / "labels.txt"
    # As a Windows editor saves it: a byte-order mark and CRLF line ends.
    labels_file.write_bytes(("\ufeff" + "\r\n".join(labels) + "\r\n").encode("utf-8"))
    args = ["generate", "--labels", str(labels_file), "--out", str(tmp_path / out), "--base-url", server.base_url]
    args += ["--model", "test-model", "--api-key-env", "TAF_TEST_KEY", "--backoff", "0.001", *extra]
    return run(*args, env=env)


# --------------------------------------------------------------------------------------------- loading


def test_load_official_yaml_with_aliases_labels_and_repeated_keys(tmp_path, caplog):
    # 150 keys for fewer classes (spelling aliases), labels that differ from keys, quotes inside stages,
    # and a repeated key, like the published UCF101/Kinetics files.
    entries = [(f"class number {i}", f"Class Number {i}", _stages(f"thing {i}")) for i in range(146)]
    entries += [
        ("push ups", "Push Ups", ["Get down.", "Push the body up.", "Lower the body."]),
        ("pushup", "pushup", ["Kneel.", "Push.", "Rest."]),
        ("shake hands", "shake hands", ["Extending one's hand.", "Grasping the other's hand.", "Letting go."]),
        ("yes", "yes", ["Nod.", "Smile.", "Agree."]),
        ("push ups", "Push Ups", ["Second version.", "Of the same.", "Class."]),
    ]
    text = _official_yaml(entries).replace("'Letting go.']", "'Letting go.' ]")  # stray space, as published
    path = tmp_path / "classes_test.yml"
    path.write_text(text)

    first, last = (i + 1 for i, line in enumerate(text.splitlines()) if line == "push ups:")
    with caplog.at_level("WARNING", logger="taskadapter_fast.data.corpus"):
        corpus = load_corpus(path)
    assert re.search(rf"classes_test\.yml.*'push ups' \(lines {first}, {last}\)", caplog.text), caplog.text

    assert len(corpus) == 150
    assert list(corpus)[:2] == ["class number 0", "class number 1"]
    assert corpus["push ups"] == ["Second version.", "Of the same.", "Class."]  # last one wins, as PyYAML
    assert corpus["shake hands"] == ["Extending one's hand.", "Grasping the other's hand.", "Letting go."]
    assert corpus["yes"] == ["Nod.", "Smile.", "Agree."]  # a key is text, never a boolean
    assert all(isinstance(stage, str) for stages in corpus.values() for stage in stages)


def test_load_json_nested_and_flat(tmp_path):
    nested = {"brush hair": {"label": "Brush Hair", "sub_act_en_li": _stages("brush")}}
    flat = {"brush hair": _stages("brush"), "Clap": ["Raise.", "Clap.", "Lower."]}
    (tmp_path / "nested.json").write_text(json.dumps(nested))
    (tmp_path / "flat.json").write_text(json.dumps(flat))
    assert load_corpus(tmp_path / "nested.json") == {"brush hair": _stages("brush")}
    assert load_corpus(str(tmp_path / "flat.json")) == flat
    # Files saved by Windows editors start with a byte-order mark.
    (tmp_path / "bom.json").write_text("\ufeff" + json.dumps(flat), encoding="utf-8")
    assert load_corpus(tmp_path / "bom.json") == flat
    (tmp_path / "bom.yml").write_text("\ufeffclap: [Raise., Clap., Lower.]\n", encoding="utf-8")
    assert load_corpus(tmp_path / "bom.yml") == {"clap": ["Raise.", "Clap.", "Lower."]}


def test_load_keeps_odd_stage_counts_for_validation_to_report(tmp_path):
    path = tmp_path / "odd.yml"
    path.write_text("two:\n  label: two\n  sub_act_en_li: ['a', 'b']\nfour: [a, b, c, d]\n")
    corpus = load_corpus(path)
    assert corpus == {"two": ["a", "b"], "four": ["a", "b", "c", "d"]}
    with pytest.raises(ValueError, match=r"odd\.yml") as info:
        resolve_subactions(corpus, ["two", "four"])
    assert "'two': 2 sub-actions" in str(info.value)
    assert "'four': 4 sub-actions" in str(info.value)


def test_load_errors_name_the_file_and_every_bad_entry(tmp_path):
    missing = tmp_path / "nowhere.yml"
    with pytest.raises(FileNotFoundError, match="nowhere.yml"):
        load_corpus(missing)

    control = tmp_path / "control.yml"
    control.write_text("a\x7f: [x, y, z]\n", encoding="utf-8")  # DEL: a character YAML refuses
    with pytest.raises(ValueError, match=r"control\.yml: not a valid YAML corpus file.*#x007f"):
        load_corpus(control)

    broken = tmp_path / "broken.yml"
    broken.write_text("a:\n  label: a\n  sub_act_en_li: ['x', 'y'\nb: 1\n")
    with pytest.raises(ValueError, match=r"broken\.yml: not a valid YAML corpus file at line \d+") as info:
        load_corpus(broken)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no YAML-library chain

    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"a": ["x", "y", "z"],}')
    with pytest.raises(ValueError, match=r"bad\.json: not a valid JSON corpus file at line 1"):
        load_corpus(bad_json)

    entries = tmp_path / "entries.yml"
    entries.write_text(
        "good: ['a', 'b', 'c']\n"
        "no stages:\n  label: no stages\n"
        "numbers:\n  label: numbers\n  sub_act_en_li: ['a', 2, 'c']\n"
        "blank: ['a', '  ', 'c']\n"
        "scalar: just text\n"
    )
    with pytest.raises(ValueError) as info:
        load_corpus(entries)
    message = str(info.value)
    assert message.startswith(f"{entries}: 4 bad corpus entries")
    assert "'no stages': no 'sub_act_en_li'" in message
    assert "'numbers': stage 2 is int 2, not text" in message
    assert "'blank': stage 2 is empty" in message
    assert "'scalar': expected a mapping" in message

    top_list = tmp_path / "list.yml"
    top_list.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match=r"list\.yml: expected a mapping of class name to entry"):
        load_corpus(top_list)
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.yml: the corpus file holds no classes"):
        load_corpus(empty)


# ---------------------------------------------------------------------------------------------- saving


@pytest.mark.parametrize("name", ["corpus.yml", "corpus.json"])
def test_save_load_round_trip(tmp_path, name):
    corpus = {
        "brush hair": _stages("brush"),
        "Pouring something into something": ["Hold it.", "Pour: slowly.", "Done # really."],
        "shake hands": ["Extending one's hand.", 'Say "hi".', "Let go."],
        "yes": ["Café au lait.", " leading space", "tab\there"],
        "a: b": ["multi\nline", "back\\slash", "- dash"],
        "null": ["[x]", "{y}", "*z"],
    }
    labels = {"brush hair": "Brush Hair", "yes": "on"}
    path = tmp_path / "nested" / "dir" / name
    save_corpus(corpus, path, labels=labels)
    assert load_corpus(path) == corpus
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left behind

    text = path.read_text(encoding="utf-8")
    if name.endswith(".yml"):
        first_entry = "brush hair:\n  label: Brush Hair\n  sub_act_en_li: ['Start to brush.', 'Keep doing brush.'"
        assert text.startswith(first_entry)
        assert "'Extending one''s hand.'" in text  # the authors' quoting
    else:
        data = json.loads(text)
        assert data["brush hair"] == {"label": "Brush Hair", "sub_act_en_li": _stages("brush")}
        assert data["yes"]["label"] == "on"

    # Saving again replaces the file; a corpus that cannot be saved leaves the old file as it was.
    save_corpus({"clap": ["a", "b", "c"]}, path)
    assert load_corpus(path) == {"clap": ["a", "b", "c"]}
    with pytest.raises(ValueError, match="'clap'"):
        save_corpus({"clap": ["a", 2, "c"]}, path)
    assert load_corpus(path) == {"clap": ["a", "b", "c"]}


# ------------------------------------------------------------------------------------------- resolving


def test_resolve_exact_then_normalised():
    corpus = {
        "brush hair": _stages("brush"),
        "apply eye makeup": _stages("makeup"),
        "pouring something into something": _stages("pour"),
        "yo yo": _stages("yoyo"),
    }
    names = ["brush-hair", "  BRUSH   hair ", "Brush_Hair", "ApplyEyeMakeup", "Pouring [something] into [something]"]
    resolved = resolve_subactions(corpus, [*names, "YoYo"])
    assert resolved == [_stages("brush")] * 3 + [_stages("makeup"), _stages("pour"), _stages("yoyo")]
    resolved[0].append("changed")  # copies: the corpus is not touched
    assert corpus["brush hair"] == _stages("brush")
    assert validate_corpus(corpus, names) is None

    # Names that differ only in spacing or punctuation meet, as a last resort (UCF101 folder
    # HandstandPushups, corpus "hand stand pushups"; Kinetics folder hurling_sport, corpus "hurling (sport)").
    corpus |= {"hand stand pushups": _stages("handstand"), "hurling (sport)": _stages("hurling")}
    assert resolve_subactions(corpus, ["HandstandPushups", "hurling_sport"]) == [
        _stages("handstand"),
        _stages("hurling"),
    ]

    # An exact key wins over keys that only match after normalising.
    corpus["Brush_Hair"] = ["exact.", "match.", "wins."]
    assert resolve_subactions(corpus, ["Brush_Hair", "brush hair"]) == [["exact.", "match.", "wins."], _stages("brush")]


def test_resolve_lists_every_missing_and_wrong_class(tmp_path):
    path = tmp_path / "split.yml"
    path.write_text(
        "brush hair: ['a', 'b', 'c']\nclimb stairs: ['a', 'b']\nkick ball: ['a', 'b', 'c', 'd']\n"
        "ride bike: []\nride horse: ['a', 'b', 'c']\n"
    )
    corpus = load_corpus(path)
    names = ["brush hair", "climb_stairs", "kick ball", "ride bike", "brush hairs", "rid horse", "zzzz"]
    with pytest.raises(ValueError) as info:
        resolve_subactions(corpus, names)
    message = str(info.value)
    assert message.startswith(f"{path} does not fit 7 class names")
    assert "3 class(es) missing" in message
    assert "'brush hairs' (closest: 'brush hair'" in message
    assert "'rid horse' (closest: 'ride horse'" in message
    assert "'zzzz' (nothing close)" in message
    assert "3 class(es) without exactly 3 sub-actions" in message
    assert "'climb_stairs': 2 sub-actions" in message
    assert "'kick ball': 4 sub-actions" in message
    assert "'ride bike': 0 sub-actions" in message
    with pytest.raises(ValueError, match="'zzzz'"):
        validate_corpus(corpus, ["zzzz"])

    # A plain dict has no file to name; two keys meaning the same class with different stages are ambiguous.
    with pytest.raises(
        ValueError, match=r"(?s)the sub-action corpus .*'Brush Hair' matches 'brush hair', 'brush_hair'"
    ):
        resolve_subactions({"brush hair": ["a", "b", "c"], "brush_hair": ["d", "e", "f"]}, ["Brush Hair"])


# ------------------------------------------------------------------------------ parsing LLM answers


@pytest.mark.parametrize(
    "answer",
    [
        "1. Pick up the ball.\n2. Swing the arm back.\n3. Release the ball.",
        "Here are the stages:\n\n1) Pick up the ball.\n2) Swing the arm back.\n3) Release the ball.\n\nHope it helps!",
        '```json\n["Pick up the ball.", "Swing the arm back.", "Release the ball."]\n```',
        '{"stages": ["Pick up the ball.", "Swing the arm back.", "Release the ball."]}',
        "Stage 1: Pick up the ball.\nStage 2: Swing the arm back.\nStage 3: Release the ball.",
        "**Beginning:** Pick up the ball.\n**Process:** Swing the arm back.\n**End:** Release the ball.",
        "- Pick up the ball.\n- Swing the arm back.\n- Release the ball.",
        "\u2022 Beginning - Pick up the ball.\n\u2022 Middle - Swing the arm back.\n\u2022 End - Release the ball.",
        '"Pick up the ball."\n"Swing the arm back."\n"Release the ball."',
        "Stage 1 (Beginning):\nPick up the ball.\nStage 2 (Process):\nSwing the arm back.\nStage 3:\nRelease the ball.",
        "1. Stage 1: 'Pick up the ball.'\n2. Stage 2: 'Swing the arm back.'\n3. Stage 3: 'Release the ball.'",
        "Sure! Three stages:\n1. **Beginning**: Pick up the ball.\n2. **Middle**: Swing the arm\nback.\n"
        "3. **End**: Release the ball.\nLet me know if you need more.",
        "Stage One \u2013 Preparation: Pick up the ball.\nStage Two \u2013 Action: Swing the arm back.\n"
        "Stage Three \u2013 Completion: Release the ball.",
    ],
)
def test_parse_stages_accepts_common_answer_shapes(answer):
    assert parse_stages(answer) == ["Pick up the ball.", "Swing the arm back.", "Release the ball."]


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "I'm sorry, I can't help with that.",
        "1. Pick up the ball.\n2. Release the ball.",
        "1. a\n2. b\n3. c\n4. d",
        '["only", "two"]',
        "Stage 1:\nStage 2:\nStage 3:",
    ],
)
def test_parse_stages_refuses_anything_but_three(answer):
    assert parse_stages(answer) is None


# ------------------------------------------------------------------------------------------- generate

_FORMATS = [
    lambda s: f"1. {s[0]}\n2. {s[1]}\n3. {s[2]}",
    lambda s: "```json\n" + json.dumps(s) + "\n```",
    lambda s: f"Here are the stages:\n**Stage 1 (Beginning):** {s[0]}\n**Stage 2:** {s[1]}\n**Stage 3 - End:** {s[2]}",
    lambda s: f"- Beginning: {s[0]}\n- Process: {s[1]}\n- End: {s[2]}",
    lambda s: "\n".join(f'"{x}"' for x in s),
]


def _good(label: str, n: int) -> str:
    return _FORMATS[sum(map(ord, label)) % len(_FORMATS)](_stages(label))


def test_generate_against_a_good_server_then_asks_nothing_again(tmp_path, chat_server):
    server = chat_server(_good)
    labels = ["brush hair", "pour", "Pouring something into something", "yo-yo", "kick ball", "clap"]
    result = _generate(tmp_path, server, [*labels, "", "clap", "  "], env={"TAF_TEST_KEY": "secret"})
    assert result.returncode == 0, result.stderr
    assert "wrote 6 classes" in result.stdout
    assert load_corpus(tmp_path / "corpus.yml") == {label: _stages(label) for label in labels}
    assert dict(server.counts) == dict.fromkeys(labels, 1)  # blank lines and duplicates ignored
    request = server.log[0]
    assert request["auth"] == "Bearer secret"
    assert request["body"]["model"] == "test-model"
    assert request["body"]["messages"][-1] == {"role": "user", "content": INSTRUCTION.format(label="brush hair")}
    assert request["body"]["messages"][0]["role"] == "system"
    cache_lines = (tmp_path / "corpus.yml.cache.jsonl").read_text().splitlines()
    assert [json.loads(line)["label"] for line in cache_lines] == labels

    again = _generate(tmp_path, server, labels, "--concurrency", "3", out="corpus.json", run=_run_main)  # no key
    assert again.returncode == 0, again.stderr
    assert sum(server.counts.values()) == len(labels) + len(labels)  # a new output file has its own cache
    third = _generate(tmp_path, server, labels)
    assert third.returncode == 0, third.stderr
    assert "(0 generated, 6 from corpus.yml.cache.jsonl)" in third.stdout
    assert sum(server.counts.values()) == 2 * len(labels)  # asked nothing it already had
    assert list(load_corpus(tmp_path / "corpus.json").items()) == list(load_corpus(tmp_path / "corpus.yml").items())
    assert json.loads((tmp_path / "corpus.json").read_text())["clap"]["sub_act_en_li"] == _stages("clap")


def test_generate_retries_errors_and_malformed_answers(tmp_path, chat_server):
    def flaky(label, n):
        script = [
            (500, {}, b'{"error": "overloaded"}'),
            (429, {"Retry-After": "1" if label == "clap" else "0"}, b'{"error": "slow down"}'),
            (200, {}, b"<html>not json</html>"),
            (200, {}, b'{"id": "x", "choices": []}'),
            "DROP",
            "1. Only one stage.\n2. And another.",
        ]
        return script[n - 1] if n <= len(script) else _good(label, n)

    server = chat_server(flaky)
    result = _generate(tmp_path, server, ["brush hair", "clap"], "--max-retries", "6", out="corpus.json")
    assert result.returncode == 0, result.stderr
    assert dict(server.counts) == {"brush hair": 7, "clap": 7}
    assert load_corpus(tmp_path / "corpus.json") == {"brush hair": _stages("brush hair"), "clap": _stages("clap")}
    clap_times = [entry["time"] for entry in server.log if entry["label"] == "clap"]
    assert clap_times[2] - clap_times[1] >= 0.9  # Retry-After: 1 honoured; --backoff alone waits 1 ms


def test_retry_after_hints():
    from email.utils import formatdate

    from taskadapter_fast.data.http_retry import MAX_RETRY_AFTER_S as _MAX_RETRY_AFTER_S
    from taskadapter_fast.data.http_retry import retry_after as _retry_after

    assert _retry_after("2") == 2.0 and _retry_after("-5") == 0.0
    assert _retry_after("99999") == _MAX_RETRY_AFTER_S
    assert 8.0 <= _retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10.0
    for useless in (None, "", "soon", "NaN", "nan"):
        assert _retry_after(useless) is None, useless


def test_generate_gives_up_on_a_slow_label_only(tmp_path, chat_server):
    def slow(label, n):
        if label == "slow":
            time.sleep(1.0)
        return _good(label, n)

    server = chat_server(slow)
    result = _generate(tmp_path, server, ["brush hair", "slow", "clap"], "--timeout", "0.3", "--max-retries", "1")
    _assert_one_line_error(result)
    assert "1 of 3 labels failed ('slow')" in result.stderr and "no answer within --timeout 0.3 s" in result.stderr
    assert server.counts["clap"] == 1  # the labels after it were still asked
    assert load_corpus(tmp_path / "corpus.yml") == {"brush hair": _stages("brush hair"), "clap": _stages("clap")}


def test_generate_writes_yaml_hostile_labels_and_keeps_the_endpoints_query(tmp_path, chat_server):
    labels = ["trailing colon:", "-", "?", "it\x92s a door", "del\x7f", "yes", "- leading dash", "Öffnen von etwas"]
    server = chat_server(_good)
    server.base_url += "?api-version=2024-06-01"  # Azure-style endpoints carry a query
    result = _generate(tmp_path, server, labels)
    assert result.returncode == 0, result.stderr
    assert {entry["query"] for entry in server.log} == {"api-version=2024-06-01"}
    assert load_corpus(tmp_path / "corpus.yml") == {label: _stages(label) for label in labels}


def test_generate_reports_a_label_that_never_gets_three_stages(tmp_path, chat_server):
    def stubborn(label, n):
        return "1. Only one.\n2. Only two." if label == "hopeless" else _good(label, n)

    server = chat_server(stubborn)
    result = _generate(tmp_path, server, ["brush hair", "hopeless", "clap"], "--max-retries", "2")
    _assert_one_line_error(result)
    assert "Traceback" not in result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("error: 1 of 3 labels failed ('hopeless')")
    assert "the other 2 written" in summary
    assert server.counts["hopeless"] == 3
    assert load_corpus(tmp_path / "corpus.yml") == {"brush hair": _stages("brush hair"), "clap": _stages("clap")}
    cache = (tmp_path / "corpus.yml.cache.jsonl").read_text()
    assert "hopeless" not in cache  # failures are not cached, so the next run asks again


def test_generate_resumes_after_failed_labels(tmp_path, chat_server):
    down = {"pour", "jump"}

    def partly_down(label, n):
        return (503, {}, b"{}") if label in down else _good(label, n)

    server = chat_server(partly_down)
    labels = ["brush hair", "pour", "clap", "jump", "wave"]
    first = _generate(tmp_path, server, labels, "--max-retries", "1", run=_run_main)
    assert first.returncode != 0
    assert "2 of 5 labels failed ('pour', 'jump')" in first.stderr
    assert set(load_corpus(tmp_path / "corpus.yml")) == {"brush hair", "clap", "wave"}

    down.clear()
    before = collections.Counter(server.counts)
    second = _generate(tmp_path, server, labels, "--max-retries", "1", run=_run_main)
    assert second.returncode == 0, second.stderr
    assert server.counts - before == collections.Counter({"pour": 1, "jump": 1})
    assert load_corpus(tmp_path / "corpus.yml") == {label: _stages(label) for label in labels}


def test_generate_resumes_after_being_killed(tmp_path, chat_server):
    release = threading.Event()

    def hangs_on_third(label, n):
        if label == "c" and n == 1:
            release.wait(30)
        return _good(label, n)

    server = chat_server(hangs_on_third)
    labels = ["a", "b", "c", "d"]
    (tmp_path / "labels.txt").write_text("\n".join(labels))
    out = tmp_path / "corpus.yml"
    cache = tmp_path / "corpus.yml.cache.jsonl"
    args = [sys.executable, "-m", "taskadapter_fast.corpus", "generate", "--labels", str(tmp_path / "labels.txt")]
    args += ["--out", str(out), "--base-url", server.base_url, "--api-key-env", "TAF_TEST_KEY", "--backoff", "0.001"]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("TAF_TEST_")}
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            server.counts["c"] and cache.exists() and len(cache.read_text().splitlines()) == 2
        ):
            time.sleep(0.02)
        assert server.counts["c"] == 1, "the run never reached the third label"
    finally:
        process.kill()
        process.wait(timeout=30)
        release.set()
    assert not out.exists()
    with cache.open("a") as handle:
        handle.write('{"label": "d", "sta')  # a write cut short by the kill

    result = _generate(tmp_path, server, labels, run=_run_main)
    assert result.returncode == 0, result.stderr
    assert "skipped 1 unreadable line" in result.stderr
    assert dict(server.counts) == {"a": 1, "b": 1, "c": 2, "d": 1}
    assert load_corpus(out) == {label: _stages(label) for label in labels}


def test_generate_stops_at_once_on_an_authorisation_error(tmp_path, chat_server):
    server = chat_server(lambda label, n: (401, {}, b'{"error": {"message": "invalid api key"}}'))
    result = _generate(tmp_path, server, ["a", "b", "c"], env={"TAF_TEST_KEY": "wrong"}, run=_run_main)
    _assert_one_line_error(result)
    assert "HTTP 401" in result.stderr and "invalid api key" in result.stderr
    assert sum(server.counts.values()) == 1
    assert not (tmp_path / "corpus.yml").exists()


def test_generate_bad_input_gives_one_line_errors(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("clap\n")
    out = str(tmp_path / "out.yml")
    common = ["--labels", str(labels), "--out", out]

    no_key = _run_cli(
        "generate", *common, "--base-url", "https://llm.example.invalid/v1", "--api-key-env", "TAF_TEST_NONE"
    )
    _assert_one_line_error(no_key)
    assert "TAF_TEST_NONE" in no_key.stderr

    unreachable = f"http://127.0.0.1:{_free_port()}/v1"
    refused = _run_main("generate", *common, "--base-url", unreachable, "--max-retries", "1", "--backoff", "0.001")
    _assert_one_line_error(refused)
    assert f"cannot reach {unreachable}/chat/completions" in refused.stderr

    for args, expected in [
        (["--labels", str(tmp_path / "none.txt"), "--out", out, "--base-url", unreachable], "none.txt"),
        ([*common, "--base-url", "ftp://example.invalid"], "--base-url"),
        ([*common, "--base-url", unreachable, "--max-retries", "-1"], "--max-retries"),
        ([*common, "--base-url", unreachable, "--concurrency", "zero"], "--concurrency"),
    ]:
        result = _run_main("generate", *args)
        _assert_one_line_error(result)
        assert expected in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "blank.txt").write_text("\n \n")
    blank = _run_main("generate", "--labels", str(tmp_path / "blank.txt"), "--out", out, "--base-url", unreachable)
    _assert_one_line_error(blank)
    assert "holds no labels" in blank.stderr
    assert not Path(out).exists()


# ---------------------------------------------------------------------------------------------- fetch


def test_fetch_downloads_and_verifies(tmp_path, file_server):
    site, base = file_server
    folder = site / "corpus"
    folder.mkdir()
    text = _official_yaml([("brush hair", "brush hair", _stages("brush")), ("Clap", "clap", _stages("clap"))])
    (folder / "classes_hmdb51.yml").write_text(text)
    (folder / "classes_kinetics.yml").write_text(text)
    (folder / "classes_ucf101.yml").write_text("a: ['x', 'y'\n")  # does not parse

    out = tmp_path / "hmdb.yml"
    result = _run_main("fetch", "--dataset", "hmdb51", "--out", str(out), "--base-url", f"{base}/corpus/")
    assert result.returncode == 0, result.stderr
    assert out.read_text() == text  # the authors' bytes, unchanged
    assert "wrote 2 classes" in result.stdout

    as_json = tmp_path / "kinetics.json"
    result = _run_main("fetch", "--dataset", "kinetics", "--out", str(as_json), "--base-url", f"{base}/corpus")
    assert result.returncode == 0, result.stderr
    assert load_corpus(as_json) == load_corpus(out)
    assert json.loads(as_json.read_text())["Clap"]["label"] == "clap"

    broken = _run_main(
        "fetch", "--dataset", "ucf101", "--out", str(tmp_path / "ucf.yml"), "--base-url", f"{base}/corpus"
    )
    _assert_one_line_error(broken)
    assert "classes_ucf101.yml: not a valid YAML corpus file" in broken.stderr
    assert not (tmp_path / "ucf.yml").exists()

    not_there = _run_main("fetch", "--dataset", "ssv2_small", "--base-url", f"{base}/corpus", cwd=tmp_path)
    _assert_one_line_error(not_there)
    assert f"{base}/corpus/classes_somethingcmn.yml: HTTP 404" in not_there.stderr


def test_fetch_ssv2_full_warns_that_the_file_is_the_ssv2_small_one(tmp_path, file_server):
    site, base = file_server
    (site / "classes_somethingotam.yml").write_text(
        _official_yaml([("pushing something", "Pushing something", _stages("push"))])
    )
    result = _run_cli("fetch", "--dataset", "ssv2_full", "--base-url", base, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "classes_somethingotam.yml").exists()  # default: the published name, here
    warning = result.stderr.strip().splitlines()[0]
    assert warning.startswith("warning:")
    assert "byte copy" in warning and "SSv2-Small" in warning and "generate" in warning


def test_fetch_asks_again_when_the_server_is_busy(tmp_path, monkeypatch):
    # A 503 and a 429 are answers worth waiting out (as for split lists): the third request gets the file.
    monkeypatch.setattr(http_retry, "DOWNLOAD_BACKOFF_S", 0.0)
    body = _official_yaml([("clap", "Clap", _stages("clap"))]).encode()
    answers = [503, 429, 200]

    class Busy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            status = answers.pop(0)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) if status == 200 else 0))
            self.end_headers()
            if status == 200:
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        result = _run_main("fetch", "--dataset", "hmdb51", "--base-url", base, cwd=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 0, result.stderr
    assert answers == [] and (tmp_path / "classes_hmdb51.yml").read_bytes() == body


def test_fetch_offline_says_which_url_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(http_retry, "DOWNLOAD_BACKOFF_S", 0.0)
    base = f"http://127.0.0.1:{_free_port()}/corpus/"
    result = _run_main("fetch", "--dataset", "hmdb51", "--base-url", base, cwd=tmp_path)
    _assert_one_line_error(result)
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"could not download {base}classes_hmdb51.yml" in line
    assert "--base-url" in line and "generate" in line
    assert not (tmp_path / "classes_hmdb51.yml").exists()


def test_load_corpus_does_not_warn_for_clean_files(tmp_path, caplog):
    path = tmp_path / "clean.yml"
    save_corpus({"clap": _stages("clap")}, path)
    with warnings.catch_warnings(), caplog.at_level("WARNING"):
        warnings.simplefilter("error")
        assert load_corpus(path) == {"clap": _stages("clap")}
    assert not caplog.records, caplog.text
