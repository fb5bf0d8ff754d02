"""Hostile tar members (issue 24): every image member is a row or a named failure, and nothing is
ever read from outside the archive (the rules of tar's ``data`` extraction filter, PEP 706)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnncodes import FeatureStore, extract
from cnncodes.errors import SourceError
from cnncodes.sources.tarshards import open_tar_shards

#: lists that collect every path opened while they are in it (an audit hook cannot be removed)
_AUDIT: list[list[str]] = []


def _hook(event: str, args: tuple) -> None:
    if event == "open" and _AUDIT and isinstance(args[0], (str, bytes, os.PathLike)):
        for seen in _AUDIT:
            seen.append(os.fsdecode(args[0]))


sys.addaudithook(_hook)

OPTS = dict(backbone="mobilenet_v2", weights="random", input_size=32, progress=False,
            num_workers=0, batch_size=4, decoder="pil")


def _png(seed: int, size=(20, 24)) -> bytes:
    """A noise picture, different for each seed (uniform colours give near-equal random codes)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _info(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE,
          link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mtime = size, kind, link, 1_700_000_000
    return info


def _hostile_shard(folder: Path) -> Path:
    """A shard with one good image, its hard link and symbolic link, and members that must be
    refused; beside it, a recognisable real image that none of them may ever bring in."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "beside.png").write_bytes(_png(99))   # must never be a row
    (folder.parent / "outside.png").write_bytes(_png(99))
    good = _png(1)
    shard = folder / "s.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(_info("good.png", len(good)), io.BytesIO(good))
        tf.addfile(_info("hard.png", kind=tarfile.LNKTYPE, link="good.png"))
        tf.addfile(_info("sub/soft.png", kind=tarfile.SYMTYPE, link="../good.png"))
        dots = _png(2)
        tf.addfile(_info("../beside.png", len(dots)), io.BytesIO(dots))
        tf.addfile(_info("sub/../../outside.png", len(dots)), io.BytesIO(dots))
        tf.addfile(_info("/etc/abs.png", len(dots)), io.BytesIO(dots))
        tf.addfile(_info("leave.png", kind=tarfile.SYMTYPE, link="../beside.png"))
        tf.addfile(_info("hardout.png", kind=tarfile.LNKTYPE, link="../beside.png"))
        tf.addfile(_info("dangling.png", kind=tarfile.SYMTYPE, link="nothere.png"))
        tf.addfile(_info("fifo.png", kind=tarfile.FIFOTYPE))
        tf.addfile(_info("dev.png", kind=tarfile.CHRTYPE))
        tf.addfile(_info("notes.bin", kind=tarfile.FIFOTYPE))
    return shard


REFUSED = {  # row name -> a word of its reason
    "%2E%2E/beside.png": "'..'",
    "sub/%2E%2E/%2E%2E/outside.png": "'..'",
    "%2Fetc/abs.png": "absolute",
    "leave.png": "'data' rule",
    "hardout.png": "'data' rule",
    "dangling.png": "not a regular file in this shard",
    "fifo.png": "FIFO",
    "dev.png": "device",
}


def test_every_image_member_is_a_row_or_a_named_refusal(tmp_path):
    src = open_tar_shards(_hostile_shard(tmp_path / "shards"))
    names = [p.split("/", 1)[1] for p in src.paths]
    assert set(names) == {"good.png", "hard.png", "sub/soft.png", *REFUSED}
    good = src.read_member(names.index("good.png"))
    assert src.read_member(names.index("hard.png")) == good   # links read through the archive
    assert src.read_member(names.index("sub/soft.png")) == good
    assert {names[i] for i in src.refused} == set(REFUSED)
    for i, why in src.refused.items():
        assert REFUSED[names[i]] in why
    assert any("notes.bin" in x and "FIFO" in x for x in src.ignored)
    # no row's path, joined to the shards' folder and normalised, names a file outside the shard
    for p in src.paths:
        full = os.path.normpath(src.root / p)
        assert full.startswith(os.fspath(src.root / "s.tar") + os.sep)
    with pytest.raises(SourceError, match="not a file on disk"):
        src.abspath(0)


def test_extract_stores_links_and_records_refusals_never_the_file_beside(tmp_path):
    shard = _hostile_shard(tmp_path / "shards")
    opened: list[str] = []
    _AUDIT.append(opened)
    try:
        torch.manual_seed(0)
        res = extract(shard, tmp_path / "c.h5", **OPTS)
    finally:
        _AUDIT.remove(opened)
    assert os.fspath(shard) in opened  # the audit hook sees the reads
    assert not [p for p in opened if p.endswith(("beside.png", "outside.png"))]
    assert res.rows == 3 and len(res.failed) == len(REFUSED)
    st = FeatureStore(tmp_path / "c.h5")
    X = st.load()[0]
    assert [p.split("/", 1)[1] for p in st.paths] == ["good.png", "hard.png", "sub/soft.png"]
    np.testing.assert_array_equal(X[1], X[0])
    np.testing.assert_array_equal(X[2], X[0])
    failed = {p.split("/", 1)[1]: why for p, why in st.failures}
    assert set(failed) == set(REFUSED) and all("refused" in w for w in failed.values())
    # a rerun finds nothing to do: refusals are recorded, not retried as changed files
    res = extract(shard, tmp_path / "c.h5", **OPTS)
    assert res.new == 0


def test_a_gnu_sparse_member_is_refused_by_name(tmp_path):
    folder = tmp_path / "sp"
    folder.mkdir()
    img = folder / "sparse.png"
    with open(img, "wb") as f:  # a PNG header, a hole of 1 MiB, one byte: stored sparse by -S
        f.write(_png(3))
        f.seek(1 << 20)
        f.write(b"\0")
    shard = tmp_path / "sparse.tar"
    r = subprocess.run(["tar", "-S", "--format=gnu", "-cf", os.fspath(shard), "-C",
                        os.fspath(folder), "sparse.png"], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"GNU tar cannot write a sparse member here: {r.stderr.decode()[:200]}")
    with tarfile.open(shard) as tf:
        if not tf.getmembers()[0].issparse():
            pytest.skip("this filesystem reports no holes: tar stored the file whole")
    src = open_tar_shards(shard)
    assert list(src.refused.values()) == [src.refused[0]] and "sparse" in src.refused[0]
