"""cnncodes.advisor.ranking and cnncodes.workflows.advice.rank_backbones: ``advise --backbones``
ranks backbones and their layers (random-init networks on tiny generated images), and the pure
recommendation rule."""

from __future__ import annotations

import json

import pytest

from cnncodes import cli
from cnncodes.advisor import ranking as ranking_module
from cnncodes.advisor.ranking import RankRow, parse_backbones, recommend
from cnncodes.errors import OptionError, WeightsUnavailableError
from cnncodes.workflows.advice import rank_backbones

from ..conftest import write_tree


def _row(backbone: str, acc: float, ci: float, speed: float, *, chosen: bool = True,
         layer: str = "pool") -> RankRow:
    return RankRow(backbone, "w", layer, "last", 64, acc, ci, -1.0, speed, 200, chosen)


def test_recommend_takes_the_best_chosen_layer_and_names_the_indistinguishable():
    rows = [_row("a", 0.90, 0.03, 50), _row("b", 0.88, 0.02, 300), _row("c", 0.80, 0.02, 900),
            _row("a", 0.95, 0.01, 50, chosen=False, layer="stage4")]  # not a's advised layer
    r = recommend(rows)
    assert (r["backbone"], r["layer"]) == ("a", "pool")
    # 0.88 >= 0.851, the lower end of 0.90's Wilson interval over 200 images; c is outside
    assert r["indistinguishable"] == ["b"]
    assert "CV accuracy 0.900 (95% CI 0.851-0.934, n=200)" in r["explanation"]
    assert "within its interval, so not distinguishable on this sample: b pool 0.880 (300 " \
           "img/s)" in r["explanation"]
    # exact ties go to the faster backbone
    assert recommend([_row("a", 0.9, 0.0, 50), _row("b", 0.9, 0.0, 60)])["backbone"] == "b"
    with pytest.raises(OptionError, match="nothing to rank"):
        recommend([_row("a", 0.9, 0.0, 50, chosen=False)])


def test_parse_backbones_rejects_empty_and_repeated_names():
    assert parse_backbones("mobilenet_v2, resnet18") == ["mobilenet_v2", "resnet18"]
    for bad in ("", "a,a", " , "):
        with pytest.raises(OptionError, match="distinct registry names"):
            parse_backbones(bad)


def test_cli_backbones_ranks_every_layer_of_each_backbone(tmp_path, capsys):
    tree = write_tree(tmp_path / "photos", per_class=12)
    rep = tmp_path / "rep"
    argv = ["advise", str(tree), "--backbones", "resnet18,mobilenet_v2", "--weights", "random",
            "--input-size", "32", "--budget", "none", "--sample", "36", "--folds", "3",
            "--workers", "0", "--batch-size", "16", "--no-progress", "--report", str(rep)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("rank  backbone")
    for needle in ("resnet18", "mobilenet_v2", "layer3", "stage4", "recommend ", "LogME"):
        assert needle in out
    js = json.loads((rep / "ranking.json").read_text())
    rows = js["rows"]
    assert {r["backbone"] for r in rows} == {"resnet18", "mobilenet_v2"}
    assert len(rows) == 5 + 5  # every layer of both
    accs = [r["cv_accuracy"] for r in rows]
    assert accs == sorted(accs, reverse=True)
    assert all(r["logme"] is not None and r["images_per_s"] > 0 for r in rows)
    assert js["recommendation"]["backbone"] in {"resnet18", "mobilenet_v2"}
    best = [r for r in rows if r["recommended_layer"]]
    assert js["recommendation"]["cv_accuracy"] == max(r["cv_accuracy"] for r in best)
    assert (rep / "resnet18" / "advice.json").is_file()
    assert (rep / "mobilenet_v2" / "advice.json").is_file()
    # a page for the ranking and one per backbone (issue 29), named in the printout without //
    page = (rep / "report.html").read_text()
    assert 'href="resnet18/report.html"' in page and 'href="mobilenet_v2/report.html"' in page
    assert page.count("<tr") >= 11 and js["recommendation"]["backbone"] in page
    assert (rep / "resnet18" / "report.html").is_file()
    assert (rep / "mobilenet_v2" / "report.html").is_file()
    assert str(rep / "report.html") in out and "//" not in out


def test_a_backbone_without_weights_is_skipped_not_fatal(tmp_path, monkeypatch):
    tree = write_tree(tmp_path / "photos", per_class=8)
    import cnncodes.workflows.advice as advice_module

    real = advice_module.advise

    def fake(source, *, backbone, **kw):
        if backbone.backbone == "resnet50":
            raise WeightsUnavailableError("Cannot get resnet50 weights: offline")
        return real(source, backbone=backbone, **kw)

    monkeypatch.setattr(advice_module, "advise", fake)
    r = rank_backbones(tree, backbones="resnet50,resnet18", weights="random", input_size=32,
                       budget=None, max_images=24, folds=2, num_workers=0, progress=False)
    assert list(r.advices) == ["resnet18"] and "offline" in r.skipped["resnet50"]
    assert r.recommendation["backbone"] == "resnet18"
    monkeypatch.setattr(advice_module, "advise", lambda *a, **k: (_ for _ in ()).throw(
        WeightsUnavailableError("no weights")))
    with pytest.raises(OptionError, match="No backbone of resnet18 could be measured"):
        rank_backbones(tree, backbones="resnet18", budget=None)
    with pytest.raises(OptionError, match="--layers cannot be combined"):
        rank_backbones(tree, backbones="resnet18", layers="pool")
    assert ranking_module.Ranking  # the result type is public
