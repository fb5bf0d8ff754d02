"""One commit per read: a fold that lands in the middle of a FeatureStore call changes nothing
that call returns (issue 27). Every test folds *between two reads of one call* (monkeypatched)
and checks the result against the store as it was before the fold.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnncodes import FeatureStore
from cnncodes.codes import reader as reader_mod
from cnncodes.codes import store as store_mod
from cnncodes.codes.journal import Journal
from cnncodes.codes.store import fold

from .test_segments import PROV, _part


def _fold(out, seq, rows):
    j = Journal(out)
    j.dir.mkdir(exist_ok=True)
    j.write_part(_part(seq, rows))
    return fold(out, j, PROV)


@pytest.fixture(params=["single", "segments"])
def store(request, tmp_path, monkeypatch):
    """A store of 6 rows (two classes), single-file or segmented; and the rows a fold adds."""
    if request.param == "segments":
        monkeypatch.setattr(store_mod, "REWRITE_BELOW", 0)
    out = tmp_path / "codes.h5"
    _fold(out, 0, [(f"a{i}.png", "ant") for i in range(3)])
    _fold(out, 1, [(f"b{i}.png", "bee") for i in range(3)])
    assert FeatureStore(out).segmented == (request.param == "segments")
    return out


def _fold_between(monkeypatch, out, method):
    """Fold new rows (a new class, and a changed file) the first time ``method`` is called."""
    original = getattr(reader_mod.FeatureStore, method)
    done = []

    def patched(self, *args, **kwargs):
        if not done:
            done.append(True)
            # 'a0.png' changed (its row is replaced: new code), and two rows of a new class
            _fold(out, 7, [("a0.png", "cow"), ("c0.png", "cow"), ("c1.png", "cow")])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(reader_mod.FeatureStore, method, patched)


def test_a_fold_between_the_codes_and_the_labels_of_one_load_changes_neither(store,
                                                                             monkeypatch):
    before = FeatureStore(store)
    X0, y0 = before.load()
    classes0 = before.classes
    _fold_between(monkeypatch, store, "_labels")  # load reads X, then the labels
    X, y = FeatureStore(store).load()
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    # ... and the store did change: the next call sees the new commit
    after = FeatureStore(store)
    X2, y2 = after.load()
    assert len(X2) == len(y2) == 8 and after.classes != classes0
    assert not np.array_equal(X2[0], X0[0])  # a0.png's new code, in place


def test_a_fold_during_info_gives_the_counts_of_one_commit(store, monkeypatch):
    info0 = FeatureStore(store).info()
    _fold_between(monkeypatch, store, "file_table")  # info reads labels, then the table
    info = FeatureStore(store).info()
    assert info["images"] == info0["images"] == 6
    assert info["classes"] == info0["classes"]
    assert info["layout"] == info0["layout"]  # read after the table: files, runs and bytes
    assert FeatureStore(store).info()["images"] == 8


def test_snapshot_makes_several_calls_read_one_commit(store):
    st = FeatureStore(store)
    with st.snapshot():
        paths0 = list(st.paths)
        _fold(store, 7, [("c0.png", "cow")])
        X, y = st.load()
        assert list(st.paths) == paths0 and len(X) == len(y) == len(st) == 6
        assert "cow" not in st.classes
    assert len(st) == 7 and "cow" in st.classes
