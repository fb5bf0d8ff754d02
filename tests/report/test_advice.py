"""cnncodes.report.advice: the text ``cnncodes advise`` prints, from a constructed Advice."""

from __future__ import annotations

from cnncodes.advisor.advice import Advice
from cnncodes.advisor.rule import Thresholds, decide
from cnncodes.report.advice import format_advice

from ..advisor.helpers import SETUP, TWO, make_probe, make_size


def _advice(**meta) -> Advice:
    size, probe = make_size(100, 3), make_probe({"stage4": .95, "pool": .85}, depths=TWO, raw=.5)
    size.image_sizes = {"sampled": 3, "unreadable": 0, "modes": {"RGB": 3},
                        "width": {"min": 40, "median": 48.0, "max": 50},
                        "height": {"min": 30, "median": 40.0, "max": 41}}
    d = decide(size, probe, setup=SETUP)
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
    assert "  (a) ImageNet head   n/a: head_sample=0" in lines
    assert any(ln.strip().startswith("stage4") and ln.endswith("<- recommended") for ln in lines)
    assert any(ln.strip().startswith("raw") for ln in lines)
    assert "quadrant  small-dissimilar: earlier-layer codes + linear SVM" in lines
    assert lines[-1] == "took      1.5 s (budget 300.0; 42.0 img/s)"
    assert "next      cnncodes extract" in text and "\n          cnncodes train" in text


def test_format_advice_without_budget():
    assert format_advice(_advice(budget_s=None)).splitlines()[-1].startswith(
        "took      1.5 s (budget none;")
