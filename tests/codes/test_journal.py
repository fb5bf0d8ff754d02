"""Damaged journal parts and the BatchNorm-fold safety net.

Decision for a damaged part (truncated, garbage, rows that do not match its paths): it is moved to
``<store>.bad-parts/`` (kept for inspection), logged, recorded in the run's ``bad_parts`` entry of
the store's history, and its images count as not done, so the same run (or the next one, when the
damage shows only while folding) extracts them again. The other parts' rows are never lost.
"""

from __future__ import annotations

import numpy as np
import torch

from cnncodes import FeatureStore, extract
from cnncodes.codes import extract_run
from cnncodes.codes import journal as journal_mod
from cnncodes.codes.journal import Journal
from cnncodes.codes.store import fold

OPTS = dict(backbone="mobilenet_v2", weights="random", input_size=32, progress=False,
            batch_size=5, num_workers=0)


def _extract(src, out):
    torch.manual_seed(0)
    return extract(src, out, **OPTS)


def _parts_only(src, out, monkeypatch):
    """An extraction killed before its fold: every batch committed as a part, no store."""
    monkeypatch.setattr(extract_run, "fold", lambda *a, **k: None)
    _extract(src, out)
    monkeypatch.undo()
    parts = Journal(out).part_files()
    assert len(parts) == 5 and not out.exists()  # 24 images in batches of 5
    return parts


def _same_as_reference(out, ref, *, order=True):
    """The same rows as the uninterrupted run (in the same order unless rows were appended)."""
    a, b = FeatureStore(ref), FeatureStore(out)
    pa, pb = list(a.paths), list(b.paths)
    assert (pb == pa if order else sorted(pb) == sorted(pa)) and len(b) == 24
    rows = [pb.index(p) for p in pa]
    np.testing.assert_array_equal(b.labels[rows], a.labels)
    Xa, Xb = a.load()[0], b.load()[0][rows]
    np.testing.assert_allclose(Xb, Xa, rtol=1e-4, atol=1e-5 * np.abs(Xa).max())


def test_damaged_parts_are_set_aside_and_their_images_extracted_again(image_tree, tmp_path,
                                                                      monkeypatch, caplog):
    ref, out = tmp_path / "ref.h5", tmp_path / "c.h5"
    _extract(image_tree, ref)
    parts = _parts_only(image_tree, out, monkeypatch)
    data = parts[1].read_bytes()
    parts[1].write_bytes(data[: len(data) // 2])             # truncated (a full disk)
    data = bytearray(parts[3].read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = b"\x00" * 64  # garbage inside the codes
    parts[3].write_bytes(bytes(data))

    res = _extract(image_tree, out)

    assert res.rows == 24 and res.new == 10 and res.skipped == 14
    _same_as_reference(out, ref)
    bad = tmp_path / "c.h5.bad-parts"
    assert sorted(p.name for p in bad.iterdir()) == [parts[1].name, parts[3].name]
    record = FeatureStore(out).provenance["runs"][-1]["bad_parts"]
    assert sorted(r["part"] for r in record) == [parts[1].name, parts[3].name]
    assert "damaged" in caplog.text and not Journal(out).exists()


def test_a_part_whose_rows_do_not_match_its_paths_is_set_aside(image_tree, tmp_path,
                                                               monkeypatch):
    out = tmp_path / "c.h5"
    parts = _parts_only(image_tree, out, monkeypatch)
    with np.load(parts[2]) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["codes__pool"] = arrays["codes__pool"][:-1]      # one row short
    with open(parts[2], "wb") as f:
        np.savez(f, **arrays)
    res = _extract(image_tree, out)
    assert res.rows == 24 and res.new == 5
    assert [r["part"] for r in FeatureStore(out).provenance["runs"][-1]["bad_parts"]] == \
        [parts[2].name]


def test_damage_seen_only_while_folding_loses_only_that_part(image_tree, tmp_path, monkeypatch):
    ref, out = tmp_path / "ref.h5", tmp_path / "c.h5"
    _extract(image_tree, ref)
    parts = _parts_only(image_tree, out, monkeypatch)
    real = journal_mod._load_part
    victim = parts[2]

    def flaky(path, *, codes, layers):  # header fine (pass 1), codes unreadable (pass 2)
        if codes and path == victim:
            raise OSError("simulated read error")
        return real(path, codes=codes, layers=layers)
    monkeypatch.setattr(journal_mod, "_load_part", flaky)
    j = Journal(out)
    counts = fold(out, j, j.manifest())
    monkeypatch.undo()
    assert counts["rows"] == 19 and len(FeatureStore(out)) == 19
    assert [b["part"] for b in j.bad_parts] == [victim.name]
    assert not j.exists()
    res = _extract(image_tree, out)  # the rerun extracts the lost batch (appended to the store)
    assert res.new == 5
    _same_as_reference(out, ref, order=False)


# ------------------------------------------------------------------------ BatchNorm folding


def test_batchnorm_fold_is_undone_when_it_changes_the_codes(monkeypatch, caplog):
    from torch.nn.utils import fusion

    from cnncodes.backbones import create_backbone
    from cnncodes.codes.extractor import fold_batchnorm

    torch.manual_seed(0)
    ext, _ = create_backbone("resnet18", weights="random", layers="layer2,pool")
    before = [(name, m) for name, m in ext.named_modules()]
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        want = ext(x)
    real = fusion.fuse_conv_bn_eval

    def wrong(conv, bn, *a, **k):  # a fusion that moves the codes well beyond the tolerance
        fused = real(conv, bn, *a, **k)
        with torch.no_grad():
            fused.weight.mul_(1.5)
        return fused
    monkeypatch.setattr(fusion, "fuse_conv_bn_eval", wrong)

    assert fold_batchnorm(ext) == 0
    assert "keeping the unfolded net" in caplog.text
    after = [(name, m) for name, m in ext.named_modules()]
    assert [n for n, _ in after] == [n for n, _ in before]
    assert all(a is b for (_, a), (_, b) in zip(after, before, strict=True))  # same modules back
    with torch.inference_mode():
        got = ext(x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
