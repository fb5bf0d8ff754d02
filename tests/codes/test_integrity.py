"""Bit rot: every chunk of codes and labels is checksummed; damage is one error naming the store,
the file and the rows, on read and in full by ``cnncodes info --verify``."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from cnncodes import FeatureStore
from cnncodes.cli import main
from cnncodes.codes import store as store_mod
from cnncodes.codes import store_layout
from cnncodes.codes.journal import Journal, Part
from cnncodes.codes.store import fold
from cnncodes.errors import StoreDamagedError

DIM = 512  # 512 rows per 1 MiB chunk
PROV = {"backbone": "test", "weights": "random", "weights_sha256": "", "layers": ["pool"],
        "pooling": "avg", "preprocessing": {}, "dtype": "float32", "root": "/data",
        "command": "cnncodes extract /data -o codes.h5",
        "layer_info": {"pool": {"node": "x", "kind": "pool", "pooling": "avg"}}}


def _store(path, n=3000, seq=0, compression=None, start=0):
    rng = np.random.default_rng(seq)
    j = Journal(path)
    j.dir.mkdir(exist_ok=True)
    paths = [f"a/{i:05d}.png" for i in range(start, start + n)]
    j.write_part(Part(seq=seq, paths=np.array(paths, dtype=np.str_),
                      labels=np.array(["ant"] * n, dtype=np.str_),
                      codes={"pool": rng.standard_normal((n, DIM)).astype(np.float32)},
                      fail_paths=np.array([], dtype=np.str_),
                      fail_reasons=np.array([], dtype=np.str_)))
    fold(path, j, PROV, compression=compression)
    return path


def _flip(path, dataset="codes/pool", chunk=1, byte=100, bit=3):
    """Flip one bit inside the stored bytes of one chunk (a copy's bit rot)."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        info = ds.id.get_chunk_info(chunk)
        rows = (chunk * ds.chunks[0], min(ds.shape[0], (chunk + 1) * ds.chunks[0]))
        offset = info.byte_offset + min(byte, info.size - 5)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([b ^ (1 << bit)]))
    return rows


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_a_flipped_bit_is_one_error_naming_the_store_and_the_rows(tmp_path, compression, capsys):
    good = _store(tmp_path / "good.h5", compression=compression)
    bad = tmp_path / "bad.h5"
    shutil.copyfile(good, bad)
    lo, hi = _flip(bad)
    st = FeatureStore(bad)
    with pytest.raises(StoreDamagedError) as e:
        st.load()
    msg = str(e.value)
    assert str(bad) in msg and f"rows {lo}-{hi - 1}" in msg and f"a/{lo:05d}.png" in msg
    assert "cnncodes extract /data -o codes.h5 --repair" in msg
    # rows outside the damaged chunk still read, equal to the good copy
    X, _ = st.load(rows=slice(0, lo))
    np.testing.assert_array_equal(X, FeatureStore(good).load(rows=slice(0, lo))[0])
    assert main(["info", str(bad), "--verify"]) == 1
    cap = capsys.readouterr()
    assert f"rows {lo}-{hi - 1}" in cap.err and "Traceback" not in cap.err
    assert "DAMAGED" in cap.out
    assert main(["info", str(good), "--verify"]) == 0
    assert "every chunk read back intact" in capsys.readouterr().out


def test_a_damaged_label_chunk_is_found_by_verify(tmp_path):
    bad = _store(tmp_path / "s.h5")
    _flip(bad, "labels", chunk=0, byte=40)
    errors = FeatureStore(bad).verify()
    assert len(errors) == 1 and "labels" in str(errors[0]) and "--overwrite" in str(errors[0])


def test_a_damaged_segment_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(store_mod, "REWRITE_BELOW", 0)
    path = _store(tmp_path / "s.h5", n=1000)
    _store(path, n=1000, seq=1000, start=1000)
    st = FeatureStore(path)
    assert st.segmented
    seg = st._view().files[1]
    _flip(seg, chunk=0)
    with pytest.raises(StoreDamagedError) as e:
        st.load()
    assert seg.name in str(e.value) and "store rows 1000-" in str(e.value)
    assert [seg.name in str(x) for x in st.verify()] == [True]


def test_an_old_store_without_checksums_reads_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(store_layout, "CHECKSUM", False)
    path = _store(tmp_path / "old.h5")
    st = FeatureStore(path)
    assert st.checksummed() == "none"
    assert st.load()[0].shape == (3000, DIM)
    assert main(["info", str(path)]) == 0
    assert "not checksummed" in capsys.readouterr().out
    monkeypatch.setattr(store_layout, "CHECKSUM", True)
    store_mod.compact(path)  # a rewrite adds them
    assert FeatureStore(path).checksummed() == "all"


@pytest.mark.slow
@pytest.mark.parametrize("segmented", [False, True])
def test_extract_repair_re_extracts_exactly_the_damaged_rows(tmp_path, monkeypatch, capsys,
                                                            segmented):
    import torch

    from ..conftest import write_tree

    if segmented:
        monkeypatch.setattr(store_mod, "REWRITE_BELOW", 0)
    photos = write_tree(tmp_path / "photos", per_class=70)  # 210 rows x 1280-d: 204 a chunk
    args = ["--backbone", "mobilenet_v2", "--weights", "random", "--input-size", "32",
            "--workers", "0", "--no-progress", "--batch-size", "32"]
    good = tmp_path / "good.h5"
    torch.manual_seed(0)
    assert main(["extract", str(photos), "-o", str(good), *args]) == 0
    out = tmp_path / "codes.h5"
    shutil.copyfile(good, out)
    if segmented:  # one more image: the store becomes an index over segments
        shutil.copy(next((photos / "ant").iterdir()), photos / "ant" / "zz_new.png")
        torch.manual_seed(0)
        assert main(["extract", str(photos), "-o", str(good), *args]) == 0
        torch.manual_seed(0)
        assert main(["extract", str(photos), "-o", str(out), *args]) == 0
        assert FeatureStore(out).segmented
        target = FeatureStore(out)._view().files[0]
    else:
        target = out
    lo, hi = _flip(target, chunk=0, byte=5000)
    capsys.readouterr()
    assert main(["train", str(out), "-o", str(tmp_path / "m.npz")]) == 1
    err = capsys.readouterr().err
    assert f"store rows {lo}-{hi - 1}" in err and "--repair" in err
    torch.manual_seed(0)
    assert main(["extract", str(photos), "-o", str(out), *args, "--repair"]) == 0
    text = capsys.readouterr().out
    assert f"{hi - lo} extracted now" in text
    a, b = FeatureStore(out), FeatureStore(good)
    assert list(a.paths) == list(b.paths) and a.verify() == []
    np.testing.assert_array_equal(a.load()[0], b.load()[0])
    assert main(["info", str(out), "--verify"]) == 0


def test_a_damaged_compressed_chunk_of_an_old_store_is_the_same_one_error(tmp_path, monkeypatch,
                                                                         capsys):
    """Without checksums a bad byte in a gzip chunk still fails to inflate: no zlib traceback."""
    monkeypatch.setattr(store_layout, "CHECKSUM", False)
    path = _store(tmp_path / "old.h5", compression="gzip")
    lo, hi = _flip(path, chunk=2, byte=200, bit=0)
    with pytest.raises(StoreDamagedError) as e:
        FeatureStore(path).load()
    assert f"store rows {lo}-{hi - 1}" in str(e.value)
    assert main(["info", str(path)]) == 1
    cap = capsys.readouterr()
    assert "DAMAGED" in cap.out and "not checksummed" in cap.out
