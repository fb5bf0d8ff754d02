"""``cnncodes audit`` / ``similar`` on real images with planted duplicates (scikit-learn digits,
embedded MobileNetV2): the documented threshold finds the planted copies and leaves the other
pictures alone; the page is self-contained."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncodes.audit import DUPLICATE_THRESHOLD, audit, similar
from cnncodes.cli.main import main

SIZE = 112  # the pictures' side and the codes' input size, as in benchmarks/audit_calibrate.py
KINDS = ("copy", "jpeg75", "half", "double")


def _plant(img: Image.Image, kind: str, stem: Path) -> Path:
    if kind == "jpeg75":
        img.convert("RGB").save(p := stem.with_suffix(".jpg"), quality=75)
        return p
    f = {"copy": 1.0, "half": 0.5, "double": 2.0}[kind]
    img.resize((round(SIZE * f),) * 2, Image.BICUBIC).save(p := stem.with_suffix(".png"))
    return p


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """train/ (4 digits per class), test/ (2 other digits per class and 3 training images
    planted 4 ways each), their stores, and the planted test file -> its training file."""
    from sklearn.datasets import load_digits

    from cnncodes import extract

    tmp = tmp_path_factory.mktemp("audit")
    d = load_digits()
    imgs = [Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((SIZE, SIZE),
                                                                       Image.BICUBIC)
            for im in d.images]
    rng = np.random.default_rng(0)
    train, test = {}, []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == c))
        for i in idx[:4]:
            (tmp / "train" / str(c)).mkdir(parents=True, exist_ok=True)
            imgs[i].save(p := tmp / "train" / str(c) / f"{i:04d}.png")
            train[int(i)] = p
        for i in idx[4:6]:
            (tmp / "test" / str(c)).mkdir(parents=True, exist_ok=True)
            imgs[i].save(p := tmp / "test" / str(c) / f"{i:04d}.png")
            test.append(p)
    planted = {}
    for i in list(train)[::13][:3]:
        c = str(d.target[i])
        for kind in KINDS:
            planted[_plant(imgs[i], kind, tmp / "test" / c / f"p{i}-{kind}")] = train[i]
    opts = {"input_size": SIZE, "progress": False, "num_workers": 0}
    extract(tmp / "train", tmp / "train.h5", **opts)
    extract(tmp / "test", tmp / "test.h5", **opts)
    return tmp, planted, test


def test_planted_copies_are_leaks_and_other_pictures_are_not(planted):
    tmp, plants, _ = planted
    res = audit(tmp / "train.h5", tmp / "test.h5", label_issues=False, map_method=None)
    leaked = {Path(res.test_paths[r]).resolve(): Path(res.paths[t]).resolve()
              for r, t in zip(res.leaks.test_rows, res.leaks.train_rows, strict=True)}
    want = {p.resolve(): t.resolve() for p, t in plants.items()}
    # every planted copy, re-encode and resize is found, pointing at its source ...
    assert {k: leaked.get(k) for k in want} == want
    # ... and none of the 20 different test pictures is called a duplicate
    assert set(leaked) == set(want)
    assert res.accuracy["n"] == 20 + len(want) and res.accuracy["n_without_leaks"] == 20
    assert res.threshold == DUPLICATE_THRESHOLD
    assert res.groups == []  # the training pictures are all different


def test_similar_finds_the_source_of_an_image_outside_the_store(planted):
    tmp, plants, _ = planted
    jpeg, source = next((p, t) for p, t in plants.items() if p.suffix == ".jpg")
    res = similar(tmp / "train.h5", jpeg, k=3)
    m = res.matches[0]
    assert not m.in_store and Path(m.paths[0]).resolve() == source.resolve()
    assert m.scores[0] >= DUPLICATE_THRESHOLD and len(m.paths) == 3
    assert m.labels[0] == source.parent.name
    inside = similar(tmp / "train.h5", source, k=2).matches[0]
    assert inside.in_store and Path(source).resolve() not in [Path(p).resolve()
                                                              for p in inside.paths]


def test_cli_audit_writes_a_self_contained_page(planted, capsys):
    pytest.importorskip("cleanlab", reason="cleanlab is not installed (cnncodes[audit])")
    tmp, plants, _ = planted
    rep = tmp / "report"
    assert main(["audit", str(tmp / "train.h5"), "--test", str(tmp / "test.h5"),
                 "--report", str(rep), "--map-rows", "60"]) == 0
    out = capsys.readouterr().out
    assert f"leaks: {len(plants)} of 32 test images" in out
    summary = json.loads((rep / "audit.json").read_text())["summary"]
    assert summary["leaks"] == len(plants) and summary["neighbour_search"] == "exact"
    with open(rep / "leaks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {Path(r["test_path"]).name for r in rows} == {p.name for p in plants}
    html = (rep / "audit.html").read_text()
    assert html.count("<circle") >= 40 and 'id="audit-map"' in html
    assert "data:image/jpeg;base64," in html
    assert not re.search(r"""(src|href)=["'](https?:|//)""", html)  # nothing fetched
    assert "<script" not in html


def test_cli_similar_prints_and_writes_csv(planted, capsys):
    tmp, plants, _ = planted
    query, source = next(iter(plants.items()))
    out = tmp / "sim.csv"
    assert main(["similar", str(tmp / "train.h5"), str(query), "-k", "2", "-o", str(out),
                 "--no-progress"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2"]
    assert Path(rows[0]["path"]).resolve() == source.resolve()
    assert str(source.name) in capsys.readouterr().out


def test_cli_refuses_a_layer_the_store_lacks(planted, capsys):
    tmp, _, _ = planted
    assert main(["similar", str(tmp / "train.h5"), str(tmp / "test"), "--layer", "fc9",
                 "-o", str(tmp / "x.csv")]) == 1
    assert "fc9" in capsys.readouterr().err


def test_the_map_shows_in_a_browser(planted, tmp_path):
    """audit.html in headless Chromium (no network; the page's CSP allows no script): the map's
    points are drawn in the class colours. Skips without a Chromium (tools/get_chromium.sh)."""
    from tests.report.browser import find_chromium, screenshot

    browser, why = find_chromium()
    if browser is None:
        pytest.skip(why)
    tmp, _, _ = planted
    rep = tmp_path / "rep"
    assert main(["audit", str(tmp / "train.h5"), "--report", str(rep), "--no-label-issues",
                 "--map-rows", "40"]) == 0
    shot = screenshot(rep / "audit.html", tmp_path / "shot.png", width=1100, height=1400,
                      browser=browser)
    a = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    # pixels of the first two classes' colours (#1f77b4, #ff7f0e): the points and the legend
    for rgb in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)):
        assert (np.abs(a - rgb).sum(axis=1) < 30).sum() > 40, rgb


@pytest.mark.slow  # a whole baseline (CV grid) besides the audit
def test_baseline_audit_is_linked_from_its_report(planted, tmp_path, capsys):
    import shutil

    tmp, plants, _ = planted
    src = tmp_path / "data"
    shutil.copytree(tmp / "train", src / "train")
    shutil.copytree(tmp / "test", src / "test")
    rep = tmp_path / "base"
    assert main(["baseline", str(src), "--report", str(rep), "--input-size", str(SIZE),
                 "--no-raw-baseline", "--no-progress", "--workers", "0", "--audit",
                 "--c-grid", "1"]) == 0
    summary = json.loads((rep / "report.json").read_text())["audit"]
    assert summary["leaks"] == len(plants) and summary["page"] == "audit/audit.html"
    assert (rep / "audit" / "audit.html").is_file()
    html = (rep / "report.html").read_text()
    assert 'href="audit/audit.html"' in html and f"{len(plants)} of 32 test images" in html


def test_cli_similar_report_embeds_the_thumbnails(planted, tmp_path, capsys):
    tmp, plants, _ = planted
    query, source = next((p, t) for p, t in plants.items() if p.suffix == ".jpg")
    rep = tmp_path / "sim"
    assert main(["similar", str(tmp / "train.h5"), str(query), "-k", "3", "-o",
                 str(tmp_path / "sim.csv"), "--report", str(rep), "--no-progress"]) == 0
    assert f"thumbnails: {rep / 'report.html'}" in capsys.readouterr().out
    html = (rep / "report.html").read_text()
    # the query and its 3 neighbours, each an embedded JPEG; the source first, with its label
    assert html.count('src="data:image/jpeg;base64,') == 4
    first = html.index("<tr><td class=\"num\">1</td>")
    assert str(source) in html[first:first + 600] and f"<td>{source.parent.name}</td>" in html
    assert not re.search(r"https?://|//[a-z]", html.replace("http-equiv", ""))  # nothing fetched
    assert "<script" not in html
