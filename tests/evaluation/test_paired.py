"""Paired comparison of two models on the same windows: the ratio, its bootstrap interval
against the exact bootstrap distribution (all resamples enumerated), and the edge cases."""
import itertools

import numpy as np
import pytest

from tyrjax.errors import TyrjaxError
from tyrjax.evaluation.paired import format_accuracy, format_ratio, paired_accuracy, paired_ratio


def exact_bootstrap_log_ratios(diff: np.ndarray) -> np.ndarray:
    """mean(diff) of every one of the n**n resamples with replacement."""
    n = len(diff)
    return np.array([diff[list(idx)].mean() for idx in itertools.product(range(n), repeat=n)])


def test_interval_matches_the_exact_bootstrap_distribution():
    rng = np.random.default_rng(3)
    a = rng.uniform(3.0, 4.5, 5)
    b = a + rng.normal(-0.02, 0.05, 5)
    r = paired_ratio(a, b)
    diff = b - a
    assert r.ratio == pytest.approx(np.exp(b.mean()) / np.exp(a.mean()), rel=1e-12)
    assert r.b_better == int((b < a).sum()) and r.n_windows == 5 and r.confidence == 0.95
    exact = exact_bootstrap_log_ratios(diff)
    assert np.mean(exact < np.log(r.low)) == pytest.approx(0.025, abs=0.01)
    assert np.mean(exact > np.log(r.high)) == pytest.approx(0.025, abs=0.01)
    assert r.low < r.ratio < r.high


def test_identical_and_shifted_models():
    a = np.linspace(3.0, 4.0, 16)
    same = paired_ratio(a, a)
    assert (same.ratio, same.low, same.high, same.b_better, same.decided) == (1.0, 1.0, 1.0, 0, False)
    shifted = paired_ratio(a, a - 0.01)  # B better on every window by the same amount
    assert shifted.low == pytest.approx(np.exp(-0.01)) and shifted.high == pytest.approx(np.exp(-0.01))
    assert shifted.decided and shifted.b_better == 16
    assert format_ratio(shifted) == "-1.00 % [-1.00, -1.00]"


def test_noise_is_undecided_and_a_consistent_gain_is_decided():
    rng = np.random.default_rng(0)
    a = rng.uniform(3.0, 4.5, 16)
    noisy = paired_ratio(a, a + rng.normal(0.0, 0.05, 16))
    assert noisy.low < 1.0 < noisy.high and not noisy.decided
    gain = paired_ratio(a, a - 0.05 + rng.normal(0.0, 0.01, 16))
    assert gain.high < 1.0 and gain.decided
    b = a + rng.normal(0.0, 0.05, 16)
    assert paired_ratio(a, b, seed=1) == paired_ratio(a, b, seed=1)  # seeded: the same report every time


@pytest.mark.parametrize("a, b, says", [
    ([3.0, 3.1], [3.0], "same two or more windows"),
    ([3.0], [3.1], "same two or more windows"),
    ([[3.0, 3.1]], [[3.0, 3.1]], "same two or more windows"),
])
def test_bad_inputs_name_the_problem(a, b, says):
    with pytest.raises(TyrjaxError, match=says):
        paired_ratio(a, b)
    with pytest.raises(TyrjaxError, match="confidence"):
        paired_ratio([3.0, 3.1], [3.0, 3.2], confidence=1.0)


def exact_bootstrap_accuracy_changes(diffs: list[np.ndarray]) -> np.ndarray:
    """The mean over tasks of each task's mean item difference, for every combination of every
    task's resamples with replacement."""
    per_task = [np.array([d[list(idx)].mean() for idx in itertools.product(range(len(d)), repeat=len(d))]) for d in diffs]
    return np.mean(np.meshgrid(*per_task, indexing="ij"), axis=0).ravel()


def test_accuracy_change_and_its_interval_match_the_exact_bootstrap():
    a = {"rte": {"acc": 0.5, "items": [1, 0, 1, 0]}, "piqa": {"acc": 1 / 3, "items": [0, 0, 1]},
         "boolq": {"acc": 1.0}}  # no items: left out
    b = {"rte": {"acc": 0.75, "items": [1, 1, 1, 0]}, "piqa": {"acc": 2 / 3, "items": [1, 1, 0]},
         "boolq": {"acc": 0.0}}
    r = paired_accuracy(a, b)
    assert r.tasks == ("rte", "piqa") and r.n_items == 7 and (r.b_only, r.a_only) == (3, 1)
    assert r.change == pytest.approx((0.75 - 0.5 + 2 / 3 - 1 / 3) / 2)
    exact = exact_bootstrap_accuracy_changes([np.array([0, 1, 0, 0.0]), np.array([1, 1, -1.0])])
    assert np.mean(exact < r.low - 1e-12) <= 0.025 + 0.01 and np.mean(exact <= r.low + 1e-12) >= 0.025 - 0.01
    assert np.mean(exact > r.high + 1e-12) <= 0.025 + 0.01 and np.mean(exact >= r.high - 1e-12) >= 0.025 - 0.01


def test_identical_answers_change_nothing_and_a_consistent_gain_is_decided():
    items = list(np.random.default_rng(1).integers(0, 2, 200))
    a = {"arc_easy": {"acc": float(np.mean(items)), "items": items}}
    same = paired_accuracy(a, a)
    assert (same.change, same.low, same.high, same.b_only, same.a_only, same.decided) == (0.0, 0.0, 0.0, 0, 0, False)
    better = [1] * 40 + items[40:]  # B answers the first 40 items right, A's answers elsewhere
    gain = paired_accuracy(a, {"arc_easy": {"acc": float(np.mean(better)), "items": better}})
    assert gain.decided and gain.low > 0 and gain.a_only == 0
    assert format_accuracy(gain) == f"{gain.change:+.3f} [{gain.low:+.3f}, {gain.high:+.3f}]"


def test_runs_without_shared_items_are_refused():
    with pytest.raises(TyrjaxError, match="same --tasks and --limit"):
        paired_accuracy({"rte": {"acc": 0.5, "items": [1, 0]}}, {"rte": {"acc": 0.5, "items": [1, 0, 0]}})
