"""Text of the codes commands (models, info, extract) made from library data."""

from __future__ import annotations

from types import SimpleNamespace

from cnncodes.report.store_info import format_extract_result, format_models, format_store_info
from cnncodes.report.text import format_failures

INFO = {
    "path": "c.h5", "images": 3, "unlabelled": 0, "classes": {"ant": 2, "bee": 1},
    "layers": {"pool": {"dim": 1280, "dtype": "float32", "node": "features", "kind": "gap",
                        "pooling": "avg"}},
    "failures": [{"path": "ant/x.jpg", "reason": "empty file (0 bytes)"}], "pending_parts": 2,
    "provenance": {"backbone": "mobilenet_v2", "weights": "random", "runs": [
        {"time": "t", "new": 3, "failed": 1, "images_per_s": 9.5, "device": "cpu",
         "precision": "fp32", "command": "cnncodes extract",
         "bad_parts": [{"part": "part-0000000005-r0000.npz", "error": "BadZipFile: truncated"}]}],
        "advice": {"layer": "stage4", "explanation": "earlier layer wins"}},
}


def test_store_info_names_layers_runs_bad_parts_advice_and_failures():
    text = format_store_info(INFO)
    assert "classes    2: ant 2, bee 1" in text
    assert "layer      pool: 1280-d float32 (node features, gap, pooling avg)" in text
    assert "bad part   part-0000000005-r0000.npz: BadZipFile: truncated" in text
    assert "advice     stage4\n             why: earlier layer wins" in text
    assert "pending    2 journal parts" in text and "ant/x.jpg: empty file" in text


def test_failures_are_capped_with_a_count():
    text = format_failures([(f"f{i}", "bad") for i in range(25)], "somewhere", most=20)
    assert text.splitlines()[0] == "25 files could not be read (somewhere):"
    assert "f19: bad" in text and "f20" not in text and text.endswith("... and 5 more")


def test_extract_result_and_models_table():
    res = SimpleNamespace(path="c.h5", rows=24, new=4, skipped=20, layers={"pool": 1280},
                          images_per_s=12.0, seconds=1.5, failed=[("a.jpg", "empty")])
    text = format_extract_result(res)
    assert text.startswith("c.h5: 24 images; 4 extracted now, 20 unchanged; layers pool "
                           "(1280-d)")
    res.added, res.changed, res.removed = 3, 1, 2
    assert format_extract_result(res).startswith(
        "c.h5: 24 images; 4 extracted now (of 3 new files, 1 changed), 2 removed (file gone), "
        "20 unchanged")
    assert "12.0 img/s" in text and "1 file could not be read" in text
    rows = [{"backbone": "b", "default_layer": "pool", "default_weights": "W.V1", "offline": True,
             "layers": {"s": {"dim": 8, "depth": "earlier"}, "pool": {"dim": 16,
                                                                      "depth": "last"}}}]
    assert "W.V1 [offline]" in format_models(rows) and "s:8 pool:16*" in format_models(rows)


def test_models_table_columns_line_up_with_an_offline_tag():
    rows = [{"backbone": "mobilenet_v2", "default_layer": "pool", "offline": True,
             "default_weights": "MobileNet_V2_Weights.IMAGENET1K_V1",
             "layers": {"pool": {"dim": 1280, "depth": "last"}}},
            {"backbone": "mobilenet_v3_large", "default_layer": "pool", "offline": False,
             "default_weights": "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
             "layers": {"stage2": {"dim": 24, "depth": "earlier"}}}]
    lines = format_models(rows).splitlines()[:3]
    starts = {line.index(tag) for line, tag in zip(lines, ("layers", "pool:1280*", "stage2:24"),
                                                   strict=True)}
    assert len(starts) == 1  # the layers column starts at the same place on every line
    assert "MobileNet_V2_Weights.IMAGENET1K_V1 [offline]  pool:1280*" in lines[1]


ADVICE = {
    "version": 1, "layer": "stage4", "quadrant": "small-dissimilar", "classifier": "linearsvc",
    "explanation": "stage4 beats pool by 6.2 points", "warnings": ["only 50 per class"],
    "next_command": "cnncodes extract a -o codes.h5 --layers stage4",
    "size": {"n_images": 500, "n_classes": 10, "per_class_median": 50.0},
    "probe": {"method": "logreg", "folds": 5, "n_images": 500,
              "layers": {"stage4": {"cv_accuracy": 0.91}, "pool": {"cv_accuracy": 0.848}},
              "raw_pixels": {"cv_accuracy": 0.646}},
    "comparison": {"gap_points": 6.2}, "thresholds": {"margin": 1.0}}


def test_store_info_shows_recorded_advice_as_a_few_readable_lines():
    text = format_store_info({**INFO, "provenance": {**INFO["provenance"], "advice": ADVICE}})
    block = text[text.index("  advice"):text.index("  pending")].splitlines()
    assert block == [
        "  advice     stage4 + linearsvc (small-dissimilar: 500 images, 10 classes, median 50 "
        "per class)",
        "             why: stage4 beats pool by 6.2 points",
        "             probe (logreg, 5-fold CV on 500 images): stage4 0.910 <-, pool 0.848; "
        "raw pixels 0.646",
        "             warning: only 50 per class",
        "             next: cnncodes extract a -o codes.h5 --layers stage4",
        "             (all the evidence: cnncodes info --json)"]
    assert "{" not in "\n".join(block)  # no raw JSON
