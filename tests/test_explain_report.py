"""Explanation reports: the HTML page rendered in a real headless browser (every image loads, the stage
tables hold the Explanation's numbers), and without a browser: self-contained, names verbatim, wrong predictions
first, one PNG per query, the optional parts only when asked for."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import os
import re
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from helpers import S, T, randomize_adapters
from PIL import Image

import taskadapter_fast as taf
from taskadapter_fast.data.decode_common import CLIP_MEAN, CLIP_STD
from taskadapter_fast.explanation.report import save_html, save_pngs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["Pouring [something] into [something]", "a & <b>", "Moving $x$ left", "class 3", "class 4"]
CORPUS = {name: [f"{name}: it begins", f"{name}: it goes on", f"{name}: it ends"] for name in NAMES}
QUERY_NAMES = [f"clips/q{i} <{i}> & co.mp4" for i in range(10)]
COLOURS = torch.tensor([[1.0, 0.9, 0.2], [0.2, 0.6, 1.0], [1.0, 0.2, 0.2], [0.3, 1.0, 0.3], [1.0, 0.5, 1.0]])


def moving_square(kind: int, seed: int) -> torch.Tensor:
    """A normalised clip [T, 3, S, S]: a coloured square (colour and row by `kind`) moving right over a dim
    background, frame by frame (a picture a person recognises in the report)."""
    gen = torch.Generator().manual_seed(seed)
    pixels = 0.2 + 0.03 * torch.randn(T, 3, S, S, generator=gen)
    row = 4 + 5 * kind % (S - 10)
    for t in range(T):
        col = round(t * (S - 10) / (T - 1))
        pixels[t, :, row : row + 10, col : col + 10] = COLOURS[kind].view(3, 1, 1)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels.clamp(0, 1) - mean) / std


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize_adapters(taf.create_model("tiny").eval())


@pytest.fixture(scope="module")
def clips():
    support = torch.stack([moving_square(k, 100 + k) for k in range(5)])
    query = torch.stack([moving_square(k % 5, k) for k in range(10)])
    return support, torch.arange(5), query


def with_wrong_odd(e):
    """The explanation with true classes that make every odd query's prediction wrong and every even one right."""
    labels = e.predictions.clone()
    labels[1::2] = (labels[1::2] + 1) % len(e.class_names)
    return dataclasses.replace(e, query_labels=labels)


@pytest.fixture(scope="module")
def explanation(model, clips):
    """10 queries with the rollout and the static-prompt table; the odd queries predicted wrong."""
    support, labels, query = clips
    e = taf.explain(
        model, support, labels, query, NAMES, CORPUS, query_labels=torch.zeros(10, dtype=torch.long),
        query_names=QUERY_NAMES, rollout=True, static_prompt=True,
    )  # fmt: skip
    return with_wrong_odd(e)


@pytest.fixture(scope="module")
def small(model, clips):
    """Two explanations of 2 queries each, plain (no rollout, no static table); query 1 of each predicted wrong."""
    support, labels, query = clips
    return [
        with_wrong_odd(taf.explain(model, support, labels, query[i : i + 2], NAMES, CORPUS,
                                   query_labels=[0, 0], query_names=QUERY_NAMES[i : i + 2]))
        for i in (0, 2)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def report(explanation, tmp_path_factory):
    path = save_html([explanation], tmp_path_factory.mktemp("report") / "index.html")
    return path, path.read_text(encoding="utf-8")


class _Page(HTMLParser):
    """The text of a page as a browser shows it (entities decoded), the query sections' headings in order."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.text, self.headings, self._in_h2 = [], [], False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._in_h2 = True
            self.headings.append("")

    def handle_endtag(self, tag):
        self._in_h2 = self._in_h2 and tag != "h2"

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.headings[-1] += data


def images(text: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', text)


# ------------------------------------------------------------------------------------ a real browser
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium: the report is checked in a real browser only where Debian's chromium is installed")


def run_browser(tmp_path: Path, *args: str) -> str:
    """Headless chromium with `args`, its own profile, killed with all its processes if it runs past 120 s."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    process = subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("chromium ran past 120 s")
    assert process.returncode == 0, err[-2000:]
    return out


PROBE = """<script>
window.addEventListener("load", function () {
  var values = function (nodes) { return Array.from(nodes).map(function (n) { return n.dataset.value; }); };
  var tables = function (kind) {
    return Array.from(document.querySelectorAll("table." + kind)).map(function (table) {
      var rows = Array.from(table.querySelectorAll("tbody tr")).filter(function (r) {
        return r.querySelector("td.stage-cell"); });
      return {cells: rows.map(function (r) { return values(r.querySelectorAll("td.stage-cell")); }),
              means: values(table.querySelectorAll("td.stage-mean"))};
    });
  };
  var result = {
    images: Array.from(document.images).map(function (i) { return [i.complete, i.naturalWidth, i.naturalHeight]; }),
    stages: tables("stage-table"), statics: tables("static-stage-table"),
    headings: Array.from(document.querySelectorAll("section.query h2")).map(function (h) { return h.textContent; }),
  };
  var pre = document.createElement("pre");
  pre.id = "taf-test";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def test_report_in_a_real_browser(report, explanation, tmp_path):
    path, text = report
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")  # a copy: the report has no script
    dom = run_browser(tmp_path, "--dump-dom", "--virtual-time-budget=10000", probed.as_uri())
    found = re.search(r'<pre id="taf-test">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run: " + dom[-500:]
    result = json.loads(html.unescape(found.group(1)))
    Q, S_, C = explanation.stage_similarity.shape
    assert len(result["images"]) == 3 * Q  # frames (with the rollout row), Task-MSA matrix, score bars
    assert all(complete and width > 0 and height > 0 for complete, width, height in result["images"])
    assert len(result["stages"]) == len(result["statics"]) == Q
    for q in range(Q):
        table = result["stages"][q]
        assert table["cells"] == [
            [repr(float(explanation.stage_similarity[q, s, c])) for c in range(C)] for s in range(S_)
        ]
        assert table["means"] == [repr(float(v)) for v in explanation.semantic_score[q]]
        static = result["statics"][q]["cells"]
        assert static == [
            [repr(float(explanation.static_stage_similarity[q, s, c])) for c in range(C)] for s in range(S_)
        ]
        assert QUERY_NAMES[q] in result["headings"][q]  # names verbatim as the browser shows them
    assert [("WRONG" in h) for h in result["headings"]] == [q % 2 == 1 for q in range(Q)]

    shot = tmp_path / "screenshot.png"
    run_browser(tmp_path, f"--screenshot={shot}", "--window-size=1400,2600", "--hide-scrollbars", path.as_uri())
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (1400, 2600)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 2000  # heat maps and frames, not a blank or text-only page


# ---------------------------------------------------------------------------------- without a browser
def test_report_is_self_contained_and_names_are_verbatim(report, explanation):
    _, text = report
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text
    sources = images(text)
    assert len(sources) == 3 * explanation.num_queries
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as image:
            assert image.format == "PNG"
            image.verify()
    page = _Page(text)
    shown = "".join(page.text)
    for name in NAMES + QUERY_NAMES:
        assert name in shown
    assert [h.split(" ", 1)[1].rsplit(" ", 1)[0] for h in page.headings] == QUERY_NAMES
    assert "10 queries, 5 wrong" in shown
    assert "stage 1 (aligned features 1-" in shown and "mean = Ṗ" in shown
    assert "attention rollout" in shown and text.count('class="static-stage-table"') == 10


def test_wrong_first_and_pngs_in_report_order(small, tmp_path):
    text = save_html(small, tmp_path / "index.html", wrong_first=True).read_text(encoding="utf-8")
    order = [h.split(" ", 1)[1].rsplit(" ", 1)[0] for h in _Page(text).headings]
    assert order == [QUERY_NAMES[1], QUERY_NAMES[3], QUERY_NAMES[0], QUERY_NAMES[2]]  # wrong ones, then the rest
    assert "4 queries, 2 wrong" in text and "(wrong predictions first)" in text
    shown = "".join(_Page(text).text)
    assert "attention rollout" not in shown and "static-stage-table" not in text  # not asked for
    assert len(images(text)) == 3 * 4

    paths = save_pngs(small, tmp_path / "png")
    assert [p.name for p in paths] == sorted(p.name for p in (tmp_path / "png").iterdir())
    assert [p.name for p in paths] == [f"00{n}_q{i}_{i}_co.mp4.png" for n, i in enumerate(range(4), start=1)]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 600 and image.size[1] > 800


def test_task_adapters_off_inductive_and_no_semantic_branch(clips, tmp_path):
    support, labels, query = clips
    torch.manual_seed(0)
    aim = taf.create_model("tiny", task_adapter=False).eval()
    e = taf.explain(aim, support, labels, query[:1], NAMES, CORPUS, query_labels=[0])
    text = e.save_html(tmp_path / "aim.html").read_text(encoding="utf-8")
    assert "no Task-MSA (task adapters off)" in text and len(images(text)) == 2  # frames and bars, no matrix
    assert [p.name for p in e.save_png(tmp_path / "aim")] == ["001_query_1.png"]

    torch.manual_seed(0)
    model = taf.create_model("tiny").eval()
    e = taf.explain(model, support, labels, query[:2], NAMES, CORPUS, inductive=True)
    text = e.save_html(tmp_path / "inductive.html").read_text(encoding="utf-8")
    assert "each query encoded alone: its Task-MSA sees only itself" in text and len(images(text)) == 6
    assert "true class unknown" in text and "2 queries, true classes unknown" in text

    video = taf.create_model("tiny", score="video").eval()
    e = taf.explain(video, support, labels, query[:1], NAMES, None)
    text = e.save_html(tmp_path / "video.html").read_text(encoding="utf-8")
    assert "no semantic branch" in text and "stage-table" not in text
