"""cnncodes.advisor.advise: the decision rule on constructed evidence, the measurements on tiny real data,
`cnncodes advise` end to end, and `extract --layers auto` recording its evidence in the store."""

from __future__ import annotations

import importlib
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnncodes import cli
from cnncodes.advisor.advise import (
    LayerScore,
    PretrainedMeter,
    ProbeResult,
    RunSetup,
    SizeInfo,
    Thresholds,
    advise,
    decide,
    parse_budget,
    probe_layers,
    round_down_nice,
    select_sample,
    stratified_order,
)
from cnncodes.backbones import get_spec
from cnncodes.backbones.weights import packaged_file, resolve_weights
from cnncodes.codes.store import FeatureStore

from .conftest import write_tree

advise_module = importlib.import_module("cnncodes.advisor.advise")

# ------------------------------------------------------------------------------------------
# constructed evidence

MNV2_DEPTHS = {"stage2": "earlier", "stage3": "earlier", "stage4": "earlier",
               "stage5": "earlier", "pool": "last"}


def make_probe(means: dict[str, float], *, spread: float = 0.002, n: int = 2000, folds: int = 5,
               depths: dict[str, str] = MNV2_DEPTHS, raw: float | None = None,
               fold_scores: dict[str, list[float]] | None = None) -> ProbeResult:
    """Per-layer fold scores around ``means`` (a fixed small zig-zag, so the paired SE is tiny)."""
    wiggle = spread * np.array([1, -1, 0.5, -0.5, 0][:folds])
    layers = {}
    for name, m in means.items():
        fs = (fold_scores or {}).get(name, (m + wiggle).tolist())
        layers[name] = LayerScore(name, depths[name], 64, fs, 0.1)
    raw_s = LayerScore("raw", "raw", 768, (raw + wiggle).tolist(), 0.1) if raw is not None else None
    return ProbeResult("logreg", n, folds, [0.1], layers, raw_s)


def make_size(per_class: int, n_classes: int = 10) -> SizeInfo:
    return SizeInfo(per_class * n_classes, {f"c{i}": per_class for i in range(n_classes)})


SETUP = RunSetup(source="my photos/", backbone="mobilenet_v2", weights="auto", input_size=112)


def test_small_similar_last_layer_and_logreg():
    d = decide(make_size(100), make_probe({"stage2": .60, "stage3": .70, "stage4": .80,
                                           "stage5": .84, "pool": .90}), setup=SETUP)
    assert (d.quadrant, d.similarity, d.size_class) == ("small-similar", "similar", "small")
    assert d.layer == "pool" and d.classifier == "logreg"
    assert "pool beats the best earlier layer stage5 by 6.0 points" in d.explanation
    assert "5-fold CV on 2,000 images" in d.explanation
    assert d.finetune is None and d.also is None
    extract_cmd, train_cmd = d.commands
    assert shlex.split(extract_cmd) == ["cnncodes", "extract", "my photos/", "-o", "codes.h5",
                                        "--backbone", "mobilenet_v2", "--input-size", "112",
                                        "--layers", "pool"]
    assert shlex.split(train_cmd)[-5:] == ["pool", "--model", "logreg", "-o", "model.joblib"]
    assert d.next_command == f"{extract_cmd} && {train_cmd}"


def test_small_dissimilar_earlier_layer_and_svm():
    d = decide(make_size(50), make_probe({"stage2": .70, "stage3": .80, "stage4": .911,
                                          "stage5": .88, "pool": .85}), setup=SETUP)
    assert d.quadrant == "small-dissimilar"
    assert d.layer == "stage4" and d.classifier == "linearsvc"
    assert d.explanation.startswith("stage4 beats pool by 6.1 points")
    assert "-> dissimilar data; use stage4 codes + LinearSVC" in d.explanation
    assert "--layers stage4" in d.commands[0] and "--model linearsvc" in d.commands[1]
    assert d.comparison["best_earlier"] == "stage4" and d.comparison["gap_points"] == 6.1


def test_large_similar_names_finetune_with_lower_backbone_lr():
    d = decide(make_size(1500), make_probe({"stage4": .80, "pool": .90},
                                           depths={"stage4": "earlier", "pool": "last"}),
               setup=SETUP)
    assert d.quadrant == "large-similar" and d.size_class == "large"
    assert d.finetune == {"head_lr_mult": 10, "freeze": 1, "command": d.commands[0]}
    assert shlex.split(d.commands[0]) == [
        "cnncodes", "finetune", "my photos/", "--backbone", "mobilenet_v2", "--input-size", "112",
        "-o", "run/", "--head-lr-mult", "10", "--freeze", "1"]
    assert "--layers pool" in d.also  # the quick codes baseline stays available
    assert "is large -> fine-tune" in d.explanation and d.commands[0] in d.explanation


def test_large_dissimilar_finetunes_everything():
    d = decide(make_size(2000), make_probe({"stage4": .95, "pool": .85},
                                           depths={"stage4": "earlier", "pool": "last"}))
    assert d.quadrant == "large-dissimilar" and d.layer == "stage4"
    assert "--head-lr-mult 1 --freeze 0" in d.commands[0]
    assert d.finetune["freeze"] == 0


def test_medium_keeps_codes_but_suggests_finetuning_next():
    d = decide(make_size(500), make_probe({"stage4": .80, "pool": .90},
                                          depths={"stage4": "earlier", "pool": "last"}))
    assert d.size_class == "medium" and d.quadrant == "small-similar"
    assert d.commands[0].startswith("cnncodes extract")
    assert d.also is not None and d.also.startswith("cnncodes finetune")
    assert "fine-tuning may pay off next" in d.explanation


@pytest.mark.parametrize("earlier_mean", [0.905, 0.900, 0.895])
def test_ties_within_margin_go_to_the_last_layer(earlier_mean):
    d = decide(make_size(100), make_probe({"stage4": earlier_mean, "pool": .90},
                                          depths={"stage4": "earlier", "pool": "last"}))
    assert d.layer == "pool" and d.similarity == "similar"
    if earlier_mean > 0.90:
        assert "a tie goes to the last layer" in d.explanation


def test_noisy_folds_raise_the_threshold():
    # a 3-point average gap, but the per-fold differences swing by +-10 points
    folds = {"stage4": [.98, .78, .98, .78, .93], "pool": [.80, .90, .80, .90, .85]}
    p = make_probe({"stage4": .89, "pool": .85}, depths={"stage4": "earlier", "pool": "last"},
                   fold_scores=folds)
    d = decide(make_size(100), p, thresholds=Thresholds(se_mult=2))
    assert d.comparison["gap_points"] == pytest.approx(4.0, abs=0.01)
    assert d.comparison["paired_se_points"] == pytest.approx(6.78, abs=0.01)  # sd 15.2 / sqrt 5
    assert d.comparison["threshold_points"] > d.comparison["gap_points"]
    assert d.layer == "pool"
    # by default only the margin counts: the same gap decides for the earlier layer
    d2 = decide(make_size(100), p)
    assert d2.layer == "stage4" and d2.comparison["threshold_points"] == 1.0


def test_overridden_thresholds_change_the_decision():
    p = make_probe({"stage4": .905, "pool": .90}, depths={"stage4": "earlier", "pool": "last"})
    assert decide(make_size(100), p).layer == "pool"
    assert decide(make_size(100), p, thresholds=Thresholds(margin=0.2)).layer == "stage4"
    small = make_size(100)
    assert decide(small, p).size_class == "small"
    th = Thresholds(small_per_class=10, large_per_class=50, large_total=500)
    assert decide(small, p, thresholds=th).quadrant == "large-similar"
    # total too small for "large" even with enough per class
    th2 = Thresholds(small_per_class=10, large_per_class=50, large_total=5000)
    assert decide(small, p, thresholds=th2).size_class == "medium"


def test_threshold_validation_names_the_values():
    with pytest.raises(ValueError, match=r"small_per_class \(300\).*large_per_class \(100\)"):
        Thresholds(small_per_class=300, large_per_class=100)
    with pytest.raises(ValueError, match="margin"):
        Thresholds(margin=-1)


def test_exact_ties_between_layers_go_deeper():
    p = make_probe({"stage3": .80, "stage4": .80, "stage5": .70, "pool": .95})
    assert decide(make_size(100), p).comparison["best_earlier"] == "stage4"
    resnet = {"layer3": "earlier", "layer4": "last", "pool": "last"}
    p = make_probe({"layer3": .7, "layer4": .9, "pool": .9}, depths=resnet)
    assert decide(make_size(100), p).layer == "pool"


def test_raw_pixels_beating_the_codes_warns():
    p = make_probe({"stage4": .80, "pool": .85}, depths={"stage4": "earlier", "pool": "last"},
                   raw=.95)
    d = decide(make_size(100), p)
    assert d.comparison["codes_beat_raw_pixels"] is False
    assert any("raw pixels" in w for w in d.warnings)
    assert "raw pixels beat the codes" in d.explanation
    d = decide(make_size(100), make_probe({"stage4": .80, "pool": .85},
                                          depths={"stage4": "earlier", "pool": "last"}, raw=.7))
    assert d.comparison["codes_beat_raw_pixels"] is True and not d.warnings


def test_random_weights_and_imbalance_warn():
    size = SizeInfo(220, {"a": 200, "b": 20})
    d = decide(size, make_probe({"stage4": .8, "pool": .9},
                                depths={"stage4": "earlier", "pool": "last"}),
               random_weights=True)
    assert any("random weights" in w for w in d.warnings)
    assert any("imbalanced" in w for w in d.warnings)


def test_decision_needs_both_depths():
    with pytest.raises(ValueError, match="last layer with earlier ones"):
        decide(make_size(100), make_probe({"pool": .9}, depths={"pool": "last"}))


def test_commands_repeat_non_default_options():
    setup = RunSetup(source="data", backbone="resnet18", weights="random", pooling="max")
    d = decide(make_size(100), make_probe({"layer3": .95, "pool": .80},
                                          depths={"layer3": "earlier", "pool": "last"}),
               setup=setup)
    assert shlex.split(d.commands[0])[5:] == ["--backbone", "resnet18", "--weights", "random",
                                              "--pooling", "max", "--layers", "layer3"]


# ------------------------------------------------------------------------------------------
# measurement helpers


@pytest.mark.parametrize("text,seconds", [("5min", 300), ("90s", 90), ("2m30s", 150),
                                          ("1.5h", 5400), ("300", 300), (45, 45)])
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


def test_parse_budget_none_and_errors():
    assert parse_budget(None) is None and parse_budget("none") is None
    with pytest.raises(ValueError, match="5min"):
        parse_budget("5 parsecs")
    with pytest.raises(ValueError, match="positive"):
        parse_budget("0s")


def test_stratified_order_prefixes_are_proportional_and_seeded():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10 + [-1] * 5)
    order = stratified_order(labels, seed=3)
    assert sorted(order.tolist()) == list(range(100))  # unlabelled rows left out
    for n in (10, 20, 50):
        counts = np.bincount(labels[order[:n]], minlength=3)
        np.testing.assert_allclose(counts, [0.6 * n, 0.3 * n, 0.1 * n], atol=1)
    np.testing.assert_array_equal(order, stratified_order(labels, seed=3))
    assert not np.array_equal(order, stratified_order(labels, seed=4))


def test_select_sample_tops_up_small_classes():
    labels = np.array([0] * 95 + [1] * 5)
    order = stratified_order(labels, seed=0)
    s = select_sample(order, labels, 20, min_per_class=4)
    assert np.bincount(labels[s]).tolist()[1] == 4
    assert set(order[:20]) <= set(s)


def test_round_down_nice():
    assert [round_down_nice(n) for n in (7, 10, 14, 16, 29, 1999, 2100, 8000)] == \
        [7, 10, 10, 15, 20, 1500, 2000, 7500]


def _blobs(n_per: int, d: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (3, d)) * sep
    y = np.repeat(np.arange(3), n_per)
    return centers[y] + rng.normal(0, 1, (y.size, d)), y


@pytest.mark.parametrize("method", ["logreg", "ridge"])
def test_probe_ranks_informative_codes_first(method):
    good, y = _blobs(30, 20, 2.0, 0)
    noise = np.random.default_rng(1).normal(size=(90, 40))
    codes = {"early": noise, "late": good, "late_copy": good.copy()}
    depths = {"early": "earlier", "late": "last", "late_copy": "last"}
    r = probe_layers(codes, y, depths=depths, method=method, folds=5, seed=0,
                     raw=noise[:, :10])
    assert r.layers["late"].mean > 0.9
    assert r.layers["early"].mean < 0.6  # chance is 1/3
    assert r.layers["late_copy"].same_as == "late"
    assert r.layers["late_copy"].fold_scores == r.layers["late"].fold_scores
    assert r.folds == 5 and r.n_images == 90 and len(r.layers["late"].fold_scores) == 5
    again = probe_layers(codes, y, depths=depths, method=method, folds=5, seed=0)
    assert again.layers["early"].fold_scores == r.layers["early"].fold_scores


@pytest.mark.parametrize("method,strongest", [("logreg", 0.01), ("ridge", 100.0)])
def test_probe_grid_ties_go_to_the_strongest_regularisation(method, strongest):
    X, y = _blobs(20, 4, 50.0, 0)  # far apart: every grid value scores 100%
    r = probe_layers({"a": X}, y, depths={"a": "last"}, method=method, folds=4)
    assert set(r.layers["a"].grid_scores) == {1.0}
    assert r.layers["a"].param == strongest


def test_probe_reduces_folds_and_drops_singleton_classes():
    X, y = _blobs(10, 5, 3.0, 0)
    y = y.copy()
    keep = np.r_[0:10, 10:13, 20:30]  # class 1 has 3 images
    X, y = np.vstack([X[keep], X[:1]]), np.r_[y[keep], 7]  # class 7 has a single image
    r = probe_layers({"a": X, "b": X * 2 + 1}, y, depths={"a": "earlier", "b": "last"},
                     folds=5, class_names={0: "zero", 1: "one", 2: "two", 7: "seven"})
    assert r.folds == 3 and r.excluded_classes == ["seven"] and r.n_images == 23
    with pytest.raises(ValueError, match="at least 2 classes"):
        probe_layers({"a": X[:11]}, np.r_[np.zeros(10, int), 1], depths={"a": "last"})


def test_size_info_classes():
    s = SizeInfo(30, {"a": 10, "b": 20})
    assert s.median_per_class == 15 and s.n_classes == 2
    assert s.to_dict()["per_class_min"] == 10


# ------------------------------------------------------------------------------------------
# the pretrained network's view (random init here; formula checked where it is exact)


def test_bn_meter_kl_is_zero_when_statistics_match_and_rng_is_untouched():
    spec = get_spec("mobilenet_v2")
    state = torch.random.get_rng_state()
    meter = PretrainedMeter(spec, resolve_weights(spec, "random"))
    assert torch.equal(state, torch.random.get_rng_state())  # fresh net built under fork_rng
    assert len(meter.bns) == 52
    from cnncodes.sources.preprocessing import IMAGENET

    pp = IMAGENET.with_input_size(32)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g)
    meter.update(images, np.zeros(8, int), pp)
    bn = meter.bn_evidence()
    assert bn["available"] and bn["n_bn_layers"] == 52
    assert all(p["kl"] >= 0 for p in bn["per_layer"])
    first = bn["per_layer"][0]["kl"]
    assert first > 0.01
    # set the first BN's running stats to what the data gave: its KL becomes ~0
    _, m0 = meter.bns[0]
    mu = meter._sum[0] / meter._cnt[0]
    var = meter._sq[0] / meter._cnt[0] - mu * mu
    m0.running_mean.copy_(mu.float())
    m0.running_var.copy_(var.float())
    assert meter.bn_evidence()["per_layer"][0]["kl"] < 1e-3
    head = meter.head_evidence()
    assert head["n_images"] == 8 and 0 <= head["mean_normalized_entropy"] <= 1
    meter.close()
    assert not meter.model.features[1].conv[1]._forward_pre_hooks


# ------------------------------------------------------------------------------------------
# end to end on tiny generated images


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """3 classes x 14 images (the conftest generator: class-dependent colour and stripes)."""
    return write_tree(tmp_path / "photos", per_class=14)


FAST = dict(backbone="resnet18", weights="random", input_size=32, budget=None, folds=3,
            num_workers=0, batch_size=16)


def test_advise_end_to_end_random_resnet18(tree, tmp_path):
    threads = torch.get_num_threads()
    adv = advise(tree, max_images=40, report=tmp_path / "rep", threads=1, **FAST)
    assert torch.get_num_threads() == threads
    assert adv.probe.n_images >= 40 and adv.probe.folds == 3
    assert list(adv.probe.layers) == ["layer1", "layer2", "layer3", "layer4", "pool"]
    assert adv.probe.layers["pool"].same_as == "layer4"  # avg of layer4 == the network's pool
    assert adv.layer in adv.probe.layers
    assert adv.size.n_images == 42 and adv.size.image_sizes["width"]["median"] == 48
    assert adv.head["available"] is False and "random weights" in adv.head["reason"]
    assert any("random weights" in w for w in adv.decision.warnings)
    js = json.loads((tmp_path / "rep" / "advice.json").read_text())
    assert js["layer"] == adv.layer and js["decision"]["quadrant"] == adv.decision.quadrant
    assert js["similarity"]["probe"]["layers"]["layer2"]["dim"] == 128
    with Image.open(tmp_path / "rep" / "advice.png") as im:
        assert im.size[0] > 300
    # deterministic for a seed
    again = advise(tree, max_images=40, **FAST)
    assert again.probe.to_dict() == {**adv.probe.to_dict(), "layers": {
        k: {**v, "seconds": again.probe.to_dict()["layers"][k]["seconds"]}
        for k, v in adv.probe.to_dict()["layers"].items()},
        "raw_pixels": {**adv.probe.to_dict()["raw_pixels"],
                       "seconds": again.probe.to_dict()["raw_pixels"]["seconds"]}}
    assert again.layer == adv.layer


def test_advise_rejects_unlabelled_and_single_class(tmp_path):
    flat = tmp_path / "flat"
    write_tree(tmp_path / "t", classes=("only",), per_class=5)
    flat.mkdir()
    for p in (tmp_path / "t" / "only").iterdir():
        p.rename(flat / p.name)
    with pytest.raises(ValueError, match="labelled images"):
        advise(flat, **FAST)
    write_tree(tmp_path / "one", classes=("only",), per_class=5)
    with pytest.raises(ValueError, match="single class"):
        advise(tmp_path / "one", **FAST)
    with pytest.raises(ValueError, match="Unknown probe"):
        advise(tmp_path / "one", probe="svm", **FAST)


@pytest.mark.skipif(packaged_file("mobilenet_v2-b0353104.pth") is None,
                    reason="packaged ImageNet MobileNetV2 not installed")
def test_advise_pretrained_measures_head_and_batchnorm(tree, tmp_path):
    adv = advise(tree, backbone="mobilenet_v2", weights="auto", input_size=64, budget=None,
                 max_images=42, folds=3, num_workers=0, head_sample=20, report=tmp_path / "r")
    h, b = adv.head, adv.batchnorm
    assert h["available"] and h["n_images"] == 20 and 0 < h["mean_top1_prob"] <= 1
    assert sum(h["top1_hist"]) == 20 and isinstance(h["top_categories"][0]["category"], str)
    assert b["available"] and b["n_bn_layers"] == 52 and b["mean_kl"] > 0
    assert adv.decision.warnings == [] or all("random" not in w for w in adv.decision.warnings)
    s = adv.summary()
    assert "per_layer" not in s["batchnorm"] and len(json.dumps(s)) < 16_000


# ------------------------------------------------------------------------------------------
# CLI in process

CLI_FAST = ["--backbone", "resnet18", "--weights", "random", "--input-size", "32",
            "--workers", "0", "--batch-size", "16", "--no-progress"]


def test_cli_advise_prints_and_saves(tree, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(["advise", str(tree), "--budget", "none", "--sample", "40", "--folds", "3",
                   "--report", str(out), *CLI_FAST])
    text = capsys.readouterr().out
    assert rc == 0
    for key in ("data ", "(a) ImageNet head", "(b) BatchNorm", "(c) linear probe", "quadrant",
                "why", "next      cnncodes extract"):
        assert key in text
    js = json.loads((out / "advice.json").read_text())
    assert js["next_command"].startswith("cnncodes extract") and (out / "advice.png").is_file()


def test_cli_advise_threshold_overrides_and_json(tree, capsys):
    rc = cli.main(["advise", str(tree), "--budget", "none", "--sample", "40", "--folds", "3",
                   "--small-per-class", "5", "--large-per-class", "10", "--large-total", "30",
                   "--json", *CLI_FAST])
    js = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert js["decision"]["size_class"] == "large"
    assert js["decision"]["commands"][0].startswith("cnncodes finetune")
    assert js["thresholds"]["large_total"] == 30


def test_cli_advise_bad_budget_is_a_clean_error(tree, capsys):
    rc = cli.main(["advise", str(tree), "--budget", "soon", *CLI_FAST])
    assert rc == 1 and "Cannot read the time budget 'soon'" in capsys.readouterr().err


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

    monkeypatch.setattr(advise_module, "advise", boom)
    assert cli.main(argv) == 0
    assert FeatureStore(h5).provenance["advice"] == adv
    assert cli.main(["info", str(h5)]) == 0
    assert "advice" in capsys.readouterr().out
