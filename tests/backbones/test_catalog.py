"""The registry's data (catalog, read without torch) is what torchvision and the built specs say:
weights names, pinned ``auto`` weights, packaged files, and the rows ``cnncodes models`` prints."""

from __future__ import annotations

import pytest
import torchvision

from cnncodes.backbones import catalog
from cnncodes.backbones.factory import describe_backbones
from cnncodes.backbones.registry import get_spec, list_backbones
from cnncodes.errors import OptionError

#: entries whose ``auto`` weights are not torchvision's DEFAULT, and why
PINNED_APART = {"mobilenet_v2": "IMAGENET1K_V1 ships offline in a pip package"}


@pytest.mark.parametrize("name", list(catalog.ENTRIES))
def test_entry_weights_match_torchvision(name):
    entry = catalog.ENTRIES[name]
    enum = getattr(torchvision.models, entry.weights_enum)
    assert enum is torchvision.models.get_model_weights(name)
    assert list(entry.weights) == [w.name for w in enum]
    assert entry.default_weights in entry.weights
    if name not in PINNED_APART:  # a torchvision upgrade moving DEFAULT shows here
        assert enum.DEFAULT.name == entry.default_weights


def test_packaged_weights_are_the_files_torchvision_names():
    for wid, base in catalog.PACKAGED_WEIGHTS.items():
        enum, _, member = wid.partition(".")
        assert getattr(torchvision.models, enum)[member].url.rsplit("/", 1)[-1] == base
        assert base in catalog.OFFLINE_PACKAGES


def test_registry_is_the_catalog_and_rows_agree():
    assert list_backbones()[:len(catalog.ENTRIES)] == list(catalog.ENTRIES)
    by_name = {r["backbone"]: r for r in describe_backbones(list(catalog.ENTRIES))}
    for row in catalog.describe_catalog():
        assert row == by_name[row["backbone"]]
        spec = get_spec(row["backbone"])
        assert dict(spec.layers) == dict(catalog.ENTRIES[row["backbone"]].layers)


def test_unknown_name_error_is_the_same_from_catalog_and_registry():
    with pytest.raises(OptionError) as a:
        catalog.check_backbone_name("resnet5")
    with pytest.raises(OptionError) as b:
        get_spec("resnet5")
    assert str(a.value) == str(b.value)
    assert "Did you mean resnet50?" in str(a.value)
    catalog.check_backbone_name("timm/anything")  # only timm knows: not refused here
    catalog.check_backbone_name("torchvision/anything")
