"""Anytime-valid confidence sequences: intervals that hold at every look at once.

A fixed-sample interval is valid for one look; a gate looks every tick, so with fixed
intervals its false-alarm rate grows with every tick (what makes Kayenta's fixed-horizon
Mann-Whitney judge unsafe to peek at). A *confidence sequence* (CS) holds simultaneously
for every sample size: P(there is an n where the true value is outside the interval) <=
alpha. The gate may then decide the first time an interval lies on one side of a margin,
which is how a step passes early or fails fast (Lindon, Sanden and Shirikian, "Rapid
Regression Detection in Software Deployments through Sequential Testing", KDD 2022).

Every interval here comes from one martingale: Robbins' beta-binomial mixture for a
Bernoulli rate (Robbins, "Statistical methods related to the law of the iterated
logarithm", 1970; Howard, Ramdas, McAuliffe and Sekhon, "Time-uniform, nonparametric,
nonasymptotic confidence sequences", Annals of Statistics 2021, section 3 "conjugate
mixtures"). For ``x`` successes in ``n`` trials and a hypothesised rate ``p``::

    M_n(p) = B(a + x, b + n - x) / B(a, b) / (p^x (1 - p)^(n - x))

is a nonnegative martingale with mean 1 when the true rate is ``p``; by Ville's inequality
it ever reaches ``1/alpha`` with probability at most ``alpha``, so ``{p : M_n(p) <
1/alpha}`` is a CS. It depends on the data only through ``(x, n)``, so counters summed
over any windows are enough: no per-request data, and looks may be at any times.

Quantiles use the same martingale on the count of observations at or below the true
quantile, which is Binomial(n, q) (Howard and Ramdas, "Sequential estimation of quantiles
with applications to A/B-testing and best-arm identification", Bernoulli 2022). Latency
comes as histogram buckets, and between bucket bounds the count is interpolated
linearly, as Prometheus' ``histogram_quantile`` does. That makes a quantile's interval
exact only when observations are spread evenly inside buckets; for real, skewed latency
and thousands of requests one role's interval can miss its own quantile (measured:
lognormal, p95 inside a 10-15 ms bucket, 3,000 requests: half the runs). The gate only
uses them as a *ratio* of canary to stable read from the same buckets: for equal
distributions the bias is the same on both sides (tests/unit/test_sequential.py checks
the false-alarm rate), and ``make gate-bench`` measures the decisions. Exceedance
counts at bucket bounds would be exact; that test is the next step.

The other assumption: requests are independent draws from one population while the
rollout runs.

Pure functions of counts, no I/O (the two root-finding ones are memoised: at 100 %
stable's counts stop changing); the prior ``Beta(1/2, 1/2)`` (Jeffreys) is fixed, not
tuned.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

PRIOR_A = 0.5
PRIOR_B = 0.5
_LOG_BETA_PRIOR = math.lgamma(PRIOR_A) + math.lgamma(PRIOR_B) - math.lgamma(PRIOR_A + PRIOR_B)
MAX_SUBSETS = 63  # class subsets for the total-variation bound (K <= 7 classes)


@dataclass(frozen=True)
class Interval:
    """A confidence sequence's current interval ``[low, high]`` for one quantity."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"empty interval [{self.low}, {self.high}]")

    def above(self, bound: float) -> bool:
        """Shown above ``bound``: the whole interval lies above it."""
        return self.low > bound

    def below(self, bound: float) -> bool:
        """Shown below ``bound``."""
        return self.high < bound

    def scaled(self, factor: float) -> Interval:
        return Interval(self.low * factor, self.high * factor)


def _log_mixture(x: float, n: float) -> float:
    """log of B(a + x, b + n - x) / B(a, b): the mixture's numerator."""
    a, b = PRIOR_A + x, PRIOR_B + n - x
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b) - _LOG_BETA_PRIOR


def _log_martingale(x: float, n: float, p: float) -> float:
    """log M_n(p) for ``x`` successes in ``n`` trials."""
    likelihood = (x * math.log(p) if x else 0.0) + ((n - x) * math.log1p(-p) if n - x else 0.0)
    return _log_mixture(x, n) - likelihood


def _softplus(value: float) -> float:
    """log(1 + e^value) without overflow."""
    return value + math.log1p(math.exp(-value)) if value > 0 else math.log1p(math.exp(value))


def _sigmoid(value: float) -> float:
    if value >= 0:
        return 1 / (1 + math.exp(-value))
    tail = math.exp(value)
    return tail / (1 + tail)


def _root(
    f_low: float, f_high: float, fn: Callable[[float], float], low: float, high: float
) -> float:
    """A root of ``fn`` between ``low`` and ``high`` (values of opposite sign): the
    Illinois variant of regula falsi, which converges superlinearly and stays bracketed."""
    side = 0
    for _ in range(100):
        if f_high == f_low:
            break
        middle = high - f_high * (high - low) / (f_high - f_low)
        value = fn(middle)
        if value == 0 or high - low <= 1e-10 * max(1.0, abs(middle)):
            return middle
        if (value > 0) == (f_high > 0):
            high, f_high = middle, value
            if side == -1:
                f_low /= 2
            side = -1
        else:
            low, f_low = middle, value
            if side == 1:
                f_high /= 2
            side = 1
        if abs(value) < 1e-7:  # against a level log(1/alpha) >= 0.69: fine enough
            return middle
    return (low + high) / 2


@functools.lru_cache(maxsize=8192)
def proportion_cs(successes: float, trials: float, alpha: float) -> Interval:
    """CS for a Bernoulli rate after ``successes`` in ``trials`` (Robbins' mixture).

    With no trials it is ``[0, 1]``: no evidence is never a decision.
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    n = max(0.0, float(trials))
    x = min(max(0.0, float(successes)), n)
    if n == 0:
        return Interval(0.0, 1.0)
    level = math.log(1 / alpha)
    # log M_n(p) - level is convex in logit(p) with its minimum (negative, since the
    # mixture's own maximum-likelihood point is never rejected) at p = x / n.
    centre = min(max(x / n, 1e-15), 1 - 1e-15)

    mixture = _log_mixture(x, n)

    def excess(logit: float) -> float:
        # log p and log(1 - p) straight from the logit, stable at both ends
        log_p = -_softplus(-logit)
        log_q = -_softplus(logit)
        return mixture - x * log_p - (n - x) * log_q - level

    middle = math.log(centre / (1 - centre))
    if excess(middle) >= 0:
        return Interval(0.0, 1.0)  # too little data to exclude anything
    low = 0.0
    if x > 0:
        far = middle - 1.0
        while excess(far) < 0 and far > -745:
            far = middle - 2 * (middle - far)
        if excess(far) >= 0:
            logit = _root(excess(far), excess(middle), excess, far, middle)
            low = _sigmoid(logit)
    high = 1.0
    if x < n:
        far = middle + 1.0
        while excess(far) < 0 and far < 40:
            far = middle + 2 * (far - middle)
        if excess(far) >= 0:
            logit = _root(excess(middle), excess(far), excess, middle, far)
            high = _sigmoid(logit)
    return Interval(min(low, x / n), max(high, x / n))


def difference_cs(
    canary: tuple[float, float], stable: tuple[float, float], alpha: float
) -> Interval:
    """CS for ``rate(canary) - rate(stable)`` from two independent streams of
    ``(successes, trials)``: each rate's CS at ``alpha / 2`` (a union bound), then the
    difference of the intervals."""
    first = proportion_cs(*canary, alpha / 2)
    second = proportion_cs(*stable, alpha / 2)
    return Interval(first.low - second.high, first.high - second.low)


def discordant_difference_cs(
    first_only: float, second_only: float, trials: float, alpha: float
) -> Interval:
    """CS for ``P(first only) - P(second only)`` over paired trials, from the discordant
    counts: e.g. the rows only the previous model classified right and the rows only the
    new one did, whose difference over ``trials`` is the accuracy drop on the same rows.

    McNemar's decomposition (McNemar, Psychometrika 1947): the difference is ``pi * (2s -
    1)`` with ``pi`` the discordant rate and ``s`` the share of discordant trials that
    are ``first only``. ``pi`` gets a CS over all trials and ``s`` one over the discordant
    trials alone (for independent trials they are independent Bernoulli draws, whichever
    trials turn out discordant: Doob's optional skipping), each at ``alpha / 2``; the
    difference's interval is the image of that box. Unlike :func:`difference_cs` it uses
    the pairing: concordant trials cost nothing, so two models that mostly agree are
    told apart with far fewer trials."""
    discordant = first_only + second_only
    rate = proportion_cs(discordant, trials, alpha / 2)
    share = proportion_cs(first_only, discordant, alpha / 2)

    def product(s: float, low_end: bool) -> float:
        signed = 2 * s - 1  # the bound on pi that makes the product smallest (or largest)
        use_low = (signed >= 0) == low_end
        return (rate.low if use_low else rate.high) * signed

    return Interval(product(share.low, True), product(share.high, False))


@functools.lru_cache(maxsize=8192)
def count_cs(trials: float, rate: float, alpha: float) -> tuple[float, float]:
    """The counts ``k`` a Binomial(trials, rate) stream may show: ``{k : M_n(rate) <
    1/alpha}`` as ``(k_low, k_high)`` (continuous in ``k``). The true quantile's count of
    observations at or below it stays inside for every ``n`` with probability 1 - alpha."""
    n = float(trials)
    if n <= 0:
        return 0.0, 0.0
    level = math.log(1 / alpha)

    def excess(k: float) -> float:
        return _log_martingale(k, n, rate) - level

    centre = n * rate
    k_low = 0.0
    if excess(0.0) >= 0:
        k_low = _root(excess(0.0), excess(centre), excess, 0.0, centre)
    k_high = n
    if excess(n) >= 0:
        k_high = _root(excess(centre), excess(n), excess, centre, n)
    return k_low, k_high


def histogram_inverse(
    buckets: Sequence[tuple[float, float]], count: float, *, upper: bool = False
) -> float:
    """Where the interpolated cumulative count reaches ``count``, from cumulative buckets
    ``(upper bound, count)`` sorted by bound (linear inside a bucket, from 0 for the
    first): the smallest such latency, or with ``upper`` the largest one (across empty
    buckets, and ``inf`` once ``count`` reaches every observation, which may all lie
    below the quantile)."""
    if count <= 0 and not upper:
        return 0.0
    previous_bound, previous_count = 0.0, 0.0
    for bound, cumulative in buckets:
        if cumulative > count or (cumulative >= count and not upper):
            if math.isinf(bound):
                return math.inf
            span = cumulative - previous_count
            share = (count - previous_count) / span if span > 0 else 1.0
            return previous_bound + (bound - previous_bound) * max(0.0, share)
        previous_bound, previous_count = bound, cumulative
    return math.inf


def quantile_cs(buckets: Sequence[tuple[float, float]], quantile: float, alpha: float) -> Interval:
    """CS for the ``quantile`` of a latency distribution from cumulative histogram
    buckets (Howard and Ramdas 2022): ``[0, inf]`` without data."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return Interval(0.0, math.inf)
    k_low, k_high = count_cs(total, quantile, alpha)
    return Interval(
        histogram_inverse(buckets, k_low), histogram_inverse(buckets, k_high, upper=True)
    )


def ratio_cs(canary: Interval, stable: Interval) -> Interval:
    """``canary / stable`` for two positive quantities given their intervals."""
    low = canary.low / stable.high if stable.high > 0 and math.isfinite(stable.high) else 0.0
    high = canary.high / stable.low if stable.low > 0 else math.inf
    return Interval(low, max(low, high))


def class_subsets(classes: Sequence[str]) -> list[tuple[str, ...]]:
    """The class sets whose share differences bound the total-variation distance: every
    non-empty set without the last class (a set and its complement differ by the same
    amount). More than :data:`MAX_SUBSETS`: one set per class."""
    named = sorted(classes)
    if len(named) < 2:
        return []
    head = named[:-1]
    if 2 ** len(head) - 1 > MAX_SUBSETS:
        return [(name,) for name in named]
    return [
        subset for size in range(1, len(head) + 1) for subset in itertools.combinations(head, size)
    ]


def total_variation_cs(
    canary: Mapping[str, float], stable: Mapping[str, float], alpha: float
) -> Interval:
    """CS for the total-variation distance between two class distributions (the share of
    answers that would have to change class to turn one mix into the other).

    TV = max over class sets A of |P_canary(A) - P_stable(A)|; with a CS for every set's
    difference (alpha split evenly by a union bound) TV lies between the largest distance
    from 0 and the largest absolute end of those intervals. With many classes the sets
    are the single classes and the upper end becomes half the sum, which is still valid.
    """
    classes = sorted(set(canary) | set(stable))
    subsets = class_subsets(classes)
    if not subsets:
        return Interval(0.0, 0.0) if classes else Interval(0.0, 1.0)
    n_canary = sum(canary.values())
    n_stable = sum(stable.values())
    share = alpha / len(subsets)
    lows: list[float] = []
    highs: list[float] = []
    for subset in subsets:
        diff = difference_cs(
            (sum(canary.get(c, 0.0) for c in subset), n_canary),
            (sum(stable.get(c, 0.0) for c in subset), n_stable),
            share,
        )
        lows.append(0.0 if diff.low <= 0 <= diff.high else min(abs(diff.low), abs(diff.high)))
        highs.append(max(abs(diff.low), abs(diff.high)))
    single = 2 ** (len(classes) - 1) - 1 > MAX_SUBSETS
    high = min(1.0, sum(highs) / 2 if single else max(highs))
    return Interval(min(max(lows), high), high)
