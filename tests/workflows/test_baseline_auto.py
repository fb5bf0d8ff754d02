"""`baseline --layer auto` (the layer advisor on the training rows only, its evidence in the report
and the stores) and `baseline --fall-through` (fine-tuning on the same split when the data is large
by advise's size rule). Tiny generated class folders, random-init ResNet-18 at 32 px, CPU."""

from __future__ import annotations

import importlib
import json
import shlex
from pathlib import Path

import pytest

from cnncodes import FeatureStore, baseline, load_model
from cnncodes.advisor.rule import Thresholds
from cnncodes.cli import main
from cnncodes.errors import StoreMismatchError
from cnncodes.sources.folders import open_source
from cnncodes.workflows.baseline import advised_finetune
from cnncodes.workflows.inputs import holdout_sources
from cnncodes.workflows.layer_advice import size_check

from ..conftest import write_tree

advise_module = importlib.import_module("cnncodes.workflows.advice")

OPTS = dict(backbone="resnet18", weights="random", input_size=32, num_workers=0,
            c_grid="1e-2:1:3", cv=3, raw_baseline=False)
CLI_OPTS = ["--backbone", "resnet18", "--weights", "random", "--input-size", "32", "--workers",
            "0", "--no-progress", "--c-grid", "1e-2:1:3", "--cv", "3", "--no-raw-baseline"]
TINY = ["--large-per-class", "5", "--large-total", "20", "--small-per-class", "2"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """3 classes x 12 images (a 20% hold-out leaves 30 training images, 10 per class)."""
    return write_tree(tmp_path / "photos", per_class=12)


@pytest.fixture
def split_photos(tmp_path: Path) -> Path:
    root = tmp_path / "split"
    write_tree(root / "train", per_class=10, seed=1)
    write_tree(root / "test", per_class=4, seed=2)
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


class FakeAdvisor:
    """Stands in for ``choose_layer``: records the source it was given, names a layer/classifier."""

    def __init__(self, layer: str = "layer3", classifier: str = "linearsvc"):
        self.layer, self.classifier = layer, classifier
        self.sources: list = []
        self.kwargs: list[dict] = []

    def __call__(self, source, **kw):
        self.sources.append(source)
        self.kwargs.append(kw)
        return self.layer, {"version": 1, "layer": self.layer, "classifier": self.classifier,
                            "similarity": "dissimilar", "size_class": "small",
                            "explanation": f"fake: use {self.layer}",
                            "thresholds": {"small_per_class": 200}}


def _abs(src) -> set[str]:
    return {str(Path(src.abspath(i)).resolve()) for i in range(len(src))}


# ------------------------------------------------------------------------ --layer auto, real advise


def test_layer_auto_records_advice_in_report_and_stores_and_reuses_it(photos, tmp_path, capsys):
    rep = tmp_path / "rep"
    rc, out, err = run(capsys, "baseline", photos, "--report", rep, "--layer", "auto",
                       "--budget", "none", *CLI_OPTS)
    assert rc == 0, err
    report = json.loads((rep / "report.json").read_text())
    advice = report["advice"]
    layer = report["model"]["layer"]
    assert advice["layer"] == layer in ("layer1", "layer2", "layer3", "layer4", "pool")
    assert f"--layer auto -> {layer}: {advice['explanation']}" in out
    # the advisor measured the 30 training images, never the 6 test images
    assert advice["size"]["n_images"] == 30 and advice["train_rows"]["n"] == 30
    assert advice["probe"]["n_images"] == 30
    assert report["split"]["n_train"] == 30 and report["test"]["n"] == 6
    assert report["advice_use"]["model"] == advice["classifier"] == report["model"]["model"]
    assert report["advice_use"]["model_source"] == "advice"
    assert (f"classifier {advice['classifier']}: advised for {layer} by --layer auto (pass "
            "--model to choose another)") in out
    assert report["selection"]["model_source"] == "advice"
    store = FeatureStore(rep / "cache" / "codes.h5")
    assert store.layers == [layer]
    assert store.provenance["advice"]["layer"] == layer
    assert store.provenance["advice"]["explanation"] == advice["explanation"]
    assert load_model(rep / "model.npz").layer == layer

    # same rows, same thresholds: the recorded advice is reused, the advisor does not run again
    again = baseline(photos, report=rep, layer="auto", budget=None, **OPTS)
    assert again.report["advice_use"]["reused_from_cache"] is True
    assert again.model.layer == layer and again.advice["explanation"] == advice["explanation"]


# ------------------------------------------------------------- --layer auto, the advisor's input


def test_layer_auto_advises_on_training_rows_of_a_holdout_split_only(photos, tmp_path,
                                                                     monkeypatch):
    fake = FakeAdvisor("layer3", "linearsvc")
    monkeypatch.setattr(advise_module, "choose_layer", fake)
    res = baseline(photos, report=tmp_path / "rep", layer="auto", holdout=0.2, seed=3, **OPTS)
    (src,) = fake.sources
    assert isinstance(src, type(open_source(photos)))  # an ImageSource of the training rows
    seen = _abs(src)
    tested = {str(Path(p).resolve()) for p in res.evaluation.paths}
    trained = {str(Path(p).resolve()) for p in res.model.train_paths}
    assert len(seen) == 30 and len(tested) == 6
    assert not seen & tested and seen == trained
    assert fake.kwargs[0]["seed"] == 3 and fake.kwargs[0]["reuse_from"] is None
    # the advised layer and classifier are used (no model given), and said so
    assert res.model.layer == "layer3" and res.model.kind == "linearsvc"
    assert res.report["advice"]["layer"] == "layer3"
    assert res.report["advice_use"]["model_source"] == "advice"
    assert FeatureStore(tmp_path / "rep" / "cache" / "codes.h5").provenance["advice"][
        "explanation"] == "fake: use layer3"
    # the split made on the files before extraction is the one train() makes on the store rows
    plain = baseline(photos, report=tmp_path / "plain", layer="layer3", holdout=0.2, seed=3,
                     **OPTS)
    assert sorted(plain.model.train_paths) == sorted(res.model.train_paths)
    assert sorted(plain.evaluation.paths) == sorted(res.evaluation.paths)
    # an explicit --model wins over the advice
    mine = baseline(photos, report=tmp_path / "rep2", layer="auto", model="logreg", holdout=0.2,
                    seed=3, **OPTS)
    assert mine.model.kind == "logreg" and mine.report["advice_use"]["model_source"] == "given"


def test_layer_auto_advises_on_the_train_folder_of_a_predefined_split(split_photos, tmp_path,
                                                                      monkeypatch, capsys):
    fake = FakeAdvisor("layer2", "logreg")
    monkeypatch.setattr(advise_module, "choose_layer", fake)
    rc, out, err = run(capsys, "baseline", split_photos, "--report", tmp_path / "rep",
                       "--layer", "auto", *CLI_OPTS)
    assert rc == 0, err
    assert [Path(s) for s in fake.sources] == [split_photos / "train"]
    assert fake.kwargs[0]["budget"] == "2min"
    assert "--layer auto -> layer2: fake: use layer2" in out
    for name in ("train.h5", "test.h5"):  # both stores hold the advised layer and its evidence
        st = FeatureStore(tmp_path / "rep" / "cache" / name)
        assert st.layers == ["layer2"] and st.provenance["advice"]["layer"] == "layer2"


def test_layer_auto_with_a_cache_of_other_layers(photos, tmp_path, monkeypatch):
    rep = tmp_path / "rep"
    baseline(photos, report=rep, layer="pool", **OPTS)  # the cache holds pool only
    monkeypatch.setattr(advise_module, "choose_layer", FakeAdvisor("layer3"))
    with pytest.raises(StoreMismatchError, match=r"--layer auto chose layer3.*--overwrite"):
        baseline(photos, report=rep, layer="auto", **OPTS)
    # the advised layer is among the cached ones: the cache is reused and gets the evidence
    monkeypatch.setattr(advise_module, "choose_layer", FakeAdvisor("pool", "logreg"))
    runs = len(FeatureStore(rep / "cache" / "codes.h5").provenance["runs"])
    res = baseline(photos, report=rep, layer="auto", **OPTS)
    st = FeatureStore(rep / "cache" / "codes.h5")
    assert res.model.layer == "pool" and len(st.provenance["runs"]) == runs
    assert st.provenance["advice"]["layer"] == "pool"
    # overwrite: the cache is rebuilt for the advised layer
    monkeypatch.setattr(advise_module, "choose_layer", FakeAdvisor("layer3"))
    res = baseline(photos, report=rep, layer="auto", overwrite=True, **OPTS)
    assert res.model.layer == "layer3"
    assert FeatureStore(rep / "cache" / "codes.h5").layers == ["layer3"]


def test_holdout_sources_are_disjoint_and_stratified(photos):
    tr, te = holdout_sources(photos, holdout=0.25, seed=0)
    assert len(tr) == 27 and len(te) == 9 and not set(tr.paths) & set(te.paths)
    assert sorted(te.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


# --------------------------------------------------------------------------------- --fall-through


def test_size_check_is_advises_rule(photos):
    src = open_source(photos)  # 36 images, 12 per class
    assert size_check(src)["size_class"] == "small" and not size_check(src)["large"]
    th = Thresholds(small_per_class=2, large_per_class=12, large_total=36)
    assert size_check(src, th)["large"]
    short = size_check(src, Thresholds(small_per_class=2, large_per_class=12, large_total=37))
    assert not short["large"] and short["size_class"] == "medium"
    assert short["short_by"] == ["images < 37"]


def test_fall_through_takes_advises_fine_tuning_policy_for_the_similarity():
    assert advised_finetune({"similarity": "similar"}) == {"head_lr_mult": 10.0, "freeze": 1}
    assert advised_finetune({"similarity": "dissimilar"}) == {"head_lr_mult": 1.0, "freeze": 0}
    assert advised_finetune(None) == advised_finetune({"layer": "pool"}) == {}
    assert advised_finetune({"similarity": "unknown"}) == {}


@pytest.mark.slow
def test_fall_through_after_layer_auto_fine_tunes_with_advises_policy(photos, tmp_path,
                                                                      monkeypatch, capsys):
    fake = FakeAdvisor("pool", "logreg")

    def similar(source, **kw):
        layer, advice = fake(source, **kw)
        return layer, {**advice, "similarity": "similar"}

    monkeypatch.setattr(advise_module, "choose_layer", similar)
    rep = tmp_path / "rep"
    rc, _, err = run(capsys, "baseline", photos, "--report", rep, "--layer", "auto",
                     "--fall-through", "--finetune-epochs", "1", *TINY, *CLI_OPTS)
    assert rc == 0, err
    config = json.loads((rep / "finetune" / "report.json").read_text())["config"]
    assert (config["head_lr_mult"], config["freeze"]) == (10.0, 1)  # similar: head x10, 1 frozen


def test_fall_through_fine_tunes_on_the_same_split_when_large(photos, tmp_path, capsys):
    rep = tmp_path / "rep"
    rc, out, err = run(capsys, "baseline", photos, "--report", rep, "--fall-through",
                       "--finetune-epochs", "1", *TINY, *CLI_OPTS)
    assert rc == 0, err
    report = json.loads((rep / "report.json").read_text())
    ft = report["fall_through"]
    assert ft["status"] == "ran" and ft["size"]["size_class"] == "large"
    probe_row, ft_row = report["rows"]
    assert probe_row["accuracy"] == report["test"]["accuracy"] and probe_row["wall_time_s"] > 0
    assert ft_row["kind"] == "finetune" and ft_row["status"] == "completed"
    assert ft_row["wall_time_s"] > 0 and ft_row["epochs"] == 1
    assert ft["finetune"] == ft_row and ft["linear_probe"]["accuracy"] == probe_row["accuracy"]
    # the row is the fine-tuning run's own test result on the 6 test images
    ft_report = json.loads((rep / "finetune" / "report.json").read_text())
    assert ft_row["accuracy"] == ft_report["test_accuracy"]
    assert round(ft_row["accuracy"] * 6, 9) == round(ft_row["accuracy"] * 6)
    # the verdict follows the two accuracies
    better = ft_row["accuracy"] > probe_row["accuracy"]
    assert ft["verdict"].startswith("fine-tuning is better by" if better
                                    else "the linear probe is as good or better")
    # the same split: fine-tuning trains (+ validates) on the probe's 30 training images and is
    # tested on its 6 test images
    split = json.loads((rep / "finetune" / "split.json").read_text())
    model = load_model(rep / "model.npz")
    ft_train = {str(Path(p).resolve()) for p, _ in split["train"] + split["val"]}
    ft_test = {str(Path(p).resolve()) for p, _ in split["test"]}
    assert ft_train == {str(Path(p).resolve()) for p in model.train_paths}
    assert len(ft_test) == report["test"]["n"] == 6 and not ft_train & ft_test
    assert (rep / "finetune" / "model.pt").is_file()
    assert "fall-through: 30 training images, median 10 per class -> large" in out
    assert "fine-tuned resnet18 (full, 1 epoch, 32 px)" in out and "verdict:" in out
    assert "linear probe: logreg on pool codes" in out


def test_fall_through_skips_small_data_with_the_command(split_photos, tmp_path, capsys):
    rep = tmp_path / "rep"
    rc, out, err = run(capsys, "baseline", split_photos, "--report", rep, "--fall-through",
                       *CLI_OPTS)
    assert rc == 0, err
    report = json.loads((rep / "report.json").read_text())
    ft = report["fall_through"]
    assert ft["status"] == "skipped" and ft["size"]["size_class"] == "small"
    assert not (rep / "finetune").exists()
    assert ft["message"].startswith("not large enough: 30 images, median 10 per class ("
                                    "median < 1000 per class and images < 10000")
    assert "fine-tuning skipped" in out and ft["command"] in out
    cmd = shlex.split(ft["command"])
    assert cmd[:3] == ["cnncodes", "finetune", str(split_photos / "train")]
    assert cmd[cmd.index("--test") + 1] == str(split_photos / "test")
    assert cmd[cmd.index("-o") + 1] == str(rep / "finetune")
    assert cmd[cmd.index("--backbone") + 1] == "resnet18"
    assert cmd[cmd.index("--input-size") + 1] == "32"
    assert report["rows"][-1]["skipped"] == "not large enough (small)"
    rc, _, err = run(capsys, "baseline", split_photos, "--report", rep, "--force-finetune",
                     *CLI_OPTS)
    assert rc == 1 and "--force-finetune goes with --fall-through" in err
