"""The learning filter's arithmetic: token counts in, a spam probability out. Pure.

Each token's probability follows Gary Robinson's method ("A Statistical Approach to the Spam
Problem", 2003): the share of spam among the messages holding it, pulled toward 0.5 while the
token is rare. The most telling tokens are combined with Fisher's chi-square method, as
SpamBayes does: it says "unsure" (near 0.5) when the evidence points both ways, rather than
flipping to an extreme on a few words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

UNKNOWN_STRENGTH = 0.45  # Robinson's s: how much a token's first sightings are trusted
UNKNOWN_PROB = 0.5  # Robinson's x: what a token never seen says
MIN_STRENGTH = 0.1  # tokens within this of 0.5 say too little to count
MAX_DISCRIMINATORS = 150

# (lowest probability, rule name, score): the SpamAssassin-style names users know.
BANDS: tuple[tuple[float, str, float], ...] = (
    (0.99, "BAYES_99", 5.0),
    (0.95, "BAYES_95", 3.5),
    (0.80, "BAYES_80", 2.0),
    (0.60, "BAYES_60", 1.0),
    (0.40, "BAYES_50", 0.0),
    (0.05, "BAYES_20", -0.5),
    (0.01, "BAYES_05", -1.5),
    (0.0, "BAYES_00", -3.0),
)


def token_probability(spam: int, ham: int, spam_messages: int, ham_messages: int) -> float:
    """Robinson's f(w) for a token seen in ``spam`` spam and ``ham`` good messages."""
    spam_ratio = spam / spam_messages if spam_messages else 0.0
    ham_ratio = ham / ham_messages if ham_messages else 0.0
    if spam_ratio + ham_ratio == 0:
        return UNKNOWN_PROB
    p = spam_ratio / (spam_ratio + ham_ratio)
    n = spam + ham
    return (UNKNOWN_STRENGTH * UNKNOWN_PROB + n * p) / (UNKNOWN_STRENGTH + n)


def _chi2_survival(chi2: float, degrees: int) -> float:
    """P(X >= chi2) for a chi-square variable with an even number of degrees of freedom."""
    half = chi2 / 2.0
    term = total = math.exp(-half)
    for i in range(1, degrees // 2):
        term *= half / i
        total += term
    return min(total, 1.0)


def spam_probability(counts: Mapping[int, tuple[int, int]], spam_messages: int,
                     ham_messages: int) -> float:
    """0.0 (surely good) to 1.0 (surely spam); 0.5 when the tokens say nothing."""
    probs = [token_probability(s, h, spam_messages, ham_messages) for s, h in counts.values()]
    telling = sorted((p for p in probs if abs(p - 0.5) >= MIN_STRENGTH),
                     key=lambda p: abs(p - 0.5), reverse=True)[:MAX_DISCRIMINATORS]
    if not telling:
        return 0.5
    # Clamped away from 0 and 1 so one token cannot make a logarithm infinite.
    telling = [min(max(p, 1e-6), 1 - 1e-6) for p in telling]
    degrees = 2 * len(telling)
    spamminess = 1.0 - _chi2_survival(-2.0 * sum(math.log(1.0 - p) for p in telling), degrees)
    hamminess = 1.0 - _chi2_survival(-2.0 * sum(math.log(p) for p in telling), degrees)
    return (spamminess - hamminess + 1.0) / 2.0


def band(probability: float) -> tuple[str, float]:
    """The rule name and score for a spam probability."""
    for lowest, name, score in BANDS:
        if probability >= lowest:
            return name, score
    return BANDS[-1][1], BANDS[-1][2]
