"""Seeded, stratified splits of labelled rows: the one seeding rule every split uses.

Each class ``c`` is shuffled by ``numpy.random.default_rng([seed, c])``, so a class's order does not
depend on the other classes (adding images of one class leaves the others' splits alone). On it:

* :func:`class_orders`: the shuffled row indices of each class;
* :func:`stratified_holdout`: ``(train, test)`` with a share of each class in test (the linear
  baseline's hold-out, the advisor's training rows);
* :func:`stratified_parts`: ``test``, ``val`` and ``train`` shares of each class (fine-tuning);
* :func:`stratified_order`: an order whose every prefix is a proportional stratified sample (the
  advisor's budgeted sample).

No torch import: cheap for any layer.
"""

from __future__ import annotations

import numpy as np

from ..errors import OptionError


def class_orders(labels: np.ndarray, *, seed: int = 0) -> dict[int, np.ndarray]:
    """``{class: its row indices in a seeded random order}`` for every label >= 0."""
    labels = np.asarray(labels)
    out: dict[int, np.ndarray] = {}
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        out[int(c)] = idx[np.random.default_rng([int(seed), int(c)]).permutation(idx.size)]
    return out


def share_count(fraction: float, n: int, *, at_least_one_from: int = 2) -> int:
    """Rows of a class of ``n`` that a ``fraction`` takes: rounded, at least one when the class has
    ``at_least_one_from`` rows or more and the fraction is > 0."""
    k = int(round(float(fraction) * n))
    return 1 if fraction > 0 and k == 0 and n >= at_least_one_from else k


def stratified_holdout(y: np.ndarray, *, test_size: float = 0.2,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of row indices into ``(train, test)`` (both sorted).

    Every class with at least 2 rows puts ``round(test_size * n)`` rows (at least 1, at most
    ``n - 1``) into the test part; a class with a single row stays in training.

    Raises:
        OptionError: ``test_size`` not in (0, 1).
    """
    if not 0 < float(test_size) < 1:
        raise OptionError(f"test_size (--holdout) must be a fraction in (0, 1). Got {test_size} "
                          "instead.")
    train: list[np.ndarray] = [np.zeros(0, np.int64)]
    test: list[np.ndarray] = [np.zeros(0, np.int64)]
    for idx in class_orders(y, seed=seed).values():
        k = 0 if idx.size < 2 else min(idx.size - 1, share_count(test_size, idx.size))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def stratified_parts(labels: np.ndarray, *, val_fraction: float, test_fraction: float,
                     seed: int = 0, class_names: list[str] | None = None
                     ) -> dict[str, np.ndarray]:
    """``{"train", "val", "test"}`` row indices (sorted): each class gives its ``test_fraction``
    then its ``val_fraction`` (at least one row each when the class has 3 or more), the rest
    trains.

    Raises:
        OptionError: a class left with no training row (named, with the fixes).
    """
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c, idx in class_orders(labels, seed=seed).items():
        n = idx.size
        n_test = share_count(test_fraction, n, at_least_one_from=3)
        n_val = share_count(val_fraction, n, at_least_one_from=3)
        if n - n_test - n_val < 1:
            name = class_names[c] if class_names is not None else str(c)
            raise OptionError(f"Class {name!r} has only {n} image(s): not enough for the "
                              f"validation ({val_fraction}) and test ({test_fraction}) shares. "
                              "Add images, lower --val-fraction / --test-fraction, or pass "
                              "--test.")
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    return {k: np.sort(np.concatenate(v)) if v else np.zeros(0, np.int64)
            for k, v in parts.items()}


def stratified_order(labels: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """A seeded order of the rows whose every prefix is a proportional stratified sample.

    The ``j``-th row of a class of ``n`` (in :func:`class_orders`' order) gets the key
    ``(j + 0.5) / n``; rows are sorted by key (ties by class index). Rows with negative labels are
    left out.
    """
    orders = class_orders(labels, seed=seed)
    if not orders:
        return np.zeros(0, np.int64)
    keys = np.concatenate([(np.arange(i.size) + 0.5) / i.size for i in orders.values()])
    rows = np.concatenate(list(orders.values()))
    cls = np.concatenate([np.full(i.size, c) for c, i in orders.items()])
    return rows[np.lexsort((cls, keys))].astype(np.int64)
