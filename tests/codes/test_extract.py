"""Extraction into the HDF5 store: results, provenance, failures, resume, append, mismatch."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cnncodes import FeatureStore, StoreMismatchError, extract
from cnncodes.codes.extraction import extract_arrays
from cnncodes.codes.journal import Journal

from ..conftest import write_tree

OPTS = dict(backbone="mobilenet_v2", weights="random", input_size=32, progress=False)


def _seeded():
    torch.manual_seed(0)  # random-init weights must be the same in every call


def test_extract_writes_codes_paths_labels_and_provenance(image_tree, tmp_path):
    _seeded()
    res = extract(image_tree, tmp_path / "c.h5", layers="stage3,pool", batch_size=5,
                  num_workers=0, **OPTS)
    assert res.rows == 24 and res.new == 24 and not res.failed
    st = FeatureStore(tmp_path / "c.h5")
    X, y = st.load("pool")
    assert X.shape == (24, 1280) and X.dtype == np.float32 and np.isfinite(X).all()
    assert st.dims == {"stage3": 32, "pool": 1280}
    assert list(st.paths) == open_source_paths(image_tree)
    assert st.classes == ["ant", "bee", "cow"] and list(y) == sorted(y)
    prov = st.provenance
    for key in ("backbone", "weights", "layers", "pooling", "preprocessing", "input_size",
                "dtype", "versions", "created", "command", "runs"):
        assert key in prov, key
    assert prov["backbone"] == "mobilenet_v2" and prov["weights"] == "random"
    assert prov["preprocessing"]["crop"] == 32 and prov["versions"]["torch"] == torch.__version__
    with h5py.File(tmp_path / "c.h5") as f:
        assert f["codes/pool"].maxshape == (None, 1280) and f["codes/pool"].chunks is not None
    assert not Journal(tmp_path / "c.h5").exists()


def open_source_paths(root: Path) -> list[str]:
    from cnncodes.sources.folders import open_source
    return open_source(root).paths


def test_codes_do_not_depend_on_batch_size_or_workers(image_tree, tmp_path):
    _seeded()
    a = extract(image_tree, tmp_path / "a.h5", batch_size=24, num_workers=0, **OPTS)
    _seeded()
    b = extract(image_tree, tmp_path / "b.h5", batch_size=5, num_workers=2, **OPTS)
    Xa, ya = FeatureStore(a.path).load()
    Xb, yb = FeatureStore(b.path).load()
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_allclose(Xa, Xb, rtol=1e-4, atol=1e-5 * np.abs(Xa).max())
    assert list(FeatureStore(a.path).paths) == list(FeatureStore(b.path).paths)


def test_in_memory_extraction_matches_the_store(image_tree, tmp_path):
    _seeded()
    extract(image_tree, tmp_path / "c.h5", batch_size=6, num_workers=0, **OPTS)
    _seeded()
    arr = extract_arrays(image_tree, batch_size=6, num_workers=0, weights="random",
                         input_size=32)
    X, y = FeatureStore(tmp_path / "c.h5").load()
    np.testing.assert_array_equal(arr.codes["pool"], X)
    np.testing.assert_array_equal(arr.labels, y)


def test_broken_files_are_recorded_and_rows_stay_aligned(image_tree, tmp_path):
    (image_tree / "bee" / "img000.png").write_bytes(b"")           # zero bytes
    (image_tree / "cow" / "zz.jpg").write_text("not a jpeg")        # not an image
    _seeded()
    res = extract(image_tree, tmp_path / "c.h5", batch_size=4, num_workers=0, **OPTS)
    assert res.rows == 23 and len(res.failed) == 2
    st = FeatureStore(tmp_path / "c.h5")
    assert dict(st.failures) == {"bee/img000.png": "empty file (0 bytes)",
                                 "cow/zz.jpg": "not a recognised image (PIL cannot identify it)"}
    # every row's code is the code of its own path (compare with a clean run of the good files)
    _seeded()
    good = [image_tree / p for p in st.paths]
    ref = extract_arrays(good, batch_size=3, num_workers=0, weights="random", input_size=32)
    X, _ = st.load()
    np.testing.assert_allclose(X, ref.codes["pool"], rtol=1e-4, atol=1e-5 * np.abs(X).max())
    info = st.info()
    assert {f["path"] for f in info["failures"]} == {"bee/img000.png", "cow/zz.jpg"}


def test_rerun_is_a_no_op_and_new_images_are_appended(image_tree, tmp_path):
    out = tmp_path / "c.h5"
    _seeded()
    extract(image_tree, out, batch_size=8, num_workers=0, **OPTS)
    X1, _ = FeatureStore(out).load()
    _seeded()
    again = extract(image_tree, out, batch_size=8, num_workers=0, **OPTS)
    assert again.new == 0 and again.skipped == 24
    write_tree(image_tree, classes=("bee", "dog"), per_class=2, seed=5, ext=".jpg")
    _seeded()
    more = extract(image_tree, out, batch_size=8, num_workers=0, **OPTS)
    assert more.new == 4 and more.rows == 28
    st = FeatureStore(out)
    X2, y2 = st.load()
    np.testing.assert_array_equal(X2[:24], X1)          # old rows untouched
    assert st.classes == ["ant", "bee", "cow", "dog"]
    assert [st.classes[i] for i in y2] == [p.split("/")[0] for p in st.paths]
    assert len(st.provenance["runs"]) == 2


def test_other_configuration_is_refused_unless_overwrite(image_tree, tmp_path):
    out = tmp_path / "c.h5"
    extract(image_tree, out, num_workers=0, **OPTS)
    with pytest.raises(StoreMismatchError, match=r"layers: file has \[\"pool\"\], requested"):
        extract(image_tree, out, num_workers=0, layers="stage4", **OPTS)
    with pytest.raises(StoreMismatchError, match="preprocessing"):
        extract(image_tree, out, num_workers=0, **{**OPTS, "input_size": 48})
    res = extract(image_tree, out, num_workers=0, layers="stage4", overwrite=True, **OPTS)
    assert res.new == 24 and FeatureStore(out).layers == ["stage4"]


def test_float16_storage_and_compression(image_tree, tmp_path):
    _seeded()
    extract(image_tree, tmp_path / "a.h5", num_workers=0, **OPTS)
    _seeded()
    extract(image_tree, tmp_path / "b.h5", num_workers=0, dtype="float16", compression="gzip",
            **OPTS)
    Xa, _ = FeatureStore(tmp_path / "a.h5").load()
    Xb, _ = FeatureStore(tmp_path / "b.h5").load()
    assert Xb.dtype == np.float32
    with h5py.File(tmp_path / "b.h5") as f:
        assert f["codes/pool"].dtype == np.float16 and f["codes/pool"].compression == "gzip"
    np.testing.assert_allclose(Xa, Xb, rtol=2e-3, atol=1e-3)


def test_a_crash_between_rename_and_cleanup_loses_and_duplicates_nothing(image_tree, tmp_path,
                                                                         monkeypatch):
    out = tmp_path / "c.h5"
    _seeded()
    extract(image_tree, out, batch_size=5, num_workers=0, **OPTS)
    X_ref, _ = FeatureStore(out).load()
    out.unlink()
    # replay: parts exist, fold renames the file but "dies" before clearing the journal
    monkeypatch.setattr(Journal, "clear", lambda self: None)
    _seeded()
    extract(image_tree, out, batch_size=5, num_workers=0, **OPTS)
    assert Journal(out).n_parts() > 0
    monkeypatch.undo()
    (tmp_path / "c.h5.tmp").write_bytes(b"half-written garbage from a killed fold")
    _seeded()
    res = extract(image_tree, out, batch_size=5, num_workers=0, **OPTS)
    assert res.rows == 24
    X, _ = FeatureStore(out).load()
    np.testing.assert_array_equal(X, X_ref)


def test_fold_is_atomic_when_it_fails(image_tree, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    _seeded()
    extract(image_tree, out, batch_size=5, num_workers=0, **OPTS)
    before = out.read_bytes()
    write_tree(image_tree, classes=("dog",), per_class=3, seed=9)

    def boom(*a, **k):
        raise OSError("disk full (simulated)")
    monkeypatch.setattr("cnncodes.codes.store.write_attrs", boom)
    with pytest.raises(OSError, match="disk full"):
        extract(image_tree, out, batch_size=5, num_workers=0, **OPTS)
    assert out.read_bytes() == before                  # the old store is intact ...
    assert Journal(out).n_parts() == 1                 # ... and the new work is kept
    monkeypatch.undo()
    res = extract(image_tree, out, batch_size=5, num_workers=0, **OPTS)
    assert res.rows == 27 and res.new == 0


def test_concurrent_writer_is_refused(image_tree, tmp_path):
    j = Journal(tmp_path / "c.h5")
    j.lock()
    try:
        with pytest.raises(RuntimeError, match="Another process is writing"):
            extract(image_tree, tmp_path / "c.h5", num_workers=0, **OPTS)
    finally:
        j.unlock()


# ------------------------------------------------------------------------ kill -9 and resume

RUN = [sys.executable, "-m", "cnncodes", "-q", "extract", "--backbone", "mobilenet_v2",
       "--weights", "{ckpt}", "--input-size", "64", "--batch-size", "4", "--workers", "0",
       "--no-progress", "--threads", "1"]


def _cmd(src: Path, out: Path, ckpt: Path) -> list[str]:
    return [a.format(ckpt=ckpt) for a in RUN] + [str(src), "-o", str(out)]


@pytest.mark.slow
def test_kill_9_at_random_moments_then_rerun_gives_identical_codes(tmp_path):
    src = write_tree(tmp_path / "photos", classes=("a", "b", "c", "d"), per_class=50, seed=3)
    (src / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    ckpt = tmp_path / "random_mnv2.pth"
    torch.manual_seed(0)
    import torchvision
    torch.save(torchvision.models.mobilenet_v2().state_dict(), ckpt)
    ref, out = tmp_path / "ref.h5", tmp_path / "killed.h5"
    subprocess.run(_cmd(src, ref, ckpt), check=True, capture_output=True)

    rng = random.Random(1234)
    journal = Journal(out)
    kills = 0
    for _ in range(5):
        start_parts = len(journal.part_files())
        target = start_parts + rng.randint(1, 8)
        proc = subprocess.Popen(_cmd(src, out, ckpt), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # let this run commit a random number of batches, then kill it at a random moment
        deadline = time.time() + 120
        while (time.time() < deadline and proc.poll() is None
               and len(journal.part_files()) < target):
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if out.is_file() and not journal.part_files():
            break
    assert kills >= 3, "the runs finished too fast to be interrupted"
    assert not out.is_file() and journal.n_parts() > 0
    subprocess.run(_cmd(src, out, ckpt), check=True, capture_output=True)

    a, b = FeatureStore(ref), FeatureStore(out)
    assert list(a.paths) == list(b.paths) and len(a) == 200
    assert a.failures == b.failures == [("b/broken.jpg", b.failures[0][1])]
    Xa, ya = a.load()
    Xb, yb = b.load()
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(Xa, Xb)
    assert not journal.exists()


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121", "vgg11_bn",
                                  "efficientnet_b0", "convnext_tiny"])
def test_batchnorm_folding_keeps_the_codes(name):
    from cnncodes.backbones import create_backbone, get_spec
    from cnncodes.codes.extractor import fold_batchnorm

    layers = list(get_spec(name).layers)

    def build():
        torch.manual_seed(0)
        ext, _ = create_backbone(name, weights="random", layers=layers)
        g = torch.Generator().manual_seed(1)
        for m in ext.model.modules():  # non-trivial statistics, as in trained networks
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        return ext
    plain, folded = build(), build()
    n = fold_batchnorm(folded)
    assert (n > 0) == (name != "convnext_tiny")  # ConvNeXt has LayerNorm, nothing to fold
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        a, b = plain(x), folded(x)
    for k in layers:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-4 * float(a[k].abs().max()))


@pytest.mark.slow
def test_ctrl_c_keeps_the_work_and_the_rerun_finishes(tmp_path):
    # long enough that Ctrl-C lands mid-run
    n = 240
    src = write_tree(tmp_path / "photos", classes=("a", "b"), per_class=n // 2, seed=2)
    out = tmp_path / "c.h5"
    cmd = [sys.executable, "-m", "cnncodes", "extract", str(src), "-o", str(out), "--weights",
           "random", "--input-size", "112", "--batch-size", "4", "--workers", "1",
           "--no-progress"]
    # Ctrl-C in a terminal: SIGINT at its default. A job started in the background of a
    # non-interactive shell (`cmd &`, as a CI script may run the tests) inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: the run finished with exit 0
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journal = Journal(out)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(journal.part_files()) < 2:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted: make it longer"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-1000:]
    assert "run the same command again to continue" in err
    partial = FeatureStore(out)
    assert 0 < len(partial) < n and partial.provenance["complete"] is False
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1000:]
    done = FeatureStore(out)
    assert len(done) == n and done.provenance["complete"] is True
    assert list(done.paths) == sorted(done.paths, key=lambda p: (p.split("/")[0], p))


def test_tensor_decoder_gives_the_same_rows_and_near_identical_codes(tmp_path):
    src = write_tree(tmp_path / "photos", per_class=6, seed=8, ext=".jpg", size=(90, 120))
    (src / "ant" / "zzz.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (src / "bee" / "x.png").write_bytes(b"")
    a = extract(src, tmp_path / "pil.h5", decoder="pil", num_workers=0, **OPTS)
    b = extract(src, tmp_path / "tensor.h5", decoder="tensor", num_workers=1, **OPTS)
    sa, sb = FeatureStore(a.path), FeatureStore(b.path)
    assert list(sa.paths) == list(sb.paths) and len(sa) == 18
    assert ([p for p, _ in sa.failures] == [p for p, _ in sb.failures]
            == ["ant/zzz.jpg", "bee/x.png"])
    Xa, _ = sa.load()
    Xb, _ = sb.load()
    cos = (Xa * Xb).sum(1) / np.linalg.norm(Xa, axis=1) / np.linalg.norm(Xb, axis=1)
    assert cos.min() > 0.9999
    assert sb.provenance["runs"][-1]["decoder"] == "libjpeg-turbo+dct"  # large JPEGs DCT-scaled
    assert sa.provenance["runs"][-1]["decoder"] == "pil+dct"


def test_commit_points_make_the_store_readable_mid_run_and_change_nothing(image_tree, tmp_path,
                                                                          monkeypatch):
    (image_tree / "cow" / "bad.jpg").write_bytes(b"")
    ref = extract(image_tree, tmp_path / "ref.h5", batch_size=5, num_workers=0,
                  commit_every=None, **OPTS)
    import importlib
    ex = importlib.import_module("cnncodes.codes.extract_run")
    seen = []
    real_fold = ex.fold

    def spy(out, journal, prov, **kw):
        counts = real_fold(out, journal, prov, **kw)
        st = FeatureStore(out)
        seen.append((kw.get("keep_journal", False), len(st), st.provenance["complete"]))
        return counts
    monkeypatch.setattr(ex, "fold", spy)
    extract(image_tree, tmp_path / "c.h5", batch_size=5, num_workers=0, commit_every=0.0, **OPTS)
    mid = [s for s in seen if s[0]]
    # one commit point per batch but the last; cow/bad.jpg (batch 4) has no row
    assert [n for _, n, _ in mid] == [5, 10, 15, 19]
    assert all(complete is False for _, _, complete in mid)
    assert seen[-1] == (False, 24, True)
    a, b = FeatureStore(ref.path), FeatureStore(tmp_path / "c.h5")
    assert list(a.paths) == list(b.paths) and a.failures == b.failures
    np.testing.assert_array_equal(a.load()[0], b.load()[0])
    assert len(b.provenance["runs"]) == 1 and not Journal(tmp_path / "c.h5").exists()


def test_a_repaired_file_becomes_a_row_and_retry_failed_tries_unchanged_failures(image_tree,
                                                                                 tmp_path):
    good = (image_tree / "ant" / "img000.png").read_bytes()
    (image_tree / "ant" / "img000.png").write_bytes(b"broken")
    out = tmp_path / "c.h5"
    extract(image_tree, out, num_workers=0, **OPTS)
    assert [p for p, _ in FeatureStore(out).failures] == ["ant/img000.png"]
    res = extract(image_tree, out, num_workers=0, **OPTS)  # an unchanged failure is final ...
    assert res.new == 0 and res.retried == 0
    res = extract(image_tree, out, num_workers=0, retry_failed=True, **OPTS)  # ... unless retried
    assert res.new == 0 and res.retried == 1 and len(FeatureStore(out).failures) == 1
    (image_tree / "ant" / "img000.png").write_bytes(good)  # repaired: its identity changed
    res = extract(image_tree, out, num_workers=0, **OPTS)
    st = FeatureStore(out)
    assert res.new == 1 and res.retried == 1 and len(st) == 24 and st.failures == []
    assert "ant/img000.png" in set(st.paths)
