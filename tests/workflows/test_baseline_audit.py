"""``baseline`` audits its data by default (duplicates, leaks with the leak-free accuracy,
outliers, balance; label errors and the map when cheap); ``--no-audit`` leaves it out; the rule
that decides the expensive parts."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from cnncodes.cli.main import main
from cnncodes.report.audit_summary import audit_context, audit_lines
from cnncodes.workflows.baseline_audit import DEFAULT_MAP_ROWS, MIN_GRID_FOR_LABELS, plan_audit

from ..linear.digits import BACKBONE, SIZE, digits_data  # noqa: F401 - session fixture


def _selection(**kw):
    sel = {"model": "logreg", "search": {"kind": "kfold"}, "c_grid": [0.01, 0.1, 1, 10],
           "cv": 5, "best_C": 0.1}
    sel.update(kw)
    return sel


def test_rule_runs_label_errors_only_when_the_search_makes_them_cheap():
    assert plan_audit(_selection(), 500, full=False).label_issues
    p = plan_audit(_selection(c_grid=[1.0]), 500, full=False)
    assert not p.label_issues and "--audit" in p.label_reason
    assert not plan_audit(_selection(search={"kind": "holdout"}), 500, full=False).label_issues
    assert not plan_audit(_selection(model="linearsvc"), 500, full=False).label_issues
    assert plan_audit(_selection(c_grid=[1.0], model="linearsvc"), 500, full=True).label_issues
    p = plan_audit(_selection(), 500, full=True, cleanlab=False)
    assert not p.label_issues and "pip install" in p.label_reason
    assert len(_selection()["c_grid"]) == MIN_GRID_FOR_LABELS


def test_rule_caps_the_map():
    assert plan_audit(_selection(), 120, full=False).map_rows == 120
    assert plan_audit(_selection(), 10_000, full=False).map_rows == DEFAULT_MAP_ROWS
    assert plan_audit(_selection(), 10_000, full=True).map_rows == 2_000


def test_no_audit_renders_nothing():
    assert audit_context(None) is None and audit_lines(None) == []
    lines = audit_lines({"duplicate_groups": 1, "leaks": 2, "test_rows": 9, "outliers": 1,
                         "label_issues": None, "label_issues_note": "not looked for: x",
                         "accuracy": {"all": 0.5, "without_leaks": 0.25, "n_without_leaks": 7},
                         "page": "audit/audit.html", "total_s": 1.0}, folder="rep")
    assert len(lines) == 2 and "2 of 9 test images look like training images" in lines[0]
    assert "without them 0.250" in lines[0] and "rep/audit/audit.html" in lines[1]


@pytest.fixture(scope="module")
def planted(digits_data, tmp_path_factory):  # noqa: F811
    """The digits split with one training image copied into the test part."""
    root = tmp_path_factory.mktemp("planted")
    src = root / "digits"
    shutil.copytree(digits_data.split_dir, src)
    source = sorted((src / "train" / "3").iterdir())[0]
    shutil.copy(source, leak := src / "test" / "3" / "planted.png")
    cache = root / "cache"  # extracted by the first test, reused by the second
    args = ["--cache", str(cache), "--backbone", BACKBONE, "--weights", str(digits_data.weights),
            "--input-size", str(SIZE), "--workers", "0", "--no-progress", "--no-raw-baseline",
            "--c-grid", "1e-3:1e-1:4", "--cv", "3"]
    return src, source, leak, args


def test_baseline_reports_a_planted_leak_by_default(planted, tmp_path, capsys):
    src, source, leak, args = planted
    rep = tmp_path / "rep"
    assert main(["baseline", str(src), "--report", str(rep), *args]) == 0
    out = capsys.readouterr().out
    assert "audit: " in out and "test images look like training images" in out
    audit = json.loads((rep / "report.json").read_text())["audit"]
    assert audit["leaks"] >= 1 and audit["page"] == "audit/audit.html"
    assert audit["plan"]["mode"] == "cheap"
    acc = audit["accuracy"]
    # the pixel check confirms the planted copy; the accuracy without leaks drops only those
    assert 1 <= audit["leaks_same_picture"] <= audit["leaks"]
    assert acc["n"] == 61 and acc["n_without_leaks"] == 61 - audit["leaks_same_picture"]
    # the cheap rule ran the label errors: a 4-value 3-fold search makes them 3 of 13 fits
    assert audit["plan"]["label_issues"] and audit["label_issues"] is not None
    assert audit["map"] == {"method": "tsne", "points": 140}
    with open(rep / "audit" / "leaks.csv", newline="") as f:
        rows = {Path(r["test_path"]).name: r for r in csv.DictReader(f)}
    assert Path(rows["planted.png"]["train_path"]).resolve() == source.resolve()
    assert rows["planted.png"]["same_picture"] == "True"
    assert sum(r["same_picture"] == "True" for r in rows.values()) == audit["leaks_same_picture"]
    html = (rep / "report.html").read_text()
    assert 'id="audit"' in html and 'href="audit/audit.html"' in html
    assert f"{audit['leaks']} of 61 test images look like training images" in html
    assert (rep / "audit" / "audit.html").is_file()


def test_no_audit_leaves_it_out(planted, tmp_path, capsys):
    src, _, _, args = planted
    rep = tmp_path / "rep"
    assert main(["baseline", str(src), "--report", str(rep), "--no-audit", *args]) == 0
    assert not [x for x in capsys.readouterr().out.splitlines() if x.startswith("audit")]
    assert "audit" not in json.loads((rep / "report.json").read_text())
    assert 'id="audit"' not in (rep / "report.html").read_text()
    assert not (rep / "audit").exists()
