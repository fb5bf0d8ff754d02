"""``cnncodes cache``: the export cache listed (size, model, last use), pruned and cleared, on a
temporary cache of fake entries; nothing outside the cache's own entries is ever deleted (a
symlink's target, other files, an ``onnx`` folder that is a symlink)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cnncodes.cli import main
from cnncodes.codes import cache_files as cf
from cnncodes.codes import export_cache

DAY = 86400.0
KEYS = ["a" * 24, "b" * 24, "c" * 24, "d" * 24]


def entry(onnx: Path, model: str, key: str, size: int, last_used: float | None) -> Path:
    """A fake cached graph (``size`` bytes); with ``last_used`` its metadata file, else only an
    mtime that old."""
    safe = model.replace("/", "+")
    p = onnx / f"{safe}-{key}.onnx"
    p.write_bytes(b"\0" * size)
    if last_used is None:
        os.utime(p, (time.time() - 40 * DAY, time.time() - 40 * DAY))
    else:
        cf.meta_path(p).write_text(json.dumps({"backbone": model, "last_used": last_used,
                                               "created": last_used}))
    return p


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of 3 entries (new+large, old+small, old without metadata), a symlink entry to a
    file outside, an unrelated file, and that outside file."""
    root = tmp_path / "cache"
    onnx = root / "onnx"
    onnx.mkdir(parents=True)
    now = time.time()
    new = entry(onnx, "mobilenet_v2", KEYS[0], 2_000_000, now - 60)
    old = entry(onnx, "resnet18", KEYS[1], 1000, now - 45 * DAY)
    bare = entry(onnx, "timm/convnext_tiny", KEYS[2], 3000, None)
    outside = tmp_path / "precious.onnx"
    outside.write_bytes(b"keep me")
    link = onnx / f"evil-{KEYS[3]}.onnx"
    link.symlink_to(outside)
    other = onnx / "notes.txt"
    other.write_text("mine")
    monkeypatch.setenv(cf.CACHE_ENV, str(root))
    return {"root": root, "new": new, "old": old, "bare": bare, "outside": outside,
            "link": link, "other": other}


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def untouched(c) -> None:
    assert c["outside"].read_bytes() == b"keep me"
    assert c["link"].is_symlink() and c["other"].is_file()


def test_list_shows_entries_with_model_size_and_last_use(cache, capsys):
    rc, out, _ = run(capsys, "cache", "--json")
    assert rc == 0
    rows = json.loads(out)["entries"]
    assert [r["model"] for r in rows] == ["mobilenet_v2", "timm/convnext_tiny", "resnet18"]
    assert rows[0]["bytes"] > 2_000_000 and rows[0]["recorded"]
    assert not rows[1]["recorded"]  # no metadata: last use is the file's mtime
    assert time.time() - rows[1]["last_used"] > 39 * DAY
    rc, out, _ = run(capsys, "cache")
    assert "3 entries" in out and "timm/convnext_tiny" in out and "evil" not in out
    assert "just now" in out or "s ago" in out or "min ago" in out


def test_prune_older_than(cache, capsys):
    rc, out, err = run(capsys, "cache", "--prune", "--older-than", "30d", "--yes")
    assert rc == 0, err
    assert "deleted 2 entries" in out
    assert cache["new"].is_file() and cf.meta_path(cache["new"]).is_file()
    assert not cache["old"].exists() and not cf.meta_path(cache["old"]).exists()
    assert not cache["bare"].exists()
    untouched(cache)


def test_prune_older_and_larger_both_apply(cache, capsys):
    rc, out, err = run(capsys, "cache", "--prune", "--larger-than", "2KB", "--older-than",
                       "1d", "-y")
    assert rc == 0, err
    assert not cache["bare"].exists()  # old and 3000 bytes
    assert cache["old"].exists() and cache["new"].exists()  # too small / too recent
    rc, out, err = run(capsys, "cache", "--prune", "--larger-than", "1MB", "-y")
    assert rc == 0 and not cache["new"].exists() and cache["old"].exists()
    untouched(cache)


def test_clear_asks_first_and_spares_what_is_not_an_entry(cache, capsys):
    rc, _, err = run(capsys, "cache", "--clear")  # stdin is not a terminal under pytest
    assert rc == 1 and "--yes" in err
    assert cache["new"].exists() and cache["old"].exists()
    rc, out, err = run(capsys, "cache", "--clear", "--yes")
    assert rc == 0, err
    assert not any(cache[k].exists() for k in ("new", "old", "bare"))
    untouched(cache)
    assert cf.list_entries() == []


def test_an_onnx_folder_that_is_a_symlink_is_never_entered(tmp_path, monkeypatch, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = entry(elsewhere, "resnet18", KEYS[0], 10, time.time() - 90 * DAY)
    root = tmp_path / "cache"
    root.mkdir()
    (root / "onnx").symlink_to(elsewhere, target_is_directory=True)
    monkeypatch.setenv(cf.CACHE_ENV, str(root))
    assert cf.list_entries() == []
    rc, _, _ = run(capsys, "cache", "--clear", "--yes")
    assert rc == 0 and victim.is_file()
    # and a hand-made entry list pointing elsewhere is refused too
    assert cf.remove_entries(root, [{"path": str(victim), "bytes": 10}]) == []
    assert victim.is_file()


def test_bad_values_and_prune_without_criteria(cache, capsys):
    for argv, says in ((["--prune"], "--older-than AGE"), (["--older-than", "3d"], "--prune"),
                       (["--prune", "--older-than", "soon"], "30d"),
                       (["--prune", "--larger-than", "big"], "100MB")):
        rc, _, err = run(capsys, "cache", *argv)
        assert rc == 1 and says in err, (argv, err)
    assert len(cf.list_entries()) == 3


def test_parse_age_and_size():
    assert cf.parse_age("30d") == 30 * DAY and cf.parse_age("12h") == 12 * 3600
    assert cf.parse_age("90min") == 5400 and cf.parse_age("2w") == 14 * DAY
    assert cf.parse_age("7") == 7 * DAY
    assert cf.parse_size("100MB") == 100_000_000 and cf.parse_size("1.5GB") == 1_500_000_000
    assert cf.parse_size("500KiB") == 512_000 and cf.parse_size("4096") == 4096


def test_cached_export_records_each_use(tmp_path, monkeypatch):
    """The graph's metadata file is written when it is exported and rewritten on each cache hit,
    so "last use" is the last use, not the export."""
    monkeypatch.setenv(cf.CACHE_ENV, str(tmp_path / "c"))
    monkeypatch.setattr(export_cache, "export_onnx", lambda *a, **k: b"graph bytes")
    clock = iter([1000.0, 5000.0])
    real_touch = cf.touch_entry
    monkeypatch.setattr(export_cache, "touch_entry",
                        lambda p, b: real_touch(p, b, now=next(clock)))
    data, path, fresh = export_cache.cached_export(None, ["pool"], 32, backbone="timm/x",
                                                   fields={"k": 1})
    assert fresh and data == b"graph bytes"
    data, path2, fresh = export_cache.cached_export(None, ["pool"], 32, backbone="timm/x",
                                                    fields={"k": 1})
    assert not fresh and path2 == path
    (row,) = cf.list_entries()
    assert row["model"] == "timm/x" and row["created"] == 1000.0 and row["last_used"] == 5000.0


def test_pruning_a_graph_drops_its_torch_free_manifest_only(tmp_path):
    """A torch-free manifest (codes/light.py) names one graph: it goes when that graph goes;
    a manifest of a kept graph, an unrelated .json and a symlinked manifest stay."""
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    old = entry(onnx, "resnet18", KEYS[0], 10, time.time() - 90 * DAY)
    kept = entry(onnx, "resnet18", KEYS[1], 10, time.time())
    m_old = onnx / f"resnet18-req-{KEYS[2]}.json"
    m_old.write_text(json.dumps({"graph": str(old)}))
    m_kept = onnx / f"resnet18-req-{KEYS[3]}.json"
    m_kept.write_text(json.dumps({"graph": str(kept)}))
    other = onnx / "notes.json"
    other.write_text(json.dumps({"graph": str(old)}))
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"graph": str(old)}))
    link = onnx / f"resnet18-req-{'e' * 24}.json"
    link.symlink_to(outside)
    chosen = cf.select(cf.list_entries(tmp_path), older_than=30 * DAY)
    assert [e["path"] for e in cf.remove_entries(tmp_path, chosen)] == [str(old)]
    assert not m_old.exists() and m_kept.exists() and other.exists()
    assert link.is_symlink() and outside.exists()
