"""cnncodes.advisor.rule: the decision rule on constructed evidence (no model, no data)."""

from __future__ import annotations

import shlex

import numpy as np
import pytest

from cnncodes.advisor.evidence import SizeInfo
from cnncodes.advisor.rule import RunSetup, Thresholds, paired_interval
from cnncodes.advisor.similarity import SimilarityEvidence
from cnncodes.errors import OptionError

from .helpers import MNV2_DEPTHS, SETUP, TWO, decide, expected_layer, make_probe, make_size

#: head evidence far on either side of the default thresholds
SIMILAR = SimilarityEvidence(leep_share=0.9, domain_emd=0.5)
DISSIMILAR = SimilarityEvidence(leep_share=0.1, domain_emd=0.95)


def test_small_similar_last_layer_and_logreg():
    d = decide(make_size(100), make_probe({"stage2": .60, "stage3": .70, "stage4": .80,
                                           "stage5": .84, "pool": .90}), setup=SETUP,
               similarity=SIMILAR)
    assert (d.quadrant, d.similarity, d.size_class) == ("small-similar", "similar", "small")
    assert d.layer == "pool" and d.classifier == "logreg" and d.agree
    assert d.explanation.startswith("similarity: LEEP share 0.90 >= 0.5 -> similar (1 of 1 votes "
                                    "say similar; one is enough) -> similar data")
    assert "layer: pool beats the best earlier layer stage5 by 6.0 points" in d.explanation
    assert "disagree" not in d.explanation
    assert "5-fold CV on 2,000 images" in d.explanation
    assert d.finetune is None and d.also is None
    extract_cmd, train_cmd = d.commands
    assert shlex.split(extract_cmd) == ["cnncodes", "extract", "my photos/", "-o", "codes.h5",
                                        "--backbone", "mobilenet_v2", "--input-size", "112",
                                        "--layers", "pool"]
    assert shlex.split(train_cmd)[-5:] == ["pool", "--model", "logreg", "-o", "model.npz"]
    assert d.next_command == f"{extract_cmd} && {train_cmd}"


def test_the_verdict_is_data_enums_and_numbers():
    """decide returns no sentence and no command: the typed verdict, rendered elsewhere."""
    from cnncodes.advisor.rule import decide as decide_verdict
    from cnncodes.advisor.verdict import (
        Classifier,
        FinetunePolicy,
        Quadrant,
        Route,
        Similarity,
        SizeClass,
        Verdict,
    )

    v = decide_verdict(make_size(500), make_probe({"stage4": .95, "pool": .85}, depths=TWO),
                       similarity=DISSIMILAR)
    assert isinstance(v, Verdict)
    assert (v.size_class, v.similarity, v.quadrant) == (
        SizeClass.MEDIUM, Similarity.DISSIMILAR, Quadrant.SMALL_DISSIMILAR)
    assert (v.layer, v.depth, v.classifier) == ("stage4", "earlier", Classifier.LINEARSVC)
    assert (v.route, v.also) == (Route.CODES, Route.FINETUNE)
    assert v.finetune == FinetunePolicy(head_lr_mult=1, freeze=0)
    assert v.layers_compared and v.agree and v.gap.earlier_wins
    assert v.gap.gap == pytest.approx(10.0) and v.gap.threshold == 1.0
    assert v.to_dict()["quadrant"] == "small-dissimilar" and v.to_dict()["finetune"]["freeze"] == 0
    strings = [x for x in vars(v).values() if isinstance(x, str)]
    assert not any(" " in x or "--" in x for x in strings)  # names and enum values, no words


def test_small_dissimilar_earlier_layer_and_svm():
    d = decide(make_size(50), make_probe({"stage2": .70, "stage3": .80, "stage4": .911,
                                          "stage5": .88, "pool": .85}), setup=SETUP,
               similarity=DISSIMILAR)
    assert d.quadrant == "small-dissimilar" and d.agree
    assert d.layer == "stage4" and d.classifier == "linearsvc"
    assert "(none of the 1 votes says similar) -> dissimilar data; layer: stage4 beats pool by " \
        "6.1 points" in d.explanation
    assert "; use stage4 codes + LinearSVC" in d.explanation
    assert "--layers stage4" in d.commands[0] and "--model linearsvc" in d.commands[1]
    assert d.comparison["best_earlier"] == "stage4" and d.comparison["gap_points"] == 6.1


def test_large_similar_names_finetune_with_lower_backbone_lr():
    d = decide(make_size(1500), make_probe({"stage4": .80, "pool": .90}, depths=TWO), setup=SETUP,
               similarity=SIMILAR)
    assert d.quadrant == "large-similar" and d.size_class == "large"
    assert d.finetune == {"head_lr_mult": 10, "freeze": 1, "command": d.commands[0]}
    assert shlex.split(d.commands[0]) == [
        "cnncodes", "finetune", "my photos/", "--backbone", "mobilenet_v2", "--input-size", "112",
        "-o", "run/", "--head-lr-mult", "10", "--freeze", "1"]
    assert "--layers pool" in d.also  # the quick codes baseline stays available
    assert "is large -> fine-tune" in d.explanation and d.commands[0] in d.explanation


def test_large_dissimilar_finetunes_everything():
    d = decide(make_size(2000), make_probe({"stage4": .95, "pool": .85}, depths=TWO),
               similarity=DISSIMILAR)
    assert d.quadrant == "large-dissimilar" and d.layer == "stage4"
    assert "--head-lr-mult 1 --freeze 0" in d.commands[0]
    assert d.finetune["freeze"] == 0


def test_medium_keeps_codes_but_suggests_finetuning_next():
    d = decide(make_size(500), make_probe({"stage4": .80, "pool": .90}, depths=TWO),
               similarity=SIMILAR)
    assert d.size_class == "medium" and d.quadrant == "small-similar"
    assert d.commands[0].startswith("cnncodes extract")
    assert d.also is not None and d.also.startswith("cnncodes finetune")
    assert "fine-tuning may pay off next" in d.explanation


@pytest.mark.parametrize("per_class,n_classes,quadrant_size", [
    (199, 10, "small"), (200, 10, "medium"), (999, 20, "medium"), (1000, 10, "large"),
    (1000, 9, "medium"),  # 9,000 images: enough per class, too few in total
])
def test_size_boundaries(per_class, n_classes, quadrant_size):
    d = decide(make_size(per_class, n_classes), make_probe({"stage4": .8, "pool": .9},
                                                           depths=TWO), similarity=SIMILAR)
    assert d.size_class == quadrant_size
    assert d.quadrant == ("large" if quadrant_size == "large" else "small") + "-similar"


@pytest.mark.parametrize("earlier_mean", [0.905, 0.900, 0.895])
def test_ties_within_margin_go_to_the_last_layer(earlier_mean):
    d = decide(make_size(100), make_probe({"stage4": earlier_mean, "pool": .90}, depths=TWO),
               similarity=SIMILAR)
    assert d.layer == "pool" and d.similarity == "similar"
    if earlier_mean > 0.90:
        assert "a tie goes to the last layer" in d.explanation


def test_the_chosen_layer_is_the_best_scored_one_unless_within_the_margin():
    """On 200 random score sets the rule picks the layer an independent restatement picks: the
    best layer when it is earlier and wins by more than the margin, else the best last layer."""
    rng = np.random.default_rng(0)
    resnet = {"layer2": "earlier", "layer3": "earlier", "layer4": "last", "pool": "last"}
    seen = set()
    for _ in range(200):
        depths = resnet if rng.random() < 0.5 else MNV2_DEPTHS
        means = {k: float(np.round(rng.uniform(0.5, 0.95), 3)) for k in depths}
        margin = float(rng.choice([0.0, 1.0, 5.0]))
        p = make_probe(means, depths=depths)
        d = decide(make_size(100), p, thresholds=Thresholds(margin=margin))
        assert d.layer == expected_layer(p, margin)
        best = max(means, key=lambda k: means[k])
        if depths[best] == "last":
            assert means[d.layer] == means[best]  # a best last layer always wins
        seen.add(d.layer == best)
    assert seen == {True, False}  # both branches (best layer / kept last layer) were exercised


def test_noisy_folds_raise_the_threshold():
    # a 3-point average gap, but the per-fold differences swing by +-10 points
    folds = {"stage4": [.98, .78, .98, .78, .93], "pool": [.80, .90, .80, .90, .85]}
    p = make_probe({"stage4": .89, "pool": .85}, depths=TWO, fold_scores=folds)
    d = decide(make_size(100), p, thresholds=Thresholds(se_mult=2))
    assert d.comparison["gap_points"] == pytest.approx(4.0, abs=0.01)
    assert d.comparison["paired_se_points"] == pytest.approx(6.78, abs=0.01)  # sd 15.2 / sqrt 5
    assert d.comparison["threshold_points"] > d.comparison["gap_points"]
    assert d.layer == "pool"
    # by default only the margin counts: the same gap decides for the earlier layer
    d2 = decide(make_size(100), p)
    assert d2.layer == "stage4" and d2.comparison["threshold_points"] == 1.0


def test_overridden_thresholds_change_the_decision():
    p = make_probe({"stage4": .905, "pool": .90}, depths=TWO)
    assert decide(make_size(100), p).layer == "pool"
    assert decide(make_size(100), p, thresholds=Thresholds(margin=0.2)).layer == "stage4"
    small = make_size(100)
    assert decide(small, p).size_class == "small"
    th = Thresholds(small_per_class=10, large_per_class=50, large_total=500)
    assert decide(small, p, thresholds=th, similarity=SIMILAR).quadrant == "large-similar"
    # the similarity thresholds are thresholds like the others
    assert decide(small, p, similarity=SIMILAR,
                  thresholds=Thresholds(leep_share=0.95)).similarity == "dissimilar"
    # total too small for "large" even with enough per class
    th2 = Thresholds(small_per_class=10, large_per_class=50, large_total=5000)
    assert decide(small, p, thresholds=th2).size_class == "medium"


def test_threshold_validation_names_the_values():
    with pytest.raises(OptionError, match=r"small_per_class \(300\).*large_per_class \(100\)"):
        Thresholds(small_per_class=300, large_per_class=100)
    with pytest.raises(OptionError, match="margin"):
        Thresholds(margin=-1)
    with pytest.raises(ValueError, match="large_total must be >= 1. Got 0 instead"):
        Thresholds(large_total=0)


def test_exact_ties_between_layers_go_deeper():
    p = make_probe({"stage3": .80, "stage4": .80, "stage5": .70, "pool": .95})
    assert decide(make_size(100), p).comparison["best_earlier"] == "stage4"
    resnet = {"layer3": "earlier", "layer4": "last", "pool": "last"}
    p = make_probe({"layer3": .7, "layer4": .9, "pool": .9}, depths=resnet)
    assert decide(make_size(100), p).layer == "pool"


def test_raw_pixels_beating_the_codes_warns():
    p = make_probe({"stage4": .80, "pool": .85}, depths=TWO, raw=.95)
    d = decide(make_size(100), p)
    assert d.comparison["codes_beat_raw_pixels"] is False
    assert any("raw pixels" in w for w in d.warnings)
    assert "raw pixels beat the codes" in d.explanation
    assert d.layer == "pool"  # the warning does not change the layer
    # codes losing to raw pixels (pool - raw = -10 points) make the data dissimilar, even when the
    # head's LEEP says similar
    votes = {v["measure"]: v["says"] for v in d.similarity_evidence["votes"]}
    assert votes == {"code_gain": "dissimilar"} and d.similarity == "dissimilar"
    assert "codes - raw pixels (points) -10.0 < 10 -> dissimilar" in d.explanation
    d = decide(make_size(100), p, similarity=SIMILAR)
    assert d.similarity == "dissimilar" and d.similarity_evidence["n_similar"] == 1
    assert "the codes lose to raw pixels by more than 1 point" in d.explanation
    d = decide(make_size(100), make_probe({"stage4": .80, "pool": .85}, depths=TWO, raw=.7),
               similarity=SIMILAR)
    assert d.comparison["codes_beat_raw_pixels"] is True and not d.warnings


def test_random_weights_and_imbalance_warn():
    size = SizeInfo(220, {"a": 200, "b": 20})
    d = decide(size, make_probe({"stage4": .8, "pool": .9}, depths=TWO), random_weights=True)
    assert any("random weights" in w for w in d.warnings)
    assert any("similarity verdict and the quadrant are not meaningful" in w for w in d.warnings)
    assert d.similarity_evidence["meaningful"] is False
    assert any("imbalanced" in w for w in d.warnings)
    balanced = decide(make_size(100), make_probe({"stage4": .8, "pool": .9}, depths=TWO),
                      similarity=SIMILAR)
    assert balanced.warnings == []


def test_decision_needs_both_depths():
    with pytest.raises(OptionError, match="last layer with earlier ones"):
        decide(make_size(100), make_probe({"pool": .9}, depths={"pool": "last"}))


def test_commands_repeat_non_default_options():
    setup = RunSetup(source="data", backbone="resnet18", weights="random", pooling="max")
    d = decide(make_size(100), make_probe({"layer3": .95, "pool": .80},
                                          depths={"layer3": "earlier", "pool": "last"}),
               setup=setup)
    assert shlex.split(d.commands[0])[5:] == ["--backbone", "resnet18", "--weights", "random",
                                              "--pooling", "max", "--layers", "layer3"]


# ------------------------------------------------------------- step 0: can the sample compare?


def _small_probe(n: int, per_class: dict[str, int], means: dict[str, float]):
    p = make_probe(means, depths=TWO, n=n, folds=2)
    p.class_counts = dict(per_class)
    return p


def test_a_handful_of_images_claims_no_lead_and_says_what_would_be_enough():
    # the issue's case: 4 images, stage4 "beats pool by 75 points" (3 images)
    p = _small_probe(4, {"a": 2, "b": 2}, {"stage4": 1.0, "pool": 0.25})
    d = decide(SizeInfo(4, {"a": 2, "b": 2}), p, similarity=SIMILAR)
    assert not d.layers_compared and d.layer == "pool" and d.similarity == "similar"
    assert "beats" not in d.explanation and "75" not in d.explanation
    assert ("layer: not enough images to compare layers: 10 per class / 100 in all would be "
            "needed (the probe had 2 in its smallest class, 4 in all); keeping the last layer "
            "pool") in d.explanation
    assert d.warnings[0].endswith("no layer is claimed to lead: add images to compare them")
    c = d.comparison
    assert c["layers_compared"] is False and c["gap_points"] == 75.0  # the evidence is kept
    assert c["threshold_points"] is None and "too small" in c["threshold_points_note"]
    assert (c["needed_per_class"], c["needed_images"]) == (10, 100)
    # raw pixels are not compared either (no "raw pixels beat the codes" claim)
    p.raw = make_probe({"stage4": 1.0}, depths={"stage4": "earlier"}).layers["stage4"]
    d = decide(SizeInfo(4, {"a": 2, "b": 2}), p)
    assert d.comparison["codes_beat_raw_pixels"] is None
    assert not any("raw pixels" in w for w in d.warnings)
    assert "code_gain" in d.similarity_evidence["missing"]  # no vote from a 4-image probe


@pytest.mark.parametrize("per_class,n_classes,compared", [
    (9, 12, False),  # 108 images but a class of 9: the folds cannot hold 2 of each
    (10, 9, False),  # 10 per class but 90 in all
    (10, 10, True), (50, 2, True),
    (10, 12, True),  # 120 images, 10 per class: min_per_class x classes = 120 needed
])
def test_the_minimum_sample_boundaries(per_class, n_classes, compared):
    counts = {f"c{i}": per_class for i in range(n_classes)}
    p = _small_probe(per_class * n_classes, counts, {"stage4": .95, "pool": .80})
    d = decide(SizeInfo(per_class * n_classes, counts), p)
    assert d.layers_compared is compared
    assert d.layer == ("stage4" if compared else "pool")


def test_the_needed_total_grows_with_the_classes_and_the_fix_names_the_sample_flag():
    counts = {f"c{i}": 8 for i in range(15)}  # 120 images, 15 classes: 150 needed
    p = _small_probe(120, counts, {"stage4": .95, "pool": .80})
    d = decide(SizeInfo(120, counts), p)
    assert "10 per class / 150 in all would be needed" in d.explanation
    # the data set is big enough, only the sample (budget) was small: say so
    d = decide(SizeInfo(5000, {f"c{i}": 333 for i in range(15)}), p)
    assert "raise --sample / --budget (the data set has 5,000 images)" in d.warnings[0]
    # the minimum is a threshold like the others
    th = Thresholds(min_per_class=5, min_images=50)
    assert decide(SizeInfo(120, counts), p, thresholds=th).layer == "stage4"
    with pytest.raises(OptionError, match="min_images must be >= 1. Got 0 instead"):
        Thresholds(min_images=0)


def test_too_few_images_to_probe_are_refused_with_what_would_be_enough():
    from cnncodes.advisor.rule import check_probe_size

    with pytest.raises(OptionError, match=r"at least 2 images per class.*Got photos/: 3 images in "
                                          r"3 classes, median 1 per class.*10 per class / 100 in "
                                          r"all would be needed.*--layers pool"):
        check_probe_size(SizeInfo(3, {"a": 1, "b": 1, "c": 1}), source="photos/",
                         last_layer="pool")
    with pytest.raises(OptionError, match=r"`cnncodes models BACKBONE` lists the layers"):
        check_probe_size(SizeInfo(3, {"a": 1, "b": 1, "c": 1}))  # no backbone: no layer named
    check_probe_size(SizeInfo(4, {"a": 2, "b": 2}))  # 2 per class: probed, with the warning


# ------------------------------------------------------- (a) and (b) apart, and their interval


def test_similar_verdict_with_an_earlier_layer_says_the_answers_disagree():
    p = make_probe({"stage4": .95, "pool": .85}, depths=TWO)
    d = decide(make_size(100), p, similarity=SIMILAR)
    assert d.similarity == "similar" and d.layer == "stage4" and not d.agree
    assert d.quadrant == "small-similar" and d.classifier == "logreg"
    assert ("the two answers disagree: the evidence calls the data similar, yet the probe finds "
            "the earlier layer stage4 10.0 points better than pool") in d.explanation
    d = decide(make_size(100), make_probe({"stage4": .80, "pool": .85}, depths=TWO),
               similarity=DISSIMILAR)
    assert d.similarity == "dissimilar" and d.layer == "pool" and not d.agree
    assert "calls the data dissimilar, yet no earlier layer beats the last layer pool" in \
        d.explanation


def test_the_issue_digits_case_is_dissimilar_with_reasons_from_the_evidence():
    """stage4 94.7, pool 93.7, raw pixels 98.0: the old rule said small-similar because stage4 led
    by exactly the margin; now the layer is a tie (pool) and the data dissimilar, by the votes."""
    p = make_probe({"stage4": .947, "pool": .937}, depths=TWO, raw=.98)
    d = decide(make_size(30), p, similarity=SimilarityEvidence(leep_share=0.2, domain_emd=0.9))
    assert d.quadrant == "small-dissimilar" and d.layer == "pool"
    assert d.similarity_evidence["n_similar"] == 0 and d.similarity_evidence["n_votes"] == 2
    assert d.similarity_evidence["side"] == {"domain_emd": 0.9}  # shown, no vote
    for reason in ("LEEP share 0.20 < 0.5", "codes - raw pixels (points) -4.3 < 10",
                   "the codes lose to raw pixels by more than 1 point"):
        assert reason in d.explanation


@pytest.mark.parametrize("leep,gain,verdict", [
    (0.85, 9.7, "similar"),  # photo crops (calibration): the head knows them, probe at ceiling
    (0.22, 26.3, "similar"),  # Animal-MNIST: the head does not, the codes beat pixels by far
    (0.35, 5.7, "dissimilar"),  # Fashion-MNIST: neither
    (0.12, 0.0, "dissimilar"),  # digits
    (0.90, -2.0, "dissimilar"),  # codes lose to pixels: vetoes a confident head
    (None, 12.0, "similar"), (None, None, "dissimilar"), (0.6, None, "similar"),
])
def test_judge_similarity_rule(leep, gain, verdict):
    from cnncodes.advisor.similarity import judge_similarity

    v = judge_similarity(SimilarityEvidence(leep_share=leep, code_gain=gain))
    assert v.verdict == verdict
    assert len(v.votes) == (leep is not None) + (gain is not None)
    assert set(v.missing) == {k for k, x in (("leep_share", leep), ("code_gain", gain))
                              if x is None}


def test_paired_interval_matches_a_hand_computation():
    d = [4.0, 2.0, 6.0, 0.0, 3.0]
    mean, half = paired_interval(d)
    sd = np.std(d, ddof=1)  # 2.236
    assert mean == pytest.approx(3.0)
    assert half == pytest.approx(2.7764451 * sd * np.sqrt(1 / 5 + 1 / 4))  # t(0.975, 4)
    assert paired_interval([1.0]) == (1.0, 0.0)
    p = make_probe({"stage4": .89, "pool": .85}, depths=TWO,
                   fold_scores={"stage4": [.98, .78, .98, .78, .93],
                                "pool": [.80, .90, .80, .90, .85]})
    c = decide(make_size(100), p).comparison
    assert c["gap_ci95_points"] == pytest.approx(
        paired_interval([18.0, -12.0, 18.0, -12.0, 8.0])[1], abs=0.01)
    text = decide(make_size(100), p).explanation
    assert "gap +4.0 +- " in text
    # a 4-point lead inside a +-18-point interval is called what it is
    assert "which includes 0: the lead is not established at this sample size" in text
    tight = make_probe({"stage4": .95, "pool": .85}, depths=TWO)  # zig-zag folds: tiny interval
    assert "not established" not in decide(make_size(100), tight).explanation
