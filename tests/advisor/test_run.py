"""cnncodes.advisor.run: ``advise`` end to end on tiny generated images (random-init backbones),
its time-budget path, the runtime options reaching the extraction, and ``--layers auto``."""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnncodes import cli
from cnncodes.advisor.rule import Thresholds, decide
from cnncodes.advisor.sample import select_sample
from cnncodes.backbones.weights import packaged_file
from cnncodes.codes.store import FeatureStore
from cnncodes.errors import OptionError
from cnncodes.options import ADVISE_BUDGET, AUTO_LAYER_BUDGET, BackboneOptions, RuntimeOptions
from cnncodes.report.advice import advice_summary
from cnncodes.report.verdict_text import render
from cnncodes.sources.folders import open_source
from cnncodes.sources.splits import stratified_order
from cnncodes.workflows.advice import advise, choose_layer

from ..conftest import write_tree
from .helpers import expected_layer

run_module = importlib.import_module("cnncodes.advisor.run")
advice_module = importlib.import_module("cnncodes.workflows.advice")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """3 classes x 14 images (the conftest generator: class-dependent colour and stripes)."""
    return write_tree(tmp_path / "photos", per_class=14)


FAST = dict(backbone="resnet18", weights="random", input_size=32, budget=None, folds=3,
            num_workers=0, batch_size=16)
CLI_FAST = ["--backbone", "resnet18", "--weights", "random", "--input-size", "32",
            "--workers", "0", "--batch-size", "16", "--no-progress"]


def test_advise_end_to_end_random_resnet18(tree, tmp_path):
    threads = torch.get_num_threads()
    adv = advise(tree, max_images=40, report=tmp_path / "rep", threads=1, **FAST)
    assert torch.get_num_threads() == threads
    assert adv.probe.n_images == 40 and adv.probe.folds == 3
    assert adv.meta["sample_requested"] == 40 and adv.meta["budget_s"] is None
    assert list(adv.probe.layers) == ["layer1", "layer2", "layer3", "layer4", "pool"]
    assert adv.probe.layers["pool"].same_as == "layer4"  # avg of layer4 == the network's pool
    # 40 images (13-14 per class) cannot carry a layer comparison (10 per class / 100 in all):
    # the evidence is reported, no lead is claimed, the last layer is kept, a warning says so
    assert adv.probe.class_counts == {"ant": 14, "bee": 13, "cow": 13}
    text = render(adv.verdict, adv.setup)
    assert not adv.verdict.layers_compared and adv.layer == "pool"
    assert text.warnings[0].startswith("not enough images to compare layers: 10 per class / 100 "
                                      "in all would be needed (the probe had 13 in its smallest "
                                      "class, 40 in all)")
    assert "beats" not in text.explanation
    # with the minimum lowered the layer is the rule's pick from the measured scores (restated
    # independently)
    low = decide(adv.size, adv.probe, thresholds=Thresholds(min_per_class=3, min_images=12))
    assert low.layers_compared and low.layer == expected_layer(adv.probe, adv.thresholds.margin)
    assert adv.verdict.comparison()["best_last"] == "pool"  # layer4 ties pool: ties go deeper
    assert adv.size.n_images == 42 and adv.size.image_sizes["width"]["median"] == 48
    assert adv.head["available"] is False and "random weights" in adv.head["reason"]
    assert any("random weights" in w for w in text.warnings)
    js = json.loads((tmp_path / "rep" / "advice.json").read_text())
    assert js["layer"] == adv.layer and js["decision"]["quadrant"] == adv.verdict.quadrant
    assert js["layers_compared"] is False and js["warnings"] == text.warnings
    assert js["verdict"]["quadrant"] == adv.verdict.quadrant
    assert js["explanation"] == text.explanation
    assert js["similarity"]["probe"]["layers"]["layer2"]["dim"] == 128
    with Image.open(tmp_path / "rep" / "advice.png") as im:
        assert im.size[0] > 300


@pytest.mark.slow
def test_advise_is_deterministic_for_a_seed(tree):
    adv = advise(tree, max_images=40, **FAST)
    again = advise(tree, max_images=40, **FAST)

    def scores(a):
        return {k: (v.fold_scores, v.param, v.grid_scores) for k, v in a.probe.layers.items()}

    assert scores(again) == scores(adv) and again.probe.raw.fold_scores == adv.probe.raw.fold_scores
    assert again.layer == adv.layer


def test_advise_time_budget_sets_the_sample_size(tree):
    """The CLI default path: a budget, and the sample size derived from the measured speed."""
    assert inspect.signature(advise).parameters["budget"].default == ADVISE_BUDGET
    assert inspect.signature(choose_layer).parameters["budget"].default == AUTO_LAYER_BUDGET
    parser = importlib.import_module("cnncodes.cli.main").build_parser()
    assert parser.parse_args(["advise", "x"]).budget == ADVISE_BUDGET

    labels = open_source(tree).labels
    opts = {**FAST, "batch_size": 4, "head_sample": 0, "probe": "ridge", "layers": "layer3,pool"}
    # 1 ms buys fewer images than the first two batches that measured the speed (8): those 8
    # are kept, topped up to `folds` images per class
    tight = advise(tree, **{**opts, "budget": 0.001}, max_images=40, decoder="pil")
    m = tight.meta
    assert m["budget_s"] == 0.001 and m["speed_rows"] == 8 and m["sample_requested"] == 8
    want = select_sample(stratified_order(labels, seed=0), labels, 8, min_per_class=3)
    assert m["sample_used"] == tight.probe.n_images == want.size
    assert np.bincount(labels[want]).min() >= 3
    assert m["decoder"] == "pil+dct"  # large JPEGs DCT-scaled (the default)
    # an hour buys everything up to --sample
    ample = advise(tree, **{**opts, "budget": "1h"}, max_images=40, decoder="tensor")
    assert ample.meta["budget_s"] == 3600 and ample.meta["sample_requested"] == 40
    assert ample.probe.n_images == 40
    assert ample.meta["decoder"] == "libjpeg-turbo+dct"  # the decoder reached the extraction


def test_advise_takes_options_objects_and_hands_the_decoder_to_the_dataset(tree, monkeypatch):
    seen = []
    real = run_module.make_dataset

    def spy(src, ext, **kw):
        seen.append(kw)
        return real(src, ext, **kw)

    monkeypatch.setattr(run_module, "make_dataset", spy)
    adv = advise(tree, backbone=BackboneOptions("resnet18", weights="random", input_size=32,
                                                layers="layer3,pool"),
                 runtime=RuntimeOptions(batch_size=16, num_workers=0, decoder="pil",
                                        max_pixels=10**6),
                 budget=None, max_images=30, folds=3)
    assert seen == [{"max_pixels": 10**6, "decoder": "pil"}]
    assert list(adv.probe.layers) == ["layer3", "pool"]
    with pytest.raises(TypeError, match="unexpected option 'decodr'"):
        advise(tree, decodr="pil", **FAST)


def test_advise_rejects_unlabelled_single_class_and_bad_options(tmp_path):
    flat = tmp_path / "flat"
    write_tree(tmp_path / "t", classes=("only",), per_class=5)
    flat.mkdir()
    for p in (tmp_path / "t" / "only").iterdir():
        p.rename(flat / p.name)
    with pytest.raises(OptionError, match="labelled images"):
        advise(flat, **FAST)
    write_tree(tmp_path / "one", classes=("only",), per_class=5)
    with pytest.raises(OptionError, match="single class"):
        advise(tmp_path / "one", **FAST)
    with pytest.raises(OptionError, match="probe must be one of"):
        advise(tmp_path / "one", probe="svm", **FAST)
    with pytest.raises(OptionError, match="folds must be >= 2"):
        advise(tmp_path / "one", **{**FAST, "folds": 1})
    with pytest.raises(OptionError, match="must include a last layer"):
        advise(write_tree(tmp_path / "two", per_class=3), **{**FAST, "layers": "layer2,layer3"})


@pytest.mark.slow
@pytest.mark.skipif(packaged_file("mobilenet_v2-b0353104.pth") is None,
                    reason="packaged ImageNet MobileNetV2 not installed")
def test_advise_pretrained_measures_head_and_batchnorm(tree, tmp_path):
    adv = advise(tree, backbone="mobilenet_v2", weights="auto", input_size=64, budget=None,
                 max_images=42, folds=3, num_workers=0, head_sample=20, report=tmp_path / "r")
    h, b = adv.head, adv.batchnorm
    assert h["available"] and h["n_images"] == 20 and 0 < h["mean_top1_prob"] <= 1
    assert sum(h["top1_hist"]) == 20 and isinstance(h["top_categories"][0]["category"], str)
    assert b["available"] and b["n_bn_layers"] == 52 and b["mean_kl"] > 0
    assert all("random" not in w for w in render(adv.verdict, adv.setup).warnings)
    # answer (a): LEEP of the head and the domain EMD on the same 20 images
    assert h["leep"] <= 0 and h["leep_share"] <= 1
    assert 0 <= h["domain_nearest"] <= h["domain_emd"] <= 2
    ev = adv.verdict.similarity_verdict.to_dict()
    assert ev["meaningful"] and {v["measure"] for v in ev["votes"]} == {"leep_share"}
    assert ev["side"]["domain_emd"] == h["domain_emd"]
    assert "code_gain" in ev["missing"]  # 42 images cannot carry the comparison
    s = advice_summary(adv)
    assert "per_layer" not in s["batchnorm"] and len(json.dumps(s)) < 16_000


def test_extract_layers_auto_records_advice_and_resume_reuses_it(tree, tmp_path, capsys,
                                                                 monkeypatch):
    h5 = tmp_path / "codes.h5"
    argv = ["extract", str(tree), "-o", str(h5), "--layers", "auto", "--budget", "none",
            *CLI_FAST]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    store = FeatureStore(h5)
    adv = store.provenance["advice"]
    assert store.layers == [adv["layer"]] and f"--layers auto -> {adv['layer']}" in text
    assert adv["probe"]["layers"].keys() == {"layer1", "layer2", "layer3", "layer4", "pool"}
    assert adv["explanation"] and adv["quadrant"] in ("small-similar", "small-dissimilar")
    assert len(store) == 42

    # a rerun (resume / append) keeps the recorded layer without advising again
    def boom(*a, **k):
        raise AssertionError("advise must not run again")

    monkeypatch.setattr(advice_module, "advise", boom)
    assert cli.main(argv) == 0
    assert FeatureStore(h5).provenance["advice"] == adv
    assert choose_layer(tree, backbone="resnet18", reuse_from=h5)[0] == adv["layer"]
    with pytest.raises(AssertionError, match="must not run again"):  # other pooling: no reuse
        choose_layer(tree, backbone="resnet18", pooling="max", reuse_from=h5)
    assert cli.main(["info", str(h5)]) == 0
    assert "advice" in capsys.readouterr().out
