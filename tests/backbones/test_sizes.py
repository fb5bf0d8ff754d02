"""Models fixed to one input size and very large models: built at the size their weights imply
(torchvision ViTs), the sizes that work named (on the meta device) in the error and the listing,
torch.fx's printed traceback kept out of stderr, and the ONNX export skipped up front, with its
reason recorded, when the parameters cannot fit one ONNX file."""

from __future__ import annotations

import logging

import pytest
import torch

from cnncodes import cli
from cnncodes.backbones import get_spec, resolve_weights
from cnncodes.backbones.factory import build_model, describe_sizes, working_sizes
from cnncodes.errors import OptionError


def test_vit_h_14_sizes_come_from_its_weights_metadata_without_building_it():
    """vit_h_14's default weights are 518 px, its weightless builder 224 px: each weights gets a
    model of its own size (read from the enum only: the 632M-parameter model is never built)."""
    from cnncodes.backbones.tv_models import fixed_size_extra

    extra = fixed_size_extra("vit_h_14", 224)
    assert extra["fixed_sizes"] == {"random": 224, "ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1": 518,
                                    "ViT_H_14_Weights.IMAGENET1K_SWAG_LINEAR_V1": 224}
    assert extra["build_kwargs"] == {"ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1":
                                     {"image_size": 518}}
    assert extra["preprocessing"].crop == 224 and extra["preprocessing"].interpolation == "bicubic"


def test_a_torchvision_vit_is_built_at_the_size_of_the_chosen_weights():
    """vit_b_16: V1 weights 224 px, SWAG_E2E 384 px (before: always a 224 px model, so loading
    the 384 px weights or tracing at their size failed); on the meta device, no memory."""
    spec = get_spec("torchvision/vit_b_16")
    e2e = resolve_weights(spec, "IMAGENET1K_SWAG_E2E_V1")
    assert e2e.preprocessing.crop == 384
    assert resolve_weights(spec, "random").preprocessing.crop == 224
    with torch.device("meta"):
        assert build_model(spec, e2e.id).image_size == 384
        assert build_model(spec, "random").image_size == 224
        assert build_model(spec).image_size == 224
    assert working_sizes(spec, e2e.id, also=(384,)) == [384]
    assert working_sizes(spec) == [224]
    assert spec.extra["fixed_sizes"]["ViT_B_16_Weights.IMAGENET1K_V1"] == 224


def test_any_size_model_and_the_listing_name_the_sizes(capsys):
    assert describe_sizes(working_sizes(get_spec("torchvision/resnet18"))).startswith("any tried")
    assert cli.main(["models", "torchvision/vit_b_16"]) == 0
    out = capsys.readouterr().out
    assert "input sizes that work (weights auto): 224 px" in out
    assert "IMAGENET1K_SWAG_E2E_V1 384 px" in out


@pytest.mark.parametrize("name, works", [
    pytest.param("torchvision/maxvit_t", "224 px", marks=pytest.mark.slow),  # ~30 s on 2 cores
    ("timm/botnet26t_256", "256 px")])
def test_a_fixed_size_model_at_another_size_names_why_and_the_sizes_that_work(name, works, capfd):
    from cnncodes.codes.extractor import CodeExtractor

    with pytest.raises(OptionError) as info:
        CodeExtractor(name, weights="random", input_size=64, engine="torch")
    msg = str(info.value)
    assert f"input size 64 px does not fit {name} (" in msg and "()" not in msg
    assert f"Sizes that work with weights random: {works}" in msg
    assert "--input-size " + works.split()[0] in msg
    err = capfd.readouterr().err  # torch.fx's generated code and traceback: debug log only
    assert "Traceback" not in err and "eval_with_key" not in err


def test_onnx_export_is_skipped_up_front_when_the_parameters_cannot_fit(monkeypatch, caplog):
    """The check that skips regnet_y_128gf (2.4 GiB of fp32 parameters) without its 308 s attempt,
    here with the limit lowered under a small model's size."""
    from cnncodes.codes import engines
    from cnncodes.codes.extractor import CodeExtractor

    def no_export(*a, **k):
        raise AssertionError("the export must not be tried")

    monkeypatch.setattr(engines, "ONNX_MAX_PARAM_BYTES", 1_000_000)
    monkeypatch.setattr(engines, "cached_export", no_export)
    with caplog.at_level(logging.WARNING, logger="cnncodes.codes.engines"):
        ext = CodeExtractor("resnet18", weights="random", input_size=32, engine="auto")
    size = engines.parameter_bytes(ext.module)
    assert ext.engine_name == "torch" and size > 1_000_000
    fallback = ext.provenance()["engine"]["fallback"]
    assert f"{size / 2**30:.2f} GiB" in fallback and "export was not tried" in fallback
    assert "export was not tried" in caplog.text
    with torch.device("meta"):  # the estimate needs no memory
        meta = build_model(get_spec("resnet18"))
    # within BatchNorm folding's difference (conv biases in, BN statistics out)
    assert abs(engines.parameter_bytes(meta) - size) < 0.01 * size


def test_multihead_attention_exports_to_onnx_and_the_fast_path_flag_is_restored():
    """torchvision's ViT blocks call nn.MultiheadAttention, whose no_grad fast path has no ONNX
    export (every torchvision ViT fell back to torch); a tiny attention net shows the export now
    passes the engine's own check, and the global flag is left as found."""
    from torch import nn

    from cnncodes.codes.engines import try_onnxruntime

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Conv2d(3, 16, 8, stride=8)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            t = self.proj(x).flatten(2).transpose(1, 2)
            return {"pool": self.attn(t, t, t, need_weights=False)[0].mean(1)}

    torch.manual_seed(0)
    net = Attn().eval()
    before = torch.backends.mha.get_fastpath_enabled()
    eng, reason = try_onnxruntime(net, ["pool"], 32, backbone="test-attention",
                                  fields=lambda: {"backbone": "test-attention", "seed": 0},
                                  threads=1)
    assert eng is not None, reason
    assert torch.backends.mha.get_fastpath_enabled() == before
