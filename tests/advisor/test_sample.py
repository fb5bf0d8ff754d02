"""cnncodes.advisor.sample: the time budget, the sample size it buys, and the stratified sample."""

from __future__ import annotations

import numpy as np
import pytest

from cnncodes.advisor.sample import (
    EXTRACT_SHARE,
    budgeted_size,
    parse_budget,
    round_down_nice,
    select_sample,
)
from cnncodes.errors import OptionError
from cnncodes.sources.splits import stratified_order


@pytest.mark.parametrize("text,seconds", [("5min", 300), ("90s", 90), ("2m30s", 150),
                                          ("1.5h", 5400), ("300", 300), (45, 45)])
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


def test_parse_budget_none_and_errors():
    assert parse_budget(None) is None and parse_budget("none") is None
    with pytest.raises(OptionError, match="5min"):
        parse_budget("5 parsecs")
    with pytest.raises(ValueError, match="positive"):
        parse_budget("0s")


def test_stratified_order_prefixes_are_proportional_and_seeded():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10 + [-1] * 5)
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(100))  # unlabelled rows left out
    for n in (10, 20, 50):
        counts = np.bincount(labels[order[:n]], minlength=3)
        np.testing.assert_allclose(counts, [0.6 * n, 0.3 * n, 0.1 * n], atol=1)
    np.testing.assert_array_equal(order, stratified_order(labels, seed=3))
    assert not np.array_equal(order, stratified_order(labels, seed=4))


def test_select_sample_tops_up_small_classes_and_keeps_the_prefix():
    labels = np.array([0] * 95 + [1] * 5)
    order = stratified_order(labels, seed=0)
    s = select_sample(order, labels, 20, min_per_class=4)
    assert np.bincount(labels[s]).tolist()[1] == 4
    assert set(order[:20]) <= set(s)
    assert len(s) == 20 + 4 - int((labels[order[:20]] == 1).sum())
    # in order's order, and a bigger n only adds rows
    pos = {int(r): i for i, r in enumerate(order)}
    assert [pos[int(r)] for r in s] == sorted(pos[int(r)] for r in s)
    assert set(s) <= set(select_sample(order, labels, 40, min_per_class=4))


def test_round_down_nice():
    assert [round_down_nice(n) for n in (7, 10, 14, 16, 29, 1999, 2100, 8000)] == \
        [7, 10, 10, 15, 20, 1500, 2000, 7500]


def test_budgeted_size_rule():
    # logreg gives half the budget to extraction: 100 img/s x 30 s x 0.5 = 1,500 images
    assert EXTRACT_SHARE["logreg"] == 0.5
    assert budgeted_size(100.0, 30.0, probe="logreg", cap=2000) == 1500
    # 97 img/s buys 1,455: rounded down to 1,000 (small speed changes keep the size)
    assert budgeted_size(97.0, 30.0, probe="logreg", cap=2000) == 1000
    assert budgeted_size(99.0, 30.0, probe="logreg", cap=2000) == 1000
    # ridge fits are cheaper: 70% of the budget extracts
    assert budgeted_size(100.0, 30.0, probe="ridge", cap=5000) == 2000
    # never above the cap, never below what was already extracted to measure the speed
    assert budgeted_size(1e6, 30.0, probe="logreg", cap=2000) == 2000
    assert budgeted_size(1.0, 1.0, probe="logreg", cap=2000, floor=128) == 128
    # no budget: the cap (--sample) exactly
    assert budgeted_size(1.0, None, probe="logreg", cap=321) == 321
    assert budgeted_size(float("inf"), 10.0, probe="logreg", cap=321) == 321
