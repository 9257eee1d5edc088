"""Statistics over seeds for the experiment reports: mean ± std, and paired differences with a
95% Student-t interval, on which a claim ("DePT ahead", "transfer ahead") rests.

Two runs are paired on the seed: for a seed both saw the same data (the same k-shot draw, the
same batch order), so the seed's score difference cancels what the draw alone would move. A side
is called ahead only where the interval of the mean difference excludes zero; otherwise "no
difference measured". Pure Python (no scipy): the t quantile comes from the exact closed form of
Student's t distribution for integer degrees of freedom.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

NO_DIFFERENCE = "no difference measured"
TOO_FEW_SEEDS = "needs >= 2 seeds"


def _central_t(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with `df` degrees of freedom (Abramowitz & Stegun 26.7.3-4:
    a finite sum in cos²θ, θ = atan(t / √df); exact, no numerical integration)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2 == 0:  # sinθ · (1 + 1/2 c² + 1·3/(2·4) c⁴ + ... up to c^(df-2))
        term = total = 1.0
        for k in range(1, df // 2):
            term *= (2 * k - 1) / (2 * k) * cos2
            total += term
        return math.sin(theta) * total
    if df == 1:
        return 2 * theta / math.pi
    term = total = 1.0  # odd: 2/π · (θ + sinθ cosθ · (1 + 2/3 c² + 2·4/(3·5) c⁴ + ...))
    for k in range(1, (df - 1) // 2):
        term *= 2 * k / (2 * k + 1) * cos2
        total += term
    return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * total)


@cache
def t_95(df: int) -> float:
    """The two-sided 95% quantile of Student's t (df 4: 2.776), found by bisection on the exact
    distribution function."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    low, high = 0.0, 100.0  # df 1 (the widest): 12.706
    for _ in range(100):  # the bracket shrinks below float resolution
        middle = (low + high) / 2
        low, high = (middle, high) if _central_t(middle, df) < 0.95 else (low, middle)
    return (low + high) / 2


def finite(value: Any) -> bool:
    """A number that can enter a mean: a missing metric (None) or NaN cannot."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single seed)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(values: Iterable[Any]) -> str:
    """`mean ± std` over seeds of the finite values ("86.0" for one seed, "–" for none)."""
    kept = [v for v in values if finite(v)]
    if not kept:
        return "–"
    mean, std = mean_std(kept)
    return f"{mean:.1f} ± {std:.1f}" if len(kept) > 1 else f"{mean:.1f}"


@dataclass(frozen=True)
class Paired:
    """Per-seed differences first − second on the seeds both have, their mean and (from two
    seeds on) the 95% t interval of the mean."""

    seeds: tuple[int, ...]
    diffs: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs)

    @property
    def interval(self) -> tuple[float, float] | None:
        if len(self.diffs) < 2:
            return None
        half = t_95(len(self.diffs) - 1) * statistics.stdev(self.diffs) / len(self.diffs) ** 0.5
        return self.mean - half, self.mean + half

    def verdict(self, first_ahead: str, second_ahead: str) -> str:
        """`first_ahead` / `second_ahead` only where the interval excludes zero."""
        if self.interval is None:
            return TOO_FEW_SEEDS
        low, high = self.interval
        return first_ahead if low > 0 else second_ahead if high < 0 else NO_DIFFERENCE

    def interval_text(self, digits: int = 2) -> str:
        if self.interval is None:
            return TOO_FEW_SEEDS
        low, high = self.interval
        return f"{low:+.{digits}f} to {high:+.{digits}f}"

    def claim(self, label: str, first_ahead: str, second_ahead: str) -> str:
        """The sentence a README quotes: `label: +x.x (95% CI a to b, n seeds): verdict`."""
        where = (f"95% CI {self.interval_text(1)}, {len(self.seeds)} seeds"
                 if self.interval else f"{len(self.seeds)} seed")
        return f"{label}: {self.mean:+.1f} ({where}): {self.verdict(first_ahead, second_ahead)}"


def paired(first: dict[int, Any], second: dict[int, Any]) -> Paired | None:
    """{seed: score} of two arms paired on their shared seeds (a seed where either score is
    missing or NaN is left out); None when no seed is shared."""
    seeds = tuple(sorted(s for s in set(first) & set(second)
                         if finite(first[s]) and finite(second[s])))
    if not seeds:
        return None
    return Paired(seeds, tuple(first[s] - second[s] for s in seeds))
