"""``timm/<name>`` and ``torchvision/<name>`` backbones: dims from the libraries' own metadata,
codes deterministic and batch-size invariant, preprocessing as timm resolves it, weights offline
(random, a local file, the hub cache; a clear error otherwise), node cuts, fine-tuning heads, the
store and the CLI. Random weights, small inputs, no network (HF_HUB_OFFLINE=1, see conftest)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cnncodes import cli
from cnncodes.backbones import create_backbone, get_spec, resolve_weights
from cnncodes.errors import OptionError, WeightsUnavailableError

from ..conftest import write_tree

timm = pytest.importorskip("timm")

#: (model, input size): a CNN with BatchNorm, a LayerNorm CNN, a ViT (built with
#: dynamic_img_size, so 64 px works), a conv + attention hybrid (fixed at its 160 px)
TIMM_MODELS = [("resnet10t", 64), ("test_convnext", 64), ("test_vit", 64), ("test_coatnet", 160)]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache, offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _batch(n: int, size: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name,size", TIMM_MODELS)
def test_timm_layers_match_feature_info_and_codes_are_stable(name, size):
    spec = get_spec(f"timm/{name}")
    with torch.device("meta"):
        ref = timm.create_model(name)
    info = ref.feature_info
    stages = [k for k in spec.layers if k.startswith("stage")]
    assert stages == [f"stage{i + 1}" for i in range(len(info))]
    assert [spec.layers[k].dim for k in stages] == [int(f["num_chs"]) for f in info]
    assert [spec.layers[k].node for k in stages] == [f["module"] for f in info]
    assert spec.extra["strides"] == {f"stage{i + 1}": f["reduction"] for i, f in enumerate(info)}
    assert spec.default_layer == "pool" and spec.last_layers and spec.earlier_layers

    ext, resolved = create_backbone(f"timm/{name}", weights="random", layers=list(spec.layers))
    assert resolved.is_random
    x = _batch(3, size)
    with torch.inference_mode():
        out, again, single = ext(x), ext(x), ext(x[1:2])
        net = ext.model.model  # the timm model inside the tap
        pool = net.forward_head(net.forward_features(x), pre_logits=True)
        inter = net.forward_intermediates(x, intermediates_only=True)
    torch.testing.assert_close(out["pool"], pool)
    for i, k in enumerate(stages):
        torch.testing.assert_close(out[k], inter[i].float().mean(dim=(2, 3)))
    for k, cut in spec.layers.items():
        assert out[k].shape == (3, cut.dim), k
        assert torch.equal(out[k], again[k]), f"{k} not deterministic"
        scale = float(out[k].abs().max()) + 1e-6
        torch.testing.assert_close(single[k][0], out[k][1], atol=1e-4 * scale, rtol=1e-3)
    # the same random network in a second build (seeded), and a stage-only cut stops early
    ext2, _ = create_backbone(f"timm/{name}", weights="random", layers=["stage1"])
    with torch.inference_mode():
        assert torch.equal(ext2(x)["stage1"], out["stage1"])


@pytest.mark.parametrize("name", ["resnet10t", "test_vit", "convnext_atto"])
def test_timm_preprocessing_is_timms_eval_transform(name):
    cfg = timm.data.resolve_data_config(model=timm.create_model(name))
    t = timm.data.create_transform(**cfg, is_training=False).transforms
    pp = get_spec(f"timm/{name}").extra["preprocessing"]
    assert pp == resolve_weights(get_spec(f"timm/{name}"), "random").preprocessing
    assert pp.resize == t[0].size and pp.crop == t[1].size[0]
    assert pp.interpolation == t[0].interpolation.value == cfg["interpolation"]
    assert pp.mean == pytest.approx(cfg["mean"]) and pp.std == pytest.approx(cfg["std"])
    assert pp.mean == pytest.approx(t[-1].mean.tolist())


def test_timm_weights_offline_error_local_file_and_hub_cache(hub_cache, tmp_path):
    name = "test_convnext"
    with pytest.raises(WeightsUnavailableError) as e:
        create_backbone(f"timm/{name}", weights="auto")
    assert str(hub_cache) in str(e.value) and "--weights random" in str(e.value)
    with pytest.raises(OptionError, match="r160_in1k"):
        resolve_weights(get_spec(f"timm/{name}"), "no_such_tag")

    # a local checkpoint (safetensors) and the same file placed in the hub cache both load
    from safetensors.torch import save_file

    torch.manual_seed(123)
    src = timm.create_model(name).eval()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, path)
    x = _batch(2, 64)
    with torch.inference_mode():
        want = src.forward_head(src.forward_features(x), pre_logits=True)
    ext, res = create_backbone(f"timm/{name}", weights=str(path))
    assert res.id.startswith("file:")
    with torch.inference_mode():
        torch.testing.assert_close(ext(x)["pool"], want)

    hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    repo = hub_cache / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(path.read_bytes())
    ext, res = create_backbone(f"timm/{name}", weights="auto")
    assert res.id == f"timm/{name}.r160_in1k" and res.path == snap / "model.safetensors"
    with torch.inference_mode():
        torch.testing.assert_close(ext(x)["pool"], want)


def test_torchvision_model_outside_the_registry_by_node_name():
    from torchvision.models import regnet_y_400mf
    from torchvision.models.feature_extraction import create_feature_extractor

    spec = get_spec("torchvision/regnet_y_400mf")
    assert spec.layers["pool"].dim == 440 and spec.layers["pool"].node == "flatten"
    assert spec.extra["head"] == "fc" and spec.earlier_layers and spec.last_layers
    assert [spec.layers[f"stage{i}"].dim for i in range(1, 6)] == [32, 48, 104, 208, 440]
    node = "trunk_output.block2.block2-0.add"
    ext, res = create_backbone("torchvision/regnet_y_400mf", weights="random",
                               layers=f"pool,node:{node},stage2")
    assert ext.layers == ["stage2", f"node:{node}", "pool"]  # network order
    assert res.preprocessing.resize == 232  # from RegNet_Y_400MF_Weights.DEFAULT.transforms()
    torch.manual_seed(0)
    ref = regnet_y_400mf().eval()
    ref.load_state_dict(ext.model.state_dict(), strict=False)  # same random weights
    fx = create_feature_extractor(ref, return_nodes={node: "n", "flatten": "p"})
    x = _batch(3, 64)
    with torch.inference_mode():
        out, want, single = ext(x), fx(x), ext(x[2:])
    torch.testing.assert_close(out[f"node:{node}"], want["n"].mean(dim=(2, 3)))
    torch.testing.assert_close(out["pool"], want["p"])
    torch.testing.assert_close(single["pool"][0], out["pool"][2], atol=1e-4, rtol=1e-3)
    with pytest.raises(OptionError, match=r"node:trunk_output\.block2\.block2-0\.add"):
        create_backbone("torchvision/regnet_y_400mf", weights="random",
                        layers="node:trunk_output.block2.block2-0.ad")
    # channels-last nodes (inside torchvision's Swin stages) are named, not silently mis-pooled
    with pytest.raises(OptionError, match="1x56x56x96 outputs, which cannot be pooled"):
        get_spec("torchvision/swin_t").cut("node:features.1.0.add")


def test_dynamic_size_taken_through_kwargs_distilled_deit_at_64_px():
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.resnet import ResNet

    from cnncodes.backbones.timm_models import takes_keyword

    assert takes_keyword(VisionTransformerDistilled, "dynamic_img_size")  # via **kwargs
    assert not takes_keyword(ResNet, "dynamic_img_size")
    ext, _ = create_backbone("timm/deit_tiny_distilled_patch16_224", weights="random",
                             layers="pool")
    with torch.inference_mode():
        assert ext(_batch(2, 64))["pool"].shape == (2, 192)


@pytest.mark.parametrize("name,layers", [
    ("torchvision/squeezenet1_0", "stage4,pool"),           # two names of one graph node
    ("torchvision/resnet18", "stage5,node:layer4.1.relu_1,pool"),
    ("timm/resnet10t", "stage4,pool"),
])
def test_layers_that_share_a_graph_node_are_computed_once_and_each_written(name, layers):
    torch.manual_seed(0)
    ext, _ = create_backbone(name, weights="random", layers=layers)
    with torch.inference_mode():
        out = ext(_batch(2, 64))
    assert list(out) == ext.layers and len(out) == len(layers.split(","))
    single = {n: create_backbone(name, weights="random", layers=n)[0] for n in ext.layers}
    for n, e in single.items():  # each equals the layer taken alone (same random weights)
        e.model.load_state_dict(ext.model.state_dict(), strict=False)
        with torch.inference_mode():
            torch.testing.assert_close(out[n], e(_batch(2, 64))[n])


@pytest.mark.parametrize("name,expect", [
    ("timm/convnxt_atto", "timm/convnext_atto"),
    ("torchvision/regnet_y_400", "torchvision/regnet_y_400mf"),
    ("resnt50", "resnet50"),
])
def test_unknown_names_list_close_matches(name, expect):
    with pytest.raises(OptionError) as e:
        get_spec(name)
    assert expect in str(e.value) and name in str(e.value)


@pytest.mark.parametrize("name", ["timm/test_convnext", "torchvision/regnet_y_400mf"])
def test_finetune_head_replaces_the_classifier(name, tmp_path):
    from cnncodes.backbones.factory import RANDOM_INIT_SEED, build_model
    from cnncodes.finetuning.net import wrap_stock

    spec = get_spec(name)
    ext, _ = create_backbone(name, weights="random")
    torch.manual_seed(RANDOM_INIT_SEED)  # the same random network as weights="random"
    stock = build_model(spec)
    net = wrap_stock(stock, spec, ["a", "b", "c"]).eval()
    x = _batch(2, 64)
    with torch.inference_mode():
        assert net(x).shape == (2, 3)
        torch.testing.assert_close(net.features(x), ext(x)["pool"])
    assert len(net.stages) >= 3
    sd = net.stock_state_dict()
    assert f"{net.head_path}.weight" in sd and sd[f"{net.head_path}.weight"].shape[0] == 3
    # model.pt round trip: rebuilt from the name recorded in the file
    from cnncodes.finetuning.model_file import save_model_file
    from cnncodes.finetuning.net import load_finetuned

    pp = resolve_weights(spec, "random").preprocessing.with_input_size(64).to_dict()
    save_model_file(net, tmp_path / "model.pt", config={"backbone": name, "state": "full"},
                    family=spec.family, base_weights="random", base_weights_sha256="",
                    preprocessing=pp, epoch=1, val_accuracy=None, command="test")
    again, meta = load_finetuned(tmp_path / "model.pt")
    assert meta["backbone"] == name
    with torch.inference_mode():
        torch.testing.assert_close(again(x), net(x))


def test_cli_extract_timm_and_torchvision_and_rerun(tmp_path, capsys):
    tree = write_tree(tmp_path / "photos", classes=("a", "b"), per_class=3)
    fast = ["--weights", "random", "--input-size", "64", "--workers", "0", "--no-progress",
            "--engine", "torch"]  # the onnxruntime engine: test_onnxruntime_engine_...
    for backbone, layers, dims in (("timm/test_convnext", "stage2,pool", (32, 64)),
                                   ("torchvision/regnet_y_400mf", "stage3,pool", (104, 440))):
        out = tmp_path / f"{backbone.replace('/', '_')}.h5"
        assert cli.main(["extract", str(tree), "-o", str(out), "--backbone", backbone,
                         "--layers", layers, *fast]) == 0
        assert "6 extracted now" in capsys.readouterr().out
        assert cli.main(["extract", str(tree), "-o", str(out), "--backbone", backbone,
                         "--layers", layers, *fast]) == 0  # compatible store: nothing to redo
        assert "0 extracted now" in capsys.readouterr().out
        assert cli.main(["info", str(out), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert backbone in json.dumps(info) and info["images"] == 6
        assert [v["dim"] for v in info["layers"].values()] == list(dims)


def test_cli_models_timm_and_torchvision_nodes(capsys):
    assert cli.main(["models", "timm", "test_conv", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    row = next(r for r in js["models"] if r["backbone"] == "timm/test_convnext")
    assert [s["dim"] for s in row["stages"]] == [24, 32, 48, 64] and row["pool"] == 64
    assert cli.main(["models", "timm/test_vit"]) == 0
    text = capsys.readouterr().out
    assert "stage6" in text and "r160_in1k" in text
    assert cli.main(["models", "torchvision/regnet_y_400mf", "--nodes"]) == 0
    text = capsys.readouterr().out
    assert "node:trunk_output.block1.block1-0.add" in text and "1x48x56x56" in text


def test_input_sizes_a_vit_at_64_px_and_a_fixed_size_model_names_its_size():
    from cnncodes.codes.extractor import CodeExtractor

    vit = CodeExtractor("timm/test_vit", weights="random", input_size=64, engine="torch")
    imgs = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert vit(imgs)["pool"].shape == (2, 64)
    with pytest.raises(OptionError,
                       match="input size 64 px does not fit timm/test_coatnet.*160 px"):
        CodeExtractor("timm/test_coatnet", weights="random", input_size=64, engine="torch")


def test_onnxruntime_engine_matches_torch_for_timm():
    from cnncodes.codes.extractor import CodeExtractor

    kw = dict(weights="random", layers=("stage3", "pool"), input_size=64)
    ort = CodeExtractor("timm/resnet10t", engine="auto", **kw)
    ref = CodeExtractor("timm/resnet10t", engine="torch", **kw)
    imgs = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(3))
    a, b = ort(imgs), ref(imgs)
    for k in kw["layers"]:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-4 * float(np.abs(b[k]).max()))
    assert ort.engine_name == "onnxruntime" and ort.bn_folded > 0  # ResNet blocks: conv + bn
    assert CodeExtractor("timm/test_convnext", engine="torch", **kw).bn_folded == 0  # LayerNorm
    assert ort.engine.path.parent.name == "onnx"  # `timm/x` never makes a sub-folder
    assert ort.engine.path.name.startswith("timm+resnet10t-")
    assert ort.provenance()["backbone"] == "timm/resnet10t"
    assert ort.provenance()["family"].startswith("timm:")


def test_advise_probes_every_stage_of_a_library_model(tmp_path, capsys):
    tree = write_tree(tmp_path / "photos", per_class=8)
    assert cli.main(["advise", str(tree), "--backbone", "timm/test_convnext", "--weights",
                     "random", "--input-size", "64", "--budget", "none", "--sample", "24",
                     "--folds", "3", "--workers", "0", "--no-progress", "--json"]) == 0
    probe = json.loads(capsys.readouterr().out)["similarity"]["probe"]["layers"]
    assert list(probe) == ["stage1", "stage2", "stage3", "stage4", "pool"]
    assert [probe[k]["dim"] for k in probe] == [24, 32, 48, 64, 64]
    assert [probe[k]["depth"] for k in probe] == ["earlier"] * 3 + ["last"] * 2


def test_a_bare_assert_in_a_model_is_named_with_its_line():
    from cnncodes.codes.extractor import failure_reason

    def model_forward(h: int) -> None:
        if h != 256:  # as torch._assert(h == 256, '') raises: no message
            raise AssertionError

    with pytest.raises(AssertionError) as info:
        model_forward(64)
    why = failure_reason(info.value)
    assert why.startswith("AssertionError at test_adapters.py:") and "raise AssertionError" in why
    assert failure_reason(RuntimeError("shape\n mismatch")) == "shape mismatch"
