"""Video-metric heads (taskadapter_fast.model.metrics): hand-known cases and the symmetries of an episode."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from taskadapter_fast.model.metrics import DEFAULT_METRIC, METRICS, VideoMetric, build_metric

EMBED_DIM = 16
NUM_FRAMES = 5
# heads whose score is a cosine or a mean of cosines (OTAM with the exact minimum)
COSINE_HEADS = [("proto_mean", {}), ("proto_frame", {}), ("otam", {"temperature": 0.0}), ("bimhm", {})]
TRX_ONE_CARDINALITY = [("trx", {"cardinalities": (2,)}), ("trx", {"cardinalities": (3,)})]
ALL_HEADS = [*COSINE_HEADS, ("otam", {}), ("trx", {}), *TRX_ONE_CARDINALITY]


def head_id(name: str, options: dict) -> str:
    return name + "".join(f"-{key}={value}" for key, value in options.items())


HEAD_IDS = [head_id(name, options) for name, options in ALL_HEADS]
# TRX's attention spreads over every support tuple of a class, so a perfect match is only
# guaranteed to win when each class holds a single tuple: T equal to the one tuple size, one shot
MATCH_HEADS = [*COSINE_HEADS, ("otam", {}), *TRX_ONE_CARDINALITY]


def make_head(name: str, embed_dim: int = EMBED_DIM, num_frames: int = NUM_FRAMES, **options) -> VideoMetric:
    """A float64 head; TRX gets a small key/value width and seeded parameters."""
    if name == "trx":
        options.setdefault("trx_dim", 24)
        torch.manual_seed(0)
    return build_metric(name, embed_dim, num_frames, **options).double()


def random_feats(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def basis(indices: list[int], dim: int = EMBED_DIM) -> torch.Tensor:
    """A sequence of unit basis vectors e_i: [len(indices), dim]."""
    return torch.eye(dim, dtype=torch.float64)[indices]


# --------------------------------------------------------------------------------------------- registry


def test_registry_names_and_default():
    assert METRICS == ("proto_mean", "proto_frame", "otam", "trx", "bimhm")
    assert DEFAULT_METRIC == "proto_mean"
    for name in METRICS:
        head = build_metric(name, EMBED_DIM, NUM_FRAMES)
        assert isinstance(head, VideoMetric) and head.name == name


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(ValueError, match="'protonet'") as error:
        build_metric("protonet", EMBED_DIM, NUM_FRAMES)
    for name in METRICS:
        assert name in str(error.value)


def test_unknown_option_is_an_error():
    with pytest.raises(ValueError, match="cardinalities.*accepts: temperature"):
        build_metric("otam", EMBED_DIM, NUM_FRAMES, cardinalities=(2,))
    with pytest.raises(ValueError, match="temperature.*accepts: none"):
        build_metric("proto_mean", EMBED_DIM, NUM_FRAMES, temperature=0.1)


def test_only_trx_has_parameters_and_their_count():
    for name in METRICS:
        head = build_metric(name, EMBED_DIM, NUM_FRAMES, **({"trx_dim": 24} if name == "trx" else {}))
        assert head.has_parameters == (name == "trx")
        if name == "trx":
            assert all(p.requires_grad for p in head.parameters())
            # per cardinality w: key and value Linear(w*E -> D) with bias, and LayerNorm(D) on the keys
            expected = sum(2 * (w * EMBED_DIM * 24 + 24) + 2 * 24 for w in (2, 3))
            assert sum(p.numel() for p in head.parameters()) == expected == 4032
    assert build_metric("trx", EMBED_DIM, NUM_FRAMES).trx_dim == 1152


@pytest.mark.parametrize(
    "options, message",
    [
        ({}, r"tuples of 3 frames need num_frames >= 3, got num_frames=2"),
        ({"cardinalities": ()}, "non-empty"),
        ({"cardinalities": (0,)}, "ints >= 1"),
        ({"cardinalities": (2, 2)}, "must not repeat"),
        ({"cardinalities": (2,), "trx_dim": 0}, "trx_dim must be a positive int"),
    ],
)
def test_trx_rejects_bad_configuration(options, message):
    with pytest.raises(ValueError, match=message):
        build_metric("trx", EMBED_DIM, 2, **options)


@pytest.mark.parametrize("temperature", [-0.1, float("nan"), float("inf"), "0.1"])
def test_otam_rejects_bad_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        build_metric("otam", EMBED_DIM, NUM_FRAMES, temperature=temperature)


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("name", METRICS)
def test_bad_shapes_are_named(name):
    head = make_head(name)
    support, query = random_feats(3, 2, NUM_FRAMES, EMBED_DIM), random_feats(4, NUM_FRAMES, EMBED_DIM)
    with pytest.raises(ValueError, match=r"support_feats must be 4-D \[C, K, T, E\].*\(6, 5, 16\)"):
        head(support.flatten(0, 1), query)
    with pytest.raises(ValueError, match=r"query_feats must be 3-D \[M, T, E\].*\(20, 16\)"):
        head(support, query.flatten(0, 1))
    with pytest.raises(ValueError, match=r"must agree on T and E.*\(3, 2, 5, 16\).*\(4, 4, 16\)"):
        head(support, query[:, :4])
    with pytest.raises(ValueError, match=r"num_frames = 5 and E = embed_dim = 16.*\(4, 5, 8\)"):
        head(support[..., :8], query[..., :8])
    with pytest.raises(ValueError, match=r"every dimension must be at least 1.*\(3, 0, 5, 16\)"):
        head(support[:, :0], query)
    with pytest.raises(ValueError, match="query_feats must be a floating-point tensor"):
        head(support, query.long())


# --------------------------------------------------------------------------------- identical sequences


@pytest.mark.parametrize("name, options", COSINE_HEADS, ids=[n for n, _ in COSINE_HEADS])
def test_identical_sequences_score_exactly_one_and_nothing_scores_higher(name, options):
    head = make_head(name, **options)
    videos = random_feats(3, NUM_FRAMES, EMBED_DIM)
    support = torch.stack([videos, videos], dim=1)  # [3, 2, T, E]: each class = two copies of one video
    scores = head(support, videos)  # query i = the video of class i
    torch.testing.assert_close(scores.diagonal(), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    off_diagonal = scores[~torch.eye(3, dtype=torch.bool)]
    assert (off_diagonal < 0.99).all()
    # a cosine (or a mean of cosines) is at most 1 and at least -1 on any input
    random_scores = head(random_feats(4, 3, NUM_FRAMES, EMBED_DIM, seed=1), random_feats(6, NUM_FRAMES, EMBED_DIM))
    assert (random_scores <= 1 + 1e-12).all() and (random_scores >= -1 - 1e-12).all()


@pytest.mark.parametrize("name, options", COSINE_HEADS, ids=[n for n, _ in COSINE_HEADS])
def test_opposite_static_videos_score_minus_one(name, options):
    frame = random_feats(EMBED_DIM)
    support = frame.expand(1, 1, NUM_FRAMES, EMBED_DIM)
    scores = make_head(name, **options)(support, -3 * frame.expand(1, NUM_FRAMES, EMBED_DIM))
    torch.testing.assert_close(scores, torch.full((1, 1), -1.0, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, options", COSINE_HEADS, ids=[n for n, _ in COSINE_HEADS])
def test_single_frame_reduces_to_the_cosine(name, options):
    support, query = random_feats(3, 1, 1, EMBED_DIM), random_feats(4, 1, EMBED_DIM, seed=1)
    expected = F.normalize(query[:, 0], dim=-1) @ F.normalize(support[:, 0, 0], dim=-1).T
    torch.testing.assert_close(make_head(name, num_frames=1, **options)(support, query), expected)


@pytest.mark.parametrize("name, options", MATCH_HEADS, ids=[head_id(*head) for head in MATCH_HEADS])
def test_query_equal_to_class_two_support_is_class_two(name, options):
    num_frames = options["cardinalities"][0] if name == "trx" else NUM_FRAMES
    head = make_head(name, num_frames=num_frames, **options)
    support = random_feats(4, 1, num_frames, EMBED_DIM)
    scores = head(support, support[2, 0][None])
    assert scores.argmax(dim=1).item() == 2
    if name == "trx":
        torch.testing.assert_close(scores[0, 2], torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------ ProtoNet readings


def test_proto_mean_and_proto_frame_by_hand():
    # query e0, e1 against support e1, e0: same temporal mean, frames never agree
    query = basis([0, 1])[None]
    support = basis([1, 0])[None, None]
    torch.testing.assert_close(make_head("proto_mean", num_frames=2)(support, query).item(), 1.0)
    torch.testing.assert_close(make_head("proto_frame", num_frames=2)(support, query).item(), 0.0)
    # two shots (e0, e1) and (e0, e2): prototype (e0, (e1 + e2)/2)
    support = torch.stack([basis([0, 1]), basis([0, 2])])[None]
    # frame-wise: (cos(e0, e0) + cos(e1, e1 + e2)) / 2 = (1 + 1/sqrt 2) / 2
    frame_score = make_head("proto_frame", num_frames=2)(support, query).item()
    torch.testing.assert_close(frame_score, (1 + 1 / math.sqrt(2)) / 2)
    # temporal means: (e0 + e1)/2 against e0/2 + e1/4 + e2/4 -> 0.375 / (sqrt(0.5) sqrt(0.375)) = sqrt(3)/2
    torch.testing.assert_close(make_head("proto_mean", num_frames=2)(support, query).item(), math.sqrt(3) / 2)


# ------------------------------------------------------------------------------------------------ OTAM


def test_otam_penalises_time_reversal_where_proto_mean_cannot():
    support = random_feats(1, 1, NUM_FRAMES, EMBED_DIM)
    query = torch.stack([support[0, 0], support[0, 0].flip(0)])  # [2, T, E]: the video, then it reversed
    for temperature in (0.1, 0.0):
        otam = make_head("otam", temperature=temperature)(support, query)[:, 0]
        assert otam[1] < otam[0] - 0.1
    proto_mean = make_head("proto_mean")(support, query)[:, 0]
    torch.testing.assert_close(proto_mean[1], proto_mean[0], rtol=0, atol=1e-12)


def test_otam_aligns_a_shifted_video_that_proto_frame_misreads():
    # class A: e0..e7; the query is A one frame ahead (last frame held): e1..e7, e7.
    # class B: each query frame mixed half-and-half with a fresh direction, cos = 1/sqrt 2 frame by frame
    class_a = basis(list(range(8)))
    query = basis([1, 2, 3, 4, 5, 6, 7, 7])
    class_b = (query + basis(list(range(8, 16)))) / math.sqrt(2)
    support = torch.stack([class_a, class_b])[:, None]  # [2, 1, 8, 16]
    frame = make_head("proto_frame", num_frames=8)(support, query[None])[0]
    otam = make_head("otam", num_frames=8, temperature=0.0)(support, query[None])[0]
    # proto_frame: only the last frames agree with A -> 1/8; B -> 1/sqrt 2: B wins
    torch.testing.assert_close(frame, torch.tensor([1 / 8, 1 / math.sqrt(2)], dtype=torch.float64))
    # OTAM, query rows: A's frame e0 has no partner (distance 1), the rest match: 1 - 1/8; support
    # rows: A's e0 is skipped through the padding, every query frame matches: 1. Mean 0.9375.
    # B: every matched pair costs at least 1 - 1/sqrt 2 and the diagonal achieves it: 1/sqrt 2.
    torch.testing.assert_close(otam, torch.tensor([0.9375, 1 / math.sqrt(2)], dtype=torch.float64))
    assert make_head("otam", num_frames=8)(support, query[None]).argmax().item() == 0


def test_otam_aligns_a_slow_motion_video():
    # query: the first half of the support played at half speed
    support = basis(list(range(8)))[None, None]
    query = basis([0, 0, 1, 1, 2, 2, 3, 3])[None]
    frame = make_head("proto_frame", num_frames=8)(support, query).item()
    torch.testing.assert_close(frame, 1 / 8)
    # support rows: each query frame finds its support frame, e4..e7 are skipped through the padding -> 0.
    # query rows: each support frame e_j gets a query row, advancing at most one row per frame, so of
    # e0..e3 (free only on rows 2j, 2j+1) at most two in a row are free, and e4..e7 never are -> 2 + 4.
    # 1 - (0 + 6) / 16
    otam = make_head("otam", num_frames=8, temperature=0.0)(support, query).item()
    torch.testing.assert_close(otam, 0.625)
    assert make_head("otam", num_frames=8)(support, query).item() > 0.625


def _alignment_costs(distance: torch.Tensor) -> list[torch.Tensor]:
    """Every OTAM alignment of an [R, S] distance matrix: column j is matched to row a_j, the rows
    start anywhere, never go back and advance by at most one per column; cost = sum of D[a_j, j]."""
    num_rows, num_cols = distance.shape
    costs = []
    for steps in itertools.product((0, 1), repeat=num_cols - 1):
        for start in range(num_rows - sum(steps)):
            rows = [start + sum(steps[:j]) for j in range(num_cols)]
            costs.append(sum(distance[row, col] for col, row in enumerate(rows)))
    return costs


def _padded_path_costs(distance: torch.Tensor) -> list[torch.Tensor]:
    """Every monotone path through [0 | D | 0] from the top-left to the bottom-right cell: right and
    down-right steps everywhere, straight-down steps only in the two padding columns."""
    num_rows, num_cols = distance.shape
    padded = F.pad(distance, (1, 1))
    last_col = num_cols + 1
    costs = []

    def walk(row: int, col: int, cost: torch.Tensor) -> None:
        cost = cost + padded[row, col]
        if (row, col) == (num_rows - 1, last_col):
            costs.append(cost)
            return
        if col < last_col:
            walk(row, col + 1, cost)
            if row < num_rows - 1:
                walk(row + 1, col + 1, cost)
        if col in (0, last_col) and row < num_rows - 1:
            walk(row + 1, col, cost)

    walk(0, 0, distance.new_zeros(()))
    return costs


@pytest.mark.parametrize("temperature", [0.0, 0.1, 0.5])
def test_otam_equals_enumeration_of_alignments(temperature):
    num_frames = 4
    support = random_feats(2, 2, num_frames, EMBED_DIM)
    query = random_feats(2, num_frames, EMBED_DIM, seed=1)
    scores = make_head("otam", num_frames=num_frames, temperature=temperature)(support, query)
    expected = torch.empty(2, 2, dtype=torch.float64)
    for q, c in itertools.product(range(2), range(2)):
        per_shot = []
        for k in range(2):
            distance = 1 - F.normalize(query[q], dim=-1) @ F.normalize(support[c, k], dim=-1).T
            both_directions = []
            for matrix in (distance, distance.T):
                if temperature == 0:
                    # the exact minimum over alignments; the padded grid must give the same one
                    best = min(_alignment_costs(matrix))
                    torch.testing.assert_close(min(_padded_path_costs(matrix)), best)
                    both_directions.append(best)
                else:
                    costs = torch.stack(_padded_path_costs(matrix))
                    both_directions.append(-temperature * torch.logsumexp(-costs / temperature, dim=0))
            per_shot.append(sum(both_directions) / (2 * num_frames))
        expected[q, c] = 1 - sum(per_shot) / 2
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------------- Bi-MHM


def test_bimhm_by_hand():
    query = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)  # [1, 2, 2]
    support = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]], dtype=torch.float64)  # [1, 1, 2, 2]
    head = make_head("bimhm", embed_dim=2, num_frames=2)
    # S = [[1, 1], [0, 0]]: query frames' best matches 1 and 0 -> 1/2; support frames' 1 and 1 -> 1
    torch.testing.assert_close(head(support, query).item(), 0.75)
    # cosine ignores the frames' lengths, and Bi-MHM is symmetric in the two videos
    torch.testing.assert_close(head(support * torch.tensor([5.0, 0.5])[:, None], 2 * query).item(), 0.75)
    torch.testing.assert_close(head(query[None], support[0]).item(), 0.75)
    # a second shot identical to the query scores 1; shots are averaged
    two_shots = torch.cat([support, query[None]], dim=1)
    torch.testing.assert_close(head(two_shots, query).item(), 0.875)


# -------------------------------------------------------------------------------------------------- TRX


def test_trx_single_tuple_is_the_cosine_of_projected_values():
    # T = 2, pairs only: one tuple per video, so the prototype is the support's value itself
    head = make_head("trx", embed_dim=4, num_frames=2, cardinalities=(2,))
    support, query = random_feats(3, 1, 2, 4), random_feats(2, 2, 4, seed=1)
    # sinusoidal encoding for E = 4 (frequencies 1 and 1/100), scaled by 0.1
    position = 0.1 * torch.tensor([[0, 1, 0, 1], [math.sin(1), math.cos(1), math.sin(0.01), math.cos(0.01)]])

    def values(videos: torch.Tensor) -> torch.Tensor:
        value_proj = head.heads[0].value_proj
        return F.normalize(value_proj((videos + position).flatten(-2)), dim=-1)

    expected = values(query) @ values(support[:, 0]).T
    torch.testing.assert_close(head(support, query), expected, rtol=0, atol=1e-12)


def test_trx_attends_over_the_tuples_of_all_shots_of_a_class():
    # T = 2, pairs, K = 2: one tuple per shot; the query's tuple attends over both shots' tuples at once
    head = make_head("trx", embed_dim=4, num_frames=2, cardinalities=(2,))
    attention = head.heads[0]
    with torch.no_grad():  # a non-trivial key LayerNorm, so that its use shows
        attention.key_norm.weight.uniform_(0.5, 1.5)
        attention.key_norm.bias.uniform_(-0.5, 0.5)
    support, query = random_feats(1, 2, 2, 4), random_feats(1, 2, 4, seed=1)
    position = head.positional_encoding  # checked by hand in the test above
    tuples = [(video + position).flatten() for video in (query[0], support[0, 0], support[0, 1])]
    keys = [
        F.layer_norm(attention.key_proj(x), (24,), attention.key_norm.weight, attention.key_norm.bias) for x in tuples
    ]
    values = [F.normalize(attention.value_proj(x), dim=0) for x in tuples]
    weights = torch.softmax(torch.stack([keys[0] @ keys[1], keys[0] @ keys[2]]) / math.sqrt(24), dim=0)
    prototype = weights[0] * values[1] + weights[1] * values[2]
    expected = 1 - 0.5 * (values[0] - prototype).square().sum()
    torch.testing.assert_close(head(support, query)[0, 0], expected, rtol=0, atol=1e-12)


def test_trx_averages_its_cardinalities():
    support, query = random_feats(3, 2, NUM_FRAMES, EMBED_DIM), random_feats(4, NUM_FRAMES, EMBED_DIM, seed=1)
    both = make_head("trx")
    pairs = make_head("trx", cardinalities=(2,))
    triples = make_head("trx", cardinalities=(3,))
    pairs.heads[0].load_state_dict(both.heads[0].state_dict())
    triples.heads[0].load_state_dict(both.heads[1].state_dict())
    expected = (pairs(support, query) + triples(support, query)) / 2
    torch.testing.assert_close(both(support, query), expected, rtol=0, atol=1e-12)


def test_trx_repeated_shots_change_nothing():
    # attention over K copies of the same tuples gives the same prototype as over one copy
    head = make_head("trx")
    support, query = random_feats(3, 1, NUM_FRAMES, EMBED_DIM), random_feats(4, NUM_FRAMES, EMBED_DIM, seed=1)
    torch.testing.assert_close(head(support.expand(3, 4, -1, -1), query), head(support, query))


def test_trx_scores_stay_in_cosine_range():
    head = make_head("trx")
    scores = head(10 * random_feats(5, 3, NUM_FRAMES, EMBED_DIM), random_feats(7, NUM_FRAMES, EMBED_DIM, seed=1))
    assert scores.shape == (7, 5)
    assert (scores <= 1).all() and (scores >= -1).all()


def test_trx_gradients_reach_every_parameter():
    head = make_head("trx")
    support, query = random_feats(3, 2, NUM_FRAMES, EMBED_DIM), random_feats(3, NUM_FRAMES, EMBED_DIM, seed=1)
    F.cross_entropy(64 * head(support, query), torch.arange(3)).backward()
    for name, parameter in head.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------- episode symmetries


def _episode(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return random_feats(3, 4, NUM_FRAMES, EMBED_DIM, seed=seed), random_feats(5, NUM_FRAMES, EMBED_DIM, seed=seed + 1)


@pytest.mark.parametrize("name, options", ALL_HEADS, ids=HEAD_IDS)
def test_permuting_queries_classes_and_shots(name, options):
    head = make_head(name, **options)
    support, query = _episode()
    scores = head(support, query)
    assert scores.shape == (5, 3)
    query_order = torch.tensor([3, 0, 4, 2, 1])
    torch.testing.assert_close(head(support, query[query_order]), scores[query_order], rtol=0, atol=1e-12)
    class_order = torch.tensor([2, 0, 1])
    torch.testing.assert_close(head(support[class_order], query), scores[:, class_order], rtol=0, atol=1e-12)
    shot_orders = torch.stack([torch.tensor([1, 3, 0, 2]), torch.tensor([3, 2, 1, 0]), torch.tensor([0, 2, 3, 1])])
    shuffled = torch.stack([support[c, shot_orders[c]] for c in range(3)])  # a different order in each class
    torch.testing.assert_close(head(shuffled, query), scores, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, options", ALL_HEADS, ids=HEAD_IDS)
def test_batched_equals_one_query_and_one_class_at_a_time(name, options):
    head = make_head(name, **options)
    support, query = _episode(seed=2)
    scores = head(support, query)
    per_query = torch.cat([head(support, query[i : i + 1]) for i in range(query.shape[0])])
    torch.testing.assert_close(scores, per_query, rtol=0, atol=1e-12)
    per_class = torch.cat([head(support[c : c + 1], query) for c in range(support.shape[0])], dim=1)
    torch.testing.assert_close(scores, per_class, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name, options", ALL_HEADS, ids=HEAD_IDS)
def test_gradients_reach_the_features(name, options):
    head = make_head(name, **options)
    support, query = _episode(seed=4)
    support.requires_grad_(True)
    query.requires_grad_(True)
    F.cross_entropy(64 * head(support, query), torch.tensor([0, 1, 2, 0, 1])).backward()
    for grad in (query.grad, support.grad):
        assert grad is not None and torch.isfinite(grad).all()
        assert (grad.flatten(1).abs().sum(dim=1) > 0).all()  # every query / every class gets a gradient
