"""Every tar member is accounted for (issue 24): a row (refused ones recorded as failures), a
label read, a folder, or left out with the reason; the extract summary says how many of each."""

from __future__ import annotations

import io
import tarfile

import torch

from cnncodes import extract
from cnncodes.cli import main
from cnncodes.sources.tarshards import open_tar_shards

from .test_tar_members import OPTS, _hostile_shard, _info, _png


def _mixed_shard(path):
    """Keys with labels, a second image and a second label for one key, a key without an image,
    a WebDataset .json, a folder, and a FIFO not named like an image."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        tf.addfile(_info("d", kind=tarfile.DIRTYPE))
        for name, data in [("d/a.png", _png(1)), ("d/a.cls", b"0"), ("d/a.txt", b"zero"),
                           ("d/a.jpg", _png(2)), ("d/a.json", b"{}"), ("d/b.png", _png(3)),
                           ("d/b.cls", b"1"), ("d/b.png", _png(4)), ("d/c.cls", b"1")]:
            tf.addfile(_info(name, len(data)), io.BytesIO(data))
        tf.addfile(_info("d/pipe", kind=tarfile.FIFOTYPE))
    return path


def test_every_member_is_counted_once_and_each_left_out_is_named(tmp_path):
    src = open_tar_shards(_mixed_shard(tmp_path / "m.tar"))
    c = src.member_counts
    assert c == {"members": 11, "images": 2, "labels": 2, "folders": 1, "left out": 6}
    assert src.paths == ["m.tar/d/a.png", "m.tar/d/b.png"]
    assert [src.classes[y] for y in src.labels] == ["0", "1"]
    why = {x.split(": ", 1)[0].split("/", 1)[1]: x.split(": ", 1)[1] for x in src.ignored}
    assert set(why) == {"d/a.txt", "d/a.jpg", "d/a.json", "d/b.png", "d/c.cls", "d/pipe"}
    assert "its row is 'd/a.png', its label 'd/a.cls'" in why["d/a.txt"]
    assert "its row is 'd/a.png'" in why["d/a.jpg"]
    assert "not named like an image" in why["d/a.json"] and "FIFO" in why["d/pipe"]
    assert "a second .png member" in why["d/b.png"]
    assert "has no image member" in why["d/c.cls"]
    assert len(src.ignored) == c["left out"]
    # the hostile shard: its refusals are images (rows that fail), every member counted
    hostile = open_tar_shards(_hostile_shard(tmp_path / "h"))
    with tarfile.open(tmp_path / "h" / "s.tar") as tf:
        n = len(tf.getmembers())
    hc = hostile.member_counts
    assert hc["members"] == n == hc["images"] + hc["left out"]
    assert hc["images"] == len(hostile.paths) and len(hostile.refused) == hc["images"] - 3


def test_the_extract_summary_counts_every_member(tmp_path, capsys):
    shard = _hostile_shard(tmp_path / "h")
    torch.manual_seed(0)
    res = extract(shard, tmp_path / "c.h5", **OPTS)
    assert res.source_summary.startswith("12 tar members in 1 shard(s): 11 images (8 refused")
    assert main(["extract", str(shard), "-o", str(tmp_path / "c.h5"), "--weights", "random",
                 "--input-size", "32", "--workers", "0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "12 tar members in 1 shard(s): 11 images (8 refused, recorded as failures), 0 labels, " \
           "0 folders, 1 left out (first: s.tar/notes.bin: a FIFO" in out


def test_a_literal_percent_name_meeting_a_refused_one_is_one_row(tmp_path):
    """``../x.png`` is refused and named ``%2E%2E/x.png``; a literal member of that name is then
    left out with the reason, so one path is one row (was: the row of one, the failure of the
    other, under one path)."""
    with tarfile.open(tmp_path / "s.tar", "w", format=tarfile.GNU_FORMAT) as tf:
        for n, seed in (("../x.png", 1), ("%2E%2E/x.png", 2), ("ok.png", 3)):
            data = _png(seed)
            tf.addfile(_info(n, len(data)), io.BytesIO(data))
    src = open_tar_shards(tmp_path / "s.tar")
    assert src.paths == ["s.tar/%2E%2E/x.png", "s.tar/ok.png"] and list(src.refused) == [0]
    assert src.member_counts == {"members": 3, "images": 2, "left out": 1}
    assert src.ignored == ["s.tar/%2E%2E/x.png: a second member with this row name (a refused "
                           "name, percent-encoded, meets a literal one); the first is its row"]
