"""The segment layout of a store: folds that write only what they add, read as one store.

Every test folds the same journal parts into a segmented store and, as the oracle, into a
single-file store (``compact=True``, the layout every earlier test covers), and checks that both
read the same: rows, order, labels, classes, codes, identity, flags, failures.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnncodes import FeatureStore
from cnncodes.codes import store as store_mod
from cnncodes.codes.journal import Journal, Part
from cnncodes.codes.reader import segments_dir
from cnncodes.codes.store import compact, fold, update_provenance
from cnncodes.errors import StoreDamagedError

DIM = 8
PROV = {"backbone": "test", "weights": "random", "weights_sha256": "", "layers": ["pool"],
        "pooling": "avg", "preprocessing": {}, "dtype": "float32", "root": "/data",
        "layer_info": {"pool": {"node": "x", "kind": "pool", "pooling": "avg"}}}


@pytest.fixture
def segmented(monkeypatch):
    """Every fold into an existing store writes a segment (as a store over 8 MiB does)."""
    monkeypatch.setattr(store_mod, "REWRITE_BELOW", 0)


def _part(seq, rows, fails=(), rng=None):
    """A journal part: ``rows`` = [(path, label)], ``fails`` = [path]."""
    rng = rng or np.random.default_rng(seq)
    n = len(rows)
    return Part(seq=seq, paths=np.array([p for p, _ in rows], dtype=np.str_),
                labels=np.array([y for _, y in rows], dtype=np.str_),
                codes={"pool": rng.standard_normal((n, DIM)).astype(np.float32)},
                fail_paths=np.array(list(fails), dtype=np.str_),
                fail_reasons=np.array(["cannot decode"] * len(fails), dtype=np.str_),
                sizes=rng.integers(1, 10**6, n), mtimes=rng.integers(1, 10**12, n),
                hashes=np.array([f"sha256:{seq}:{i}" for i in range(n)], dtype=np.str_),
                fail_sizes=np.full(len(fails), 7), fail_mtimes=np.full(len(fails), 8),
                fail_hashes=np.array([""] * len(fails), dtype=np.str_))


def _fold_both(parts, seg, ref, **kw):
    """The same parts folded into the segmented store and into the single-file oracle."""
    counts = {}
    for out, extra in ((seg, {}), (ref, {"compact": True})):
        j = Journal(out)
        j.dir.mkdir(exist_ok=True)
        for p in parts:
            j.write_part(p)
        counts[out] = fold(out, j, PROV, **kw, **extra)
    return counts[seg]


def _snapshot(path):
    st = FeatureStore(path)
    X, y = st.load()
    table = st.file_table()
    ft = st.failure_table()
    order = np.argsort(ft["paths"].astype(str))
    prov = {k: v for k, v in st.provenance.items()
            if k not in ("created", "updated", "format_version", "runs")}
    return {"paths": list(st.paths), "labels": [st.classes[i] if i >= 0 else "" for i in y],
            "classes": st.classes, "X": X, "len": len(st),
            **{f"t_{k}": v.tolist() for k, v in table.items()},
            **{f"f_{k}": v[order].tolist() for k, v in ft.items()}, "prov": prov,
            "nonfinite": st.nonfinite_rows()}


def _assert_same(seg, ref):
    a, b = _snapshot(seg), _snapshot(ref)
    assert a.keys() == b.keys()
    for k in a:
        if k == "X":
            np.testing.assert_array_equal(a[k], b[k])
        else:
            assert a[k] == b[k], k


def _base(tmp_path, n=60):
    seg, ref = tmp_path / "seg.h5", tmp_path / "ref.h5"
    rows = [(f"a/{i:05d}.png", "ant" if i % 2 else "bee") for i in range(n)]
    _fold_both([_part(0, rows[: n // 2]), _part(n // 2, rows[n // 2:])], seg, ref)
    return seg, ref


def test_an_append_writes_one_segment_of_the_new_rows_and_keeps_the_old_file(tmp_path,
                                                                             segmented):
    seg, ref = _base(tmp_path)
    assert not FeatureStore(seg).segmented  # a first fold writes one file
    inode, size = seg.stat().st_ino, seg.stat().st_size
    counts = _fold_both([_part(100, [("b/new0.png", "cow"), ("b/new1.png", "ant")])], seg, ref)
    st = FeatureStore(seg)
    assert st.segmented and st.format_version == 3 and len(st) == 62
    files = sorted(segments_dir(seg).iterdir())
    assert len(files) == 2
    base = [p for p in files if p.stat().st_ino == inode]  # the old file, by a hard link
    assert len(base) == 1 and base[0].stat().st_size == size
    new = [p for p in files if p not in base][0]
    assert counts["written"] == new.stat().st_size + seg.stat().st_size
    assert counts["new"] == 2 and counts["rows"] == 62
    with h5py.File(new) as f:
        assert f["paths"].shape == (2,) and f.attrs["segment"]
    _assert_same(seg, ref)
    assert st.layout()["segments"] == 2 and st.layout()["kind"] == "segments"


@pytest.mark.parametrize("seed", range(6))
def test_random_appends_changes_drops_flags_and_failures_read_as_the_single_file(tmp_path,
                                                                                 segmented,
                                                                                 seed):
    rnd = random.Random(seed)
    seg, ref = _base(tmp_path, n=40)
    live = {f"a/{i:05d}.png" for i in range(40)}
    n_new = 0
    for step in range(8):
        rows, fails, drop, flags = [], [], set(), {}
        for _ in range(rnd.randint(0, 12)):  # new files, sometimes of a new class
            rows.append((f"n/{n_new:05d}.png", rnd.choice(["ant", "bee", f"c{step}", ""])))
            n_new += 1
        pool = sorted(live)
        for p in rnd.sample(pool, min(len(pool), rnd.randint(0, 5))):  # changed files
            rows.append((p, rnd.choice(["ant", "bee", "dog"])))
        rest = sorted(live - {p for p, _ in rows})
        picks = rnd.sample(rest, min(len(rest), 6))
        fails = picks[:rnd.randint(0, 2)] + [f"x/bad{step}.png"] * rnd.randint(0, 1)
        drop = set(picks[2:2 + rnd.randint(0, 2)])
        flags = {p: rnd.random() < 0.7 for p in picks[4:]}
        parts = []
        rnd.shuffle(rows)
        for k in range(0, len(rows), 5):
            parts.append(_part(1000 * step + k, rows[k:k + 5], rng=np.random.default_rng(
                [seed, step, k])))
        if fails:
            parts.append(_part(1000 * step + 999, [], fails))
        _fold_both(parts, seg, ref, drop=drop, flags=flags)
        live = (live | {p for p, _ in rows}) - set(fails) - drop
        _assert_same(seg, ref)
        assert set(FeatureStore(seg).paths) == live
    st = FeatureStore(seg)
    assert st.segmented
    n = len(st)
    idx = np.array(sorted(random.Random(seed).sample(range(n), n // 3)), np.int64)
    X, y = st.load(rows=idx)
    X_all, y_all = st.load()
    np.testing.assert_array_equal(X, X_all[idx])
    np.testing.assert_array_equal(y, y_all[idx])
    np.testing.assert_array_equal(st.load(rows=slice(3, 17))[0], X_all[3:17])
    assert all(p.name in {f.name for f in st._view().files}
               for p in segments_dir(seg).glob("*.h5"))  # no segment left that no row uses
    compact(seg)  # one file again, the same store
    assert not FeatureStore(seg).segmented and not segments_dir(seg).exists()
    _assert_same(seg, ref)


def test_changed_rows_replace_in_place_and_dead_segments_are_deleted(tmp_path, segmented):
    seg, ref = _base(tmp_path, n=10)
    _fold_both([_part(1, [("n/0.png", "cow")])], seg, ref)
    first = {p.name for p in segments_dir(seg).iterdir()}
    # every row of the first two segments changes: their files are no longer needed
    _fold_both([_part(2, [(f"a/{i:05d}.png", "dog") for i in range(10)] + [("n/0.png", "eel")])],
               seg, ref)
    assert not first & {p.name for p in segments_dir(seg).iterdir()}
    assert len(list(segments_dir(seg).iterdir())) == 1
    _assert_same(seg, ref)
    assert FeatureStore(seg).classes == ["dog", "eel"]


def test_a_store_over_the_limit_takes_segments_and_a_small_one_is_rewritten(tmp_path,
                                                                             monkeypatch):
    seg, ref = _base(tmp_path)
    _fold_both([_part(1, [("n/0.png", "cow")])], seg, ref)
    assert not FeatureStore(seg).segmented  # a few KiB: rewritten as one file
    monkeypatch.setattr(store_mod, "REWRITE_BELOW", seg.stat().st_size - 1)
    _fold_both([_part(2, [("n/1.png", "cow")])], seg, ref)
    assert FeatureStore(seg).segmented
    monkeypatch.setattr(store_mod, "REWRITE_BELOW", 10**9)  # it shrank below: one file again
    _fold_both([_part(3, [("n/2.png", "cow")])], seg, ref)
    assert not FeatureStore(seg).segmented and not segments_dir(seg).exists()
    _assert_same(seg, ref)


def test_update_provenance_rewrites_only_the_index(tmp_path, segmented):
    seg, ref = _base(tmp_path)
    _fold_both([_part(1, [("n/0.png", "cow")])], seg, ref)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
              for p in segments_dir(seg).iterdir()}
    assert update_provenance(seg, {"advice": {"layer": "pool"}})
    assert not update_provenance(seg, {"advice": {"layer": "pool"}})
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in segments_dir(seg).iterdir()}
    assert after == before
    assert FeatureStore(seg).provenance["advice"] == {"layer": "pool"}
    update_provenance(ref, {"advice": {"layer": "pool"}})
    _assert_same(seg, ref)


@pytest.mark.parametrize("damage", ["deleted", "rewritten"])
def test_a_missing_or_changed_segment_is_an_error_naming_it(tmp_path, segmented, damage):
    seg, ref = _base(tmp_path)
    _fold_both([_part(1, [("n/0.png", "cow")])], seg, ref)
    victim = sorted(segments_dir(seg).iterdir())[0]
    if damage == "deleted":
        victim.unlink()
    else:
        with open(victim, "ab") as f:
            f.write(b"\0" * 10)
    with pytest.raises(StoreDamagedError, match=victim.name) as e:
        FeatureStore(seg).load()
    assert "segments/" in str(e.value) and "--overwrite" in str(e.value)
    assert isinstance(e.value, OSError)


def test_a_segment_deleted_while_a_read_is_going_on_is_an_error_not_other_rows(tmp_path,
                                                                              segmented):
    seg, ref = _base(tmp_path)
    _fold_both([_part(1, [("n/0.png", "cow")])], seg, ref)
    view = FeatureStore(seg)._view()  # the index is read ...
    view.files[-1].unlink()            # ... then a fold deletes a segment
    with pytest.raises(StoreDamagedError, match="read the store again"):
        view.gather(lambda f, k, sel: f["paths"][sel])
    with pytest.raises(StoreDamagedError, match="read the store again"):
        view.read_codes("pool", slice(None))


def test_a_fold_that_fails_before_its_index_is_renamed_leaves_the_store_as_it_was(
        tmp_path, segmented, monkeypatch):
    seg, ref = _base(tmp_path)
    _fold_both([_part(1, [("n/0.png", "cow")])], seg, ref)
    kept = _snapshot(seg)
    index = seg.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(store_mod, "_write_index", boom)
    j = Journal(seg)
    j.dir.mkdir(exist_ok=True)
    j.write_part(_part(2, [("n/1.png", "cow"), ("a/00003.png", "eel")]))
    with pytest.raises(OSError, match="No space"):
        fold(seg, j, PROV)
    assert seg.read_bytes() == index and j.n_parts() == 1
    assert len(list(segments_dir(seg).iterdir())) == 3  # the new segment, named by no index
    snap = _snapshot(seg)
    np.testing.assert_array_equal(snap.pop("X"), kept.pop("X"))
    assert snap == kept
    monkeypatch.undo()
    monkeypatch.setattr(store_mod, "REWRITE_BELOW", 0)
    fold(seg, j, PROV)  # the next fold deletes it and writes its own
    assert len(list(segments_dir(seg).iterdir())) == 3
    jr = Journal(ref)
    jr.dir.mkdir(exist_ok=True)
    jr.write_part(_part(2, [("n/1.png", "cow"), ("a/00003.png", "eel")]))
    fold(ref, jr, PROV, compact=True)
    _assert_same(seg, ref)


_KILLER = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, {root!r})
    from cnncodes.codes import store as store_mod
    from cnncodes.codes.journal import Journal
    from cnncodes.codes.store import fold
    from tests.codes.test_segments import PROV, _part
    store_mod.REWRITE_BELOW = 0
    out = {out!r}
    j = Journal(out)
    for b in range({start}, 400):
        j.dir.mkdir(exist_ok=True)  # a fold removes the empty journal
        j.write_part(_part(b, [(f"k/{{b:04d}}-{{i}}.png", "ant") for i in range(20)]))
        fold(out, j, PROV, compression="gzip")
        print(b, flush=True)
""")


@pytest.mark.slow
def test_kill_9_at_any_moment_of_a_run_of_folds_loses_no_committed_batch(tmp_path, segmented):
    """A process folding batch after batch into a segmented store is killed at random moments;
    after each kill the store opens, holds every batch whose fold returned (and no partial
    batch), and a rerun's fold brings in the rest."""
    out = tmp_path / "k.h5"
    j = Journal(out)
    j.dir.mkdir()
    j.write_part(_part(0, [(f"k/0000-{i}.png", "ant") for i in range(20)]))
    fold(out, j, PROV)
    root = str(Path(__file__).resolve().parents[2])
    rnd = random.Random(0)
    start, kills = 1, 0
    while kills < 5 and start < 400:
        script = _KILLER.format(root=root, out=str(out), start=start)
        err = open(tmp_path / f"stderr{kills}.txt", "w+")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                stderr=err, text=True, cwd=root)
        done = []
        deadline = time.monotonic() + rnd.uniform(1.5, 4.0)
        os.set_blocking(proc.stdout.fileno(), False)
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
            line = proc.stdout.readline()
            while line:
                done.append(int(line))
                line = proc.stdout.readline()
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        err.seek(0)
        assert alive, err.read()  # killed while running, not crashed
        err.close()
        rest = proc.stdout.read() or ""
        done += [int(x) for x in rest.split()]
        kills += 1
        st = FeatureStore(out)  # opens after every kill
        batches = sorted({int(p[2:6]) for p in st.paths})
        assert batches == list(range(batches[-1] + 1))  # a prefix: nothing lost in between
        assert not done or batches[-1] >= done[-1]       # every returned fold is in it
        assert len(st) == 20 * len(batches)              # whole batches only
        assert np.isfinite(st.load()[0]).all()
        pending = [int(p.name[5:15]) for p in j.part_files()]  # folded by the next fold
        start = max([batches[-1], *pending]) + 1
    fold(out, Journal(out), PROV)  # the rerun: the last committed part comes in
    st = FeatureStore(out)
    batches = sorted({int(p[2:6]) for p in st.paths})
    assert batches == list(range(batches[-1] + 1)) and kills == 5
    assert len(batches) > 10 and st.layout()["segments"] > 10  # many folds were interrupted
    named = {p.name for p in st._view().files}
    assert {p.name for p in segments_dir(out).iterdir()} == named  # no orphan segment left
    assert json.dumps(st.info(), default=str)


# ------------------------------------------------------------------ through extract and the CLI


def test_extract_appends_refreshes_and_compacts_a_segmented_store(tmp_path, segmented, capsys):
    import shutil

    import torch

    from cnncodes import extract
    from cnncodes.cli import main

    from ..conftest import write_tree

    opts = dict(backbone="mobilenet_v2", weights="random", input_size=32, progress=False,
                num_workers=0, batch_size=4)

    def run(out):
        torch.manual_seed(0)
        return extract(src, out, **opts)

    def codes(path):
        st = FeatureStore(path)
        X, y = st.load()
        return {p: (X[i], st.classes[y[i]]) for i, p in enumerate(st.paths)}

    def same_as_fresh(out):
        fresh = tmp_path / f"fresh{time.monotonic_ns()}.h5"
        run(fresh)
        a, b = codes(fresh), codes(out)
        assert sorted(a) == sorted(b)
        for p, (x, y) in a.items():
            assert b[p][1] == y
            np.testing.assert_allclose(b[p][0], x, rtol=1e-4, atol=1e-5 * np.abs(x).max())

    src = write_tree(tmp_path / "photos", per_class=3)
    out = tmp_path / "c.h5"
    run(out)
    write_tree(src, classes=("dog",), per_class=2, seed=5)            # added files
    res = run(out)
    assert res.new == 2 and FeatureStore(out).segmented
    shutil.copy(src / "dog" / "img000.png", src / "ant" / "img001.png")  # a changed file
    (src / "bee" / "img002.png").unlink()                               # a deleted file
    res = run(out)
    assert res.changed == 1 and res.removed == 1 and res.new == 1
    order = list(FeatureStore(out).paths)
    assert order.index("ant/img001.png") == 1  # replaced in place
    same_as_fresh(out)
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "layout     index + 3 segment files" in text and "cnncodes compact" in text
    assert main(["compact", str(out)]) == 0
    assert "-> one file" in capsys.readouterr().out
    assert not FeatureStore(out).segmented and not segments_dir(out).exists()
    assert list(FeatureStore(out).paths) == order
    same_as_fresh(out)
    run(out)
    write_tree(src, classes=("eel",), per_class=1, seed=6)
    run(out)
    assert segments_dir(out).is_dir()
    torch.manual_seed(0)
    extract(src, out, overwrite=True, **opts)  # --overwrite removes the segments too
    assert not segments_dir(out).exists() and not FeatureStore(out).segmented
