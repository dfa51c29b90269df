"""Statistics for MoE-vs-dense verdicts that mean what they say.

Pure functions over plain numbers: no store, no I/O. The report feeds them the
counted repetitions and prints what they return.

The methods, and why:

* **Per model** (``summarize_model``): the median, with a distribution-free
  interval for the population median from order statistics. For ``n`` values
  sorted ``x(1) <= ... <= x(n)``, ``[x(k), x(n+1-k)]`` covers the median with
  probability ``1 - 2 * P(Binomial(n, 1/2) <= k - 1)`` for any continuous
  distribution. We take the narrowest such interval whose coverage is at least
  95% and report the exact coverage. ``n = 6`` is the first size with one
  (``[x(1), x(6)]``, coverage 62/64 = 96.875%); below that the min-max is
  labelled "range", with its (lower) exact coverage still stated. Mean,
  sample standard deviation and coefficient of variation are reported too;
  a CV above ``HIGH_CV`` (5%) is flagged, since decode throughput on a quiet
  device varies by a few percent at most and more points at throttling or
  competing load.

* **The MoE/dense ratio** (``estimate_ratio``): repetitions run in paired
  rounds (MoE and dense back to back, order randomised per round), so each
  round gives one ratio ``moe_tps / dense_tps`` and drift common to both
  cancels. The estimate is the geometric mean of the per-round ratios with a
  Student t-interval on their logarithms:
  ``exp(mean(log r) +/- t(0.975, n-1) * sd(log r) / sqrt(n))``. Logs make the
  ratio symmetric (0.5 and 2 are equally far from 1) and closer to normal;
  the interval is exact under log-normal round-to-round noise and easy to
  check by hand. With fewer than ``MIN_ROUNDS_FOR_CI`` (5) rounds a t-interval
  rests on 1-3 degrees of freedom and is too wide or too fragile to be useful,
  so the result is the min-max of the per-round ratios, labelled "range".

* **The verdict** (``verdict``) claims "behind" or "ahead" only when the 95%
  interval excludes 1; otherwise it says "no significant difference" and
  shows the interval. See ``verdict`` for the exact sentences.

* **Adaptive repetitions** (``stopping_rule``): rounds continue until the
  ratio's interval half-width is at most a target percentage, or a maximum.
  Stopping on the interval's width (not on its position) does not steer the
  estimate towards any answer.

* **Disturbed rounds** (``exclude_disturbed``, ``mark_outliers``): a round
  the runner flagged (with a reason) is left out of the ratio and counted by
  reason, so the report can say what was left out and why.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

CONFIDENCE = 0.95
"""The confidence level of every interval here."""

MIN_ROUNDS_FOR_CI = 5
"""Fewest paired rounds for which the ratio gets a "95% CI"; fewer give a "range"."""

HIGH_CV = 0.05
"""A model's coefficient of variation above this (5%) is flagged as noisy."""

OUTLIER_MADS = 3.5
"""Default cut-off of ``mark_outliers``, in robust standard deviations (1.4826 MAD)."""

MINUS = "\u2212"  # a real minus sign for negative percentages in verdicts

IntervalKind = Literal["95% CI", "range", "none"]


def _check_positive(values: Iterable[float], what: str) -> list[float]:
    """The values as floats; ValueError naming the first non-positive, NaN or infinite one."""
    out: list[float] = []
    for i, value in enumerate(values):
        v = float(value)
        if math.isnan(v) or math.isinf(v) or v <= 0.0:
            raise ValueError(f"{what} #{i} is {value!r}: it must be a positive, finite number")
        out.append(v)
    return out


def _t_quantile(df: int) -> float:
    """The two-sided ``CONFIDENCE`` quantile of Student's t with ``df`` degrees of freedom."""
    # Imported here: scipy.stats takes a noticeable time to import and most CLI
    # commands never need it.
    from scipy.stats import t as student_t

    return float(student_t.ppf(0.5 + CONFIDENCE / 2.0, df))


# --------------------------------------------------------------------------- per model


@dataclass(frozen=True)
class ModelSummary:
    """One model's measurements (e.g. decode tok/s) on one device and configuration.

    ``low``/``high`` bound the population median: a distribution-free 95%
    interval from order statistics when ``kind == "95% CI"`` (n >= 6), else
    the min-max with ``kind == "range"``. ``coverage`` is the exact probability
    that ``[low, high]`` covers the median (for a continuous distribution),
    whichever the kind. ``sd`` and ``cv`` are None for a single value.
    """

    n: int
    median: float
    mean: float
    sd: float | None
    cv: float | None
    high_cv: bool
    low: float
    high: float
    kind: IntervalKind
    coverage: float
    method: str

    @property
    def cv_warning(self) -> str | None:
        """A sentence for the report when the CV is high, else None."""
        if not self.high_cv or self.cv is None:
            return None
        return (f"coefficient of variation {self.cv * 100:.1f}% is above "
                f"{HIGH_CV * 100:.0f}%: noisy measurements (throttling or competing load?)")


def median_interval(n: int) -> tuple[int, float]:
    """The order-statistic interval for the median of ``n`` values.

    Returns ``(k, coverage)``: ``[x(k), x(n+1-k)]`` (1-based) is the narrowest
    symmetric order-statistic interval with coverage ``>= CONFIDENCE``, and
    ``coverage = 1 - 2 * P(Binomial(n, 1/2) <= k - 1)`` is exact. When no such
    interval exists (n <= 5) it returns ``(1, coverage of [x(1), x(n)])``,
    which is below ``CONFIDENCE``.
    """
    if n < 1:
        raise ValueError("a median interval needs at least one value")

    def coverage(k: int) -> float:
        tail = sum(math.comb(n, i) for i in range(k)) / 2**n
        return 1.0 - 2.0 * tail

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= CONFIDENCE:
        k += 1
    return k, coverage(k)


def summarize_model(values: Sequence[float], *, cv_threshold: float = HIGH_CV) -> ModelSummary:
    """Median, a 95% interval for it (or the range), mean, sd and CV of one model's values.

    Raises ValueError when there are no values (the report shows a missing
    side with its job's reason instead) or any value is not positive and
    finite (a throughput of 0 or NaN is a failed measurement, not data).
    """
    xs = sorted(_check_positive(values, "throughput"))
    n = len(xs)
    if n == 0:
        raise ValueError("no measurements to summarise")
    mean = statistics.fmean(xs)
    sd = statistics.stdev(xs) if n >= 2 else None
    cv = sd / mean if sd is not None else None
    k, cover = median_interval(n)
    if cover >= CONFIDENCE:
        kind: IntervalKind = "95% CI"
        method = (f"order statistics x({k})..x({n + 1 - k}) of n={n}, "
                  f"exact coverage {cover * 100:.2f}%")
    else:
        kind = "range"
        method = (f"min-max of n={n} (fewer than 6 values: no 95% interval for the median; "
                  f"the range covers it with {cover * 100:.2f}%)")
    return ModelSummary(
        n=n, median=statistics.median(xs), mean=mean, sd=sd, cv=cv,
        high_cv=cv is not None and cv > cv_threshold,
        low=xs[k - 1], high=xs[n - k], kind=kind, coverage=cover, method=method)


# --------------------------------------------------------------------------- the ratio


@dataclass(frozen=True)
class PairedRound:
    """One round: the MoE and the dense model measured back to back.

    ``disturbed`` is None for a clean round, else why it must not count
    (e.g. "thermal throttling", "outlier: ..."); the rule for what counts as
    disturbed lives with the runner, not here.
    """

    moe_tps: float
    dense_tps: float
    disturbed: str | None = None

    @property
    def ratio(self) -> float:
        """MoE over dense throughput for this round; ValueError on a bad throughput."""
        moe, dense = _check_positive((self.moe_tps, self.dense_tps), "throughput")
        return moe / dense


def ratios_from_pairs(moe_tps: Sequence[float], dense_tps: Sequence[float]) -> list[float]:
    """Per-round ratios ``moe_tps[i] / dense_tps[i]`` of paired rounds.

    ValueError when the lengths differ (the rounds would not be paired) or a
    throughput is not positive and finite.
    """
    if len(moe_tps) != len(dense_tps):
        raise ValueError(f"paired rounds need as many MoE as dense measurements, "
                         f"got {len(moe_tps)} and {len(dense_tps)}")
    moe = _check_positive(moe_tps, "MoE throughput")
    dense = _check_positive(dense_tps, "dense throughput")
    return [m / d for m, d in zip(moe, dense, strict=True)]


@dataclass(frozen=True)
class RatioEstimate:
    """The MoE/dense throughput ratio over paired rounds.

    ``ratio`` is the geometric mean of the per-round ratios (None with no
    rounds). ``kind`` says what ``[low, high]`` is: a "95% CI" (t-interval on
    log ratios, ``n >= MIN_ROUNDS_FOR_CI``), a "range" (min-max of the
    per-round ratios, fewer rounds), or "none" (no rounds; ``low``/``high``
    None). ``method`` is the sentence the report prints beside the interval.
    ``half_width_pct`` is, for a CI, the larger distance from the point to a
    bound relative to the point, in percent: ``(exp(t * sd/sqrt(n)) - 1) * 100``
    (the upper side, which is the larger on the ratio scale); None otherwise.
    """

    n: int
    ratio: float | None
    low: float | None
    high: float | None
    kind: IntervalKind
    method: str
    half_width_pct: float | None = None
    sd_log: float | None = None
    t_quantile: float | None = None

    @property
    def excludes_one(self) -> bool:
        """True when this is a 95% CI lying strictly on one side of 1."""
        return (self.kind == "95% CI" and self.low is not None and self.high is not None
                and (self.high < 1.0 or self.low > 1.0))


def estimate_ratio(ratios: Sequence[float], *,
                   min_rounds: int = MIN_ROUNDS_FOR_CI) -> RatioEstimate:
    """The paired MoE/dense ratio and its 95% interval from per-round ratios.

    Degenerate inputs, and what they give:

    * no rounds: ``kind="none"``, no point, no interval;
    * fewer than ``min_rounds`` (one included): the min-max "range";
    * all rounds equal: sd is 0 and the t-interval collapses onto the point;
      it is reported as such (the method says so), and the verdict counts it
      significant only when the point is not exactly 1: with no spread at all
      there is nothing to widen it with, and inventing a width would be less
      honest than saying so;
    * a ratio that is not positive and finite: ValueError naming it.
    """
    if min_rounds < 2:
        raise ValueError(f"min_rounds must be at least 2 for a t-interval, got {min_rounds}")
    rs = _check_positive(ratios, "per-round ratio")
    n = len(rs)
    if n == 0:
        return RatioEstimate(n=0, ratio=None, low=None, high=None, kind="none",
                             method="no paired rounds")
    logs = [math.log(r) for r in rs]
    mean_log = statistics.fmean(logs)
    point = math.exp(mean_log)
    if n < min_rounds:
        return RatioEstimate(
            n=n, ratio=point, low=min(rs), high=max(rs), kind="range",
            method=(f"geometric mean and min-max of per-round ratios, n={n} "
                    f"(fewer than {min_rounds} rounds: no 95% CI)"))
    sd_log = statistics.stdev(logs)
    t = _t_quantile(n - 1)
    h = t * sd_log / math.sqrt(n)
    method = f"t-interval on log per-round ratios, n={n}"
    if sd_log == 0.0:
        method += " (all rounds equal: zero spread, the interval is the point)"
    return RatioEstimate(
        n=n, ratio=point, low=math.exp(mean_log - h), high=math.exp(mean_log + h),
        kind="95% CI", method=method, half_width_pct=(math.exp(h) - 1.0) * 100.0,
        sd_log=sd_log, t_quantile=t)


# --------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Verdict:
    """The sentence the report leads with, and the facts behind it.

    ``significant`` is True/False for a 95% CI, None when no test was possible
    (a range, or no rounds). ``direction`` is "behind", "ahead" or "level"
    from the point estimate (None with no rounds); ``pct`` is the signed
    ``(ratio - 1) * 100``.
    """

    text: str
    significant: bool | None
    direction: Literal["behind", "ahead", "level"] | None
    pct: float | None


def _decimals(point_pct: float, lo_pct: float, hi_pct: float) -> int:
    """Decimals for all the percentages of one verdict.

    Whole percent when the point is at least 10% away from level and the
    interval at least 2 points wide (where a decimal is noise); otherwise one
    decimal. More (up to 3) while a non-zero number would print as 0: a
    significant 0.04% must not read "0.0% behind", nor an interval ending at
    +0.1% read "to 0%", which would hide on which side of level it ends.
    """
    d = 0 if abs(point_pct) >= 10.0 and hi_pct - lo_pct >= 2.0 else 1
    while d < 3 and any(x != 0.0 and round(abs(x), d) == 0.0
                        for x in (point_pct, lo_pct, hi_pct)):
        d += 1
    return d


def _num(x: float, d: int) -> str:
    """``x`` with ``d`` decimals, never "-0"."""
    s = f"{abs(x):.{d}f}"
    return s if x >= 0 or float(s) == 0.0 else MINUS + s


def _signed(x: float, d: int) -> str:
    """``x`` with an explicit sign: "+6", "−4" (U+2212) or "0"."""
    s = f"{abs(x):.{d}f}"
    if float(s) == 0.0:
        return s
    return ("+" if x > 0 else MINUS) + s


def _side(pct: float, d: int) -> str:
    """``pct`` (signed (ratio - 1) * 100) in words: "5.0% behind", "2.0% ahead"."""
    return f"{_num(abs(pct), d)}% {'ahead' if pct > 0 else 'behind'}"


def verdict(estimate: RatioEstimate, *, no_rounds_reason: str | None = None) -> Verdict:
    """The report's sentence for a ratio estimate. The exact forms:

    * 95% CI excluding 1:
      "MoE is 31% behind (95% CI 28–34%)" / "MoE is 12% ahead (95% CI 8–15%)",
      behind = (1 - ratio) * 100, ahead = (ratio - 1) * 100, the CI in the
      same terms, smaller bound first;
    * 95% CI including 1: "no significant difference (95% CI −4.2% to +6.1%)",
      the bounds as signed (ratio - 1) * 100 with a real minus sign;
    * a collapsed CI (all rounds equal) adds "; all n rounds identical";
    * a range (too few rounds): "MoE is 6.9% behind (range 3.0–11.0% over
      3 rounds, too few for a 95% CI)"; a range straddling 1 is put in words,
      "(range 5.0% behind to 2.0% ahead over 3 rounds, ...)", and a
      same-side range gets its side named when the point reads "level"
      ("MoE is level with dense (range 0.1–0.3% ahead over ...)"); equal
      rounds: "(all 3 rounds identical, too few for a 95% CI)"; one round:
      "MoE is 6.9% behind (1 round, too few for a 95% CI)";
    * no rounds: "no verdict: <reason>" (``no_rounds_reason``, default
      "no paired rounds").

    Decimals: whole percent when the point is 10% or more away from level and
    the interval at least 2 points wide, else one decimal, more while a
    non-zero number would print as 0 (see ``_decimals``).
    A point that rounds to 0 reads "MoE is level with dense"; with a 95% CI
    such a point (under 0.0005%) is reported as no significant difference.
    """
    if estimate.kind == "none" or estimate.ratio is None:
        return Verdict(text=f"no verdict: {no_rounds_reason or 'no paired rounds'}",
                       significant=None, direction=None, pct=None)
    assert estimate.low is not None and estimate.high is not None
    pct = (estimate.ratio - 1.0) * 100.0
    lo, hi = (estimate.low - 1.0) * 100.0, (estimate.high - 1.0) * 100.0
    d = _decimals(pct, lo, hi)
    direction: Literal["behind", "ahead", "level"]
    if float(f"{abs(pct):.{d}f}") == 0.0:
        direction, head = "level", "MoE is level with dense"
    else:
        direction = "ahead" if pct > 0 else "behind"
        head = f"MoE is {_side(pct, d)}"

    if estimate.kind == "range":
        n = estimate.n
        if n == 1:
            return Verdict(text=f"{head} (1 round, too few for a 95% CI)",
                           significant=None, direction=direction, pct=pct)
        if estimate.low == estimate.high:
            span = f"all {n} rounds identical"
        else:
            if lo >= 0.0:
                span = f"range {_num(lo, d)}–{_num(hi, d)}%"
                span += "" if direction == "ahead" else " ahead"
            elif hi <= 0.0:
                span = f"range {_num(-hi, d)}–{_num(-lo, d)}%"
                span += "" if direction == "behind" else " behind"
            else:
                span = f"range {_side(lo, d)} to {_side(hi, d)}"
            span += f" over {n} rounds"
        return Verdict(text=f"{head} ({span}, too few for a 95% CI)",
                       significant=None, direction=direction, pct=pct)

    collapsed = estimate.sd_log == 0.0
    note = f"; all {estimate.n} rounds identical" if collapsed else ""
    significant = estimate.excludes_one or (collapsed and estimate.ratio != 1.0)
    if not significant or direction == "level":
        return Verdict(
            text=f"no significant difference (95% CI {_signed(lo, d)}% to {_signed(hi, d)}%{note})",
            significant=False, direction=direction, pct=pct)
    if pct > 0:
        span = f"{_num(lo, d)}–{_num(hi, d)}%"
    else:
        span = f"{_num(-hi, d)}–{_num(-lo, d)}%"
    return Verdict(text=f"{head} (95% CI {span}{note})",
                   significant=True, direction=direction, pct=pct)


# --------------------------------------------------------------------------- adaptive rounds


@dataclass(frozen=True)
class StopDecision:
    """Whether to run another paired round, and why.

    ``half_width_pct`` is the current 95% CI's half-width (see
    ``RatioEstimate``), None while there are too few rounds for a CI.
    """

    n: int
    half_width_pct: float | None
    target_met: bool
    stop: bool
    reason: str


def stopping_rule(ratios: Sequence[float], *, target_ci_pct: float, min_rounds: int = 5,
                  max_rounds: int = 40) -> StopDecision:
    """Should adaptive repetitions stop, given the kept per-round ratios so far?

    Stop once ``n >= min_rounds`` and the ratio's 95% CI half-width is at most
    ``target_ci_pct`` percent, or once ``n >= max_rounds`` whatever the width.
    The target can only be met once there is a 95% CI at all, i.e. from
    ``max(min_rounds, MIN_ROUNDS_FOR_CI)`` rounds. Pass the kept ratios (after
    ``exclude_disturbed``): a disturbed round must not count towards either
    limit's evidence.
    """
    if not (target_ci_pct > 0.0 and math.isfinite(target_ci_pct)):
        raise ValueError(f"target_ci_pct must be a positive number, got {target_ci_pct!r}")
    if min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"need 1 <= min_rounds <= max_rounds, got {min_rounds} and {max_rounds}")
    est = estimate_ratio(ratios)
    n = est.n
    half = est.half_width_pct
    met = half is not None and n >= min_rounds and half <= target_ci_pct
    if met:
        reason = f"95% CI half-width {half:.2f}% <= target {target_ci_pct:g}% after {n} rounds"
    elif n >= max_rounds:
        width = "no 95% CI" if half is None else f"95% CI half-width {half:.2f}%"
        reason = f"reached max {max_rounds} rounds ({width}, target {target_ci_pct:g}%)"
    elif n < min_rounds:
        reason = f"{n} of at least {min_rounds} rounds"
    elif half is None:
        reason = f"{n} rounds: too few for a 95% CI"
    else:
        reason = f"95% CI half-width {half:.2f}% > target {target_ci_pct:g}% after {n} rounds"
    return StopDecision(n=n, half_width_pct=half, target_met=met,
                        stop=met or n >= max_rounds, reason=reason)


# --------------------------------------------------------------------------- disturbed rounds


@dataclass(frozen=True)
class Exclusion:
    """The per-round ratios that count, and how many rounds were left out, by reason."""

    kept: tuple[float, ...]
    excluded: dict[str, int]

    @property
    def n_excluded(self) -> int:
        return sum(self.excluded.values())


def exclude_disturbed(rounds: Iterable[PairedRound]) -> Exclusion:
    """Keep the ratios of undisturbed rounds; count the others by their reason.

    The documented rule: a round whose ``disturbed`` is set (any non-empty
    reason) is excluded from the ratio and its interval, entirely: a
    disturbance on either side of a pair spoils the pair. The counts go into
    the report so the exclusion is visible. Excluding a round never changes
    the other rounds, which stay paired.
    """
    kept: list[float] = []
    excluded: Counter[str] = Counter()
    for rnd in rounds:
        if rnd.disturbed:
            excluded[rnd.disturbed] += 1
        else:
            kept.append(rnd.ratio)
    return Exclusion(kept=tuple(kept), excluded=dict(sorted(excluded.items())))


def mark_outliers(rounds: Sequence[PairedRound], *, k: float = OUTLIER_MADS,
                  min_rounds: int = MIN_ROUNDS_FOR_CI) -> list[PairedRound]:
    """Flag undisturbed rounds whose log ratio is more than ``k`` robust SDs from the median.

    The rule, on the log ratios of the rounds not already disturbed:
    ``|log r - median| > k * 1.4826 * MAD``, where MAD is the median absolute
    deviation (1.4826 * MAD estimates the SD of normal data); such a round gets
    ``disturbed = "outlier: log ratio more than {k} robust SDs (1.4826 MAD) from the median"``.
    Returns a new list; the input is unchanged.

    Why it is sound enough to use, and its limits: the median and MAD are not
    dragged by the outliers themselves (up to half the rounds), and k = 3.5 is
    the conventional modified-z cut-off, which flags about 1 in 2,000 rounds of
    clean normal data. It does nothing with fewer than ``min_rounds`` clean
    rounds (a MAD of 3 values means little) or when the MAD is 0 (more than
    half the rounds identical: no spread to measure against, and flagging
    every other round would be absurd). Dropping data on the data's own
    evidence narrows the interval, so k must be fixed before the run, and the
    report must print the count (``exclude_disturbed`` gives it).
    """
    if not k > 0.0:
        raise ValueError(f"k must be positive, got {k!r}")
    clean = [i for i, r in enumerate(rounds) if not r.disturbed]
    if len(clean) < min_rounds:
        return list(rounds)
    logs = {i: math.log(rounds[i].ratio) for i in clean}
    med = statistics.median(logs.values())
    mad = statistics.median(abs(v - med) for v in logs.values())
    if mad == 0.0:
        return list(rounds)
    cut = k * 1.4826 * mad
    reason = f"outlier: log ratio more than {k:g} robust SDs (1.4826 MAD) from the median"
    return [replace(r, disturbed=reason) if i in logs and abs(logs[i] - med) > cut else r
            for i, r in enumerate(rounds)]


# --------------------------------------------------------------------------- routing share


@dataclass(frozen=True)
class ShareEstimate:
    """A MoE model's routing share of MoE-block time, from the profiling pass.

    ``share`` is the mean over decoded tokens of ``routing / (routing +
    experts)`` (one MoE layer cut per token, agents/routing_share.py), with a
    Student t 95% interval over tokens (``kind == "95% CI"``, n >= 5), else
    the min-max (``"range"``). ``routing_us``/``experts_us`` are the medians
    of the two segments in microseconds.
    """

    n: int
    share: float
    low: float
    high: float
    kind: IntervalKind
    routing_us: float
    experts_us: float
    method: str


def routing_share(samples: Sequence[Sequence[float]], *,
                  min_tokens: int = MIN_ROUNDS_FOR_CI) -> ShareEstimate | None:
    """The routing share from ``[layer, routing_s, experts_s]`` samples, or None without any.

    Each sample is one token's cut of one layer; per-token shares are averaged
    (every layer gets the same number of tokens in rotation, so the mean
    weighs the layers equally). A sample with a negative or non-finite time,
    or with both times zero, raises ValueError naming it.
    """
    shares: list[float] = []
    routing: list[float] = []
    experts: list[float] = []
    for i, sample in enumerate(samples):
        r, e = float(sample[1]), float(sample[2])
        if not (math.isfinite(r) and math.isfinite(e)) or r < 0 or e < 0 or r + e == 0:
            raise ValueError(f"routing sample #{i} is {list(sample)!r}: its routing and "
                             "experts seconds must be finite, non-negative and not both zero")
        shares.append(r / (r + e))
        routing.append(r)
        experts.append(e)
    n = len(shares)
    if n == 0:
        return None
    mean = statistics.fmean(shares)
    r_us, e_us = statistics.median(routing) * 1e6, statistics.median(experts) * 1e6
    if n < min_tokens:
        return ShareEstimate(n, mean, min(shares), max(shares), "range", r_us, e_us,
                             f"mean and min-max of per-token shares, n={n}")
    h = _t_quantile(n - 1) * statistics.stdev(shares) / math.sqrt(n)
    return ShareEstimate(n, mean, mean - h, mean + h, "95% CI", r_us, e_us,
                         f"t-interval on per-token shares, n={n}")
