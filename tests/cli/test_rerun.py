"""Reruns that remember: ``extract SRC -o codes.h5`` without the model options continues with the
store's settings (and says which); an explicit option that conflicts is refused naming the store's
value and both ways forward; ``--layers auto``'s next command names the store it wrote."""

from __future__ import annotations

import shutil

import pytest

from cnncodes import FeatureStore
from cnncodes.cli import main
from cnncodes.cli.codes import next_after_extract
from cnncodes.codes.rerun import check_rerun, recorded_options, weights_option
from cnncodes.errors import OptionError

from ..linear.digits import digits_data  # noqa: F401 - session fixture


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def store(digits_data, tmp_path):  # noqa: F811
    """A copy of the digits train store (resnet18 from a checkpoint file, 32 px, layer3,pool)."""
    dst = tmp_path / "codes.h5"
    shutil.copy(digits_data.train_h5, dst)
    return dst


def test_rerun_without_model_options_continues_with_the_stores(digits_data, store,
                                                               capsys):  # noqa: F811
    before = FeatureStore(store).provenance["updated"]
    rc, out, err = run(capsys, "extract", digits_data.train_dir, "-o", store, "--workers", "0",
                       "--engine", "torch", "--no-progress")
    assert rc == 0, err
    assert (f"continuing with the store's settings: --backbone resnet18 "
            f"--weights {digits_data.weights} --layers layer3,pool --pooling avg --input-size 32 "
            "--dtype float32") in err
    assert "0 extracted now, 140 unchanged" in out
    assert FeatureStore(store).provenance["updated"] == before  # nothing to do, nothing written


def test_a_given_option_agreeing_with_the_store_takes_the_rest_from_it(digits_data, store,
                                                                       capsys):  # noqa: F811
    rc, out, err = run(capsys, "extract", digits_data.train_dir, "-o", store, "--workers", "0",
                       "--engine", "torch", "--no-progress", "--backbone", "resnet18")
    assert rc == 0, err
    assert "for the options not given, continuing with the store's settings" in err
    assert "--backbone" not in err and "--layers layer3,pool" in err


def test_a_conflicting_option_is_refused_with_both_ways_forward(digits_data, store,
                                                                capsys):  # noqa: F811
    rc, _, err = run(capsys, "extract", digits_data.train_dir, "-o", store, "--backbone",
                     "mobilenet_v2", "--input-size", "64", "--layers", "pool")
    assert rc == 1
    assert "--backbone mobilenet_v2 (the store has --backbone resnet18)" in err
    assert "--input-size 64 (the store has --input-size 32)" in err
    assert "--layers pool (the store has --layers layer3,pool)" in err
    assert "--backbone resnet18 --layers layer3,pool --input-size 32" in err  # way one
    assert "-o OTHER.h5" in err and "--overwrite" in err  # way two
    # --overwrite is the other store: no store settings apply then
    assert FeatureStore(store).provenance["backbone"] == "resnet18"


def test_weights_conflicts_only_when_they_surely_differ(store, digits_data):  # noqa: F811
    rec = recorded_options(store)
    assert rec["weights"] == str(digits_data.weights)  # file:PATH -> the path
    assert check_rerun(store, {"weights": "auto"}, rec)["weights"] == "auto"  # library checks
    with pytest.raises(OptionError, match="--weights random"):
        check_rerun(store, {"weights": "random"}, rec)
    with pytest.raises(OptionError, match="the store has --weights"):
        check_rerun(store, {"weights": str(store)}, rec)  # another file
    assert recorded_options(store.with_name("none.h5")) is None


def test_weights_option_of_recorded_ids():
    assert weights_option("MobileNet_V2_Weights.IMAGENET1K_V1") == "IMAGENET1K_V1"
    assert weights_option("timm/convnext_tiny.fb_in1k") == "convnext_tiny.fb_in1k"
    assert weights_option("file:/data/w.pth") == "/data/w.pth"
    assert weights_option("random") == "random" and weights_option(None) == "random"


def test_layers_auto_next_command_names_the_store():
    cmd = ("cnncodes extract photos -o codes.h5 --backbone mobilenet_v2 --layers pool && "
           "cnncodes train codes.h5 --layer pool --model linearsvc -o model.npz")
    assert next_after_extract(cmd, "my codes.h5") == (
        "cnncodes train 'my codes.h5' --layer pool --model linearsvc -o model.npz")
    ft = "cnncodes finetune photos --backbone mobilenet_v2 -o run/ --freeze 0"
    assert next_after_extract(ft, "x.h5") == ft
