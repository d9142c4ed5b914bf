"""`evaluate --explain`: explanations (`taskadapter_fast.explanation`) of the queries of evaluated episodes
(`explanation.report.write_report` draws them)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..data.episodes import EpisodeLoader, EpisodePlan
from ..explanation import Explanation, explain


def query_name(loader: EpisodeLoader, plan: EpisodePlan, q: int) -> str:
    """'episode <i>, query <q>: <video file or folder name>' (its class is the true class the report shows)."""
    return f"episode {plan.index}, query {q + 1}: {Path(loader.rows[int(plan.query_rows[q])].path).name}"


def explain_episodes(
    model,
    loader: EpisodeLoader,
    plans: Sequence[EpisodePlan],
    corpus: Mapping[str, Sequence[str]] | None,
    *,
    inductive: bool = False,
    rollout: bool = False,
    static_prompt: bool = False,
    progress: bool = True,
) -> list[Explanation]:
    """An `Explanation` of every query of each plan (decoded again, in eval mode), scored as `evaluate` scores
    them (as one set, or each query alone when `inductive`), with their true classes."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    explanations, dtype = [], next(model.parameters()).dtype
    try:
        for plan in tqdm(plans, desc="explain", unit="episode", disable=not progress, file=sys.stderr):
            episode = loader.assemble(plan, loader.decode(plan))
            support, query = (x.to(device=model.device, dtype=dtype) for x in (episode.support, episode.query))
            names = [query_name(loader, plan, q) for q in range(query.shape[0])]
            explanations.append(
                explain(
                    model,
                    support,
                    episode.support_labels,
                    query,
                    episode.class_names,
                    corpus,
                    query_labels=episode.query_labels,
                    query_names=names,
                    inductive=inductive,
                    rollout=rollout,
                    static_prompt=static_prompt,
                )
            )
    finally:
        model.train(was_training)
    return explanations


def wrong_count(explanations: Sequence[Explanation]) -> int:
    return sum(int(w.sum()) for e in explanations if (w := e.wrong()) is not None)
