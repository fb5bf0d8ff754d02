"""cnncodes.report.advice: the text ``cnncodes advise`` prints, from a constructed Advice."""

from __future__ import annotations

from cnncodes.advisor.advice import Advice
from cnncodes.advisor.rule import Thresholds, decide
from cnncodes.advisor.similarity import SimilarityEvidence
from cnncodes.report.advice import format_advice
from cnncodes.stats import format_accuracy

from ..advisor.helpers import SETUP, TWO, make_probe, make_size


def _advice(**meta) -> Advice:
    size, probe = make_size(100, 3), make_probe({"stage4": .95, "pool": .85}, depths=TWO, raw=.5)
    size.image_sizes = {"sampled": 3, "unreadable": 0, "modes": {"RGB": 3},
                        "width": {"min": 40, "median": 48.0, "max": 50},
                        "height": {"min": 30, "median": 40.0, "max": 41}}
    d = decide(size, probe,
               similarity=SimilarityEvidence(leep_share=0.3, domain_emd=0.7))
    na = {"available": False, "reason": "head_sample=0"}
    m = {"elapsed_s": 1.5, "budget_s": 300.0, "images_per_s": 42.0, "seed": 0, "input_size": 112,
         "weights_id": "random", **meta}
    return Advice(SETUP, size, na, dict(na), probe, d, Thresholds(), m)


def test_format_advice_lines():
    text = format_advice(_advice())
    lines = text.splitlines()
    assert lines[0] == ("data      my photos/: 300 images, 3 classes, 100-100 per class (median "
                        "100) -> small")
    assert lines[1].startswith("images    48x40 px median (w 40-50, h 30-41; 3 sampled; modes "
                               "RGB 3); network input 112 px")
    assert lines[3] == ("(a) similarity to the pretraining data: similar: 1 of 2 votes say "
                        "similar; one is enough")
    assert lines[4].split() == ["LEEP", "share", "0.30", "<", "0.5", "->", "dissimilar"]
    assert lines[5].split()[-5:] == ["35.0", ">=", "10", "->", "similar"]  # pool .85 - raw .5
    assert lines[6].split()[:5] == ["domain", "EMD", "(Cui", "et", "al.)"]
    assert "0.700 (shown, not a vote" in lines[6]
    assert lines[7].startswith("(b) layer: logreg probe, 5-fold stratified CV on 2,000 images")
    assert any(ln.strip().startswith("stage4") and ln.endswith("<- recommended") for ln in lines)
    assert any(ln.strip().startswith("raw") for ln in lines)
    assert any(ln.strip().startswith("gap stage4 - pool: +10.0 +- ") for ln in lines)
    assert "quadrant  small-similar: earlier-layer codes (stage4) + linear classifier (logistic " \
           "regression)" in lines
    assert "the two answers disagree" in text
    assert lines[-1] == "took      1.5 s (budget 300 s)"  # no second img/s figure
    n = 2000
    stage4 = next(ln for ln in lines if ln.strip().startswith("stage4"))
    assert format_accuracy(0.95, n) in stage4  # the one interval: Wilson, as for test accuracy
    assert "next      cnncodes extract" in text and "\n          cnncodes train" in text


def test_format_advice_without_budget():
    assert format_advice(_advice(budget_s=None)).splitlines()[-1].startswith(
        "took      1.5 s (budget none)")
