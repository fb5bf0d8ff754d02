"""The inference engines: the exported ONNX graph gives the torch codes, falls back cleanly, is
cached once (also when two processes export at once), and a corrupt cached file is rebuilt."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cnncodes
from cnncodes.backbones import list_backbones
from cnncodes.codes import export_cache
from cnncodes.codes.cache_files import meta_path
from cnncodes.codes.engines import min_cosine
from cnncodes.codes.export_cache import unseal
from cnncodes.codes.extractor import CodeExtractor
from cnncodes.errors import OptionError
from cnncodes.options import RuntimeOptions

from ..conftest import write_tree

REPO = Path(__file__).resolve().parents[2]
FAST = {"mobilenet_v2", "resnet18", "mobilenet_v3_small"}
CPU = RuntimeOptions(device="cpu", threads=2)


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("CNNCODES_CACHE", str(d))
    return d


def _images(n=4, size=48, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _pair(backbone, size, **kw) -> tuple[CodeExtractor, CodeExtractor]:
    auto = CodeExtractor(backbone, weights="random", input_size=size, runtime=CPU, **kw)
    torch_ = CodeExtractor(backbone, weights="random", input_size=size,
                           runtime=CPU.replace(engine="torch"), **kw)
    return auto, torch_


def _onnx_files(cache: Path) -> list[Path]:
    return sorted((cache / "onnx").glob("*.onnx")) if (cache / "onnx").is_dir() else []


@pytest.mark.parametrize("backbone", [
    b if b in FAST else pytest.param(b, marks=pytest.mark.slow) for b in list_backbones()])
def test_exported_graph_gives_the_torch_codes(backbone, cache, caplog):
    # AlexNet/VGG below ~200 px upsample in their adaptive pool, which the ONNX exporter refuses:
    # they must fall back cleanly there (and export at their own 224 px, see the vgg11 case below)
    exports = not backbone.startswith(("vgg", "alexnet"))
    size = 64 if backbone == "alexnet" else 32  # AlexNet's own pooling needs >= 63 px
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        auto, ref = _pair(backbone, size)
    assert auto.engine_name == ("onnxruntime" if exports else "torch"), caplog.text
    if not exports:
        assert "adaptive_avg_pool2d" in caplog.text
    assert ref.engine_name == "torch"
    x = _images(5, size)
    a, b = auto(x), ref(x)
    assert set(a) == set(b) == set(auto.layers)
    for k in a:
        assert a[k].shape == b[k].shape and a[k].dtype == np.float32
    assert min_cosine(a, b) >= 0.99999
    assert len(_onnx_files(cache)) == int(exports)
    assert auto.provenance()["engine"]["name"] == auto.engine_name


@pytest.mark.parametrize("backbone,layers,pooling", [
    ("resnet18", ("layer1", "layer3", "pool"), "avgmax"),
    pytest.param("mobilenet_v2", ("stage3", "stage5", "pool"), "max", marks=pytest.mark.slow),
    pytest.param("mobilenet_v2", ("stage4",), "none", marks=pytest.mark.slow),
    pytest.param("vgg11", ("pool5", "fc6", "fc7"), "avg", marks=pytest.mark.slow),
])
def test_multi_layer_graph(backbone, layers, pooling, cache):
    size = 224 if backbone.startswith("vgg") else 48
    auto, ref = _pair(backbone, size, layers=layers, pooling=pooling)
    assert auto.engine_name == "onnxruntime"
    x = _images(3, size)
    a, b = auto(x), ref(x)
    assert list(a) == list(layers)
    assert min_cosine(a, b) >= 0.99999
    # one batch of 1 too: the batch axis is dynamic
    one = auto(x[:1])
    for k in layers:
        np.testing.assert_allclose(one[k][0], a[k][0], rtol=1e-4, atol=1e-5)


def test_graph_stops_at_the_deepest_layer(cache):
    import onnx

    CodeExtractor("resnet18", weights="random", input_size=32, layers=("layer1",), runtime=CPU)
    CodeExtractor("resnet18", weights="random", input_size=32, layers=("pool",), runtime=CPU)
    small, full = sorted(_onnx_files(cache), key=lambda p: p.stat().st_size)
    n_small = len(onnx.load(small).graph.node)
    n_full = len(onnx.load(full).graph.node)
    assert n_small < n_full / 2
    assert small.stat().st_size < full.stat().st_size / 10  # layer2..4 weights are not in it


def test_export_failure_falls_back_to_torch(cache, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(export_cache, "export_onnx", broken)
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        auto, ref = _pair("resnet18", 32)
    assert auto.engine_name == "torch"
    assert "using the torch engine instead of onnxruntime" in caplog.text
    assert "frobnicate" in caplog.text
    x = _images(2, 32)
    np.testing.assert_array_equal(auto(x)["pool"], ref(x)["pool"])
    assert auto.provenance()["engine"]["name"] == "torch"
    assert _onnx_files(cache) == []


def test_explicit_onnxruntime_falls_back_too_and_mismatch_is_logged(cache, monkeypatch, caplog):
    monkeypatch.setattr("cnncodes.codes.engines.CHECK_COSINE", 1.5)  # nothing can pass
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        ext = CodeExtractor("resnet18", weights="random", input_size=32, runtime=CPU.replace(
            engine="onnxruntime"))
    assert ext.engine_name == "torch"
    assert "differ from torch's" in caplog.text


def test_onnxruntime_needs_cpu_fp32():
    with pytest.raises(OptionError, match="engine onnxruntime runs on the CPU in fp32"):
        CodeExtractor("resnet18", weights="random", input_size=32,
                      runtime=CPU.replace(engine="onnxruntime", precision="bf16"))
    ext = CodeExtractor("resnet18", weights="random", input_size=32,
                        runtime=CPU.replace(precision="bf16"))
    assert ext.engine_name == "torch"  # auto keeps the asked precision on torch


def test_engine_option_is_validated():
    with pytest.raises(OptionError, match="'engine' parameter of RuntimeOptions must be a str "
                                          "among {'auto', 'torch', 'onnxruntime'}. Got "
                                          "'tensorrt' instead."):
        RuntimeOptions(engine="tensorrt")


def test_corrupt_cached_file_is_detected_and_rebuilt(cache, caplog):
    first = CodeExtractor("resnet18", weights="random", input_size=32, runtime=CPU)
    (path,) = _onnx_files(cache)
    good = path.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        again = CodeExtractor("resnet18", weights="random", input_size=32, runtime=CPU)
    assert "is corrupt" in caplog.text
    assert again.engine_name == "onnxruntime"
    assert unseal(path.read_bytes()) is not None
    x = _images(2, 32)
    np.testing.assert_allclose(again(x)["pool"], first(x)["pool"], rtol=1e-5, atol=1e-6)
    path.write_bytes(good[:1000])  # truncated
    assert CodeExtractor("resnet18", weights="random", input_size=32,
                         runtime=CPU).engine_name == "onnxruntime"
    assert unseal(path.read_bytes()) is not None


def test_wrong_graph_under_the_right_name_is_rebuilt(cache, caplog):
    CodeExtractor("resnet18", weights="random", input_size=32, layers=("layer2",), runtime=CPU)
    (path,) = _onnx_files(cache)
    # a sealed, loadable graph with the same outputs but other weights
    other = CodeExtractor("resnet18", weights="random", input_size=32, layers=("layer2",),
                          runtime=CPU.replace(engine="torch"))
    with torch.no_grad():
        for p in other.module.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    path.write_bytes(export_cache.seal(export_cache.export_onnx(other.module, ["layer2"], 32)))
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        again = CodeExtractor("resnet18", weights="random", input_size=32, layers=("layer2",),
                              runtime=CPU)
    assert "exporting it again" in caplog.text
    assert again.engine_name == "onnxruntime"
    assert len(_onnx_files(cache)) == 1


_CHILD = """
import json, sys
from cnncodes.codes.extractor import CodeExtractor
from cnncodes.options import RuntimeOptions
ext = CodeExtractor("resnet18", weights="random", input_size=32, layers=("layer2", "pool"),
                    runtime=RuntimeOptions(device="cpu", threads=1))
import torch
x = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
print(json.dumps({"engine": ext.engine_name, "sum": float(ext(x)["pool"].sum())}))
"""


def test_two_processes_exporting_at_once_leave_one_valid_file(cache):
    env = {**os.environ, "CNNCODES_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert [o["engine"] for o in outs] == ["onnxruntime"] * 2
    assert outs[0]["sum"] == pytest.approx(outs[1]["sum"], rel=1e-6)
    files = sorted((cache / "onnx").iterdir())
    graphs = [f for f in files if f.suffix == ".onnx"]
    manifests = [f for f in files if "-req-" in f.name]
    # the graph, its last-use record (cnncodes.codes.cache_files) and its torch-free manifest
    # (cnncodes.codes.light); no temp file left behind
    assert len(graphs) == 1 and len(manifests) == 1, files
    assert files == sorted([graphs[0], meta_path(graphs[0]), manifests[0]]), files
    assert unseal(graphs[0].read_bytes()) is not None
    assert json.loads(manifests[0].read_text())["graph"] == str(graphs[0])


def test_torch_engine_through_extract_and_provenance(cache, tmp_path):
    root = write_tree(tmp_path / "imgs", per_class=3)
    kw = dict(backbone="resnet18", weights="random", input_size=32, batch_size=4,
              num_workers=0, device="cpu")
    a = cnncodes.extract(root, tmp_path / "a.h5", engine="torch", **kw)
    b = cnncodes.extract(root, tmp_path / "b.h5", **kw)
    assert a.rows == b.rows == 9
    sa, sb = cnncodes.FeatureStore(tmp_path / "a.h5"), cnncodes.FeatureStore(tmp_path / "b.h5")
    assert sa.provenance["engine"]["name"] == "torch"
    assert sb.provenance["engine"]["name"] == "onnxruntime"
    xa, _ = sa.load(layer="pool")
    xb, _ = sb.load(layer="pool")
    assert min_cosine({"p": xa}, {"p": xb}) >= 0.99999
    # codes of either engine are the same codes: appending with the other engine is allowed,
    # and the run history says which engine computed which run
    write_tree(root, classes=("dog",), per_class=1, seed=5)
    c = cnncodes.extract(root, tmp_path / "a.h5", **kw)
    assert c.new == 1 and c.rows == 10
    runs = cnncodes.FeatureStore(tmp_path / "a.h5").provenance["runs"]
    assert [r["engine"] for r in runs] == ["torch", "onnxruntime"]
    assert runs[-1]["engine_version"] and runs[-1]["engine_threads"] >= 1
    arr = cnncodes.extract_arrays(root, engine="torch", **kw)
    assert arr.provenance["engine"]["name"] == "torch"


def test_cli_engine_flag(cache, tmp_path, capsys):
    from cnncodes.cli import main

    root = write_tree(tmp_path / "imgs", per_class=2)
    rc = main(["extract", str(root), "-o", str(tmp_path / "c.h5"), "--backbone", "resnet18",
               "--weights", "random", "--input-size", "32", "--device", "cpu", "--workers", "0",
               "--engine", "torch", "--no-progress"])
    assert rc == 0
    assert cnncodes.FeatureStore(tmp_path / "c.h5").provenance["engine"]["name"] == "torch"
    with pytest.raises(SystemExit):
        main(["extract", str(root), "-o", str(tmp_path / "d.h5"), "--engine", "tvm"])


def test_cli_help_imports_neither_torch_nor_onnxruntime():
    code = ("import sys, json, contextlib, io\n"
            "import cnncodes.cli\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            "        cnncodes.cli.main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "    try:\n"
            "        cnncodes.cli.main(['extract', '--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print(json.dumps([m for m in ('torch', 'torchvision', 'onnxruntime', 'onnx')"
            " if m in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_input_size_too_small_is_a_clear_error():
    with pytest.raises(OptionError, match=r"input size 32 px is too small for alexnet.*"
                                          r"--input-size"):
        CodeExtractor("alexnet", weights="random", input_size=32, runtime=CPU)


def test_failed_export_prints_nothing(cache, capfd, caplog):
    # the TorchScript exporter dumps its IR graph to stdout on failure: it must not reach ours
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        ext = CodeExtractor("alexnet", weights="random", input_size=64, runtime=CPU)
    out, err = capfd.readouterr()
    assert ext.engine_name == "torch" and "adaptive_avg_pool2d" in caplog.text
    assert out == "" and "graph(" not in err
