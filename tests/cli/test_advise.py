"""``cnncodes advise`` in process: printing, saving, threshold flags, clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnncodes import cli

from ..conftest import write_tree

CLI_FAST = ["--backbone", "resnet18", "--weights", "random", "--input-size", "32",
            "--workers", "0", "--batch-size", "16", "--no-progress"]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "photos", per_class=14)


def test_cli_advise_prints_and_saves(tree, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["advise", str(tree), "--budget", "none", "--sample", "40", "--folds", "3",
                   "--report", str(out), "--decoder", "pil", *CLI_FAST])
    text = capsys.readouterr().out
    assert rc == 0
    for key in ("data ", "(a) similarity to the pretraining data: dissimilar (not meaningful: "
                "random weights)", "LEEP share", "codes - raw pixels", "(b) layer: "
                "logreg probe", "LogME", "quadrant", "why", "next      cnncodes extract",
                "on 40 images"):
        assert key in text
    js = json.loads((out / "advice.json").read_text())
    assert js["next_command"].startswith("cnncodes extract") and (out / "advice.png").is_file()
    assert js["meta"]["decoder"] == "pil+dct" and js["meta"]["budget_s"] is None


def test_cli_advise_threshold_overrides_and_json(tree, capsys):
    rc = cli.main(["advise", str(tree), "--budget", "none", "--sample", "40", "--folds", "3",
                   "--small-per-class", "5", "--large-per-class", "10", "--large-total", "30",
                   "--json", *CLI_FAST])
    js = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert js["decision"]["size_class"] == "large"
    assert js["decision"]["commands"][0].startswith("cnncodes finetune")
    assert js["thresholds"]["large_total"] == 30
    assert js["similarity_verdict"]["verdict"] in ("similar", "dissimilar")
    assert all(r["logme"] is not None for r in js["similarity"]["probe"]["layers"].values())


def test_cli_similarity_threshold_flags_reach_the_rule(tree, capsys):
    rc = cli.main(["advise", str(tree), "--budget", "none", "--sample", "42", "--folds", "3",
                   "--leep-share", "0.7", "--code-loss", "3", "--code-gain", "-100",
                   "--json", *CLI_FAST])
    js = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert (js["thresholds"]["leep_share"], js["thresholds"]["code_loss"],
            js["thresholds"]["code_gain"]) == (0.7, 3.0, -100.0)


def test_cli_advise_bad_budget_is_a_clean_error(tree, capsys):
    rc = cli.main(["advise", str(tree), "--budget", "soon", *CLI_FAST])
    assert rc == 1 and "Cannot read the time budget 'soon'" in capsys.readouterr().err


def test_cli_advise_report_must_be_a_folder(tree, tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    rc = cli.main(["advise", str(tree), "--budget", "none", "--sample", "20", "--folds", "3",
                   "--report", str(f), *CLI_FAST])
    assert rc == 1 and "must be a folder" in capsys.readouterr().err
