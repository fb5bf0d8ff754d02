"""report.html: one self-contained page per report folder (baseline/train/evaluate, advise,
finetune, escalation), checked by parsing it back: its sections, its inline images, no script
and no external reference, and every file/folder/class name shown as text, never markup."""

from __future__ import annotations

import csv
import html as html_lib
import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from cnncodes.linear.evaluation import Evaluation, score_predictions
from cnncodes.linear.model_file import TrainedModel
from cnncodes.linear.selection import fit_codes
from cnncodes.report.files import build_report, write_report
from cnncodes.report.finetune_schema import FinetuneReport, load_finetune_report
from cnncodes.stats import accuracy_interval, format_accuracy

from .html_check import assert_self_contained, parse
from .html_fixtures import (  # noqa: F401 - session fixtures
    CLASSES,
    FAST,
    HOSTILE,
    QUOTED,
    baseline_run,
    hostile_tree,
    run_cli,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT_NAME = "<script>alert(1)</script>"


def provenance(raw: str) -> dict[str, str]:
    """The page's provenance list as {key: value} (unescaped)."""
    foot = raw.split('<footer id="provenance">')[1]
    return {html_lib.unescape(k): html_lib.unescape(v)
            for k, v in re.findall(r"<dt>(.*?)</dt><dd>(.*?)</dd>", foot, re.S)}


def _section(raw: str, sid: str) -> str:
    """The markup of <section id=sid> (up to the next section or the footer)."""
    start = raw.index(f'<section id="{sid}"')
    ends = [i for i in (raw.find("<section", start + 1), raw.find("<footer", start)) if i > 0]
    return raw[start:min(ends)]


def test_baseline_page_is_self_contained_and_shows_every_part(baseline_run):  # noqa: F811
    rep_dir = baseline_run.report
    html = rep_dir / "report.html"
    assert f"report: {html.resolve()}" in baseline_run.stdout  # the command names the page
    rep = json.loads((rep_dir / "report.json").read_text())
    assert rep["files"]["html"] == "report.html"
    page = parse(html)
    assert_self_contained(page)
    for sid in ("summary", "comparison", "cv-curve", "confusion", "per-class", "misclassified",
                "confident-correct", "provenance"):
        assert sid in page.ids, sid
    text = page.all_text()
    acc = rep["rows"][0]["accuracy"]
    raw_acc = rep["rows"][1]["accuracy"]
    summary = _section(page.raw, "summary")
    n, raw_n = rep["test"]["n"], rep["rows"][1]["n_test"]
    assert f"codes {format_accuracy(acc, n)}" in summary
    assert f"raw pixels {format_accuracy(raw_acc, raw_n)}" in summary
    # the same 95% Wilson interval in report.json (test part and every row) and the table
    assert rep["test"]["accuracy_ci95"] == pytest.approx(accuracy_interval(acc, n), abs=1e-4)
    assert rep["rows"][1]["accuracy_ci95"] == pytest.approx(accuracy_interval(raw_acc, raw_n),
                                                            abs=1e-4)
    assert format_accuracy(acc, n) in _section(page.raw, "comparison")
    assert format_accuracy(acc, n) in baseline_run.stdout
    # the per-image predictions of the test part, beside the report
    with open(rep_dir / "predictions.csv", newline="") as f:
        pred_rows = list(csv.DictReader(f))
    assert len(pred_rows) == n and list(pred_rows[0])[:5] == [
        "path", "true_label", "predicted", "correct", "probability"]
    for r in pred_rows:
        probs = [float(r[f"prob_{c}"]) for c in CLASSES]
        assert sum(probs) == pytest.approx(1, abs=1e-4)
        assert r["predicted"] == CLASSES[int(np.argmax(probs))]
        assert r["correct"] == str(int(r["predicted"] == r["true_label"]))
    assert np.mean([r["correct"] == "1" for r in pred_rows]) == pytest.approx(acc)
    assert f"{rep['selection']['best_C']:.3g}" in summary and "baseline" in summary
    pngs = [s for s in page.srcs() if s.startswith("data:image/png;base64,")]
    assert len(pngs) == 2  # the CV curve and the confusion matrix, inlined
    # thumbnails: every test image (fewer than the bound), wrong ones in their section
    cm = np.array(rep["test"]["confusion_matrix"])
    wrong, right = _section(page.raw, "misclassified"), _section(page.raw, "confident-correct")
    assert wrong.count('class="thumb wrong"') == cm.sum() - np.trace(cm)
    assert right.count('class="thumb right"') == np.trace(cm)
    jpegs = [s for s in page.srcs() if s.startswith("data:image/jpeg;base64,")]
    assert len(jpegs) == cm.sum() == rep["test"]["n"]
    test_files = {str(p) for p in (baseline_run.tree / "test").rglob("*.png")}
    assert set(page.attr_values("img", "alt")) - {"cross-validated score against C",
                                                  "confusion matrix"} == test_files
    assert any(p.endswith(QUOTED) for p in test_files)  # the quoted name came back intact
    # class names are text: in the confusion and per-class tables, exactly as the folders say
    assert rep["model"]["classes"] == CLASSES
    for c in CLASSES:
        assert c in text
    assert all(p.count(SCRIPT_NAME) == 1 for p in test_files if "script" in p)
    assert "<script" not in page.raw and "<img src=x" not in page.raw
    assert "&lt;script&gt;alert(1)&lt;" in page.raw
    # provenance: backbone, weights (+ checksum row), layer, preprocessing, versions, command
    values = provenance(page.raw)
    for key in ("backbone", "weights", "weights sha256", "layer", "preprocessing",
                "versions (when this page was written)", "command line"):
        assert key in values, key
    assert values["backbone"] == "resnet18" and values["command line"] == rep["command"]
    assert "crop 32" in values["preprocessing"]
    assert "torch " in values["versions (when this page was written)"]
    for href in page.hrefs():  # links only to files of the same folder that exist
        assert (rep_dir / href).is_file(), href


def test_store_alone_lists_the_test_paths(baseline_run, tmp_path):  # noqa: F811
    """``evaluate`` on the cached test codes with the images gone: paths, not pictures."""
    tree = baseline_run.tree
    moved = tree.with_name("photos-moved")
    tree.rename(moved)
    try:
        rc, out = run_cli("evaluate", baseline_run.report / "model.npz",
                          baseline_run.report / "cache" / "test.h5", "--report", tmp_path / "ev")
    finally:
        moved.rename(tree)
    assert rc == 0, out
    page = parse(tmp_path / "ev" / "report.html")
    assert_self_contained(page)
    assert not [s for s in page.srcs() if s.startswith("data:image/jpeg")]
    listed = re.findall(r"<li>(.*?): ", page.raw)
    n = json.loads((tmp_path / "ev" / "report.json").read_text())["test"]["n"]
    assert len(listed) == n and "no image file on disk" in page.raw
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["task"] == "evaluate" and page.tags[page.tags.index("h1")] == "h1"
    assert page.all_text().startswith("cnncodes evaluate: logreg on resnet18 pool codes")
    assert provenance(page.raw)["command line"] == rep["command"]  # the CLI records it


@pytest.fixture(scope="module")
def digits_report(tmp_path_factory):
    """A real CV-chosen classifier on digits whose class names are markup; the test images of
    even index are PNG files on disk (names with markup), the odd ones are missing."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("digits")
    d = load_digits()
    X, y = d.data.astype(np.float32), d.target
    classes = [SCRIPT_NAME, "<b>bold</b>", "a&amp;b"] + [f"d{i}" for i in range(3, 10)]
    tr, te = np.arange(0, 1200), np.arange(1200, 1797)
    pipe, sel = fit_codes(X[tr], y[tr], classes=classes, c_grid="1e-4:1e-2:3", cv=3)
    model = TrainedModel(pipe, classes, "pixels",
                         {"backbone": "none", "weights": "n/a", "input_size": 8},
                         {"kind": "holdout", "n_train": len(tr), "n_test": len(te)}, sel,
                         store="digits")
    pred, scores = model.scores(X[te])
    paths = [str(folder / f"<i>{i}.png") for i in te]
    for i, p in zip(te, paths, strict=True):
        if i % 2 == 0:
            Image.fromarray((d.images[i] * 15).astype(np.uint8)).save(p)
    ev = Evaluation("digits", "pixels", classes, paths,
                    y[te], pred, score_predictions(y[te], pred, classes),
                    confidence=scores.max(axis=1))
    return build_report(model=model, task="train", evaluation=ev), ev


def test_thumbnails_are_bounded_and_ordered_by_confidence(digits_report, tmp_path):
    rep, ev = digits_report
    write_report(rep, tmp_path / "r", evaluation=ev)
    page = parse(tmp_path / "r" / "report.html")
    assert_self_contained(page)
    n_wrong = int((ev.y_pred != ev.y_true).sum())
    assert n_wrong > 24  # more than the bound: the 24 most confident mistakes
    for sid, wrong, n in (("misclassified", True, n_wrong),
                          ("confident-correct", False, len(ev.y_true) - n_wrong)):
        sec = parse(_section(page.raw, sid))
        order = [int(i) for i in np.argsort(-ev.confidence, kind="stable")
                 if (ev.y_pred[i] != ev.y_true[i]) == wrong][:24]
        want = [ev.paths[i] for i in order]
        on_disk = [p for p in want if Path(p).is_file()]
        assert 0 < len(on_disk) < 24
        assert sec.attr_values("img", "alt") == on_disk  # pictures, most confident first
        assert all(s.startswith("data:image/jpeg;base64,") for s in sec.srcs())
        listed = [t.split(": ")[0] for t in sec.text if t.startswith(str(Path(want[0]).parent))]
        assert listed == [p for p in want if not Path(p).is_file()]  # the rest by path
        assert f"24 of {n} " in sec.all_text()
        i = order[0]
        caption = (f"{ev.classes[ev.y_true[i]]} -> {ev.classes[ev.y_pred[i]]}" if wrong
                   else ev.classes[ev.y_true[i]]) + f", {100 * ev.confidence[i]:.0f}%"
        assert caption in sec.all_text()
    # markup in class and file names: text in the page, never elements
    assert {"i", "script"}.isdisjoint(page.tags)
    assert page.tags.count("b") == 5  # the summary's labels, not "<b>bold</b>"
    text = page.all_text()
    assert SCRIPT_NAME in text and "<b>bold</b>" in text and "a&amp;b" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.raw
    assert "a&amp;amp;b" in page.raw  # the ampersand escaped once more


def test_report_without_test_part_says_so(digits_report, tmp_path):
    rep, _ = digits_report
    rep = {k: v for k, v in rep.items() if k != "test"}
    write_report(rep, tmp_path / "r")
    page = parse(tmp_path / "r" / "report.html")
    assert "no-test" in page.ids and "misclassified" not in page.ids
    assert len(page.srcs()) == 1  # the CV curve only


def test_advise_page_has_evidence_verdict_and_next_command(hostile_tree, tmp_path):  # noqa: F811
    out = tmp_path / "adv"
    rc, text = run_cli("advise", hostile_tree / "train", "--report", out, *FAST, "--budget",
                       "none", "--sample", "30", "--folds", "3", "--batch-size", "16")
    assert rc == 0, text
    assert str(out / "report.html") in text
    advice = json.loads((out / "advice.json").read_text())
    page = parse(out / "report.html")
    assert_self_contained(page)
    for sid in ("summary", "advice", "evidence", "probe-layers", "next-command", "advice-plot",
                "classes", "provenance"):
        assert sid in page.ids, sid
    assert page.srcs() and all(s.startswith("data:image/png") for s in page.srcs())
    raw_cmd = page.raw.split('<pre id="next-command">')[1].split("</pre>")[0]
    assert html_lib.unescape(raw_cmd) == advice["next_command"].replace(" && ", "\n")
    assert advice["quadrant"] in page.all_text() and advice["explanation"] in page.all_text()
    layers = re.findall(r"<tr(?: class=\"best\")?><td>([^<]+)</td>",
                        _section(page.raw, "advice").split('id="probe-layers"')[1])
    assert layers[:len(advice["similarity"]["probe"]["layers"])] == list(
        advice["similarity"]["probe"]["layers"])
    assert 'class="best"><td>' + advice["layer"] in page.raw
    assert "<script" not in page.raw and "&lt;script&gt;alert(1)&lt;" in page.raw
    # one way to show uncertainty: the terminal's 95% Wilson interval, not a standard deviation
    probe = advice["similarity"]["probe"]
    best = format_accuracy(probe["layers"][advice["layer"]]["cv_accuracy"], probe["n_images"])
    table = _section(page.raw, "advice").split('id="probe-layers"')[1]
    assert best in table and best in text and "sd" not in table.split("</thead>")[0]


def test_baseline_page_shows_the_advice_a_store_recorded(hostile_tree, digits_report,  # noqa: F811
                                                         tmp_path):
    """``--layer auto`` puts advise's compact summary into the report: same section, same rows."""
    from cnncodes.report.advice import advice_summary
    from cnncodes.report.verdict_text import render
    from cnncodes.workflows.advice import advise

    adv = advise(hostile_tree / "train", backbone="resnet18", weights="random", input_size=32,
                 budget=None, max_images=30, folds=3, num_workers=0, batch_size=16)
    rep, ev = digits_report
    write_report({**rep, "advice": advice_summary(adv)}, tmp_path / "r", evaluation=ev)
    page = parse(tmp_path / "r" / "report.html")
    assert_self_contained(page)
    sec = parse(_section(page.raw, "advice"))
    assert adv.verdict.quadrant in sec.all_text()
    assert render(adv.verdict, adv.setup).explanation in sec.all_text()
    for name in adv.probe.layers:
        assert name in sec.text
    assert f"best layer {adv.layer}; {adv.verdict.similarity} to ImageNet" in sec.text


def test_finetune_page_has_curves_history_and_confusion(hostile_tree, tmp_path):  # noqa: F811
    out = tmp_path / "ft"
    rc, text = run_cli("-q", "finetune", hostile_tree / "train", "--test", hostile_tree / "test",
                       "-o", out, *FAST, "--epochs", "2", "--batch-size", "8", "--threads", "1",
                       "--val-fraction", "0.2")
    assert rc == 0, text
    rep = json.loads((out / "report.json").read_text())
    assert rep["task"] == "finetune" and rep["schema_version"] == 1  # written in the schema
    typed = load_finetune_report(out)
    assert typed.to_dict() == rep and FinetuneReport.from_dict(typed.to_dict()) == typed
    page = parse(out / "report.html")
    assert_self_contained(page)
    for sid in ("summary", "curves", "history-table", "confusion", "per-class", "provenance"):
        assert sid in page.ids, sid
    assert len(page.srcs()) == 1 and page.srcs()[0].startswith("data:image/png")
    hist = _section(page.raw, "curves")
    assert hist.count("<tr") == 1 + rep["epochs_run"]
    assert f"test {format_accuracy(rep['test_accuracy'], rep['split']['test'])}" in \
        _section(page.raw, "summary")
    for c in CLASSES:
        assert c in page.all_text()
    assert "<script" not in page.raw
    assert rep["weights"] in page.all_text()


@pytest.mark.slow
def test_escalation_page_compares_the_three_methods(hostile_tree, tmp_path):  # noqa: F811
    out = tmp_path / "esc"
    rc, text = run_cli("-q", "finetune", hostile_tree / "train", "--test", hostile_tree / "test",
                       "-o", out, "--escalation", *FAST, "--epochs", "1", "--batch-size", "8",
                       "--threads", "1", "--val-fraction", "0.2")
    assert rc == 0, text
    esc = json.loads((out / "escalation.json").read_text())
    page = parse(out / "report.html")
    assert_self_contained(page)
    table = _section(page.raw, "escalation")
    for r in esc["rows"]:
        assert f"<td>{r['method']}</td>" in table
    assert esc["verdict"] in page.all_text()
    assert len(page.srcs()) == 3  # the comparison chart + both runs' curves
    assert {"full/report.html", "head-only/report.html"} <= set(page.hrefs())
    for sub in ("full", "head-only"):
        assert_self_contained(parse(out / sub / "report.html"))


def test_templates_ship_as_package_data():
    """Every template file matches pyproject's package-data, so an installed package has it."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = cfg["tool"]["setuptools"]["package-data"]["cnncodes.report"]
    folder = REPO / "cnncodes" / "report"
    files = [p.relative_to(folder).as_posix() for p in (folder / "templates").iterdir()]
    assert files and all(any(fnmatch(f, g) for g in globs) for f in files), (files, globs)
    assert "jinja2>=3.1" in cfg["project"]["dependencies"]


def test_autoescape_is_what_keeps_markup_out(monkeypatch, digits_report, tmp_path):
    """The check above can fail: with autoescape off the class name becomes a <script>."""
    from cnncodes.report import html

    rep, ev = digits_report
    env = html.environment()
    monkeypatch.setattr(env, "autoescape", False)
    env.cache.clear() if env.cache else None
    try:
        write_report(rep, tmp_path / "r", evaluation=ev)
    finally:
        monkeypatch.undo()
        env.cache.clear() if env.cache else None
    assert "script" in parse(tmp_path / "r" / "report.html").tags


def test_a_diverged_run_still_gets_its_page(hostile_tree, tmp_path):  # noqa: F811
    out = tmp_path / "nan"
    rc, _ = run_cli("-q", "finetune", hostile_tree / "train", "-o", out, *FAST, "--epochs", "2",
                    "--batch-size", "8", "--schedule", "step", "--step-size", "1", "--gamma",
                    "1e36", "--warmup-epochs", "0")
    assert rc == 1
    rep = json.loads((out / "report.json").read_text())
    assert rep["status"] == "diverged"
    page = parse(out / "report.html")
    assert_self_contained(page)
    assert rep["message"] in page.all_text() and "diverged" in _section(page.raw, "summary")
