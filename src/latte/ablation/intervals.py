"""90% intervals for a study's readings: of an option's mean over seeds, and of the difference of two
options' means (Welch's unequal-variance t interval). For readings that are shares of the evaluation
clips the variance of a mean is the larger of the seeds' spread and the clips' binomial error (every
run reads clips drawn from the same noise, so the clips are not counted as independent across seeds)."""
from __future__ import annotations

import math

# Student's t, two-sided 90% (the 0.95 quantile), for 1..30 degrees of freedom
T90 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771, 1.761, 1.753,
       1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699, 1.697)
PROPORTIONS = ("digit_accuracy", "clip_agreement")  # shares of the evaluation clips: their own sampling error


def t90(df: float) -> float:
    """The 0.95 quantile of Student's t with df degrees of freedom (fractional df, as Welch's, round down:
    the wider interval); above 30 the normal quantile with the first two terms of its expansion in 1/df."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df < len(T90) + 1:
        return T90[int(df) - 1]
    z = 1.6449
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df * df)


def mean_variance(stats: tuple) -> tuple[float, int] | None:
    """(variance, degrees of freedom) of an option's mean over its n seeds: the seeds' spread, or the
    evaluation clips' binomial error where that is larger (the degrees of freedom stay the seeds', so
    the interval never narrows); None with one seed (its spread unknown).
    stats: (mean, std, n[, binomial variance of the mean or None])."""
    _, std, n = stats[:3]
    if std is None or n < 2:
        return None
    clips = stats[3] if len(stats) > 3 and stats[3] is not None else 0.0
    return max(std * std / n, clips), n - 1


def half_width(stats: tuple) -> float | None:
    """Half the 90% interval of an option's mean (None: one seed, no interval)."""
    var = mean_variance(stats)
    return None if var is None else t90(var[1]) * math.sqrt(var[0])


def difference(a: tuple, b: tuple) -> tuple[float, float | None]:
    """Mean of A minus mean of B, and half its 90% interval (Welch: unequal spreads, Welch-Satterthwaite
    degrees of freedom; None when either has one seed)."""
    va, vb = mean_variance(a), mean_variance(b)
    if va is None or vb is None:
        return a[0] - b[0], None
    total = va[0] + vb[0]
    if total == 0:
        return a[0] - b[0], 0.0
    df = total ** 2 / (va[0] ** 2 / va[1] + vb[0] ** 2 / vb[1])
    return a[0] - b[0], t90(max(1.0, df)) * math.sqrt(total)
