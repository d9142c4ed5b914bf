"""Reports of explanations (the paper's Fig. 11): one self-contained HTML page, and one PNG per query.

A query's part shows, in order: its T frames with the class token's spatial attention over them (and the
rollout, when collected), its Task-MSA attention over the videos of its set, the stage table of eqs. (16)-(17)
(and the static-prompt table, when collected), and the per-class scores P, Ṗ and P ⊙ Ṗ. The HTML page embeds
every picture as a data URI and needs no script and no network; the PNGs draw the same four parts in one figure.
Figures are `matplotlib.figure.Figure` objects rendered by Agg, never pyplot's global state.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .._atomic import atomic_savefig, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

    from .collect import Explanation

DPI = 100  # enough to read the labels; a query's pictures take about 300 kB (5 classes, 8 frames)
HEAT = "turbo"  # the attention overlay's colour map
PRED_COLOUR, TRUE_COLOUR, OTHER_COLOUR = "#d95f02", "#1b9e77", "#9fb3d1"
SPATIAL_LABEL = "colour: share of the class token's attention (last adapted block, mean over heads)"
ROLLOUT_LABEL = "colour: share of the class token's attention, rolled out through the adapted blocks"
TASK_LABEL = "share of the frame's Task-MSA attention\n(class token, last adapted block,\nmean over heads)"
INDUCTIVE_NOTE = "each query encoded alone: its Task-MSA sees only itself"
NO_TASK_NOTE = "no Task-MSA (task adapters off): no attention across the videos of the set"
STAGE_TEXTS_UP_TO = 10  # the PNG's stage table writes each stage's text in its cell up to this many classes
NO_SEMANTIC_NOTE = "the model has no semantic branch (score = video): no stage table and no Ṗ"

Item = tuple["Explanation", int]  # an explanation and one of its queries


# ----------------------------------------------------------------------------------------------- helpers
def _ordered(explanations: Sequence[Explanation], wrong_first: bool) -> list[Item]:
    """Every query of every explanation, in the given order; wrong predictions first if asked for."""
    items, wrong = [], []
    for e in explanations:
        flags = e.wrong()
        for q in range(e.num_queries):
            items.append((e, q))
            wrong.append(flags is not None and bool(flags[q]))
    if not wrong_first:
        return items
    return [i for i, w in zip(items, wrong, strict=True) if w] + [i for i, w in zip(items, wrong, strict=True) if not w]


def _mpl(text: str) -> str:
    """Text as Matplotlib shows it verbatim: a `$` would start math mode."""
    return text.replace("$", r"\$")


def _wrap(text: str, width: int) -> str:
    return _mpl(textwrap.fill(text, width)) if text else ""


def _true_class(e: Explanation, q: int) -> int | None:
    return None if e.query_labels is None else int(e.query_labels[q])


def _status(e: Explanation, q: int) -> str:
    true = _true_class(e, q)
    return "unknown" if true is None else ("correct" if true == int(e.predictions[q]) else "wrong")


def _class_marks(e: Explanation, q: int, c: int) -> list[str]:
    marks = ["predicted"] if c == int(e.predictions[q]) else []
    return marks + (["true"] if c == _true_class(e, q) else [])


def _stage_label(e: Explanation, s: int) -> str:
    if s < len(e.stage_frames):
        lo, hi = e.stage_frames[s]
        return f"stage {s + 1} (aligned features {lo + 1}-{hi + 1})"
    return f"stage {s + 1}"


def _stage_text(e: Explanation, c: int, s: int) -> str:
    texts = e.stage_texts[c] if c < len(e.stage_texts) else []
    return texts[s] if s < len(texts) else (texts[0] if len(texts) == 1 else "")


def _numbered(videos: Sequence[str]) -> bool:
    """Numbered columns (with a legend listing the names) where the names would not fit under the matrix."""
    return len(videos) > 12 or max(len(v) for v in videos) > 16


def _percent(probability: float) -> str:
    return "<0.1%" if 0 < probability < 0.001 else f"{probability:.1%}"


def _safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(name.rstrip("/")) or name).strip("._")
    return safe[:60] or "query"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------------------------- figures
def _frames_height(e: Explanation) -> float:
    return 0.4 + 2.35 * (1 if e.rollout is None else 2)


def _frames_width(e: Explanation) -> float:
    return 1.25 * e.frames.shape[1] + 2.6


def _draw_frames(fig: Figure | SubFigure, e: Explanation, q: int) -> None:
    """The T frames in order, each with an attention map overlaid; one colour scale (and bar) per row."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.ticker import PercentFormatter

    rows = [("spatial attention\n(last block)", e.spatial_attention[q], SPATIAL_LABEL)]
    if e.rollout is not None:
        rows.append(("attention\nrollout", e.rollout[q], ROLLOUT_LABEL))
    frames = e.frames[q]
    axes = fig.subplots(len(rows), frames.shape[0], squeeze=False)
    for r, (title, maps, label) in enumerate(rows):
        heat = F.interpolate(maps.float()[None], size=tuple(frames.shape[1:3]), mode="bilinear")[0]
        low, top = float(maps.min()), float(maps.max())
        norm = Normalize(low, max(top, low + 1e-12))  # the query's range, so that differences show
        for t, ax in enumerate(axes[r]):
            ax.imshow(frames[t].numpy())
            ax.imshow(heat[t].numpy(), cmap=HEAT, norm=norm, alpha=0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {t + 1}", fontsize=11)
        axes[r, 0].set_ylabel(title, fontsize=10)
        bar = fig.colorbar(
            ScalarMappable(norm, HEAT), ax=list(axes[r]), location="bottom", shrink=0.6, aspect=50,
            format=PercentFormatter(1.0, decimals=1),
        )  # fmt: skip
        bar.set_label(label, fontsize=9.5)
        bar.ax.tick_params(labelsize=8)


def _task_size(e: Explanation, q: int) -> tuple[float, float]:
    videos = len(e.task_videos[q])
    legend = 3.2 if _numbered(e.task_videos[q]) else 0.0
    return max(6.0, 0.55 * videos + 3.2) + legend, 0.32 * e.frames.shape[1] + 2.4


def _draw_task(fig: Figure | SubFigure, e: Explanation, q: int, legend: bool) -> None:
    """The query's Task-MSA matrix [T, V]: rows its frames, columns the videos of its set, its own marked."""
    from matplotlib.patches import Rectangle

    matrix, videos = e.task_attention[q].float(), e.task_videos[q]
    numbered, own = _numbered(videos), e.task_self[q]  # which of the videos is the query itself
    num_frames, num_videos = matrix.shape
    if numbered and legend:
        ax, text_ax = fig.subplots(1, 2, width_ratios=[max(3.0, 0.55 * num_videos), 3.2])
        lines = [f"{v + 1}: " + textwrap.fill(name, 48, subsequent_indent="    ") for v, name in enumerate(videos)]
        text_ax.text(0, 1, _mpl("\n".join(lines)), va="top", fontsize=8, transform=text_ax.transAxes)
        text_ax.axis("off")
    else:
        ax = fig.subplots()
    low, top = float(matrix.min()), float(matrix.max())
    if top - low < 1e-3:  # (nearly) uniform, e.g. a set of one: the whole probability scale
        low, top = 0.0, max(top, 1.0)
    image = ax.imshow(matrix.numpy(), cmap="Blues", vmin=low, vmax=top, aspect="auto")
    ticks = [str(v + 1) if numbered else _wrap(name, 16) for v, name in enumerate(videos)]
    ticks[own] += "\n(this query)"
    ax.add_patch(Rectangle((own - 0.5, -0.5), 1, num_frames, fill=False, edgecolor=PRED_COLOUR, lw=2.5))
    ax.set_xticks(range(num_videos), ticks, fontsize=9, rotation=0 if numbered or num_videos < 6 else 45)
    ax.set_yticks(range(num_frames), [f"frame {t + 1}" for t in range(num_frames)], fontsize=9)
    ax.set_xlabel("videos its Task-MSA attends over" + (" (numbered: see the list)" if numbered else ""), fontsize=10)
    if num_frames * num_videos <= 160:
        for t in range(num_frames):
            for v in range(num_videos):
                value = float(matrix[t, v])
                colour = "white" if value > low + 0.6 * (top - low) else "black"
                ax.text(v, t, f"{value:.3f}", ha="center", va="center", fontsize=7.5, color=colour)
    bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.02, format="%.3f")
    bar.set_label(TASK_LABEL, fontsize=8.5)
    bar.ax.tick_params(labelsize=8)
    title = "Task-MSA: how much each frame attends to each video" + (f" ({INDUCTIVE_NOTE})" if e.inductive else "")
    ax.set_title(textwrap.fill(title, 48), fontsize=11)


def _class_tick(e: Explanation, q: int, c: int, width: int) -> str:
    marks = _class_marks(e, q, c)
    return _wrap(e.class_names[c], width) + (f"\n({', '.join(marks)})" if marks else "")


def _bar_parts(e: Explanation) -> list[tuple[str, torch.Tensor]]:
    both = e.visual_score is not None and e.semantic_score is not None
    parts = [("P (visual)", e.visual_score), ("Ṗ (semantic)", e.semantic_score)]
    final = ("P ⊙ Ṗ (final score)" if both else "final score", e.scores)
    return [(name, values) for name, values in [*parts, final] if values is not None]


def _bars_height(e: Explanation) -> float:
    return 0.55 * len(e.class_names) + 1.4


def _draw_bars(fig: Figure | SubFigure, e: Explanation, q: int) -> None:
    """Per class: P, Ṗ and the final score as horizontal bars (three panels), the probability written beside."""
    from matplotlib.patches import Patch

    parts, classes = _bar_parts(e), len(e.class_names)
    predicted, true = int(e.predictions[q]), _true_class(e, q)
    axes = fig.subplots(1, len(parts), sharey=True, squeeze=False)[0]
    colours = [PRED_COLOUR if c == predicted else OTHER_COLOUR for c in range(classes)]
    edges = [TRUE_COLOUR if c == true else "none" for c in range(classes)]
    probabilities = e.probabilities[q]
    for i, (ax, (name, values)) in enumerate(zip(axes, parts, strict=True)):
        values = values[q].float()
        lo, hi = min(0.0, float(values.min())), max(0.0, float(values.max()))
        span = (hi - lo) or 1.0
        ax.barh(range(classes), values.numpy(), color=colours, edgecolor=edges, linewidth=2.5)
        ax.set_xlim(lo - (0.05 * span if lo < 0 else 0), hi + 0.7 * span)
        ax.axvline(0, color="black", lw=0.6)
        for c, value in enumerate(values.tolist()):
            note = f"{value:.3f}" + (f"  (p {_percent(float(probabilities[c]))})" if i == len(parts) - 1 else "")
            ax.text(max(value, 0.0) + 0.02 * span, c, note, va="center", fontsize=8.5)
        ax.set_title(name, fontsize=11)
        ax.tick_params(labelsize=8.5)
    axes[0].set_yticks(range(classes), [_class_tick(e, q, c, 26) for c in range(classes)], fontsize=9)
    axes[0].invert_yaxis()
    legend = [Patch(color=PRED_COLOUR, label="predicted class"), Patch(color=OTHER_COLOUR, label="other class")]
    if true is not None:
        legend.append(Patch(facecolor="white", edgecolor=TRUE_COLOUR, linewidth=2.5, label="true class (outline)"))
    fig.legend(handles=legend, fontsize=9, loc="outside lower center", ncols=len(legend))


def _stage_size(e: Explanation) -> tuple[float, float]:
    per_class = 2.2 if len(e.class_names) <= STAGE_TEXTS_UP_TO else 1.1
    return per_class * len(e.class_names) + 3.0, 0.9 * (e.stage_similarity.shape[1] + 1) + 1.6


def _draw_stages(fig: Figure | SubFigure, e: Explanation, q: int, static: bool) -> None:
    """The stage table as an annotated heat map: stages (and the mean) x classes, with each stage's text."""
    table = (e.static_stage_similarity if static else e.stage_similarity)[q].float()
    mean = table.mean(0) if static else e.semantic_score[q].float()
    values = torch.cat([table, mean[None]])
    stages, classes = table.shape
    texts = classes <= STAGE_TEXTS_UP_TO  # more classes: the cells are too narrow for the texts (the HTML has them)
    ax = fig.subplots()
    image = ax.imshow(values.numpy(), cmap="Blues", aspect="auto", alpha=0.75)
    ax.axhline(stages - 0.5, color="black", lw=1.5)
    for s in range(stages + 1):
        for c in range(classes):
            text = "" if static or s == stages or not texts else "\n" + _wrap(_stage_text(e, c, s), 30)
            weight = "bold" if s == stages else "normal"
            ax.text(c, s, f"{values[s, c]:.3f}" + text, ha="center", va="center", fontsize=8.5, weight=weight)
    rows = [_stage_label(e, s) for s in range(stages)] + ["mean = Ṗ" if not static else "mean"]
    ax.set_yticks(range(stages + 1), [_wrap(r, 20) for r in rows], fontsize=9)
    ticks = [_class_tick(e, q, c, 24 if texts else 32) for c in range(classes)]
    ax.set_xticks(range(classes), ticks, fontsize=9, rotation=0 if texts else 50, ha="center" if texts else "left")
    ax.xaxis.tick_top()
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label(r"cosine $\cos(\bar{F}_Q[s], F_T^c[s])$", fontsize=9)
    title = (
        "static label prompt at every stage (the paper's comparison)"
        if static
        else "stage-wise matching, eqs. (16)-(17)"
    )
    ax.set_title(title, fontsize=11)


def _notes(e: Explanation) -> list[str]:
    notes = [NO_TASK_NOTE] if e.task_attention is None else ([INDUCTIVE_NOTE] if e.inductive else [])
    return notes + ([NO_SEMANTIC_NOTE] if e.stage_similarity is None else [])


def _headline(e: Explanation, q: int, width: int) -> str:
    """The query's name, then its verdict, each wrapped to `width` characters (a figure title is not wrapped)."""
    true = _true_class(e, q)
    status = {"correct": "CORRECT", "wrong": "WRONG", "unknown": "true class unknown"}[_status(e, q)]
    verdict = [f"predicted: {e.class_names[int(e.predictions[q])]}"]
    verdict += ([] if true is None else [f"true: {e.class_names[true]}"]) + [status]
    return "\n".join([textwrap.fill(e.query_names[q], width), textwrap.fill(" | ".join(verdict), width)])


def _composite(e: Explanation, q: int) -> Figure:
    """One figure with the four parts of a query, stacked (frames, Task-MSA, stage table(s), score bars), each at
    its own width from the left."""
    parts = [(_frames_width(e), _frames_height(e), lambda fig: _draw_frames(fig, e, q))]
    if e.task_attention is not None:
        parts.append((*_task_size(e, q), lambda fig: _draw_task(fig, e, q, legend=True)))
    if e.stage_similarity is not None:
        parts.append((*_stage_size(e), lambda fig: _draw_stages(fig, e, q, static=False)))
        if e.static_stage_similarity is not None:
            parts.append((*_stage_size(e), lambda fig: _draw_stages(fig, e, q, static=True)))
    parts.append((10.0, _bars_height(e), lambda fig: _draw_bars(fig, e, q)))
    width, heights = max(w for w, _, _ in parts), [h for _, h, _ in parts]
    figure = _figure(width, sum(heights) + 0.8)
    figure.suptitle(_mpl("\n".join([_headline(e, q, int(width * 8)), *_notes(e)])), fontsize=13)
    for sub, (part_width, _, draw) in zip(figure.subfigures(len(parts), 1, height_ratios=heights), parts, strict=True):
        draw(
            sub if part_width > width - 0.5 else sub.subfigures(1, 2, width_ratios=[part_width, width - part_width])[0]
        )
    return figure


def save_pngs(explanations: Sequence[Explanation], folder: str | os.PathLike, wrong_first: bool = False) -> list[Path]:
    """One PNG per query, `<folder>/<NNN>_<query name>.png` (NNN = 001.. in the report's order: as given, or the
    wrong predictions first); their paths."""
    items = _ordered([e.cpu() for e in explanations], wrong_first)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, (e, q) in enumerate(items, start=1):
        figure = _composite(e, q)
        paths.append(atomic_savefig(figure, folder / f"{number:03d}_{_safe_name(e.query_names[q])}.png", dpi=DPI))
        figure.clear()
    return paths


# -------------------------------------------------------------------------------------------------- HTML
def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _badges(marks: Sequence[str]) -> str:
    return "".join(f'<span class="badge {m}">{m}</span>' for m in marks)


def _image(draw, size: tuple[float, float], alt: str) -> str:
    figure = _figure(*size)
    draw(figure)
    uri = _data_uri(figure)
    figure.clear()
    return f'<img src="{uri}" alt="{_esc(alt)}">'


def _cell_colour(value: float, lo: float, hi: float) -> str:
    share = 0.5 if hi <= lo else (value - lo) / (hi - lo)
    return f"hsl(210, 75%, {97 - 22 * share:.1f}%)"  # a light blue, darker for a higher cosine


def _stage_table_html(e: Explanation, q: int, static: bool) -> str:
    """The stage table as HTML: S rows x C classes, each cell a cosine (3 decimals, full value in data-value) with
    the class's text for that stage; a last row with the mean over stages (Ṗ)."""
    table = (e.static_stage_similarity if static else e.stage_similarity)[q]
    mean = table.float().mean(0) if static else e.semantic_score[q]
    stages, classes = table.shape
    lo, hi = float(table.min()), float(table.max())
    marks = [_class_marks(e, q, c) for c in range(classes)]
    columns = [" ".join(f"col-{m}" for m in marks[c]) for c in range(classes)]
    head = "".join(
        f'<th scope="col" class="{columns[c]}">{_esc(e.class_names[c])}{_badges(marks[c])}</th>' for c in range(classes)
    )
    rows = []
    for s in range(stages):
        cells = []
        for c in range(classes):
            value = float(table[s, c])
            text = "" if static else f'<div class="stage-text">{_esc(_stage_text(e, c, s))}</div>'
            style = f"background:{_cell_colour(value, lo, hi)}"
            cells.append(
                f'<td class="stage-cell {columns[c]}" style="{style}" data-value="{value!r}">'
                f'<span class="num">{value:.3f}</span>{text}</td>'
            )
        rows.append(f'<tr><th scope="row">{_esc(_stage_label(e, s))}</th>{"".join(cells)}</tr>')
    means = "".join(
        f'<td class="stage-mean {columns[c]}" data-value="{float(mean[c])!r}"><span class="num">{float(mean[c]):.3f}'
        "</span></td>"
        for c in range(classes)
    )
    rows.append(f'<tr class="mean-row"><th scope="row">{"mean" if static else "mean = Ṗ"}</th>{means}</tr>')
    kind = "static-stage-table" if static else "stage-table"
    caption = (
        "The same table with the static label prompt at every stage, in place of the sub-action texts (the paper's "
        "comparison, Fig. 11)"
        if static
        else "Cos(F̄<sub>Q</sub>[s], F<sub>T</sub><sup>c</sup>[s]) of eqs. (16)-(17): each stage of the aligned query "
        "against each class's sub-action text for that stage (written in the cell)"
    )
    return (
        f'<table class="{kind}"><caption>{caption}</caption><thead><tr><th>stage / class</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _frames_caption(e: Explanation) -> str:
    text = (
        "Each frame (in order) with the share of the class token's attention on each patch, last adapted block, "
        "mean over heads; one colour scale for all frames of the query."
    )
    if e.rollout is not None:
        text += " Second row: the attention rollout through the adapted blocks, on its own colour scale."
    return f'<p class="caption">{_esc(text)}</p>'


def _task_html(e: Explanation, q: int) -> str:
    if e.task_attention is None:
        return f'<p class="note">{_esc(NO_TASK_NOTE)}</p>'
    note = f'<p class="note">{_esc(INDUCTIVE_NOTE)}</p>' if e.inductive else ""
    image = _image(lambda fig: _draw_task(fig, e, q, legend=False), _task_size(e, q), "Task-MSA attention matrix")
    legend = ""
    if _numbered(e.task_videos[q]):
        items = "".join(f"<li>{_esc(name)}</li>" for name in e.task_videos[q])
        legend = f'<div class="legend">Columns:<ol>{items}</ol></div>'
    return f'{note}<div class="task">{image}{legend}</div>'


def _probabilities_html(e: Explanation, q: int) -> str:
    probabilities = e.probabilities[q].tolist()
    items = "".join(
        f"<li>{_esc(name)}{_badges(_class_marks(e, q, c))}: <b>{_esc(_percent(probabilities[c]))}</b></li>"
        for c, name in enumerate(e.class_names)
    )
    return f'<div class="probs">Probability of each class (softmax of {e.logit_scale:g} × score):<ul>{items}</ul></div>'


def _section_html(e: Explanation, q: int, number: int) -> str:
    """A query's section: its header (name, predicted and true class, CORRECT/WRONG), then the four parts."""
    status, true = _status(e, q), _true_class(e, q)
    badge = {"correct": "CORRECT", "wrong": "WRONG", "unknown": "true class unknown"}[status]
    facts = f"predicted: <b>{_esc(e.class_names[int(e.predictions[q])])}</b>"
    facts += "" if true is None else f" &nbsp;·&nbsp; true: <b>{_esc(e.class_names[true])}</b>"
    frames = _image(lambda fig: _draw_frames(fig, e, q), (_frames_width(e), _frames_height(e)), "frames")
    if e.stage_similarity is None:
        stages = f'<p class="note">{_esc(NO_SEMANTIC_NOTE)}</p>'
    else:
        stages = _stage_table_html(e, q, static=False)
        if e.static_stage_similarity is not None:
            stages += _stage_table_html(e, q, static=True)
    bars = _image(lambda fig: _draw_bars(fig, e, q), (10.0, _bars_height(e)), "scores")
    return (
        f'<section class="query {status}" id="query-{number}">'
        f'<h2>{number}. {_esc(e.query_names[q])} <span class="status {status}">{badge}</span></h2>'
        f'<p class="facts">{facts}</p>'
        f"<h3>Frames as the model saw them, and where the class token looked</h3>{frames}{_frames_caption(e)}"
        f"<h3>Task-MSA across the videos of the set</h3>{_task_html(e, q)}"
        f"<h3>Stage-wise matching against each class</h3>{stages}"
        f"<h3>Scores: P (visual), Ṗ (semantic), P ⊙ Ṗ (final)</h3>{bars}{_probabilities_html(e, q)}"
        "</section>"
    )


CSS = """
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; margin: 1.5em; color: #222; }
header { border-bottom: 2px solid #444; margin-bottom: 1em; }
section.query { border: 1px solid #ccc; border-left: 8px solid #888; padding: 0.5em 1em 1em; margin: 1.5em 0; }
section.correct { border-left-color: #1b9e77; } section.wrong { border-left-color: #c0392b; }
h2 { margin: 0.3em 0; } h3 { margin: 1em 0 0.3em; font-size: 1.05em; color: #333; }
.status { font-size: 0.8em; padding: 0.1em 0.5em; border-radius: 4px; color: white; background: #777; }
.status.correct { background: #1b9e77; } .status.wrong { background: #c0392b; }
.badge { font-size: 0.7em; font-weight: bold; padding: 0 0.35em; margin-left: 0.4em; border-radius: 3px;
  color: white; white-space: nowrap; }
.badge.predicted { background: #d95f02; } .badge.true { background: #1b9e77; }
img { max-width: 100%; height: auto; display: block; }
.task { display: flex; gap: 1em; align-items: flex-start; flex-wrap: wrap; }
.legend ol { margin: 0.2em 0; padding-left: 2em; font-size: 0.85em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
caption { caption-side: top; text-align: left; font-size: 0.85em; color: #555; padding-bottom: 0.3em; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.5em; vertical-align: top; }
thead th { background: #f3f3f3; max-width: 14em; }
td.stage-cell, td.stage-mean { min-width: 8em; max-width: 16em; }
td .num { font-weight: bold; font-family: "DejaVu Sans Mono", monospace; }
.stage-text { font-size: 0.78em; color: #444; margin-top: 0.15em; }
tr.mean-row td, tr.mean-row th { border-top: 2px solid #444; background: #fafafa; }
.col-predicted { outline: 2px solid #d95f02; outline-offset: -2px; }
.col-true:not(.col-predicted) { outline: 2px dashed #1b9e77; outline-offset: -2px; }
.caption { font-size: 0.85em; color: #555; margin: 0.2em 0; }
.note { background: #fff7d6; border: 1px solid #e6c200; padding: 0.3em 0.6em; display: inline-block; }
.probs ul { columns: 2; margin: 0.2em 0; } .probs { font-size: 0.9em; }
"""


def _page_header(title: str, explanations: Sequence[Explanation], items: Sequence[Item], wrong_first: bool) -> str:
    known = [item for item in items if _status(*item) != "unknown"]
    wrong = sum(_status(*item) == "wrong" for item in known)
    counts = f"{len(items)} quer{'y' if len(items) == 1 else 'ies'}, "
    counts += f"{wrong} wrong" if known else "true classes unknown"
    if known and len(known) < len(items):
        counts += f" (of {len(known)} with a known true class)"
    summaries = dict.fromkeys(e.model_summary for e in explanations if e.model_summary)
    return (
        f"<header><h1>{_esc(title)}</h1>"
        + "".join(f'<p class="summary">Model: {_esc(s)}</p>' for s in summaries)
        + f'<p class="counts"><b>{counts}</b>{" (wrong predictions first)" if wrong_first else ""}</p>'
        "<p>For each query: its frames with the class token's attention (a heat map over each frame, one colour "
        "scale per row), its Task-MSA attention over the videos of its set, the stage-wise cosines against each "
        "class (with the class's sub-action texts) and the scores they make. The predicted class is marked orange, "
        "the true class green.</p></header>"
    )


def save_html(
    explanations: Sequence[Explanation],
    path: str | os.PathLike,
    title: str | None = None,
    wrong_first: bool = False,
) -> Path:
    """One self-contained HTML page (pictures as data URIs, no script, no network) with a section per query of
    every explanation, in the given order, or the wrong predictions first (`wrong_first`); written atomically."""
    explanations = [e.cpu() for e in explanations]
    items = _ordered(explanations, wrong_first)
    title = title or "Task-Adapter++: why each query got its class"
    sections = "".join(_section_html(e, q, number) for number, (e, q) in enumerate(items, start=1))
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{CSS}</style></head><body>{_page_header(title, explanations, items, wrong_first)}"
        f"{sections}</body></html>\n"
    )
    return atomic_write_text(path, page)


def write_report(
    explanations: Sequence[Explanation], folder: str | os.PathLike, title: str, wrong_first: bool = True
) -> tuple[Path, list[Path]]:
    """`folder/index.html` and a PNG per query beside it, numbered alike (wrong predictions first where the true
    classes are known) -> (the page, the PNGs). What `predict --explain` and `evaluate --explain` write."""
    explanations = [e.cpu() for e in explanations]
    page = save_html(explanations, Path(folder) / "index.html", title=title, wrong_first=wrong_first)
    return page, save_pngs(explanations, folder, wrong_first=wrong_first)
