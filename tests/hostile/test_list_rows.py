"""List files by the ``csv`` module's full rules, and file names kept exactly (issue 24): quoted
fields holding separators, quotes and line breaks; names holding newlines, tabs, carriage returns
or bytes that are not UTF-8 go from the list to the store to the predictions CSV unchanged."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnncodes import FeatureStore, extract
from cnncodes.cli import main
from cnncodes.errors import SourceError
from cnncodes.sources.base import IMAGE_EXTENSIONS
from cnncodes.sources.folders import open_source
from cnncodes.sources.listfile import read_list

OPTS = dict(backbone="mobilenet_v2", weights="random", input_size=32, progress=False,
            num_workers=0, batch_size=4, decoder="pil")

#: names a user may have: separators, quotes, line breaks, tabs, '#', Unicode, not UTF-8
HOSTILE_NAMES = ["a, b.png", 'say "hi".png', "two\nlines.png", "cr\rlf\r\n.png", "tab\there.png",
                 "mid#hash.png", "café ☕.png", os.fsdecode(b"caf\xe9-latin1.png"),
                 os.fsdecode(b"\xff\xfe-not-utf16.png"), "plain.png"]


def _csv_text(rows: list[list[str]], delimiter: str = ",") -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf, delimiter=delimiter).writerows(rows)
    return buf.getvalue().encode("utf-8", "surrogateescape")


def _write_images(root: Path) -> list[tuple[str, str]]:
    """Two classes of every hostile name; returns (relative path, label) in list order."""
    rng = np.random.default_rng(0)
    out = []
    for c, cls in enumerate(("ant", "bee")):
        (root / cls).mkdir(parents=True)
        for n in HOSTILE_NAMES:
            arr = np.clip(rng.normal(60 + 120 * c, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(os.path.join(root, cls, n), format="PNG")
            out.append((f"{cls}/{n}", cls))
    return out


# ------------------------------------------------------------------------------ parsing only

_FIELD_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_name = st.text(_FIELD_CHARS, min_size=1, max_size=12).map(lambda s: s.strip()).filter(
    lambda s: s and not s.startswith("#") and s.lower() not in ("path", "label", "file"))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_name, _name), min_size=1, max_size=6),
       delimiter=st.sampled_from([",", "\t"]))
def test_any_row_csv_writer_writes_is_read_back_exactly(tmp_path, rows, delimiter):
    """Property: a list written by ``csv.writer`` (any text in its fields but a NUL: separators,
    quotes, line breaks, tabs, Unicode) reads back as the same rows. Fields are written without
    spaces around them (those are stripped) and a path does not start with '#' (a comment line)."""
    p = tmp_path / ("l.csv" if delimiter == "," else "l.tsv")
    p.write_bytes(_csv_text([["path", "label"], *map(list, rows)], delimiter))
    got = read_list(p, IMAGE_EXTENSIONS)
    assert [(r.path, r.label) for r in got] == rows


def test_a_quoted_row_over_several_lines_is_one_row_and_errors_name_its_first_line(tmp_path):
    p = tmp_path / "l.csv"
    p.write_bytes(b'# c\npath,label\n"x\n\n# not a comment\ny.png",ant\n\nz.png,bee\n'
                  b'"open.png,ant\nw.png,bee\n')
    with pytest.raises(SourceError, match=r"l.csv, line 9: .*quoted as in CSV.*'\"open.png,ant'"):
        read_list(p, IMAGE_EXTENSIONS)
    p.write_bytes(b'# c\npath,label\n"x\n\n# not a comment\ny.png",ant\n\nz.png,bee\n')
    rows = read_list(p, IMAGE_EXTENSIONS)
    assert [(r.line, r.path, r.label) for r in rows] == [
        (3, "x\n\n# not a comment\ny.png", "ant"), (8, "z.png", "bee")]
    p.write_bytes(b'path,label\n"a.png"x,ant\n')  # text after a closing quote
    with pytest.raises(SourceError, match=r"line 2: .*quoted as in CSV"):
        read_list(p, IMAGE_EXTENSIONS)
    p.write_bytes(b'path,label\nok.png,ant\n"x\x00.png",ant\n')
    with pytest.raises(SourceError, match=r"line 3: a row must be text. Got a NUL"):
        read_list(p, IMAGE_EXTENSIONS)


def test_bytes_that_are_not_utf8_name_a_file_or_are_refused_with_the_line(tmp_path):
    name = b"caf\xe9.png"
    Image.new("RGB", (8, 8)).save(os.path.join(os.fsencode(tmp_path), name), format="PNG")
    p = tmp_path / "l.txt"
    p.write_bytes(b"# latin-1 bytes, as the file system has them\n" + name + b"\n")
    src = open_source(p)
    assert os.fsencode(src.abspath(0)) == os.path.join(os.fsencode(tmp_path), name)
    p.write_bytes(b"caf\xe9.png\nna\xefve.png\n")  # a Latin-1 list naming files that are not so
    with pytest.raises(SourceError, match=r"must be UTF-8. Got byte 0xef on line 2.*no file has"):
        open_source(p)
    p = tmp_path / "l.csv"
    p.write_bytes(b"path,label\ncaf\xe9.png,b\xeate\n")  # a label is text: UTF-8 only
    with pytest.raises(SourceError, match=r"must be UTF-8. Got byte 0xea on line 2.*in the label"):
        open_source(p)


# ------------------------------------------------------------------ list -> store -> predictions


def _raw_paths(store: Path) -> set[bytes]:
    with h5py.File(store) as f:
        return set(f["paths"][()].tolist())


def _predicted(csv_path: Path) -> dict[str, dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return {r["path"]: r for r in csv.DictReader(f)}


def test_hostile_names_round_trip_list_store_predictions(tmp_path, monkeypatch):
    term = io.BytesIO()  # stdout of a UTF-8 terminal: strict, as Python makes it for en_US.UTF-8
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(term, encoding="utf-8", errors="strict",
                                                        write_through=True))
    data = tmp_path / "data"
    pairs = _write_images(data)
    broken = os.fsdecode(b"ant/broken\n\xe9.png")  # a failure keeps its exact name too
    Path(os.path.join(data, broken)).write_bytes(b"not an image")
    lst = data / "list.csv"
    lst.write_bytes(_csv_text([["path", "label"], *map(list, pairs), [broken, "ant"]]))
    torch.manual_seed(0)
    res = extract(lst, tmp_path / "c.h5", **OPTS)
    assert res.rows == len(pairs) and [p for p, _ in res.failed] == [broken]
    st_ = FeatureStore(tmp_path / "c.h5")
    assert list(st_.paths) == [p for p, _ in pairs]                     # order and text exact
    assert [st_.classes[y] for y in st_.labels] == [lab for _, lab in pairs]
    assert _raw_paths(tmp_path / "c.h5") == {p.encode("utf-8", "surrogateescape") for p, _ in pairs}
    assert [p for p, _ in st_.failures] == [broken]
    assert all(Path(os.path.join(data, p)).is_file() for p in st_.paths)
    # a rerun finds every row unchanged (the names read back from the store are the same files)
    again = extract(lst, tmp_path / "c.h5", **OPTS)
    assert (again.new, again.added, again.changed, again.retried) == (0, 0, 0, 0)
    assert main(["train", str(tmp_path / "c.h5"), "-o", str(tmp_path / "m.npz"), "--cv", "2",
                 "--c-grid", "1"]) == 0
    want = {os.path.join(data, p): lab for p, lab in pairs}
    for n, source in enumerate((tmp_path / "c.h5", lst)):  # from the store and from the list
        out = tmp_path / f"p{n}.csv"
        assert main(["predict", str(tmp_path / "m.npz"), str(source), "-o", str(out),
                     "--workers", "0", "--no-progress"]) == 0
        rows = _predicted(out)
        assert {p: r["true_label"] for p, r in rows.items() if not r["error"]} == want
        assert [p for p, r in rows.items() if r["error"]] == [os.path.join(data, broken)]
        assert os.path.join(os.fsencode(data), b"ant", b"caf\xe9-latin1.png") in out.read_bytes()
    # the failure is printed with its name as bytes (as ls does), never an encoding error
    assert os.path.join(os.fsencode(data), b"ant", b"broken\n\xe9.png") in term.getvalue()
    assert sys.stdout.errors == "strict"  # and the terminal's stream is left as it was
