"""The model sweep (cnncodes.codes.sweep, `make sweep`): every model gives codes of the reported
dimension or one clear reason. CI runs a fixed sample (slow); the full sweep is `make sweep`."""

from __future__ import annotations

import pytest

from cnncodes.codes.sweep import summarize, summary_table, sweep_one, timm_family

#: a CNN, a fire-module net without a Linear head, a mobile net, a RegNet, a window-attention
#: model, a ViT (metadata only: over the forward budget), a fixed-size MaxViT; timm: a ResNet, a
#: ConvNeXt and a ViT (dynamic size), a fixed-size attention hybrid
SAMPLE = ["torchvision/resnet18", "torchvision/squeezenet1_0", "torchvision/mobilenet_v3_small",
          "torchvision/regnet_y_400mf", "torchvision/swin_t", "torchvision/vit_b_16",
          "torchvision/maxvit_t", "timm/resnet10t", "timm/test_convnext", "timm/test_vit",
          "timm/botnet26t_256"]


@pytest.mark.slow
def test_a_fixed_sample_of_models_gives_codes_or_a_clear_reason():
    rows = [sweep_one(n) for n in SAMPLE]
    failed = [f"{r['backbone']}: {r['reason']}" for r in rows if r["status"] == "failed"]
    assert not failed, failed
    by = {r["backbone"]: r for r in rows}
    r18 = by["torchvision/resnet18"]
    assert r18["status"] == "codes" and r18["dim"] == 512
    assert by["torchvision/resnet18"]["size"] == 32  # the smallest candidate works
    assert by["torchvision/vit_b_16"]["status"] == "built"  # 330 MiB > the 256 MiB budget
    assert "GiB of parameters" in by["torchvision/vit_b_16"]["reason"]
    assert by["torchvision/maxvit_t"]["size"] == 224 and by["timm/botnet26t_256"]["size"] == 256
    assert by["timm/test_vit"]["status"] == "codes"
    assert summarize(rows)["torchvision"]["failed"] == 0


def test_the_sweeps_bookkeeping():
    assert [timm_family(n) for n in ("resnet50d", "convnext_atto", "vit_base_patch16_224",
                                     "efficientnetv2_rw_s")] == [
        "resnet", "convnext", "vit", "efficientnetv"]
    row = sweep_one("torchvision/resnet_unknown", forward=False)
    assert row["status"] == "refused" and "resnet18" in row["reason"]  # close matches named
    text = summary_table([row, {"backbone": "timm/x", "status": "codes", "reason": ""}])
    assert "| torchvision | 1 | 0 | 0 | 1 | 0 |" in text and "| timm | 1 | 1 | 0 | 0 | 0 |" in text
    assert "| torchvision/resnet_unknown | refused |" in text
