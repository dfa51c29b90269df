"""orchestrator/stats.py against answers computed by hand.

Every expected number below is written out with its hand computation in a
comment (natural logs to 6 places; t quantiles from a t table); none is
obtained by calling the module under test. Tolerances are set to the
precision the comments carry.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from orchestrator.stats import (
    MINUS,
    PairedRound,
    estimate_ratio,
    exclude_disturbed,
    mark_outliers,
    median_interval,
    ratios_from_pairs,
    stopping_rule,
    summarize_model,
    verdict,
)

# t(0.975, df=4), from a t table: 2.7764451 (the 2.776 of printed tables).
T_975_DF4 = 2.7764451

# --------------------------------------------------------------------------- the ratio

# (ratios, geometric mean, 95% CI low, high, half-width %, verdict text, significant)
RATIO_CASES = [
    pytest.param(
        # logs: -0.356675 -0.385662 -0.342490 -0.371064 -0.400478
        # sum -1.856369, mean -0.371274
        # squared deviations sum 2.1016e-3, /4 = 5.2539e-4, sd = 0.022921
        # h = 2.7764451 * 0.022921 / sqrt(5) = 0.063639 / 2.236068 = 0.028461
        # gm = e^-0.371274 = 0.689855; lo = e^-0.399735 = 0.670498; hi = e^-0.342813 = 0.709771
        # behind (1 - gm) = 31.0%, CI 1 - 0.709771 = 29.0%, 1 - 0.670498 = 33.0%
        # point >= 10% and width ~3.9 points >= 2 -> whole percent
        # half-width (e^0.028461 - 1) * 100 = 2.887%
        [0.70, 0.68, 0.71, 0.69, 0.67], 0.689855, 0.670498, 0.709771, 2.887,
        "MoE is 31% behind (95% CI 29–33%)", True, id="significant-behind"),
    pytest.param(
        # logs: 0.113329 0.095310 0.131028 0.104360 0.122218
        # sum 0.566245, mean 0.113249; squared deviations 7.9736e-4, /4 = 1.9934e-4
        # sd 0.014119; h = 2.7764451 * 0.014119 / 2.236068 = 0.017531
        # gm = e^0.113249 = 1.119911; lo = e^0.095718 = 1.100449; hi = e^0.130780 = 1.139717
        # ahead 12.0%, CI 10.04% to 13.97% -> whole percent "10–14"
        # half-width (e^0.017531 - 1) * 100 = 1.769%
        [1.12, 1.10, 1.14, 1.11, 1.13], 1.119911, 1.100449, 1.139717, 1.769,
        "MoE is 12% ahead (95% CI 10–14%)", True, id="significant-ahead"),
    pytest.param(
        # logs: -0.020203 0.029559 0.009950 -0.030459 0.019803
        # sum 0.008650, mean 0.001730; squared deviations 2.6858e-3, /4 = 6.7146e-4
        # sd 0.025912; h = 2.7764451 * 0.025912 / 2.236068 = 0.032175
        # gm = e^0.001730 = 1.001731; lo = e^-0.030445 = 0.970014; hi = e^0.033905 = 1.034486
        # spans 1; bounds (lo - 1) * 100 = -3.0%, (hi - 1) * 100 = +3.4%; point 0.17% -> 1 decimal
        # half-width (e^0.032175 - 1) * 100 = 3.270%
        [0.98, 1.03, 1.01, 0.97, 1.02], 1.001731, 0.970014, 1.034486, 3.270,
        f"no significant difference (95% CI {MINUS}3.0% to +3.4%)", False, id="spans-one"),
    pytest.param(
        # The example. logs: -0.105361 -0.223144 0 -0.162519 -0.051293
        # sum -0.542316, mean -0.108463; squared deviations 3.1116e-2, /4 = 7.7790e-3
        # sd 0.088198; h = 2.7764451 * 0.088198 / 2.236068 = 0.109513
        # gm = e^-0.108463 = 0.897212; lo = e^-0.217976 = 0.804145; hi = e^0.001050 = 1.001050
        # hi is just above 1: not significant. Point 10.3% behind and width 19.7 points
        # would print whole percent, but +0.105% would then print "0": one decimal,
        # -19.6% to +0.1%.  half-width (e^0.109513 - 1) * 100 = 11.573%
        [0.9, 0.8, 1.0, 0.85, 0.95], 0.897212, 0.804145, 1.001050, 11.573,
        f"no significant difference (95% CI {MINUS}19.6% to +0.1%)", False,
        id="barely-spans-one"),
]


@pytest.mark.parametrize(("ratios", "gm", "low", "high", "half", "text", "significant"),
                         RATIO_CASES)
def test_t_interval_on_log_ratios(ratios: list[float], gm: float, low: float, high: float,
                                  half: float, text: str, significant: bool) -> None:
    est = estimate_ratio(ratios)
    assert est.kind == "95% CI"
    assert est.n == 5
    assert est.method == "t-interval on log per-round ratios, n=5"
    assert est.t_quantile == pytest.approx(T_975_DF4, abs=1e-7)
    assert est.ratio == pytest.approx(gm, abs=2e-6)
    assert est.low == pytest.approx(low, abs=2e-6)
    assert est.high == pytest.approx(high, abs=2e-6)
    assert est.half_width_pct == pytest.approx(half, abs=2e-3)
    assert est.excludes_one is significant
    v = verdict(est)
    assert v.text == text
    assert v.significant is significant


def test_range_below_the_minimum_of_rounds() -> None:
    # logs -0.105361 -0.051293 -0.030459, mean -0.062371, gm e^-0.062371 = 0.939534
    # range: behind 1 - 0.97 = 3.0% to 1 - 0.9 = 10.0%; point 6.0% -> one decimal
    est = estimate_ratio([0.9, 0.95, 0.97])
    assert est.kind == "range"
    assert est.ratio == pytest.approx(0.939534, abs=2e-6)
    assert (est.low, est.high) == (0.9, 0.97)
    assert est.half_width_pct is None
    assert est.method == ("geometric mean and min-max of per-round ratios, n=3 "
                          "(fewer than 5 rounds: no 95% CI)")
    v = verdict(est)
    assert v.text == "MoE is 6.0% behind (range 3.0–10.0% over 3 rounds, too few for a 95% CI)"
    assert v.significant is None
    assert v.direction == "behind"


def test_range_straddling_one_is_put_in_words() -> None:
    # logs -0.051293 0.019803 -0.030459, mean -0.020650, gm e^-0.020650 = 0.979562: 2.0% behind
    # range 0.95 -> 5.0% behind, 1.02 -> 2.0% ahead
    v = verdict(estimate_ratio([0.95, 1.02, 0.97]))
    assert v.text == ("MoE is 2.0% behind (range 5.0% behind to 2.0% ahead over 3 rounds, "
                      "too few for a 95% CI)")


def test_four_rounds_is_still_a_range_and_five_is_a_ci() -> None:
    assert estimate_ratio([0.9, 0.91, 0.92, 0.93]).kind == "range"
    assert estimate_ratio([0.9, 0.91, 0.92, 0.93, 0.94]).kind == "95% CI"


def test_one_round() -> None:
    # one ratio 0.931: gm = 0.931, range [0.931, 0.931]; 6.9% behind
    est = estimate_ratio([0.931])
    assert est.kind == "range" and est.n == 1
    assert est.ratio == pytest.approx(0.931)
    assert verdict(est).text == "MoE is 6.9% behind (1 round, too few for a 95% CI)"


def test_zero_rounds_gives_no_verdict_and_says_why() -> None:
    est = estimate_ratio([])
    assert (est.n, est.ratio, est.low, est.high, est.kind) == (0, None, None, None, "none")
    v = verdict(est)
    assert v.text == "no verdict: no paired rounds"
    assert (v.significant, v.direction, v.pct) == (None, None, None)
    assert verdict(est, no_rounds_reason="dense job failed: out of memory").text == (
        "no verdict: dense job failed: out of memory")


@pytest.mark.parametrize(("ratios", "text", "significant"), [
    # sd of identical logs is exactly 0: the interval is [0.9, 0.9]; 0.9 != 1 -> significant;
    # 10.0% with width 0 < 2 points -> one decimal
    ([0.9] * 5, "MoE is 10.0% behind (95% CI 10.0–10.0%; all 5 rounds identical)", True),
    # [1, 1]: the point is level, nothing to claim
    ([1.0] * 5, "no significant difference (95% CI 0.0% to 0.0%; all 5 rounds identical)",
     False),
    # too few rounds: no interval, and no range to show either
    ([1.0] * 3, "MoE is level with dense (all 3 rounds identical, too few for a 95% CI)", None),
])
def test_identical_ratios(ratios: list[float], text: str, significant: bool | None) -> None:
    est = estimate_ratio(ratios)
    if est.kind == "95% CI":
        assert est.sd_log == 0.0
        assert est.low == pytest.approx(ratios[0]) and est.high == pytest.approx(ratios[0])
        assert est.half_width_pct == pytest.approx(0.0)
        assert "zero spread" in est.method
    v = verdict(est)
    assert v.text == text
    assert v.significant is significant


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_invalid_ratios_raise_naming_the_value(bad: float) -> None:
    with pytest.raises(ValueError, match=r"per-round ratio #2 is .*positive, finite"):
        estimate_ratio([0.9, 0.95, bad, 0.9, 0.9])


def test_ratios_from_pairs() -> None:
    # 50/100 = 0.5, 30/20 = 1.5
    assert ratios_from_pairs([50.0, 30.0], [100.0, 20.0]) == [0.5, 1.5]
    with pytest.raises(ValueError, match="as many MoE as dense"):
        ratios_from_pairs([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match=r"dense throughput #1 is 0"):
        ratios_from_pairs([1.0, 2.0], [1.0, 0])
    with pytest.raises(ValueError, match=r"MoE throughput #0 is nan"):
        ratios_from_pairs([math.nan], [1.0])


@pytest.mark.parametrize(("pct_ratios", "text"), [
    # a tiny but consistent lead: 1.0004 .. 1.0006, gm ~ 1.0005 -> 0.05%:
    # at one decimal "0.1", bounds ~0.04 and ~0.06 would print "0.0" -> two decimals
    ([1.0004, 1.0005, 1.0006, 1.0005, 1.0005], "MoE is 0.05% ahead (95% CI 0.04–0.06%)"),
])
def test_decimals_grow_rather_than_print_zero(pct_ratios: list[float], text: str) -> None:
    # logs ~ 4.0e-4 5.0e-4 6.0e-4 5.0e-4 5.0e-4, mean 5.0e-4, sd ~ sqrt(2e-8/4) = 7.07e-5
    # h = 2.776 * 7.07e-5 / 2.236 = 8.78e-5 -> CI e^(5e-4 +- 8.8e-5) - 1 = 0.041% .. 0.059%
    assert verdict(estimate_ratio(pct_ratios)).text == text


# --------------------------------------------------------------------------- per model


@pytest.mark.parametrize(("n", "k", "coverage"), [
    # coverage of [x(k), x(n+1-k)] = 1 - 2 * P(Bin(n, 1/2) <= k-1)
    (1, 1, 0.0),               # 1 - 2 * 1/2
    (5, 1, 0.9375),            # 1 - 2 * 1/32 = 30/32: below 95% -> range
    (6, 1, 0.96875),           # 1 - 2 * 1/64 = 62/64
    (8, 1, 0.9921875),         # k=2 would give 1 - 2 * 9/256 = 0.9297 < 0.95
    (9, 2, 0.9609375),         # 1 - 2 * (1 + 9)/512 = 492/512
    (10, 2, 0.978515625),      # 1 - 2 * (1 + 10)/1024 = 1002/1024; k=3: 1 - 2*56/1024 = 0.8906
])
def test_median_interval_order_statistics(n: int, k: int, coverage: float) -> None:
    assert median_interval(n) == (k, pytest.approx(coverage, abs=1e-12))


def test_model_summary_n6_is_a_ci_from_the_extremes() -> None:
    # sorted 98 99 100 101 102 103: median (100 + 101)/2 = 100.5, mean 100.5
    # squared deviations 6.25 2.25 0.25 0.25 2.25 6.25 = 17.5, /5 = 3.5, sd 1.870829
    # cv 1.870829 / 100.5 = 0.018615 -> not high
    s = summarize_model([101, 99, 103, 98, 100, 102])
    assert (s.n, s.median, s.mean) == (6, 100.5, 100.5)
    assert s.sd == pytest.approx(1.870829, abs=1e-6)
    assert s.cv == pytest.approx(0.018615, abs=1e-6)
    assert not s.high_cv and s.cv_warning is None
    assert (s.low, s.high, s.kind) == (98.0, 103.0, "95% CI")
    assert s.coverage == 0.96875
    assert s.method == "order statistics x(1)..x(6) of n=6, exact coverage 96.88%"


def test_model_summary_n10_drops_one_from_each_end() -> None:
    # values 1..10: interval [x(2), x(9)] = [2, 9], coverage 1002/1024 = 97.85%
    s = summarize_model([float(v) for v in range(10, 0, -1)])
    assert (s.low, s.high, s.kind, s.median) == (2.0, 9.0, "95% CI", 5.5)
    assert s.coverage == pytest.approx(0.978515625)


def test_model_summary_below_six_is_a_range_and_cv_is_flagged() -> None:
    # 90 110 100 95 105: mean 100, squared deviations 100 100 0 25 25 = 250, /4 = 62.5
    # sd 7.905694, cv 7.9% > 5% -> flagged; n=5 -> range [90, 110], coverage 30/32
    s = summarize_model([90, 110, 100, 95, 105])
    assert (s.kind, s.low, s.high, s.median) == ("range", 90.0, 110.0, 100.0)
    assert s.coverage == 0.9375
    assert s.sd == pytest.approx(7.905694, abs=1e-6)
    assert s.cv == pytest.approx(0.079057, abs=1e-6)
    assert s.high_cv
    assert s.cv_warning is not None and s.cv_warning.startswith(
        "coefficient of variation 7.9% is above 5%")


def test_model_summary_cv_threshold_is_strict_and_adjustable() -> None:
    # 95 105: mean 100, sd sqrt((25 + 25)/1) = 7.071068, cv 7.07%
    assert summarize_model([95, 105]).high_cv
    assert not summarize_model([95, 105], cv_threshold=0.08).high_cv


def test_model_summary_single_value_and_invalid() -> None:
    s = summarize_model([42.0])
    assert (s.n, s.median, s.sd, s.cv, s.high_cv, s.kind) == (1, 42.0, None, None, False, "range")
    with pytest.raises(ValueError, match="no measurements"):
        summarize_model([])
    with pytest.raises(ValueError, match=r"throughput #1 is -3"):
        summarize_model([1.0, -3])


# --------------------------------------------------------------------------- adaptive rounds

TIGHT = [1.12, 1.10, 1.14, 1.11, 1.13]      # half-width 1.769% (significant-ahead above)
LOOSER = [0.70, 0.68, 0.71, 0.69, 0.67]     # half-width 2.887% (significant-behind above)


@pytest.mark.parametrize(("ratios", "kwargs", "half", "met", "stop"), [
    (TIGHT, {"target_ci_pct": 2}, 1.769, True, True),
    (LOOSER, {"target_ci_pct": 2}, 2.887, False, False),
    (LOOSER, {"target_ci_pct": 3}, 2.887, True, True),
    # met on width but min not reached: keep going
    (TIGHT, {"target_ci_pct": 2, "min_rounds": 8}, 1.769, False, False),
    # max reached: stop whatever the width
    (LOOSER, {"target_ci_pct": 2, "min_rounds": 5, "max_rounds": 5}, 2.887, False, True),
    # four rounds: no CI yet, so no half-width
    (TIGHT[:4], {"target_ci_pct": 50, "min_rounds": 3}, None, False, False),
    ([], {"target_ci_pct": 2}, None, False, False),
])
def test_stopping_rule(ratios: list[float], kwargs: dict[str, Any], half: float | None,
                       met: bool, stop: bool) -> None:
    d = stopping_rule(ratios, **kwargs)
    assert d.n == len(ratios)
    if half is None:
        assert d.half_width_pct is None
    else:
        assert d.half_width_pct == pytest.approx(half, abs=2e-3)
    assert (d.target_met, d.stop) == (met, stop)
    assert d.reason


def test_stopping_rule_stops_at_max_with_noisy_rounds() -> None:
    # 40 rounds alternating 0.8 / 1.2: sd of logs ~0.2, half-width ~7% >> 2%
    d = stopping_rule([0.8, 1.2] * 20, target_ci_pct=2, max_rounds=40)
    assert d.stop and not d.target_met
    assert d.reason.startswith("reached max 40 rounds")


def test_stopping_rule_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="target_ci_pct"):
        stopping_rule([], target_ci_pct=0)
    with pytest.raises(ValueError, match="min_rounds <= max_rounds"):
        stopping_rule([], target_ci_pct=2, min_rounds=10, max_rounds=5)


# --------------------------------------------------------------------------- disturbed rounds


def test_exclude_disturbed_counts_by_reason() -> None:
    rounds = [
        PairedRound(90.0, 100.0),                                  # 0.9 kept
        PairedRound(80.0, 100.0, disturbed="thermal throttling"),
        PairedRound(45.0, 50.0),                                   # 0.9 kept
        PairedRound(10.0, 100.0, disturbed="competing process"),
        PairedRound(70.0, 100.0, disturbed="thermal throttling"),
        PairedRound(110.0, 100.0),                                 # 1.1 kept
    ]
    ex = exclude_disturbed(rounds)
    assert ex.kept == pytest.approx((0.9, 0.9, 1.1))
    assert ex.excluded == {"competing process": 1, "thermal throttling": 2}
    assert ex.n_excluded == 3


def test_exclude_disturbed_nothing_disturbed_and_bad_throughput() -> None:
    assert exclude_disturbed([PairedRound(1.0, 2.0)]).excluded == {}
    # a disturbed round is not validated: its numbers are not used
    assert exclude_disturbed([PairedRound(0.0, 2.0, "crashed")]).kept == ()
    with pytest.raises(ValueError, match="throughput #1 is 0"):
        exclude_disturbed([PairedRound(1.0, 0.0)])


def test_mark_outliers_flags_only_the_far_round() -> None:
    # ratios 1.00 1.01 0.99 1.02 0.98 0.70
    # logs 0 0.009950 -0.010050 0.019803 -0.020203 -0.356675
    # sorted: -0.356675 -0.020203 -0.010050 0 0.009950 0.019803 -> median -0.005025
    # |dev|: 0.005025 0.014975 0.005025 0.024828 0.015178 0.351650
    # sorted: 0.005025 0.005025 0.014975 0.015178 0.024828 0.351650 -> MAD 0.015077
    # cut 3.5 * 1.4826 * 0.015077 = 0.078234: only 0.70 (0.351650) is beyond it
    rounds = [PairedRound(r, 1.0) for r in (1.00, 1.01, 0.99, 1.02, 0.98, 0.70)]
    marked = mark_outliers(rounds)
    assert [r.disturbed is not None for r in marked] == [False] * 5 + [True]
    assert marked[5].disturbed is not None and marked[5].disturbed.startswith("outlier")
    assert rounds[5].disturbed is None  # the input is unchanged
    ex = exclude_disturbed(marked)
    assert len(ex.kept) == 5 and ex.n_excluded == 1


def test_mark_outliers_leaves_alone_few_rounds_zero_mad_and_disturbed() -> None:
    few = [PairedRound(r, 1.0) for r in (1.0, 1.0, 0.5)]
    assert mark_outliers(few) == few
    # four of five identical: MAD 0, no spread to judge by
    zero_mad = [PairedRound(r, 1.0) for r in (1.0, 1.0, 1.0, 1.0, 0.5)]
    assert mark_outliers(zero_mad) == zero_mad
    # an already-disturbed round keeps its reason and is not part of the median
    rounds = [PairedRound(r, 1.0) for r in (1.00, 1.01, 0.99, 1.02, 0.98)]
    rounds.append(PairedRound(0.2, 1.0, disturbed="thermal throttling"))
    assert mark_outliers(rounds)[5].disturbed == "thermal throttling"
    with pytest.raises(ValueError, match="k must be positive"):
        mark_outliers(rounds, k=0)
