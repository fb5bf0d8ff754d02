"""One file, one row (issue 24): a list that names a file twice, or through two spellings or a
symbolic link, gives one row and a warning naming the lines; two labels for one file are refused."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from cnncodes import FeatureStore, extract
from cnncodes.errors import SourceError
from cnncodes.sources.folders import open_source

from ..conftest import write_tree

OPTS = dict(backbone="mobilenet_v2", weights="random", input_size=32, progress=False,
            num_workers=0, batch_size=4, decoder="pil")


def _folder(tmp_path):
    tree = write_tree(tmp_path / "imgs", classes=("ant", "bee"), per_class=2)
    (tree / "sub").mkdir()
    os.symlink(tree / "ant" / "img000.png", tree / "link.png")
    return tree


def test_two_spellings_and_a_link_are_one_row_with_a_warning(tmp_path, caplog):
    tree = _folder(tmp_path)
    lst = tree / "list.csv"
    lst.write_text("path,label\nant/img000.png,ant\n./ant/img000.png,ant\n"
                   "sub/../ant/img000.png,ant\nlink.png,ant\nbee/img000.png,bee\n"
                   "ant/img000.png,ant\n")
    with caplog.at_level(logging.WARNING):
        src = open_source(lst)
    assert src.paths == ["ant/img000.png", "bee/img000.png"]
    assert [src.classes[y] for y in src.labels] == ["ant", "bee"]
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "4 line(s) name a file already listed" in msg
    for line in (3, 4, 5, 7):
        assert f"line {line} " in msg
    torch.manual_seed(0)
    res = extract(lst, tmp_path / "c.h5", **OPTS)  # was: "keep getting damaged ... check the disk"
    assert res.rows == 2 and not res.failed
    assert list(FeatureStore(tmp_path / "c.h5").paths) == ["ant/img000.png", "bee/img000.png"]


def test_one_file_under_two_labels_is_refused_naming_both_lines(tmp_path):
    tree = _folder(tmp_path)
    lst = tree / "list.csv"
    lst.write_text("path,label\nant/img000.png,ant\nbee/img000.png,bee\nlink.png,bee\n")
    with pytest.raises(SourceError, match=r"line 2 .*'ant'.* line 4 .*'bee'.*two labels"):
        open_source(lst)


def test_a_sequence_of_paths_naming_one_file_twice_gives_one_row(tmp_path):
    tree = _folder(tmp_path)
    a = tree / "ant" / "img000.png"
    torch.manual_seed(0)
    res = extract([a, tree / "link.png", tree / "sub" / ".." / "ant" / "img000.png",
                   tree / "bee" / "img000.png"], tmp_path / "c.h5", **OPTS)
    assert res.rows == 2 and not res.failed


def test_add_source_refuses_to_relabel_files_the_store_holds(tmp_path):
    tree = _folder(tmp_path)
    torch.manual_seed(0)
    lst = tree / "a.csv"
    lst.write_text("path,label\nant/img000.png,ant\nbee/img000.png,bee\n")
    out = tmp_path / "l.h5"
    extract(lst, out, **OPTS)
    other = tree / "b.csv"
    other.write_text("path,label\nant/img000.png,bee\nant/img001.png,ant\n")
    kept = out.read_bytes()
    from cnncodes.errors import StoreMismatchError
    with pytest.raises(StoreMismatchError, match=r"ant/img000.png \('ant' in the store, 'bee'"):
        extract(other, out, add_source=True, **OPTS)
    assert out.read_bytes() == kept
    other.write_text("path,label\nant/img000.png,ant\nant/img001.png,ant\n")  # agreeing labels
    res = extract(other, out, add_source=True, **OPTS)
    assert len(FeatureStore(out)) == 3 and res.added == 1
