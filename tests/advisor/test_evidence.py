"""cnncodes.advisor.evidence: the data set's size, and the pretrained network's view (random init
here; the BatchNorm formula checked where it is exact)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnncodes.advisor.evidence import SizeInfo, measure_size
from cnncodes.advisor.meter import PretrainedMeter
from cnncodes.advisor.rule import Thresholds
from cnncodes.backbones import get_spec
from cnncodes.backbones.weights import resolve_weights
from cnncodes.errors import OptionError
from cnncodes.sources.folders import open_source

from ..conftest import write_tree


def test_size_info_classes():
    s = SizeInfo(30, {"a": 10, "b": 20})
    assert s.median_per_class == 15 and s.n_classes == 2
    assert s.to_dict()["per_class_min"] == 10
    assert s.size_class(Thresholds()) == "small"
    assert s.size_class(Thresholds(small_per_class=5, large_per_class=15, large_total=30)) \
        == "large"
    assert "per_class" not in SizeInfo(30, {f"c{i}": 3 for i in range(10)}).to_dict(max_classes=5)


def test_measure_size_counts_and_reads_headers(tmp_path):
    root = write_tree(tmp_path / "t", classes=("a", "b"), per_class=6, size=(30, 40))  # (h, w)
    (root / "a" / "img999.png").write_bytes(b"not an image")
    s = measure_size(open_source(root), sample=100)
    assert s.n_images == 13 and s.per_class == {"a": 7, "b": 6}
    assert s.image_sizes["unreadable"] == 1 and s.image_sizes["sampled"] == 13
    assert s.image_sizes["width"]["median"] == 40 and s.image_sizes["modes"] == {"RGB": 12}


def test_measure_size_needs_two_labelled_classes(tmp_path):
    write_tree(tmp_path / "one", classes=("only",), per_class=3)
    with pytest.raises(OptionError, match="single class"):
        measure_size(open_source(tmp_path / "one"))


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
    assert head["n_images"] == 8 and head["top1_hist"] and sum(head["top1_hist"]) == 8
    meter.close()
    assert not meter.model.features[1].conv[1]._forward_pre_hooks
