"""Curriculum building blocks: pacing values by hand, orderings, pool growth, client choices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from fedsim_methods.curriculum.config import CurriculumConfig
from fedsim_methods.curriculum.local import paced_batches, pool_sizes, sample_order, step_budget
from fedsim_methods.curriculum.ordering import order_items
from fedsim_methods.curriculum.pacing import PACINGS, pool_fraction, pool_size
from fedsim_methods.curriculum.schedule import choose_clients
from fedsim_methods.curriculum.scoring import (
    per_sample_loss,
    recall_local_model,
    remember_local_model,
    sample_scores,
)

# n = 1000 items, T = 100 steps, a = 0.8 (all items at t = 80), b = 0.2 (200 items at t = 0).
# s = t / 80; size = floor(200 + 800 * g(s)). Hand arithmetic per column:
#   t=20: s=0.25   t=40: s=0.5   t=60: s=0.75   t>=80: s=1
HAND = {
    # g = s: 200 + 800*0.25 = 400; +800*0.5 = 600; +800*0.75 = 800
    "linear": [200, 400, 600, 800, 1000, 1000],
    # g = s^2: 800*0.0625 = 50; 800*0.25 = 200; 800*0.5625 = 450
    "quad": [200, 250, 400, 650, 1000, 1000],
    # g = sqrt(s): 800*0.5 = 400; 800*0.70711 = 565.7; 800*0.86603 = 692.8
    "sqrt": [200, 600, 765, 892, 1000, 1000],
    # g = 0 before s = 1, then 1
    "step": [200, 200, 200, 200, 1000, 1000],
    # g = (e^(10s) - 1)/(e^10 - 1): e^2.5-1 = 11.18 -> 800*0.000508 = 0.41;
    #   e^5-1 = 147.4 -> 800*0.006693 = 5.35; e^7.5-1 = 1807 -> 800*0.08204 = 65.6
    "exp": [200, 200, 205, 265, 1000, 1000],
    # g = 1 + ln(s + e^-10)/10: ln(0.250045) = -1.38611 -> 0.86139 -> 689.1;
    #   ln(0.500045) = -0.69306 -> 0.93069 -> 744.6; ln(0.750045) = -0.287622 -> 0.971238
    #   -> 776.99 (floor 976 in all)
    "log": [200, 889, 944, 976, 1000, 1000],
}


@pytest.mark.parametrize("kind", PACINGS)
def test_pacing_matches_hand_computed_values(kind):
    sizes = [pool_size(kind, t, 100, 1000, a=0.8, b=0.2) for t in (0, 20, 40, 60, 80, 100)]
    assert sizes == HAND[kind]


@pytest.mark.parametrize("kind", PACINGS)
def test_pacing_starts_at_b_reaches_all_at_aT_and_never_shrinks(kind):
    fractions = [pool_fraction(kind, t, 50, a=0.5, b=0.1) for t in range(51)]
    assert fractions[0] == pytest.approx(0.1)
    assert all(f == 1.0 for f in fractions[25:])  # a*T = 25
    assert all(x <= y for x, y in zip(fractions, fractions[1:]))


def test_pool_size_respects_minimum_and_bounds():
    assert pool_size("linear", 0, 10, 100, a=0.8, b=0.01) == 1  # floor(1.0), minimum 1
    assert pool_size("linear", 0, 10, 100, a=0.8, b=0.01, minimum=32) == 32
    assert pool_size("linear", 0, 10, 20, a=0.8, b=0.01, minimum=32) == 20  # capped at n
    assert pool_size("linear", 0, 10, 100, a=2.0, b=0.5) == 50
    assert pool_size("linear", 10, 10, 100, a=2.0, b=0.5) == 75  # a > 1: never all items
    assert pool_size("quad", 0, 10, 0, a=0.8, b=0.2) == 0


def test_pacing_rejects_bad_parameters():
    with pytest.raises(ValueError, match="pacing"):
        pool_fraction("linear", 0, 10, a=0.0, b=0.2)
    with pytest.raises(ValueError, match="unknown pacing"):
        pool_fraction("cubic", 0, 10, a=0.8, b=0.2)


def test_orderings():
    scores = np.array([0.5, 0.1, 0.9, 0.1, 0.3])
    assert order_items("curriculum", scores, 5).tolist() == [1, 3, 4, 0, 2]
    assert order_items("anti", scores, 5).tolist() == [2, 0, 4, 1, 3]  # ties in index order
    assert order_items("vanilla", None, 5).tolist() == [0, 1, 2, 3, 4]
    first = order_items("random", None, 5, np.random.default_rng(7))
    again = order_items("random", None, 5, np.random.default_rng(7))
    assert sorted(first.tolist()) == [0, 1, 2, 3, 4] and first.tolist() == again.tolist()
    with pytest.raises(ValueError, match="one score per item"):
        order_items("curriculum", None, 5)


def _passes(batches: list[torch.Tensor], sizes: list[int], batch_size: int) -> list[set[int]]:
    """Split the batch stream into passes using the expected pool size of each pass."""
    out, i = [], 0
    for size in sizes:
        k = math.ceil(size / batch_size)
        out.append({int(v) for b in batches[i : i + k] for v in b})
        i += k
    assert i >= len(batches)
    return out


def test_pool_grows_at_pass_boundaries_in_curriculum_order():
    n, batch_size, epochs = 80, 10, 2
    cfg = CurriculumConfig(pacing="linear", a=0.8, b=0.2, min_pool=10)
    order = np.random.default_rng(0).permutation(n)  # "easiest" first
    batches = list(paced_batches(order, cfg, batch_size, epochs, torch.Generator().manual_seed(1)))
    sizes = pool_sizes(n, cfg, batch_size, epochs)
    # T = 2 * ceil(80/10) = 16 steps; pool at the start of each pass from the steps done:
    # t=0 -> 16; t=2 -> floor(16 + 64*2/12.8) = 26; t=5 -> 41; t=10 -> 66; t=17 > T (stop)
    assert step_budget(n, batch_size, epochs) == 16 == len(batches)
    assert sizes == [16, 26, 41, 66]
    for size, seen in zip(sizes, _passes(batches, sizes, batch_size)):
        assert seen <= set(order[:size].tolist())  # only the first `size` of the order
    full = _passes(batches, sizes, batch_size)
    assert full[0] == set(order[:16].tolist()) and full[1] == set(order[:26].tolist())
    for b in batches:
        assert len(set(b.tolist())) == len(b)  # no repeats inside a batch


def test_full_pool_gives_plain_epochs_bit_for_bit():
    """b = 1: the same index batches as plain shuffled epochs from the same generator."""
    n, batch_size, epochs = 53, 8, 3
    cfg = CurriculumConfig(a=1.0, b=1.0)
    order = np.random.default_rng(3).permutation(n)
    paced = list(paced_batches(order, cfg, batch_size, epochs, torch.Generator().manual_seed(5)))
    gen = torch.Generator().manual_seed(5)
    plain = [
        perm[i : i + batch_size]
        for _ in range(epochs)
        for perm in [torch.randperm(n, generator=gen)]
        for i in range(0, n, batch_size)
    ]
    assert len(paced) == len(plain)
    assert all(torch.equal(p, q) for p, q in zip(paced, plain))


def test_pool_restarts_every_training_call():
    cfg = CurriculumConfig(b=0.25, min_pool=1)
    order = np.arange(40)
    for seed in (0, 1):  # two rounds: each starts again from the first 25%
        first = next(iter(paced_batches(order, cfg, 10, 1, torch.Generator().manual_seed(seed))))
        assert set(first.tolist()) <= set(range(10))


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(x)


def _toy():
    model = _Linear()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.fc.bias.zero_()
    x = torch.tensor([[3.0, 0.0], [0.0, 3.0], [1.0, 0.0], [0.0, 0.5]])
    y = torch.tensor([0, 0, 1, 1])
    return model, x, y


def test_scoring_global_local_and_both():
    model, x, y = _toy()
    g = per_sample_loss(model, x, y, 2, torch.device("cpu"))
    # logits = x; loss = logsumexp(x) - x[y]
    expected = torch.logsumexp(x, 1) - x[torch.arange(4), y]
    assert np.allclose(g, expected.double().numpy())
    local = {"fc.weight": -torch.eye(2), "fc.bias": torch.zeros(2)}
    before = model.fc.weight.clone()
    l_scores = sample_scores(model, x, y, "local", local, 3, torch.device("cpu"))
    assert np.allclose(l_scores, (torch.logsumexp(-x, 1) + x[torch.arange(4), y]).numpy())
    assert torch.equal(model.fc.weight, before)  # the global weights were not touched
    both = sample_scores(model, x, y, "both", local, 3, torch.device("cpu"))
    assert np.allclose(both, g + l_scores)
    # No local model yet (first participation): L and G+L fall back to G.
    assert np.allclose(sample_scores(model, x, y, "local", None, 3, torch.device("cpu")), g)


def test_local_model_is_kept_in_context_state():
    model, x, y = _toy()
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    assert recall_local_model(context) is None
    remember_local_model(context, model)
    state = recall_local_model(context)
    assert torch.equal(state["fc.weight"], model.fc.weight.detach())


def test_sample_order_uses_scores_or_seeded_random():
    model, x, y = _toy()
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    dev = torch.device("cpu")
    easy_first = sample_order(CurriculumConfig(), model, x, y, context, 0, 1, 0, dev)
    losses = per_sample_loss(model, x, y, 4, dev)
    assert easy_first.tolist() == np.argsort(losses, kind="stable").tolist()
    anti = sample_order(CurriculumConfig(ordering="anti"), model, x, y, context, 0, 1, 0, dev)
    assert anti.tolist() == np.argsort(-losses, kind="stable").tolist()
    rand = CurriculumConfig(ordering="random")
    r1 = sample_order(rand, model, x, y, context, 0, 1, 0, dev)
    assert r1.tolist() == sample_order(rand, model, x, y, context, 0, 1, 0, dev).tolist()
    others = [sample_order(rand, model, x, y, context, 0, r, 0, dev).tolist() for r in range(2, 9)]
    assert any(o != r1.tolist() for o in others)  # a new order each round


SCORES = {pid: float(loss) for pid, loss in enumerate([0.9, 0.2, 0.5, 0.1, 0.7, 0.3, 0.8, 0.4])}


def _choose(server_round: int, ordering: str = "ascending", seed: int = 0):
    return choose_clients(
        SCORES,
        ordering=ordering,
        pacing="linear",
        a=0.8,
        b=0.25,
        server_round=server_round,
        total_rounds=5,
        per_round=2,
        seed=seed,
    )


def test_client_scheduler_orders_paces_and_draws_deterministically():
    first = _choose(1)
    assert first.order == (3, 1, 5, 7, 2, 4, 6, 0)  # ascending loss
    assert first.pool == (3, 1)  # floor(8 * 0.25) = 2 eligible at round 1
    assert first.chosen == (1, 3)
    # round 3: t = 2 of T = 5, s = 2 / 4 -> 0.25 + 0.75 * 0.5 = 0.625 -> 5 eligible
    third = _choose(3)
    assert third.pool == (3, 1, 5, 7, 2)
    assert set(third.chosen) <= set(third.pool) and len(third.chosen) == 2
    assert third == _choose(3)  # same scores, seed and round -> same clients
    assert third.chosen == (3, 5)  # the fixed-seed draw (regression value)
    assert _choose(5).pool == tuple(first.order)  # t = 4 >= a*T: everyone eligible
    assert _choose(1, "descending").pool == (0, 6)
    random_order = _choose(1, "random")
    assert sorted(random_order.order) == list(range(8))
    draws = {_choose(3, seed=s).chosen for s in range(20)}
    assert len(draws) > 1  # the seed matters


def test_client_scheduler_skips_clients_without_score_and_keeps_pool_at_per_round():
    scores = {0: 0.5, 4: 0.1, 9: 0.3}
    choice = choose_clients(
        scores,
        ordering="ascending",
        pacing="step",
        a=1.0,
        b=0.01,
        server_round=1,
        total_rounds=10,
        per_round=2,
        seed=1,
    )
    assert choice.order == (4, 9, 0)
    assert choice.pool == (4, 9)  # floor(3 * 0.01) = 0, raised to per_round
    assert choice.chosen == (4, 9)
