"""Hostile sources: special files and links in a tree or a list, list files as people write them,
``max_pixels=0``. Every case asserts that nothing blocks, the reason is recorded, the good rows are
intact and the inputs are untouched."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnncodes import FeatureStore, extract
from cnncodes.errors import DecodeError, OptionError, SourceError
from cnncodes.options import RuntimeOptions
from cnncodes.sources.folders import open_source
from cnncodes.sources.images import load_rgb
from cnncodes.sources.loader import ImageDataset
from cnncodes.sources.preprocessing import IMAGENET
from cnncodes.sources.tensor_decode import BytesDataset, read_item

from ..conftest import write_tree

OPTS = dict(backbone="mobilenet_v2", weights="random", input_size=32, progress=False,
            num_workers=0, batch_size=4)
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="os.mkfifo unavailable")
TIMEOUT = 120


def _digest(root: Path) -> dict[str, str]:
    """Content of every regular file under ``root`` (inputs must stay byte-identical)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            if p.is_file() and not p.is_symlink():
                out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _unblock(fifo: Path) -> None:
    """Release a reader stuck on ``fifo`` (a regression) so the test process can end."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass  # no reader waiting: nothing blocked


def _within(fn, fifos=(), timeout=TIMEOUT):
    """``fn()`` in a thread; a hang fails the test (instead of hanging the suite)."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        for f in fifos:
            _unblock(f)
        t.join(10)
        pytest.fail(f"blocked for more than {timeout} s (on a special file?)")
    if "error" in box:
        raise box["error"]
    return box["value"]


# ----------------------------------------------------------------------- special files, links


@needs_fifo
@pytest.mark.parametrize("decoder", ["auto", "pil"])
def test_fifo_named_like_an_image_in_a_tree_is_a_recorded_failure(tmp_path, decoder):
    root = write_tree(tmp_path / "photos", per_class=3)
    fifo = root / "bee" / "x.jpg"
    os.mkfifo(fifo)
    before = _digest(root)
    torch.manual_seed(0)
    res = _within(lambda: extract(root, tmp_path / "c.h5", decoder=decoder, **OPTS), [fifo])
    assert res.rows == 9 and len(res.failed) == 1
    st = FeatureStore(tmp_path / "c.h5")
    reason = dict(st.failures)["bee/x.jpg"]
    assert "not a regular file" in reason and "FIFO" in reason
    assert sorted(st.paths) == sorted(f"{c}/img{i:03d}.png" for c in ("ant", "bee", "cow")
                                      for i in range(3))
    assert _digest(root) == before and fifo.exists()


@needs_fifo
def test_fifo_in_a_list_file_cannot_block_either_path(tmp_path):
    root = write_tree(tmp_path / "photos", per_class=2)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    lst = tmp_path / "list.txt"
    lst.write_text("photos/ant/img000.png\npipe.png\nphotos/bee/img001.png\n")
    src = open_source(lst)
    assert src.paths == ["photos/ant/img000.png", "pipe.png", "photos/bee/img001.png"]
    pp = IMAGENET.with_input_size(32)
    item = _within(lambda: read_item(1, src.abspath(1), pp), [fifo])  # the tensor (bytes) path
    assert item.image is None and "FIFO" in item.failure
    with pytest.raises(DecodeError, match="not a regular file"):
        _within(lambda: load_rgb(fifo), [fifo])
    for ds in (ImageDataset(src, pp), BytesDataset(src, pp)):
        assert _within(lambda ds=ds: [ds[i] for i in range(3)], [fifo])  # noqa: B023
    torch.manual_seed(0)
    res = _within(lambda: extract(lst, tmp_path / "c.h5", **OPTS), [fifo])
    assert res.rows == 2 and [p for p, _ in res.failed] == ["pipe.png"]
    assert (root / "ant" / "img000.png").is_file()


def test_symlink_loops_do_not_crash_the_walk(tmp_path):
    root = write_tree(tmp_path / "photos", per_class=2)
    os.symlink("self.jpg", root / "ant" / "self.jpg")        # a file-named link to itself
    os.symlink("..", root / "ant" / "up")                    # a folder link back to the root
    os.symlink(".", root / "bee" / "here")                   # a folder link to its own folder
    os.symlink("loopdir", root / "loopdir")                  # a top-level link loop
    src = _within(lambda: open_source(root))
    assert src.classes == ["ant", "bee", "cow"]
    assert src.paths == ["ant/img000.png", "ant/img001.png", "ant/self.jpg", "bee/img000.png",
                         "bee/img001.png", "cow/img000.png", "cow/img001.png"]
    torch.manual_seed(0)
    res = extract(root, tmp_path / "c.h5", **OPTS)
    assert res.rows == 6
    assert dict(res.failed) == {"ant/self.jpg": f"symbolic link loop at {root}/ant/self.jpg"}


def test_dangling_link_is_a_failure_and_links_out_of_the_tree_work(tmp_path):
    root = write_tree(tmp_path / "photos", per_class=2)
    outside = write_tree(tmp_path / "elsewhere", classes=("cow",), per_class=2, seed=5)
    os.symlink(root / "gone.png", root / "ant" / "dead.png")
    os.symlink(outside / "cow" / "img000.png", root / "bee" / "far.png")  # file link out
    os.symlink(outside / "cow", root / "cow" / "more")                    # folder link out
    src = open_source(root)
    assert "ant/dead.png" in src.paths and "bee/far.png" in src.paths
    assert {"cow/more/img000.png", "cow/more/img001.png"} <= set(src.paths)
    with pytest.raises(DecodeError, match=f"dangling symbolic link: {root}/ant/dead.png -> "):
        load_rgb(src.abspath(src.paths.index("ant/dead.png")))
    torch.manual_seed(0)
    res = extract(root, tmp_path / "c.h5", **OPTS)
    assert res.rows == 9 and [p for p, _ in res.failed] == ["ant/dead.png"]


def test_a_special_file_as_the_source_is_refused(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("os.mkfifo unavailable")
    os.mkfifo(tmp_path / "photos")
    with pytest.raises(SourceError, match="must be a folder or a list file.*FIFO"):
        _within(lambda: open_source(tmp_path / "photos"))


# ----------------------------------------------------------------------------------- list files


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "data" / "photos", classes=("ant", "bee"), per_class=2)


def _open(tmp_path: Path, name: str, data: bytes):
    p = tmp_path / "data" / name
    p.write_bytes(data)
    src = open_source(p)
    return src, [src.classes[i] if i >= 0 else None for i in src.labels]


PAIRS = [("photos/ant/img000.png", "ant"), ("photos/bee/img000.png", "bee"),
         ("photos/ant/img001.png", "ant")]


@pytest.mark.parametrize("name, text", [
    ("bom.txt", "\ufeffphotos/ant/img000.png\tant\nphotos/bee/img000.png\tbee\n"
                "photos/ant/img001.png\tant\n"),
    ("crlf.txt", "photos/ant/img000.png\tant\r\nphotos/bee/img000.png\tbee\r\n"
                 "photos/ant/img001.png\tant\r\n"),
    ("cr.txt", "photos/ant/img000.png\tant\rphotos/bee/img000.png\tbee\r"
               "photos/ant/img001.png\tant"),
    ("header.csv", "path,label\nphotos/ant/img000.png,ant\nphotos/bee/img000.png,bee\n"
                   "photos/ant/img001.png,ant\n"),
    ("bomheader.csv", "\ufeffPath,Label\r\nphotos/ant/img000.png,ant\r\n"
                      "photos/bee/img000.png,bee\r\nphotos/ant/img001.png,ant\r\n"),
    ("tabheader.txt", "\ufefffilepath\tclass\nphotos/ant/img000.png\tant\n"
                      "photos/bee/img000.png\tbee\nphotos/ant/img001.png\tant\n"),
    ("reordered.tsv", "class\tfile\tsplit\nant\tphotos/ant/img000.png\ttrain\n"
                      "bee\tphotos/bee/img000.png\ttrain\nant\tphotos/ant/img001.png\ttest\n"),
    ("comments.txt", "# my list\n\n  # indented comment\nphotos/ant/img000.png\tant\n\n"
                     "photos/bee/img000.png\tbee\n# end\nphotos/ant/img001.png\tant\n\n"),
    ("commas.txt", "photos/ant/img000.png,ant\nphotos/bee/img000.png, bee\n"
                   "photos/ant/img001.png ,ant\n"),
    ("species.csv", "image,species\nphotos/ant/img000.png,ant\nphotos/bee/img000.png,bee\n"
                    "photos/ant/img001.png,ant\n"),
    ("dotdot.csv", "path,label\nphotos/../photos/ant/img000.png,ant\n"
                   "./photos/bee/img000.png,bee\nphotos/ant/img001.png,ant\n"),
])
def test_list_dialects_give_the_same_rows(tmp_path, tree, name, text):
    src, labels = _open(tmp_path, name, text.encode())
    assert list(zip(src.paths, labels, strict=True)) == PAIRS
    assert src.classes == ["ant", "bee"]
    assert all(src.abspath(i).is_file() for i in range(len(src)))


def test_quoted_fields_and_paths_with_commas(tmp_path, tree):
    Image.new("RGB", (8, 8)).save(tree / "ant" / "a, b.png")
    Image.new("RGB", (8, 8)).save(tree / "bee" / "Smith, John.png")
    src, labels = _open(tmp_path, "q.csv", b'path,label\n"photos/ant/a, b.png",ant\n'
                                            b'photos/bee/img000.png,"bee"\n')
    assert src.paths == ["photos/ant/a, b.png", "photos/bee/img000.png"]
    assert labels == ["ant", "bee"]
    # a .txt whose first row ends like an image name after its comma: one path per line
    src, labels = _open(tmp_path, "names.txt", b"photos/bee/Smith, John.png\n"
                                                b"photos/ant/a, b.png\n")
    assert src.paths == ["photos/bee/Smith, John.png", "photos/ant/a, b.png"]
    assert labels == [None, None]


def test_relative_paths_are_relative_to_the_list_folder(tmp_path, tree, monkeypatch, caplog):
    lists = tmp_path / "data" / "lists"
    lists.mkdir()
    (lists / "l.txt").write_text("photos/bee/img000.png\n../photos/ant/img000.png\n"
                                 f"{tree}/ant/img001.png\n")
    monkeypatch.chdir(tmp_path / "data")  # where "photos/bee/..." would be found
    monkeypatch.setattr(logging.getLogger("cnncodes"), "propagate", True)  # the CLI turns it off
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        src = open_source(lists / "l.txt")
    assert src.root == lists.resolve()
    assert src.abspath(1) == tree.resolve() / "ant" / "img000.png"
    assert src.abspath(0) == lists.resolve() / "photos" / "bee" / "img000.png"
    assert src.abspath(2) == tree / "ant" / "img001.png"
    assert "relative to the list file's folder" in caplog.text
    with pytest.raises(DecodeError, match=f"file not found \\(looked for {lists.resolve()}/photos"):
        load_rgb(src.abspath(0))
    torch.manual_seed(0)
    res = extract(lists / "l.txt", tmp_path / "c.h5", **OPTS)
    assert res.rows == 2
    (path, reason), = res.failed
    assert path == "photos/bee/img000.png" and str(lists.resolve() / path) in reason


@pytest.mark.parametrize("name, data, match", [
    ("many.csv", b"path,label\nphotos/ant/img000.png,ant\nphotos/bee/img000.png,bee,x\n",
     r"many.csv, line 3: a row must have at most 2 \(the header's\) fields. Got 3"),
    ("many.txt", b"# c\nphotos/ant/img000.png\tant\tx\n",
     r"many.txt, line 2: a row must have at most 2 \(path and label\) fields. Got 3"),
    ("latin1.txt", b"photos/ant/img000.png\nphotos/caf\xe9.png\n",
     r"latin1.txt must be UTF-8. Got byte 0xe9 on line 2"),
    ("utf16.txt", "photos/ant/img000.png\n".encode("utf-16"), r"UTF-16.*save it as UTF-8"),
    ("nul.csv", b"photos/ant/img000.png,ant\nphotos/\x00.png,bee\n", r"nul.csv, line 2"),
    ("nopath.csv", b"photos/ant/img000.png,ant\n,bee\n", r"nopath.csv, line 2: .*empty path"),
    ("empty.txt", b"\xef\xbb\xbf# only a comment\r\n\r\n", r"must name at least one image"),
    ("header_only.csv", b"path,label\n", r"only a header row"),
    ("half.tsv", b"photos/ant/img000.png\tant\nphotos/bee/img000.png\n",
     r"row 2 \(line 2, 'photos/bee/img000.png'\) has no label"),
])
def test_bad_list_files_name_the_file_and_line(tmp_path, tree, name, data, match):
    p = tmp_path / "data" / name
    p.write_bytes(data)
    with pytest.raises(SourceError, match=match):
        open_source(p)
    assert p.read_bytes() == data


# ----------------------------------------------------------------------------------- max_pixels


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the tiny PIL limit
def test_max_pixels_zero_means_no_limit(tmp_path, monkeypatch):
    p = tmp_path / "big.png"
    Image.new("RGB", (120, 100), (10, 200, 30)).save(p)           # 12,000 pixels
    with pytest.raises(DecodeError, match="decompression bomb.*or 0 for no limit"):
        load_rgb(p, max_pixels=5_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)          # PIL's own limit, tiny
    for limit in (0, None, 50_000):                                # ours wins, both ways
        assert load_rgb(p, max_pixels=limit).size == (120, 100)
        assert Image.MAX_IMAGE_PIXELS == 1_000                     # restored
    pp = IMAGENET.with_input_size(32)
    assert read_item(0, p, pp, max_pixels=0).failure is None
    with pytest.raises(OptionError, match=r"The 'max_pixels' parameter of RuntimeOptions must "
                                          r"be an int in the range \[0, inf\)"):
        RuntimeOptions(max_pixels=-1)
    root = tmp_path / "flat"
    root.mkdir()
    Image.new("RGB", (120, 100)).save(root / "a.png")
    Image.new("RGB", (40, 40)).save(root / "b.png")
    torch.manual_seed(0)
    res = extract(root, tmp_path / "c.h5", max_pixels=0, **OPTS)
    assert res.rows == 2 and not res.failed
    assert FeatureStore(tmp_path / "c.h5").provenance["max_pixels"] == 0


def test_cli_max_pixels_zero_reaches_the_library(tmp_path, monkeypatch):
    from cnncodes.cli import main
    from cnncodes.codes import extraction

    seen = {}
    real = extraction.extract

    def spy(*a, **k):
        seen["max_pixels"] = k["runtime"].max_pixels
        return real(*a, **k)

    monkeypatch.setattr(extraction, "extract", spy)
    root = tmp_path / "flat"
    root.mkdir()
    Image.fromarray(np.full((30, 30, 3), 99, np.uint8)).save(root / "a.png")
    torch.manual_seed(0)
    rc = main(["extract", str(root), "-o", str(tmp_path / "c.h5"), "--weights", "random",
               "--input-size", "32", "--workers", "0", "--no-progress", "--max-pixels", "0"])
    assert rc == 0 and seen["max_pixels"] == 0
