"""Paired rounds on the device: the order of each round and when to stop.

Why rounds: a MoE measured after its dense baseline (or before it) takes any
drift in the machine — another process, frequency, temperature — on one side
only. In a round every model of the job runs one repetition, in an order
drawn afresh for each round, so drift lands on both sides alike and each
round yields one paired ratio per MoE/dense pair.

When to stop: a fixed number of rounds (``repetitions: 12``), or adaptively
(``repetitions: {min: 5, max: 40, target_ci_pct: 2}``): after each round the
95% interval of every pair's ratio is computed from the rounds kept so far
(a t-interval on the log per-round ratios, the method of the controller's
``orchestrator/stats.py``) and rounds continue until every half-width is at
most the target or ``max`` rounds have run. A round with a disturbed
repetition is kept in the log but left out of the ratios, and an adaptive job
runs another round in its place (still within ``max``).

Standard library only: the agent runs on Python 3.8 with nothing installed,
so the t quantiles come from a table (checked against scipy in the tests).
"""

import math
import random
from typing import Dict, List, Optional, Sequence, Tuple

#: Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30.
T975 = (
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836,
    2.446911851, 2.364624252, 2.306004135, 2.262157163, 2.228138852,
    2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546,
    2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447,
    2.079613845, 2.073873068, 2.068657610, 2.063898562, 2.059538553,
    2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)
_Z975 = 1.959963984540054


def t975(df: int) -> float:
    """t_{0.975, df}: the table up to 30, then the Cornish-Fisher expansion (error < 1e-5)."""
    if df < 1:
        raise ValueError("degrees of freedom must be >= 1, got %r" % df)
    if df <= len(T975):
        return T975[df - 1]
    z = _Z975
    g1 = (z ** 3 + z) / 4.0
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96.0
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384.0
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3


def half_width_pct(ratios: Sequence[float]) -> Optional[float]:
    """Half-width of the 95% t-interval of the geometric-mean ratio, in percent.

    The larger side: ``(exp(t * sd / sqrt(n)) - 1) * 100``. None below two
    ratios (no spread to estimate).
    """
    n = len(ratios)
    if n < 2:
        return None
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    return (math.exp(t975(n - 1) * sd / math.sqrt(n)) - 1.0) * 100.0


class RoundPlan(object):
    """How many rounds a job runs, and how each is ordered.

    ``minimum == maximum`` and ``target_ci_pct is None``: a fixed count.
    """

    def __init__(self, minimum: int, maximum: int, target_ci_pct: Optional[float] = None,
                 seed: int = 0) -> None:
        if minimum < 1 or maximum < minimum:
            raise ValueError("rounds need 1 <= min <= max, got min %r, max %r"
                             % (minimum, maximum))
        if target_ci_pct is not None and not target_ci_pct > 0:
            raise ValueError("target_ci_pct must be > 0, got %r" % (target_ci_pct,))
        self.minimum = minimum
        self.maximum = maximum
        self.target_ci_pct = target_ci_pct
        self.seed = seed

    @property
    def adaptive(self) -> bool:
        return self.target_ci_pct is not None

    @classmethod
    def from_spec(cls, repetitions: object, seed: int = 0) -> "RoundPlan":
        """From job.json's ``params.repetitions``: an int or ``{min, max, target_ci_pct}``."""
        if isinstance(repetitions, bool):
            raise ValueError("repetitions must be a number or a mapping, got %r" % repetitions)
        if isinstance(repetitions, int):
            return cls(repetitions, repetitions, None, seed)
        if isinstance(repetitions, dict):
            try:
                return cls(int(repetitions["min"]), int(repetitions["max"]),
                           float(repetitions["target_ci_pct"]), seed)
            except (KeyError, TypeError) as exc:
                raise ValueError("adaptive repetitions need min, max and target_ci_pct: %s"
                                 % exc) from exc
        raise ValueError("repetitions must be a number or a mapping, got %r" % (repetitions,))

    def order(self, round_index: int, n_models: int) -> List[int]:
        """The models' order in round ``round_index``: a seeded shuffle, reproducible."""
        order = list(range(n_models))
        random.Random("%d/%d" % (self.seed, round_index)).shuffle(order)
        return order

    def decide(self, rounds_run: int, kept: Dict[Tuple[int, int], List[float]]
               ) -> Tuple[bool, str]:
        """Stop after ``rounds_run`` rounds? ``kept`` maps (moe, dense) to its kept ratios.

        Returns ``(stop, reason)``; the reason is recorded in the result.
        """
        n_kept = min((len(v) for v in kept.values()), default=rounds_run)
        if rounds_run >= self.maximum:
            if self.adaptive:
                return True, "max rounds (%d) reached before the target %.3g%%" % (
                    self.maximum, self.target_ci_pct or 0)
            return True, "fixed count of %d rounds" % self.maximum
        if not self.adaptive:
            return False, ""
        if n_kept < self.minimum:
            return False, ""
        widths = [half_width_pct(v) for v in kept.values()]
        if not widths:  # a single model: nothing to pair, min rounds suffice
            return True, "min rounds (%d) reached; no pair to compare" % self.minimum
        if all(w is not None and w <= (self.target_ci_pct or 0) for w in widths):
            worst = max(w for w in widths if w is not None)
            return True, "target reached: 95%% CI half-width %.3g%% <= %.3g%% after %d " \
                         "kept rounds" % (worst, self.target_ci_pct or 0, n_kept)
        return False, ""
