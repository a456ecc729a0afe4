"""Wrong answers from trial B8 (notebooks 05–09) that passed or were misnamed; each is now named.

07's `choose_estimator`: the variance divided by N + 1 passed (no input separated it from N), N − 1 was misnamed, and
dropping the estimators whose squared-bias estimate is negative was named as "|‖b‖²|". The check's inputs now include
N = 1 and N = 2 with a bias against a variance, and an unresolved bias next to a resolved one.
"""

from __future__ import annotations

import pytest
from _exercises import assert_check_explains

from metagrad.course.checks import nb07


def variance_over_n_plus_one(b, v, n):
    return min(b, key=lambda k: max(b[k], 0.0) + v[k] / (n + 1))


def variance_over_n_minus_one(b, v, n):
    return min(b, key=lambda k: max(b[k], 0.0) + v[k] / max(n - 1, 1))


def drops_negative_estimates(b, v, n):
    return min([k for k in b if b[k] >= 0] or list(b), key=lambda k: b[k] + v[k] / n)


TRIAL_B8_WRONG_ANSWERS = [
    (variance_over_n_plus_one, "It divides the variance by N + 1"),
    (variance_over_n_minus_one, "It divides the variance by N − 1"),
    (drops_negative_estimates, "It drops the estimators whose squared-bias estimate is negative"),
]


@pytest.mark.parametrize(("wrong", "explanation"), TRIAL_B8_WRONG_ANSWERS, ids=lambda x: getattr(x, "__name__", "hint"))
def test_trial_b8_choose_estimator_mistake_is_named(wrong, explanation):
    assert_check_explains(nb07, "choose_estimator", wrong, explanation)
