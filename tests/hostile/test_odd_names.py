"""File names with line breaks, tabs, commas, quotes or bytes that are not UTF-8 (issue 24):
stored, listed and written to the predictions CSV exactly; a list file parsed by the full ``csv``
rules (quoted fields holding separators, quotes and line breaks)."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pytest
import torch

from cnncodes import FeatureStore, extract
from cnncodes.cli import main
from cnncodes.errors import SourceError
from cnncodes.sources.folders import open_source

from ..conftest import write_tree

OPTS = dict(backbone="mobilenet_v2", weights="random", input_size=32, progress=False,
            num_workers=0, batch_size=4, decoder="pil")
ODD = ["new\nline.png", "tab\there.png", 'comma, "quoted".png', os.fsdecode(b"caf\xe9.png"),
       "cr\r\nlf.png"]


def _odd_tree(tmp_path: Path) -> Path:
    tree = write_tree(tmp_path / "t", classes=("a", "b"), per_class=4)
    for k, name in enumerate(ODD):
        cls = "ab"[k % 2]
        os.rename(tree / cls / f"img00{k // 2}.png", os.fsencode(tree / cls) + b"/"
                  + os.fsencode(name))
    return tree


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.reader(f))


def test_odd_names_round_trip_from_folder_to_store_to_predictions(tmp_path, capsys):
    tree = _odd_tree(tmp_path)
    torch.manual_seed(0)
    res = extract(tree, tmp_path / "c.h5", **OPTS)  # was: UnicodeEncodeError in the fold
    assert res.rows == 8 and not res.failed
    st = FeatureStore(tmp_path / "c.h5")
    assert {p.split("/", 1)[1] for p in st.paths} >= set(ODD)
    assert all(os.path.exists(p) for p in st.abspaths())
    torch.manual_seed(0)
    assert extract(tree, tmp_path / "c.h5", **OPTS).new == 0  # a rerun recognises every row
    assert main(["-q", "train", str(tmp_path / "c.h5"), "-o", str(tmp_path / "m.npz"),
                 "--cv", "2"]) == 0
    assert main(["-q", "predict", str(tmp_path / "m.npz"), str(tree), "-o",
                 str(tmp_path / "p.csv")]) == 0
    rows = _csv_rows(tmp_path / "p.csv")
    names = {os.path.basename(r[0]) for r in rows[1:]}
    assert names >= set(ODD)
    assert all(os.path.exists(r[0]) for r in rows[1:])


def test_a_list_csv_with_quoted_fields_and_odd_names_is_read_exactly(tmp_path):
    tree = _odd_tree(tmp_path)
    lst = tree / "list.csv"
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["path", "label"])
    want = []
    for k, name in enumerate(ODD):
        cls = "ab"[k % 2]
        w.writerow([f"{cls}/{name}", cls])
        want.append(f"{cls}/{name}")
    lst.write_bytes(buf.getvalue().encode("utf-8", "surrogateescape"))
    src = open_source(lst)
    assert src.paths == want
    assert [src.classes[y] for y in src.labels] == ["a", "b", "a", "b", "a"]
    torch.manual_seed(0)
    assert extract(lst, tmp_path / "l.h5", **OPTS).rows == len(ODD)


def test_a_list_in_another_encoding_is_still_refused(tmp_path):
    tree = write_tree(tmp_path / "t", classes=("a",), per_class=1)
    lst = tree / "list.txt"
    lst.write_bytes("a/img000.png\na/d\u00e9j\u00e0.png\n".encode("latin-1"))
    with pytest.raises(SourceError, match=r"must be UTF-8. Got byte 0xe9 on line 2"):
        open_source(lst)
