"""cnncodes.stats: the one 95% interval (Wilson) and its rendering, the codes-vs-pixels verdict
and the number wording shared by every report (plurals, learning rates, LEEP share digits, CLI
option names in errors)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from cnncodes.stats import (
    accuracy_interval,
    ci_record,
    codes_vs_pixels,
    format_accuracy,
    format_lr,
    plural,
    wilson_interval,
)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(50, 100)
    assert (round(lo, 3), round(hi, 3)) == (0.404, 0.596)
    assert wilson_interval(0, 10)[0] == 0.0 and round(wilson_interval(0, 10)[1], 3) == 0.278
    assert round(wilson_interval(10, 10)[0], 3) == 0.722 and wilson_interval(10, 10)[1] == 1.0
    # published example (Newcombe 1998, 81/263): 0.2553-0.3662
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.2553, abs=5e-4) and hi == pytest.approx(0.3662, abs=5e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="0 <= correct <= n"):
        wilson_interval(11, 10)


def test_one_rendering_and_json_record():
    assert format_accuracy(0.5, 100) == "0.500 (95% CI 0.404-0.596, n=100)"
    assert format_accuracy(None, 100) == "n/a" and format_accuracy(0.5, None) == "0.500"
    rec = ci_record(0.5, 100)
    assert rec == {"accuracy_ci95": [0.4038, 0.5962], "ci_method": "wilson"}
    assert json.loads(json.dumps(rec)) == rec and ci_record(None, 3) == {}
    assert accuracy_interval(0.5, 100) == wilson_interval(50, 100)


def test_codes_vs_pixels_verdicts():
    worse = codes_vs_pixels({"accuracy": 0.60, "n_test": 50}, {"accuracy": 0.62, "n_test": 50})
    assert worse["verdict"] == "not_better"
    tie = codes_vs_pixels({"accuracy": 0.62, "n_test": 50}, {"accuracy": 0.62, "n_test": 50})
    assert tie["verdict"] == "not_better"
    close = codes_vs_pixels({"accuracy": 0.70, "n_test": 50}, {"accuracy": 0.62, "n_test": 50})
    assert close["verdict"] == "not_clearly_better"  # intervals overlap at n=50
    far = codes_vs_pixels({"accuracy": 0.95, "n_test": 500}, {"accuracy": 0.62, "n_test": 500})
    assert far["verdict"] == "better" and far["codes"][1] > far["raw_pixels"][2]
    assert codes_vs_pixels({"accuracy": 0.9}, {"accuracy": 0.5, "n_test": 9}) is None


def test_plural_and_learning_rates():
    assert [plural(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert format_lr(1e-4) == "1e-04" and format_lr(2.5e-3) == "2.5e-03" and format_lr(0) == "0"
    from cnncodes.finetuning.trainer import epoch_lr

    # the rate the epoch trained at, not the 0 a cosine schedule reaches after the last step
    assert epoch_lr({"stage1": 1e-4, "head": 1e-3}, 0.0) == "lr 1e-04"
    assert epoch_lr(None, 2.5e-3) == "lr 2.5e-03"
    # a warmup epoch: from its tiny first rate to the full one (not only "lr 6.27e-07")
    assert epoch_lr({"stage2": 6.27e-7}, 1e-3) == "lr 6.27e-07->1e-03"
    assert epoch_lr({"stage2": 1e-3}, 0.99e-3) == "lr 1e-03"  # a flat epoch: one figure


def test_leep_share_printed_so_the_comparison_is_true():
    from cnncodes.advisor.similarity import Vote

    v = Vote("leep_share", 0.498, 0.5, ">=", "dissimilar")
    assert v.comparison() == "0.498 < 0.5 -> dissimilar"  # not "0.50 < 0.5"
    assert Vote("leep_share", 0.41, 0.5, ">=", "dissimilar").comparison() == \
        "0.41 < 0.5 -> dissimilar"
    assert Vote("leep_share", 0.5, 0.5, ">=", "similar").comparison() == "0.50 >= 0.5 -> similar"


def test_cli_errors_name_cli_options(capsys, tmp_path):
    from cnncodes import cli
    from cnncodes.cli.common import cli_message, option_names

    p = argparse.ArgumentParser()
    p.add_argument("--input-size", type=int)
    p.add_argument("--workers", "--num-workers", dest="num_workers")
    names = option_names(p)
    assert names == {"input_size": "--input-size", "num_workers": "--workers"}
    assert cli_message("Got input_size=7 instead; num_workers must be >= 0 (my_input_size.png)",
                       names) == ("Got --input-size 7 instead; --workers must be >= 0 "
                                  "(my_input_size.png)")
    # the flag's constraint is checked by the parser now (options.CONSTRAINTS), in CLI words
    with pytest.raises(SystemExit) as e:
        cli.main(["baseline", str(tmp_path), "--input-size", "7"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "argument --input-size" in err and "input_size" not in err


def test_top_classes_order_and_ties():
    from cnncodes.linear.prediction import format_score, score_columns, top_classes

    s = np.array([[0.1, 0.6, 0.3], [0.5, 0.5, 0.0], [-np.inf, 1.0, 2.0]])
    assert top_classes(s, 2).tolist() == [[1, 2], [0, 1], [2, 1]]  # ties in class order
    assert top_classes(s, 9).shape == (3, 3) and top_classes(s, 0).shape == (3, 0)
    assert score_columns("probability", ["a", "b"]) == ["prob_a", "prob_b"]
    assert score_columns("score", ["a", "b"]) == ["score_a", "score_b"]
    assert format_score(-np.inf) == "" and format_score(0.25) == "0.25"
