"""The CLI in-process: models, extract (with broken files), info, errors."""

from __future__ import annotations

import json

import pytest

from cnncodes.backbones import list_backbones
from cnncodes.cli import main


def test_models_lists_every_backbone(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in list_backbones():
        assert name in out
    assert "fc7:4096*" in out and "[offline]" in out
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["backbone"] for r in rows} == set(list_backbones())


def test_extract_then_info(image_tree, tmp_path, capsys):
    (image_tree / "ant" / "broken.jpg").write_bytes(b"\x00" * 10)
    out = tmp_path / "codes.h5"
    args = ["extract", str(image_tree), "-o", str(out), "--weights", "random",
            "--input-size", "32", "--layers", "stage2,pool", "--workers", "0", "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "24 images; 24 extracted now" in text and "ant/broken.jpg" in text
    assert main(args) == 0
    assert "0 extracted now" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "stage2: 24-d" in info and "pool: 1280-d" in info and "ant/broken.jpg" in info
    assert "classes    3: ant 8, bee 8, cow 8" in info
    assert main(["info", str(out), "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["images"] == 24 and js["failures"][0]["path"] == "ant/broken.jpg"
    assert js["provenance"]["command"].startswith("cnncodes extract")


@pytest.mark.parametrize("argv, message", [
    (["extract", "{src}", "-o", "{out}", "--backbone", "resnet5"], "Got 'resnet5' instead"),
    (["extract", "{src}", "-o", "{out}", "--weights", "random", "--layers", "fc8"],
     "layer must be one of mobilenet_v2's layers: stage2, stage3"),
    (["extract", "{tmp}/missing", "-o", "{out}"], "does not exist"),
    (["info", "{tmp}/none.h5"], "No code store"),
])
def test_errors_are_one_clear_line(image_tree, tmp_path, capsys, argv, message):
    argv = [a.format(src=image_tree, out=tmp_path / "c.h5", tmp=tmp_path) for a in argv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_mismatched_rerun_is_refused_with_the_fix(image_tree, tmp_path, capsys):
    base = ["extract", str(image_tree), "-o", str(tmp_path / "c.h5"), "--weights", "random",
            "--input-size", "32", "--workers", "0", "--no-progress"]
    assert main(base) == 0
    assert main(base + ["--pooling", "max", "--layers", "stage4"]) == 1
    err = capsys.readouterr().err
    assert "--pooling max (the store has --pooling avg)" in err and "--overwrite" in err
    assert "--layers stage4 (the store has --layers pool)" in err and "-o OTHER.h5" in err
    assert main(base + ["--layers", "stage4", "--overwrite"]) == 0
