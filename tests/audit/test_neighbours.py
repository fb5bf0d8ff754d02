"""The blocked neighbour search, duplicate groups, outliers and label issues on arrays."""

from __future__ import annotations

import numpy as np
import pytest

from cnncodes.audit.findings import (
    class_balance,
    duplicate_groups,
    find_leaks,
    find_outliers,
    groups_from_pairs,
)
from cnncodes.audit.neighbours import choose_method, faiss_available, normalize, top_k
from cnncodes.errors import OptionError


def _unit(n, d=24, seed=0):
    return normalize(np.random.default_rng(seed).normal(size=(n, d)))


@pytest.mark.parametrize("block", [7, 64, 2048])
def test_exact_search_equals_the_full_matrix(block):
    A, B = _unit(300), _unit(45, seed=1)
    nb = top_k(B, A, 6, block=block, method="exact")
    S = B @ A.T
    ref = np.argsort(-S, axis=1, kind="stable")[:, :6]
    assert (nb.index == ref).all()
    np.testing.assert_allclose(nb.score, np.take_along_axis(S, ref, 1), rtol=1e-5)


def test_a_row_is_not_its_own_neighbour_and_k_is_padded():
    A = _unit(4)
    nb = top_k(A, A, 6, same=True, method="exact")
    assert nb.index.shape == (4, 6)
    assert not (nb.index[:, :3] == np.arange(4)[:, None]).any()
    assert (nb.index[:, 3:] == -1).all() and np.isneginf(nb.score[:, 3:]).all()


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed (optional)")
def test_faiss_finds_every_planted_near_copy():
    """The approximate index is approximate on structureless noise, but a near-duplicate lies in
    its source's cell: every planted copy's nearest row is its source, as in the exact search."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (20, 64))
    X = centres[rng.integers(0, 20, 2000)] + rng.normal(0, 0.7, (2000, 64))
    src = rng.choice(2000, 100, replace=False)
    X = normalize(np.vstack([X, X[src] + rng.normal(0, 0.03, (100, 64))]))
    ex = top_k(X, X, 5, same=True, method="exact")
    fa = top_k(X, X, 5, same=True, method="faiss")
    assert fa.method == "faiss"
    copies = np.arange(2000, 2100)
    assert (fa.index[copies, 0] == src).all() and (ex.index[copies, 0] == src).all()
    assert (fa.index[src, 0] == copies).all()
    assert not (fa.index == np.arange(2100)[:, None]).any()
    np.testing.assert_allclose(fa.score[copies, 0], ex.score[copies, 0], rtol=1e-5)


def test_method_choice_and_errors(monkeypatch):
    import cnncodes.audit.neighbours as nbm

    assert choose_method(10) == "exact"
    monkeypatch.setattr(nbm, "faiss_available", lambda: False)
    assert choose_method(10**7) == "exact"  # no faiss: exact at any size
    with pytest.raises(OptionError, match="pip install faiss-cpu"):
        choose_method(10, "faiss")
    with pytest.raises(OptionError, match="auto, exact or faiss"):
        choose_method(10, "annoy")


def test_groups_link_duplicates_transitively():
    groups = groups_from_pairs(7, np.array([0, 1, 5]), np.array([1, 2, 6]))
    assert [g.tolist() for g in groups] == [[0, 1, 2], [5, 6]]
    assert groups_from_pairs(3, np.array([], int), np.array([], int)) == []


def test_duplicates_leaks_and_outliers_on_planted_rows():
    rng = np.random.default_rng(0)
    X = _unit(400, d=64)
    X[10] = normalize(X[3:4] + 0.01 * rng.normal(size=(1, 64)))[0]  # a near-copy of row 3
    nb = top_k(X, X, 5, same=True)
    assert [g.tolist() for g in duplicate_groups(nb, 0.9)] == [[3, 10]]
    T = np.vstack([X[7:8], _unit(5, d=64, seed=9)])
    lk = find_leaks(T, X, 0.9)
    assert lk.test_rows.tolist() == [0] and lk.train_rows.tolist() == [7]
    y = np.zeros(400, int)
    Y = np.abs(X) + 3.0  # one tight class ...
    Y[42] = -Y[42]      # ... and one row pointing the other way
    Y = normalize(Y)
    out = find_outliers(Y, y, 1, top_k(Y, Y, 1, same=True), fraction=0.01)
    assert out.rows[0] == 42 and len(out.rows) == 4


def test_class_balance_counts_labelled_rows():
    b = class_balance(np.array([0, 0, 1, -1]), ["a", "b", "c"])
    assert [(r["class"], r["count"]) for r in b] == [("a", 2), ("b", 1), ("c", 0)]
    assert b[0]["share"] == pytest.approx(2 / 3)


def test_flipped_labels_are_found_by_cleanlab():
    pytest.importorskip("cleanlab", reason="cleanlab is not installed (cnncodes[audit])")
    from cnncodes.audit.labels import find_label_issues

    rng = np.random.default_rng(0)
    n, c = 600, 4
    centres = rng.normal(0, 1, (c, 32))
    y = rng.integers(0, c, n)
    X = (centres[y] + rng.normal(0, 0.6, (n, 32))).astype(np.float32)
    flip = rng.choice(n, n // 20, replace=False)  # 5%
    noisy = y.copy()
    noisy[flip] = (y[flip] + rng.integers(1, c, len(flip))) % c
    res = find_label_issues(X, noisy, n_classes=c)
    top = set(res.rows[:len(flip)].tolist())
    assert len(top & set(flip.tolist())) >= 0.8 * len(flip)
    first = res.rows[0]
    assert res.given[0] == noisy[first] and res.suggested[0] != noisy[first]
    assert res.probabilities.shape == (n, c)


def test_audit_in_place_finds_what_the_copying_audit_finds():
    """``overwrite_X`` (baseline's default audit at scale: one (N, D) array less) scales the
    caller's codes in place and reports exactly the same findings and map."""
    from cnncodes.audit.run import audit_arrays

    rng = np.random.default_rng(1)
    X = (rng.normal(size=(300, 32)) + 2.0).astype(np.float32)
    X[20] = X[5] + 0.01 * rng.normal(size=32)  # a near-copy in training
    Xt = np.vstack([X[7:8] + 0.01, rng.normal(size=(9, 32)) + 2.0]).astype(np.float32)  # a leak
    y, yt = rng.integers(0, 3, 300), rng.integers(0, 3, 10)
    kw = dict(label_issues=False, test_accuracy=False, map_rows=60, method="exact")
    ref = audit_arrays(X.copy(), y, ["a", "b", "c"], [f"{i}" for i in range(300)],
                       test=(Xt.copy(), yt, [f"t{i}" for i in range(10)]), **kw)
    mine, mine_t = X.copy(), Xt.copy()
    got = audit_arrays(mine, y, ["a", "b", "c"], [f"{i}" for i in range(300)],
                       test=(mine_t, yt, [f"t{i}" for i in range(10)]), overwrite_X=True, **kw)
    assert [g.tolist() for g in got.groups] == [g.tolist() for g in ref.groups] == [[5, 20]]
    assert got.leaks.test_rows.tolist() == ref.leaks.test_rows.tolist() == [0]
    assert got.outliers.rows.tolist() == ref.outliers.rows.tolist()
    np.testing.assert_array_equal(got.map_xy, ref.map_xy)
    assert not np.allclose(mine, X)  # the codes were used in place ...
    np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, rtol=1e-5)  # ... unit rows
