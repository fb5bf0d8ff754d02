"""The pixel check of the near-duplicate groups inside one set: planted copies, JPEG re-encodes and
resizes of a training image are confirmed the same picture; different pictures whose codes are
close (look-alikes) are not; an unreadable image is unknown, not an error."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncodes.audit.run import audit_arrays
from cnncodes.cli.main import main

from ..conftest import make_image

SIZE = 112  # as tests/audit/test_audit.py: the calibrated input size


def _variants(im: Image.Image, stem: Path) -> list[Path]:
    """An exact copy, a JPEG re-encode at quality 75 and a 0.5x resize of ``im``."""
    im.save(copy := stem.with_name(stem.name + "-copy.png"))
    im.convert("RGB").save(jpeg := stem.with_name(stem.name + "-q75.jpg"), quality=75)
    w, h = im.size
    im.resize((w // 2, h // 2), Image.BILINEAR).save(half := stem.with_name(stem.name +
                                                                            "-half.png"))
    return [copy, jpeg, half]


def test_groups_confirm_copies_and_not_look_alikes(tmp_path):
    """Codes made close on purpose (so the groups are known); the pixels decide."""
    rng = np.random.default_rng(0)
    paths: list[Path] = []

    def save(im: Image.Image, name: str) -> Path:
        im.save(p := tmp_path / name)
        paths.append(p)
        return p

    other = save(make_image(rng, 2), "a-other.png")  # lowest row: the group's first member
    src = save(make_image(rng, 1), "b-src.png")
    paths += _variants(Image.open(src), tmp_path / "b-src")
    # red, stripes across / along: two pictures of one kind (same label), not the same picture
    like1, like2 = save(make_image(rng, 0), "c-like1.png"), save(make_image(rng, 3), "c-like2.png")
    (tmp_path / "d-broken.png").write_bytes(b"not an image")
    broken = tmp_path / "d-broken.png"
    paths.append(broken)
    partner = save(make_image(rng, 0), "d-partner.png")
    for i in range(24):  # other pictures, codes far from the groups'
        save(make_image(rng, i % 3), f"z{i:02d}.png")
    n, dim = len(paths), 32
    X = rng.normal(size=(n, dim)).astype(np.float32) * 3
    row = {p: i for i, p in enumerate(paths)}
    for members in ([other, src, *paths[2:5]], [like1, like2], [broken, partner]):
        base = rng.normal(size=dim) * 3
        for p in members:
            X[row[p]] = base + 0.01 * rng.normal(size=dim)
    y = np.array([int(p.name.startswith("c")) for p in paths])
    res = audit_arrays(X, y, ["x", "c"], [str(p) for p in paths], label_issues=False,
                       map_method=None, method="exact")
    groups = {frozenset(paths[r].name for r in g): i for i, g in enumerate(res.groups)}
    copies = {"b-src.png", "b-src-copy.png", "b-src-q75.jpg", "b-src-half.png"}
    assert set(groups) == {frozenset(copies | {"a-other.png"}),
                           frozenset({"c-like1.png", "c-like2.png"}),
                           frozenset({"d-broken.png", "d-partner.png"})}
    verdict = {paths[r].name: v for g in range(len(res.groups))
               for r, v in zip(res.groups[g], res.group_check.same_picture(g), strict=True)}
    # the copy, the re-encode and the resize are the same picture as their source, although
    # the group's first member (another picture) is not: the pairs are checked, not one
    # representative
    assert {k: verdict[k] for k in copies} == dict.fromkeys(copies, True)
    assert verdict["a-other.png"] is False
    assert verdict["c-like1.png"] is False and verdict["c-like2.png"] is False  # look-alikes
    assert verdict["d-broken.png"] is None and verdict["d-partner.png"] is None  # unknown
    s = res.summary()
    assert (s["duplicate_groups"], s["duplicate_images"]) == (3, 9)
    assert s["duplicate_groups_same_picture"] == 1 and s["duplicate_images_same_picture"] == 4
    assert s["duplicate_extra_copies_same_picture"] == 3
    header, rows = res.tables()["duplicates"]
    table = {Path(r[1]).name: dict(zip(header, r, strict=True)) for r in rows}
    assert table["b-src-q75.jpg"]["same_picture"] is True
    assert table["b-src-q75.jpg"]["group_same_picture"] == 4
    assert table["c-like1.png"]["same_picture"] is False
    assert Path(table["c-like1.png"]["closest_member"]).name == "c-like2.png"
    assert table["d-broken.png"]["same_picture"] == ""  # blank: not read


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Digits (4 per class, 5 classes) at 112 px with one image planted inside the training
    set as an exact copy, a JPEG re-encode and a 0.5x resize; its store."""
    from sklearn.datasets import load_digits

    from cnncodes import extract

    tmp = tmp_path_factory.mktemp("groups")
    d = load_digits()
    rng = np.random.default_rng(0)
    planted: set[str] = set()
    for c in range(5):
        (tmp / "train" / str(c)).mkdir(parents=True)
        for i in rng.permutation(np.flatnonzero(d.target == c))[:4]:
            im = Image.fromarray((d.images[i] * 255 / 16).astype(np.uint8)).resize(
                (SIZE, SIZE), Image.BICUBIC)
            im.save(p := tmp / "train" / str(c) / f"{i:04d}.png")
            if not planted:
                planted = {p.name} | {v.name for v in _variants(im, p.with_suffix(""))}
    extract(tmp / "train", tmp / "train.h5", input_size=SIZE, progress=False, num_workers=0)
    return tmp, planted


def test_cli_audit_without_test_confirms_the_planted_copies_only(store, capsys):
    """A low threshold makes different digits of one class look-alikes too; only the planted
    copies are the same picture."""
    tmp, planted = store
    rep = tmp / "rep"
    assert main(["audit", str(tmp / "train.h5"), "--report", str(rep), "--no-label-issues",
                 "--map", "none", "--threshold", "0.5"]) == 0
    out = capsys.readouterr().out
    with open(rep / "duplicates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    same = {Path(r["path"]).name for r in rows if r["same_picture"] == "True"}
    others = {Path(r["path"]).name for r in rows if r["same_picture"] == "False"}
    assert same == planted
    assert len(others) >= 2 and not others & planted  # look-alikes, not the same picture
    assert all(r["same_picture"] in ("True", "False") for r in rows)  # every image was read
    groups = len({r["group"] for r in rows})
    assert (f"{groups} group{'s' if groups > 1 else ''} of look-alikes in training (possible "
            f"duplicates: {len(rows)} images") in out
    assert "; 4 images in 1 group the same picture in pixels" in out
    html = (rep / "audit.html").read_text()
    assert "same picture in pixels" in html and "closest_member" in html
