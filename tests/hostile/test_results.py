"""Honest results and messages (issue 12): no NaN/Infinity in any JSON the project writes (null and
a note saying why), a warmup that never takes the whole run and no zero learning rate, no resume
with another SOURCE, and no layer "lead" claimed on a handful of images.

Random-init resnet18 at 32 px on tiny generated images (no network)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from cnncodes import cli
from cnncodes.codes.journal import Journal
from cnncodes.errors import OptionError
from cnncodes.finetuning.config import FinetuneConfig, make_config
from cnncodes.finetuning.net import build_finetune_model
from cnncodes.finetuning.optim import lr_factor, param_groups, warmup_steps
from cnncodes.finetuning.run import finetune
from cnncodes.report.advice import advice_json
from cnncodes.workflows.advice import advise
from cnncodes.workflows.baseline import baseline

from ..conftest import write_tree

#: a tiny, fast fine-tuning run
TINY = dict(backbone="resnet18", weights="random", input_size=32, batch_size=8, num_workers=0,
            threads=1, val_fraction=0.2, test_fraction=0.2)
FAST = dict(backbone="resnet18", weights="random", input_size=32, num_workers=0)
CLI_FT = ["--backbone", "resnet18", "--weights", "random", "--input-size", "32", "--batch-size",
          "8", "--workers", "0", "--threads", "1", "--no-progress"]
CLI_ADV = ["--backbone", "resnet18", "--weights", "random", "--input-size", "32", "--workers", "0",
           "--batch-size", "16", "--no-progress", "--budget", "none", "--folds", "3"]


def strict_loads(text: str) -> object:
    """json.loads that refuses NaN, Infinity and -Infinity (as every other JSON parser does)."""
    def refuse(name: str) -> object:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


# ------------------------------------------------------------------------------ strict JSON


def test_every_json_file_written_is_strict_json_with_notes_for_nulls(tmp_path, monkeypatch):
    # fine-tuning on a source with a one-image class (it lands in train: no test image of cow)
    # and no validation part: per-class test accuracy and val accuracy cannot be computed
    odd = write_tree(tmp_path / "odd", per_class=10)
    for p in sorted((odd / "cow").iterdir())[1:]:
        p.unlink()
    res = finetune(odd, tmp_path / "ft", epochs=1, **{**TINY, "val_fraction": 0.0})
    rep = res.report
    assert rep["per_class_test_accuracy"]["cow"] is None
    assert "cow (no test image of that class)" in rep["per_class_test_accuracy_note"]
    assert rep["val_accuracy"] is None and "no validation images" in rep["val_accuracy_note"]
    json.dumps(rep, allow_nan=False)  # what `finetune --json` prints is strict too
    # a baseline (with --layer auto: the advice in the report; its extractions' journal
    # manifests copied as they are written, since the fold removes the journal) and an advise
    real = Journal.write_manifest
    seen = []

    def spy(self, config):
        real(self, config)
        seen.append((self.dir / "manifest.json").read_text())

    monkeypatch.setattr(Journal, "write_manifest", spy)
    photos = write_tree(tmp_path / "photos", per_class=12)
    baseline(photos, report=tmp_path / "base", layer="auto", budget=None, c_grid="1e-2:1:3",
             cv=3, raw_baseline=False, **FAST)
    assert seen
    for i, text in enumerate(seen):
        (tmp_path / f"journal-manifest-{i}.json").write_text(text)
    adv = advise(photos, report=tmp_path / "adv", budget=None, folds=3, max_images=12, **FAST)
    json.dumps(advice_json(adv), allow_nan=False)  # what `advise --json` prints

    files = sorted(p for p in tmp_path.rglob("*.json") if p.is_file())
    names = {str(p.relative_to(tmp_path)) for p in files}
    assert {"ft/report.json", "ft/split.json", "ft/config.json", "base/report.json",
            "adv/advice.json", "journal-manifest-0.json"} <= names, names
    for p in files:
        try:
            strict_loads(p.read_text(encoding="utf-8"))
        except ValueError as e:
            pytest.fail(f"{p} is not strict JSON: {e}")


# ------------------------------------------------------------------------------ learning rate


def test_warmup_longer_than_the_run_is_clamped_to_half_of_it(tmp_path, caplog):
    cfg = FinetuneConfig(epochs=2, warmup_epochs=5, schedule="cosine")
    assert warmup_steps(cfg, 3) == (3, 15)  # before: 5 of the 6 steps were warmup
    f = lr_factor(cfg, 3)
    factors = [f(t) for t in range(6)]
    assert factors[3] == pytest.approx(1.0)  # the second half trains at the schedule's full rate
    assert all(x > 0 for x in factors)
    # no configuration gives a learning rate of 0 at any step, hence for a whole epoch
    for epochs in (1, 2, 3, 7):
        for warm in (0, 0.5, 1, 3, 50):
            for sched in ("cosine", "step", "constant"):
                for spe in (1, 2, 5):
                    g = lr_factor(FinetuneConfig(epochs=epochs, warmup_epochs=warm,
                                                 schedule=sched), spe)
                    assert min(g(t) for t in range(epochs * spe)) > 0
    # a real run: logged and recorded
    photos = write_tree(tmp_path / "photos", per_class=10)
    with caplog.at_level(logging.WARNING, logger="cnncodes.finetuning.trainer"):
        res = finetune(photos, tmp_path / "run", epochs=2, warmup_epochs=5, **TINY)
    w = res.report["warmup"]
    assert w["clamped"] and w["steps"] == w["total_steps"] // 2 < w["steps_asked"]
    assert "warmup_epochs=5" in caplog.text and "half the run" in caplog.text
    lrs = [h["lr"]["head"] for h in res.history]
    assert lrs[1] > lrs[0] > 0


def test_default_warmup_on_a_one_epoch_run_is_said_not_warned(tmp_path, caplog):
    """The default 1-epoch warmup shortened on a 1-epoch run is expected: information, not a
    warning on every short run; the epoch line gives the rate it trained at, never ``lr 0``."""
    photos = write_tree(tmp_path / "photos", per_class=10)
    with caplog.at_level(logging.INFO, logger="cnncodes.finetuning.trainer"):
        res = finetune(photos, tmp_path / "run", epochs=1, **TINY)
    assert res.report["warmup"]["clamped"]
    said = [r for r in caplog.records if "warmup_epochs=1" in r.getMessage()]
    assert said and all(r.levelno == logging.INFO for r in said)
    epoch = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1")]
    assert epoch and " lr 0 " not in epoch[0] and "e-0" in epoch[0]


@pytest.mark.parametrize("opts,name", [
    (dict(lr=0), "lr"), (dict(lr=-0.01), "lr"), (dict(lr=float("inf")), "lr"),
    (dict(head_lr_mult=0), "head_lr_mult"), (dict(state="head-only", lr=0.0), "lr"),
    (dict(warmup_epochs=float("nan")), "warmup_epochs"),
])
def test_a_zero_learning_rate_is_refused_up_front(opts, name, tmp_path):
    with pytest.raises(OptionError, match=rf"^{name} must be"):
        make_config(**opts)
    # nothing is trained in state predict: the learning rate does not matter there
    make_config(state="predict", lr=0)


def test_zero_learning_rate_from_the_cli_names_the_option_and_the_fix(tmp_path, capsys):
    photos = write_tree(tmp_path / "photos", per_class=4)
    before = tree_bytes(photos)
    rc = cli.main(["finetune", str(photos), "-o", str(tmp_path / "run"), "--lr", "0", *CLI_FT])
    err = capsys.readouterr().err
    assert rc == 1 and "lr must be > 0" in err and "--lr 0.001" in err
    assert not (tmp_path / "run").exists() and tree_bytes(photos) == before


def test_rates_that_underflow_to_zero_are_refused_before_training():
    cfg = make_config(backbone="resnet18", weights="random", input_size=32, lr=1e-300,
                      layer_decay=1e-10)
    net, _, _ = build_finetune_model(cfg, ["a", "b"])
    with pytest.raises(OptionError, match=r"learning rate of stage1 must be > 0.*--layer-decay"):
        param_groups(net, cfg)
    cfg = make_config(backbone="resnet18", weights="random", input_size=32, epochs=4,
                      schedule="step", step_size=1, gamma=1e-300)
    with pytest.raises(OptionError, match=r"gamma must keep the learning rate above 0.*--gamma"):
        param_groups(net, cfg)


# ------------------------------------------------------------------------------ resume


def test_resume_with_another_source_is_refused_naming_both(tmp_path, capsys):
    a = write_tree(tmp_path / "a", per_class=8)
    b = write_tree(tmp_path / "b", classes=("x", "y"), per_class=8, seed=3)
    run = tmp_path / "run"
    finetune(a, run, epochs=1, **TINY)
    kept = tree_bytes(run)
    with pytest.raises(OptionError) as e:
        finetune(b, run, resume=True, epochs=2)
    msg = str(e.value)
    assert str(b.resolve()) in msg and str(a.resolve()) in msg
    assert "another -o folder" in msg and "--overwrite" in msg
    assert tree_bytes(run) == kept  # nothing of the run was touched
    rc = cli.main(["finetune", str(b), "-o", str(run), "--resume", "--no-progress"])
    assert rc == 1 and str(a.resolve()) in capsys.readouterr().err
    # another --test source is refused the same way
    with pytest.raises(OptionError, match=r"--test source .* no --test source"):
        finetune(a, run, resume=True, test=b)
    # the same source, spelled another way (a link), resumes
    link = tmp_path / "link"
    link.symlink_to(a, target_is_directory=True)
    assert finetune(link, run, resume=True, epochs=2).epochs_run == 2


def test_resume_check_covers_runs_made_before_the_source_was_recorded(tmp_path):
    a = write_tree(tmp_path / "a", per_class=8)
    b = write_tree(tmp_path / "b", per_class=8, seed=3)
    run = tmp_path / "run"
    finetune(a, run, epochs=1, **TINY)
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    for key in ("source_path", "test_path"):  # as an older cnncodes wrote it
        ck["split"].pop(key)
    torch.save(ck, run / "checkpoint.pt")
    with pytest.raises(OptionError, match=rf"made from {a.resolve()}"):
        finetune(b, run, resume=True)
    assert finetune(a, run, resume=True, epochs=2).epochs_run == 2


# ------------------------------------------------------------------------------ advise


@pytest.mark.parametrize("classes,per_class", [(("ant", "bee"), 2), (("ant", "bee"), 3),
                                               (("ant", "bee", "cow"), 4)])
def test_advise_on_4_to_12_images_claims_no_lead(classes, per_class, tmp_path, capsys):
    photos = write_tree(tmp_path / "photos", classes=classes, per_class=per_class)
    n = len(classes) * per_class
    rc = cli.main(["advise", str(photos), "--report", str(tmp_path / "rep"), *CLI_ADV])
    out = capsys.readouterr().out
    assert rc == 0
    assert (f"not enough images to compare layers: 10 per class / 100 in all would be needed "
            f"(the probe had {per_class} in its smallest class, {n} in all)") in out
    assert "beats" not in out and "warning   not enough images" in out
    js = strict_loads((tmp_path / "rep" / "advice.json").read_text())
    assert js["layers_compared"] is False and js["layer"] == "pool"
    assert js["decision"]["comparison"]["needed_images"] == 100


def test_advise_refuses_a_single_image_per_class(tmp_path, capsys):
    photos = write_tree(tmp_path / "photos", per_class=1)
    before = tree_bytes(photos)
    rc = cli.main(["advise", str(photos), *CLI_ADV])
    err = capsys.readouterr().err
    assert rc == 1 and str(photos) in err and "median 1 per class" in err
    assert "10 per class / 100 in all would be needed" in err and "--layers pool" in err
    assert tree_bytes(photos) == before
