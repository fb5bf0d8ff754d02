"""The torch-free path (cnncodes.codes.light): a second run with a cached, checked graph imports
neither torch nor torchvision, gives the torch path's codes, and falls back to torch whenever its
manifest, graph, weights or probe check does not hold."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncodes.codes import light
from cnncodes.codes.reader import FeatureStore
from cnncodes.options import BackboneOptions, RuntimeOptions
from cnncodes.sources.loader import preprocess_pil
from cnncodes.sources.preprocessing import (
    IMAGENET,
    INTERPOLATIONS,
    Preprocessing,
    preprocess_array,
)

from ..conftest import write_tree

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--backbone", "mobilenet_v2", "--weights", "random", "--layers", "pool",
        "--input-size", "32", "--workers", "0", "--batch-size", "8", "--no-progress"]

#: run the CLI in a fresh interpreter and say whether torch / torchvision got imported
CHILD = """
import sys
from cnncodes.cli.main import main
rc = main(sys.argv[1:])
print("TORCH", "torch" in sys.modules, "torchvision" in sys.modules, rc)
"""


def run_cli(args: list[str], cache: Path, **env: str) -> str:
    e = {**os.environ, "CNNCODES_CACHE": str(cache), "PYTHONPATH": str(REPO),
         "CUDA_VISIBLE_DEVICES": "", **env}
    p = subprocess.run([sys.executable, "-c", CHILD, *args], env=e, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout.strip().splitlines()[-1]


def codes(path: Path) -> tuple[list[str], np.ndarray]:
    st = FeatureStore(path)
    X, _ = st.load("pool")
    return list(st.paths), X


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def test_second_extract_imports_no_torch_and_gives_the_torch_codes(tmp_path):
    src = write_tree(tmp_path / "photos", per_class=3)
    cache = tmp_path / "cache"
    first = run_cli(["extract", str(src), "-o", str(tmp_path / "a.h5"), *ARGS], cache)
    assert first == "TORCH True True 0"  # the first run exports and checks with torch
    assert list((cache / "onnx").glob("*-req-*.json"))
    second = run_cli(["extract", str(src), "-o", str(tmp_path / "b.h5"), *ARGS], cache)
    assert second == "TORCH False False 0"
    ref = run_cli(["extract", str(src), "-o", str(tmp_path / "t.h5"), *ARGS, "--engine",
                   "torch"], cache)
    assert ref == "TORCH True True 0"
    (pa, a), (pb, b), (pt, t) = (codes(tmp_path / f"{n}.h5") for n in "abt")
    assert pa == pb == pt
    assert min_cos(b, t) >= 0.99999 and min_cos(b, a) >= 0.99999
    pb_ = FeatureStore(tmp_path / "b.h5").provenance
    pa_ = FeatureStore(tmp_path / "a.h5").provenance
    for k in ("backbone", "weights", "weights_sha256", "layers", "pooling", "preprocessing",
              "numerics", "decoding", "versions"):
        assert pb_[k] == pa_[k], k
    run = pb_["runs"][-1]
    assert (run["engine"], run["decoder"], run["workers"]) == ("onnxruntime", "pil+dct", 1)
    # appending to a store made by the torch path: same compatibility fields, so it mixes
    write_tree(tmp_path / "photos", classes=("dog",), per_class=2, seed=5)
    again = run_cli(["extract", str(src), "-o", str(tmp_path / "a.h5"), *ARGS], cache)
    assert again == "TORCH False False 0" and len(FeatureStore(tmp_path / "a.h5")) == 11


def test_the_path_falls_back_to_torch(tmp_path, monkeypatch):
    src = write_tree(tmp_path / "photos", per_class=2)
    cache = tmp_path / "cache"
    run_cli(["extract", str(src), "-o", str(tmp_path / "a.h5"), *ARGS], cache)
    off = run_cli(["extract", str(src), "-o", str(tmp_path / "b.h5"), *ARGS], cache,
                  CNNCODES_TORCH_FREE="0")
    assert off == "TORCH True True 0"
    for opt in (["--engine", "torch"], ["--precision", "bf16"], ["--decoder", "tensor"]):
        out = run_cli(["extract", str(src), "-o", str(tmp_path / f"{opt[1]}.h5"), *ARGS, *opt],
                      cache)
        assert out.startswith("TORCH True"), opt
    # a manifest whose probe codes the graph does not give: the start-up check refuses it
    (manifest,) = (cache / "onnx").glob("*-req-*.json")
    doc = json.loads(manifest.read_text())
    probe = {k: light._unpack(v) for k, v in doc["probe"].items()}
    doc["probe"] = {k: light._pack(-v) for k, v in probe.items()}
    manifest.write_text(json.dumps(doc))
    monkeypatch.setenv("CNNCODES_CACHE", str(cache))
    bopts = BackboneOptions("mobilenet_v2", weights="random", layers="pool", input_size=32)
    assert light.light_extractor(bopts, RuntimeOptions(device="cpu")) is None
    # a corrupt graph: refused by its seal
    doc["probe"] = {k: light._pack(v) for k, v in probe.items()}
    manifest.write_text(json.dumps(doc))
    assert light.light_extractor(bopts, RuntimeOptions(device="cpu")) is not None
    graph = Path(doc["graph"])
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    assert light.light_extractor(bopts, RuntimeOptions(device="cpu")) is None
    # other options than the manifest's: another key, no manifest
    assert light.light_extractor(bopts.replace(input_size=48), RuntimeOptions(device="cpu")) \
        is None


def test_extract_arrays_uses_the_path_in_process(tmp_path, monkeypatch):
    from cnncodes.codes.batches import extract_arrays

    monkeypatch.setenv("CNNCODES_CACHE", str(tmp_path / "cache"))
    src = write_tree(tmp_path / "photos", per_class=2)
    kw = dict(backbone="mobilenet_v2", weights="random", layers="pool", input_size=32,
              num_workers=0, device="cpu")
    ref = extract_arrays(src, engine="torch", **kw)  # torch engine: writes no manifest
    assert not list((tmp_path / "cache").glob("onnx/*.json"))
    first = extract_arrays(src, **kw)  # exports, checks, writes the manifest
    from cnncodes.codes import batches

    def no_torch(*a, **k):
        raise AssertionError("the torch extractor was built")

    monkeypatch.setattr(batches, "_torch_extractor", no_torch)
    second = extract_arrays(src, **kw)
    assert second.provenance["engine"]["name"] == "onnxruntime"
    assert min_cos(second.codes["pool"], ref.codes["pool"]) >= 0.99999
    assert min_cos(first.codes["pool"], ref.codes["pool"]) >= 0.99999
    assert second.paths == ref.paths


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_numpy_preprocessing_is_the_torchvision_one(interpolation):
    rng = np.random.default_rng(0)
    for w, h in [(500, 375), (375, 500), (257, 256), (97, 131), (817, 203), (224, 224)]:
        for resize, crop in ((256, 224), (200, 224), (37, 32)):
            pp = Preprocessing(resize, crop, IMAGENET.mean, IMAGENET.std, interpolation)
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            a = preprocess_pil(img, pp, max_pixels=None).numpy()
            b = preprocess_array(img, pp, max_pixels=None)
            assert a.shape == b.shape and np.array_equal(a, b), (w, h, resize, crop)


def test_predict_on_images_runs_without_torch_once_its_graph_is_cached(tmp_path):
    src = write_tree(tmp_path / "photos", per_class=4)
    cache = tmp_path / "cache"
    store, model = tmp_path / "c.h5", tmp_path / "m.joblib"
    run_cli(["extract", str(src), "-o", str(store), *ARGS], cache)
    run_cli(["train", str(store), "-o", str(model), "--c-grid", "1e-2:1:3", "--cv", "2"], cache)
    pred = ["predict", str(model), str(src), "--workers", "0", "--no-progress"]
    # the model's options name the extract's graph: predict runs without torch at once
    first = run_cli([*pred, "-o", str(tmp_path / "p1.csv")], cache)
    assert first == "TORCH False False 0"
    second = run_cli([*pred, "-o", str(tmp_path / "p2.csv"), "--engine", "torch"], cache)
    assert second.startswith("TORCH True")
    import csv

    rows = [list(csv.DictReader(open(tmp_path / f"p{k}.csv"))) for k in (1, 2)]
    assert [r["label"] for r in rows[0]] == [r["label"] for r in rows[1]] and len(rows[0]) == 12
    assert max(abs(float(a["probability"]) - float(b["probability"]))
               for a, b in zip(*rows, strict=True)) < 1e-4


def test_baseline_with_a_cached_graph_imports_no_torch(tmp_path):
    """``baseline`` (extraction of train/ and test/, C search, report, model file) runs without
    torch or torchvision once the graph is cached: half the memory, seconds less start-up."""
    root = tmp_path / "split"
    write_tree(root / "train", per_class=6)
    write_tree(root / "test", per_class=3, seed=1)
    cache = tmp_path / "cache"
    run_cli(["extract", str(root / "train"), "-o", str(tmp_path / "warm.h5"), *ARGS], cache)
    args = ["baseline", str(root), "--report", str(tmp_path / "rep"), "--c-grid", "0.1",
            "--cv", "2", "--raw-size", "8", *ARGS]
    assert run_cli(args, cache) == "TORCH False False 0"  # codes extracted torch-free
    assert run_cli(args, cache) == "TORCH False False 0"  # codes cached
    test = FeatureStore(tmp_path / "rep" / "cache" / "test.h5")
    assert len(test) == 9 and test.provenance["versions"]["torch"]  # from package metadata
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["model"]["backbone"] == "mobilenet_v2" and (tmp_path / "rep" / "model.npz").is_file()
