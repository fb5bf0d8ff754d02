"""Tar shards in the WebDataset layout: read without unpacking, in a fixed order, with labels from
``.cls``/``.txt`` members; the same codes as the same images in a folder; resume, per-member
failures, a rewritten shard extracted again, whole shards per torchrun rank."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cnncodes import FeatureStore, extract
from cnncodes.codes import extract_run
from cnncodes.codes.journal import Journal
from cnncodes.errors import SourceError
from cnncodes.sources.folders import open_source
from cnncodes.sources.tarshards import TarShardSource, expand_braces, open_tar_shards

from ..conftest import write_tree

OPTS = dict(backbone="mobilenet_v2", weights="random", input_size=32, progress=False,
            num_workers=0, batch_size=4, decoder="pil")


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1_700_000_000
    tf.addfile(info, io.BytesIO(data))


def write_shards(tree: Path, out: Path, per_shard: int = 8, label: str = ".cls") -> list[str]:
    """The images of a class tree as ``out/train-00000N.tar``: key ``<class>_<stem>`` with the
    image and its label member; returns the tree paths in row order."""
    src = open_source(tree)
    out.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(src), per_shard):
        with tarfile.open(out / f"train-{s // per_shard:06d}.tar", "w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(s, min(len(src), s + per_shard)):
                p = src.paths[i]
                key = p.replace("/", "_").rsplit(".", 1)[0]
                _add(tf, key + ".png", (tree / p).read_bytes())
                if label:
                    _add(tf, key + label, src.classes[src.labels[i]].encode())
    return src.paths


def test_brace_ranges_and_lists_expand_in_order():
    assert expand_braces("s/train-{000000..000002}.tar") == [
        "s/train-000000.tar", "s/train-000001.tar", "s/train-000002.tar"]
    assert expand_braces("{a,b}-{8..10}.tar") == ["a-8.tar", "a-9.tar", "a-10.tar", "b-8.tar",
                                                  "b-9.tar", "b-10.tar"]
    with pytest.raises(SourceError, match="must be a range"):
        expand_braces("x-{abc}.tar")


def test_shards_read_in_order_with_labels_and_offsets(tmp_path):
    tree = write_tree(tmp_path / "photos", per_class=4)
    order = write_shards(tree, tmp_path / "shards", per_shard=5)
    src = open_source(tmp_path / "shards" / "train-{000000..000002}.tar")
    assert isinstance(src, TarShardSource) and src.kind == "tar" and len(src) == 12
    assert src.paths[0] == "train-000000.tar/ant_img000.png"
    assert [p.split("/", 1)[1].replace("_", "/", 1) for p in src.paths] == order
    assert src.classes == ["ant", "bee", "cow"]
    assert [src.classes[y] for y in src.labels] == [p.split("/")[0] for p in order]
    assert src.shard_of.tolist() == [0] * 5 + [1] * 5 + [2] * 2
    for i, p in enumerate(order):  # each member's bytes, read by offset, are the image file
        assert src.read_member(i) == (tree / p).read_bytes()
    # the same with a glob, and whole shards per rank
    assert open_source(str(tmp_path / "shards" / "*.tar")).paths == src.paths
    assert src.rank_share(range(12), 0, 2) == list(range(5)) + [10, 11]
    assert src.rank_share(range(12), 1, 2) == list(range(5, 10))
    with pytest.raises(SourceError, match="do not exist .first: .*train-000003.tar"):
        open_source(tmp_path / "shards" / "train-{000000..000003}.tar")


def test_txt_labels_unlabelled_shards_and_keys_without_an_image(tmp_path):
    tree = write_tree(tmp_path / "photos", classes=("a", "b"), per_class=2)
    write_shards(tree, tmp_path / "txt", label=".txt")
    assert open_source(tmp_path / "txt" / "train-000000.tar").classes == ["a", "b"]
    write_shards(tree, tmp_path / "none", label="")
    src = open_source(tmp_path / "none" / "train-000000.tar")
    assert (src.labels == -1).all() and src.classes == []
    with tarfile.open(tmp_path / "none" / "train-000000.tar", "a") as tf:
        _add(tf, "orphan.cls", b"a")
    src = open_tar_shards(tmp_path / "none" / "train-000000.tar")
    assert len(src) == 4 and src.ignored == [
        "train-000000.tar/orphan.cls: key 'orphan' has no image member"]


def test_a_tar_source_extracts_the_codes_of_the_same_images_in_a_folder(tmp_path):
    tree = write_tree(tmp_path / "photos", per_class=3)
    order = write_shards(tree, tmp_path / "shards", per_shard=4)
    pattern = tmp_path / "shards" / "train-{000000..000002}.tar"
    torch.manual_seed(0)
    a = extract(tree, tmp_path / "folder.h5", **OPTS)
    torch.manual_seed(0)
    b = extract(pattern, tmp_path / "tar.h5", **OPTS)
    assert a.rows == b.rows == 9 and not b.failed
    fa, fb = FeatureStore(tmp_path / "folder.h5"), FeatureStore(tmp_path / "tar.h5")
    assert [p.split("/", 1)[1].replace("_", "/", 1) for p in fb.paths] == list(fa.paths) == order
    Xa, ya = fa.load()
    Xb, yb = fb.load()
    np.testing.assert_array_equal(Xb, Xa)  # the same bytes through the same decoder
    assert fb.classes == fa.classes and np.array_equal(ya, yb)
    assert fb.sources[0]["kind"] == "tar"


def test_resume_failed_members_and_a_rewritten_shard(tmp_path, monkeypatch):
    tree = write_tree(tmp_path / "photos", per_class=3)
    shards = tmp_path / "shards"
    write_shards(tree, shards, per_shard=4)
    with tarfile.open(shards / "train-000003.tar", "w") as tf:  # one broken image, one good
        _add(tf, "cow_broken.png", b"\x89PNG\r\n\x1a\n not really")
        _add(tf, "cow_broken.cls", b"cow")
        _add(tf, "cow_fine.png", (tree / "cow" / "img000.png").read_bytes())
        _add(tf, "cow_fine.cls", b"cow")
    pattern = shards / "train-{000000..000003}.tar"
    out = tmp_path / "c.h5"
    monkeypatch.setattr(extract_run, "fold", lambda *a, **k: None)  # killed before its fold
    torch.manual_seed(0)
    extract(pattern, out, **OPTS)
    monkeypatch.undo()
    assert Journal(out).n_parts() == 3 and not out.exists()
    torch.manual_seed(0)
    res = extract(pattern, out, **OPTS)  # the rerun extracts nothing again, it only folds
    assert res.new == 0 and res.rows == 10
    st = FeatureStore(out)
    assert st.failures[0][0] == "train-000003.tar/cow_broken.png"
    assert "not a recognised image" in st.failures[0][1]
    X0 = st.load()[0]
    torch.manual_seed(0)
    res = extract(pattern, out, **OPTS)
    assert res.new == 0 and res.skipped == 11
    shard1 = shards / "train-000001.tar"
    st_ = shard1.stat()
    os.utime(shard1, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))  # the shard rewritten
    torch.manual_seed(0)
    res = extract(pattern, out, **OPTS)
    assert res.changed == 4 and res.new == 4
    np.testing.assert_array_equal(FeatureStore(out).load()[0], X0)


def test_a_compressed_shard_is_refused_with_the_fix(tmp_path):
    tree = write_tree(tmp_path / "photos", classes=("a",), per_class=1)
    with tarfile.open(tmp_path / "s.tar", "w:gz") as tf:
        tf.add(tree / "a" / "img000.png", "a_img000.png")
    with pytest.raises(SourceError, match="compressed.*gunzip"):
        open_source(tmp_path / "s.tar")
