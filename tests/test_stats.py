"""Paired differences over seeds, their 95% Student-t intervals, and the verdicts built on them."""

import math

import pytest

from research.stats import NO_DIFFERENCE, TOO_FEW_SEEDS, Paired, paired, summary, t_95


@pytest.mark.parametrize("seeds, published", [
    (2, 12.706), (3, 4.303), (4, 3.182), (5, 2.776), (6, 2.571), (10, 2.262), (20, 2.093),
    (30, 2.045), (31, 2.042), (121, 1.980)])
def test_t_quantile_matches_the_published_table(seeds, published):
    # two-sided 95% quantiles of Student's t, df = seeds - 1, as printed in every t table
    assert t_95(seeds - 1) == pytest.approx(published, abs=5e-4)


def test_t_quantile_tends_to_the_normal_one_and_refuses_zero_df():
    assert t_95(100_000) == pytest.approx(1.95996, abs=1e-4)
    assert all(t_95(df) > t_95(df + 1) for df in range(1, 40))
    with pytest.raises(ValueError, match="at least 1"):
        t_95(0)


def test_five_seed_interval_by_hand():
    pair = Paired((0, 1, 2, 3, 4), (1.0, 2.0, 3.0, 4.0, 5.0))
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)  # sd of 1..5 is sqrt(2.5)
    assert pair.mean == 3.0
    assert pair.interval == pytest.approx((3.0 - half, 3.0 + half), abs=1e-3)


def test_verdict_names_the_side_ahead_only_when_the_interval_excludes_zero():
    ahead = ("dept ahead", "pt ahead")
    assert Paired((0, 1, 2), (1.0, 1.1, 0.9)).verdict(*ahead) == "dept ahead"
    assert Paired((0, 1, 2), (-1.0, -1.1, -0.9)).verdict(*ahead) == "pt ahead"
    # mean +1 but spread wide: the interval straddles zero
    assert Paired((0, 1, 2), (3.0, -2.0, 2.0)).verdict(*ahead) == NO_DIFFERENCE
    single = Paired((0,), (5.0,))
    assert single.interval is None and single.verdict(*ahead) == TOO_FEW_SEEDS


def test_claim_sentence_carries_mean_interval_seeds_and_verdict():
    pair = Paired((0, 1, 2), (1.0, 1.1, 0.9))  # half-width 4.303 * 0.1 / sqrt(3) = 0.248
    assert pair.claim("dept − pt on reserved types", "dept ahead", "pt ahead") == (
        "dept − pt on reserved types: +1.0 (95% CI +0.8 to +1.2, 3 seeds): dept ahead")
    assert Paired((3,), (-2.0,)).claim("x − y", "x ahead", "y ahead") == (
        "x − y: -2.0 (1 seed): needs >= 2 seeds")


def test_pairs_only_on_shared_seeds_with_a_score():
    first = {0: 80.0, 1: 82.0, 2: float("nan"), 3: 85.0, 7: 90.0}
    second = {0: 79.0, 1: 80.0, 2: 70.0, 3: None, 4: 60.0}
    pair = paired(first, second)
    assert pair.seeds == (0, 1) and pair.diffs == (1.0, 2.0)
    assert paired({0: 1.0}, {1: 1.0}) is None


def test_summary_is_mean_and_sample_std_of_the_finite_values():
    assert summary([1.0, 2.0, 3.0, None]) == "2.0 ± 1.0"
    assert summary([86.04]) == "86.0"
    assert summary([None, float("nan")]) == "–"
