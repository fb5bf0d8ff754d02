"""``--precision int8`` (cnncodes.codes.quantise): its own cached graph and store compatibility,
the provenance it records, the fidelity refusal, and a rerun that continues with the same graph.

The random-init network's int8 codes are far from its fp32 codes (no trained ranges), so the tests
that are not about the bound lower it; the refusal test keeps it and forces a failing fidelity.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cnncodes.codes import quantise
from cnncodes.codes.extraction import extract
from cnncodes.codes.reader import FeatureStore
from cnncodes.errors import FidelityError, OptionError, StoreMismatchError

from ..conftest import make_image, requires_packaged_weights, write_tree

OPTS = dict(backbone="mobilenet_v2", weights="random", layers="pool", input_size=32,
            num_workers=0, batch_size=4, device="cpu")


@pytest.fixture
def any_fidelity(monkeypatch):
    monkeypatch.setattr(quantise, "MIN_MEAN_COSINE", -1.0)
    monkeypatch.setattr(quantise, "MIN_MIN_COSINE", -1.0)
    monkeypatch.setattr(quantise, "CALIBRATION_IMAGES", 4)
    monkeypatch.setattr(quantise, "CHECK_IMAGES", 2)


def add_files(root: Path, prefix: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("a", "b")):
        for i in range(n):
            make_image(rng, c).save(root / name / f"{prefix}{i}.png")


def int8_graphs(cache_root: Path) -> list[str]:
    onnx = Path(os.environ["CNNCODES_CACHE"]) / "onnx"
    return sorted(p.name for p in onnx.glob("*-int8-*.onnx"))


def test_int8_store_has_its_own_graph_provenance_and_never_mixes_with_fp32(tmp_path,
                                                                           any_fidelity):
    src = write_tree(tmp_path / "img", classes=("a", "b"), per_class=4)
    extract(src, tmp_path / "f.h5", **OPTS)
    before = int8_graphs(tmp_path)
    res = extract(src, tmp_path / "q.h5", precision="int8", **OPTS)
    assert res.new == 8
    prov = FeatureStore(tmp_path / "q.h5").provenance
    assert prov["precision"] == prov["numerics"] == "int8"
    assert prov["engine"]["name"] == "onnxruntime"
    q = prov["quantisation"]
    assert q["format"] == "QDQ" and q["calibration_images"] == 4 and q["check_images"] == 2
    assert q["check_held_out"] is True and set(q["fidelity"]) == {"pool"}
    assert q["graph"].startswith("mobilenet_v2-int8-")
    assert int8_graphs(tmp_path) == sorted({*before, q["graph"]})  # cached under its own key
    fp = FeatureStore(tmp_path / "f.h5").provenance
    assert fp["precision"] == fp["numerics"] == "fp32" and "quantisation" not in fp
    a, _ = FeatureStore(tmp_path / "f.h5").load("pool")
    b, _ = FeatureStore(tmp_path / "q.h5").load("pool")
    assert np.abs(a - b).max() > 1e-3 * np.abs(a).max()  # the int8 graph ran, not fp32's
    runs = FeatureStore(tmp_path / "q.h5").provenance["runs"]
    assert runs[-1]["precision"] == "int8" and runs[-1]["int8_graph"] == q["graph"]
    with pytest.raises(StoreMismatchError, match="numerics: file has int8, requested fp32"):
        extract(src, tmp_path / "q.h5", **OPTS)
    with pytest.raises(StoreMismatchError, match="numerics: file has fp32, requested int8"):
        extract(src, tmp_path / "f.h5", precision="int8", **OPTS)


def test_rerun_continues_with_the_stores_int8_graph(tmp_path, any_fidelity):
    src = write_tree(tmp_path / "img", classes=("a", "b"), per_class=3)
    extract(src, tmp_path / "q.h5", precision="int8", **OPTS)
    first = FeatureStore(tmp_path / "q.h5")
    q1, (x1, _), p1 = first.provenance["quantisation"], first.load("pool"), list(first.paths)
    # new files that sort first: a fresh calibration would take other images
    add_files(tmp_path / "img", "0new", 2, seed=7)
    res = extract(src, tmp_path / "q.h5", precision="int8", **OPTS)
    assert res.new == 4 and res.skipped == 6
    st = FeatureStore(tmp_path / "q.h5")
    q2 = st.provenance["quantisation"]
    assert q2["graph"] == q1["graph"]
    assert q2["calibration_sha256"] == q1["calibration_sha256"]
    x2, _ = st.load("pool")
    old = {p: r for p, r in zip(p1, x1, strict=True)}
    for p, r in zip(st.paths, x2, strict=True):
        if p in old:
            np.testing.assert_array_equal(r, old[p])
    # the graph pruned from the cache: the store cannot be continued with the same graph
    (Path(os.environ["CNNCODES_CACHE"]) / "onnx" / q1["graph"]).unlink()
    add_files(tmp_path / "img", "z", 1, seed=9)
    with pytest.raises(OptionError, match="no longer in the export cache"):
        extract(src, tmp_path / "q.h5", precision="int8", **OPTS)


def test_int8_is_refused_below_the_bound_naming_the_layer(tmp_path, monkeypatch):
    monkeypatch.setattr(quantise, "CALIBRATION_IMAGES", 4)
    monkeypatch.setattr(quantise, "CHECK_IMAGES", 2)
    monkeypatch.setattr(quantise, "fidelity", lambda ref, got: {
        "pool": {"mean_cosine": 0.9123, "min_cosine": 0.85}})
    src = write_tree(tmp_path / "img", classes=("a", "b"), per_class=3)
    with pytest.raises(FidelityError) as e:
        extract(src, tmp_path / "q.h5", precision="int8", **OPTS)
    msg = str(e.value)
    assert "layer pool" in msg and "0.9123" in msg and str(quantise.MIN_MEAN_COSINE) in msg
    assert "--precision fp32" in msg
    assert not (tmp_path / "q.h5").exists()


def test_int8_bound_passes_and_fails_on_measured_cosines():
    ok = {"pool": {"mean_cosine": 0.978, "min_cosine": 0.96}}
    quantise.check_fidelity(ok, "m", Path("g.onnx"))
    for bad in ({"mean_cosine": 0.95, "min_cosine": 0.96}, {"mean_cosine": 0.99,
                                                             "min_cosine": 0.5}):
        with pytest.raises(FidelityError, match="layer stage4"):
            quantise.check_fidelity({**ok, "stage4": bad}, "m", Path("g.onnx"))


def test_int8_is_refused_where_nothing_calibrates(tmp_path):
    from cnncodes.codes.extractor import CodeExtractor

    ext = CodeExtractor(OPTS["backbone"], weights="random", layers="pool", input_size=32,
                        precision="int8", device="cpu")
    import torch

    with pytest.raises(OptionError, match="made by extract"):
        ext(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(OptionError, match="--engine torch"):
        CodeExtractor(OPTS["backbone"], weights="random", layers="pool", input_size=32,
                      precision="int8", device="cpu", engine="torch")


@pytest.mark.slow  # two fresh interpreters, the first exporting with the real weights
@requires_packaged_weights
def test_int8_runs_on_the_torch_free_path(tmp_path):
    """The embedded ImageNet weights (real ranges: the bound holds) in a fresh interpreter: the
    second int8 run neither imports torch nor quantises again, and gives the first run's codes."""
    from .test_light import run_cli

    src = write_tree(tmp_path / "img", classes=("a", "b", "c"), per_class=12, size=(80, 96))
    cache = tmp_path / "cache"
    args = ["--layers", "pool", "--input-size", "64", "--batch-size", "8", "--no-progress",
            "--precision", "int8"]
    assert run_cli(["extract", str(src), "-o", str(tmp_path / "a.h5"), *args],
                   cache) == "TORCH True True 0"
    assert run_cli(["extract", str(src), "-o", str(tmp_path / "b.h5"), *args],
                   cache) == "TORCH False False 0"
    a, b = FeatureStore(tmp_path / "a.h5"), FeatureStore(tmp_path / "b.h5")
    assert a.provenance["quantisation"]["graph"] == b.provenance["quantisation"]["graph"]
    assert b.provenance["numerics"] == "int8"
    np.testing.assert_allclose(a.load("pool")[0], b.load("pool")[0], rtol=1e-5, atol=1e-6)


def test_cli_prints_the_refusal_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from cnncodes import cli

    monkeypatch.setattr(quantise, "CALIBRATION_IMAGES", 4)
    monkeypatch.setattr(quantise, "CHECK_IMAGES", 2)
    monkeypatch.setattr(quantise, "fidelity", lambda ref, got: {
        "pool": {"mean_cosine": 0.5, "min_cosine": 0.25}})
    src = write_tree(tmp_path / "img", classes=("a", "b"), per_class=3)
    rc = cli.main(["extract", str(src), "-o", str(tmp_path / "q.h5"), "--weights", "random",
                   "--layers", "pool", "--input-size", "32", "--workers", "0", "--no-progress",
                   "--precision", "int8"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "int8 refused" in err and "layer pool: mean cosine 0.5000 (bound 0.97)" in err
    assert not (tmp_path / "q.h5").exists()
