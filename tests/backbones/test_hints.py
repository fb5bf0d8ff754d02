"""Hints fit the backbone: every message that suggests a layer names one the backbone in use has
(no ``--layers fc7`` for MobileNetV2, no ``--layers pool`` for VGG), for every registry entry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnncodes.advisor.evidence import SizeInfo
from cnncodes.advisor.rule import check_probe_size
from cnncodes.backbones.catalog import ENTRIES, missing_layer_fix
from cnncodes.errors import OptionError

ALL_LAYERS = sorted({n for e in ENTRIES.values() for n in e.layers})


@pytest.mark.parametrize("name", list(ENTRIES))
def test_missing_layer_fix_names_only_layers_of_the_backbone(name):
    own = ENTRIES[name].layers
    for layer in ALL_LAYERS:
        fix = missing_layer_fix(name, layer)
        suggested = [w.rstrip(".,;") for w in fix.split("--layers ")[1:]]
        if layer in own:
            assert suggested == [layer], fix
        else:
            assert f"--layers {layer}" not in fix and suggested == ["NAME"], fix
            assert all(n in fix for n in own) and f"default {ENTRIES[name].default_layer}" in fix


@pytest.mark.parametrize("name", list(ENTRIES))
def test_too_small_to_probe_suggests_the_backbones_own_last_layer(name):
    with pytest.raises(OptionError) as e:
        check_probe_size(SizeInfo(3, {"a": 1, "b": 1, "c": 1}),
                         last_layer=ENTRIES[name].default_layer)
    layer = str(e.value).split("--layers ")[1].split(",")[0]
    assert layer == ENTRIES[name].default_layer and layer in ENTRIES[name].layers


def test_library_backbones_are_pointed_to_their_layer_list():
    fix = missing_layer_fix("timm/convnext_atto", "fc7")
    assert "`cnncodes models timm/convnext_atto` lists its layers" in fix


def test_a_mobilenet_store_asked_for_fc7_names_its_own_layers(tmp_path, capsys):
    """The store's reader and `train` both say what the store's backbone offers instead."""
    from cnncodes import extract
    from cnncodes.cli import main
    from cnncodes.codes.store import FeatureStore

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / c / f"{i}.png")
    store = tmp_path / "codes.h5"
    extract(tmp_path / "imgs", store, backbone="mobilenet_v2", weights="random", input_size=32,
            progress=False)
    with pytest.raises(OptionError) as e:
        FeatureStore(store).load(layer="fc7")
    assert "--layers fc7" not in str(e.value) and "stage2" in str(e.value)
    assert main(["train", str(store), "--layer", "fc7", "-o", str(tmp_path / "m.npz")]) == 1
    err = capsys.readouterr().err
    assert "--layers fc7" not in err and "mobilenet_v2 has no layer 'fc7'" in err, err
