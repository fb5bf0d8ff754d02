"""CNNCodes on the torch-free path (cnncodes.codes.light via cnncodes.codes.shared): once the
configuration's graph is cached, fit/transform use the LightExtractor, give the torch path's codes
and description, share it between clones, pickle, and a whole Pipeline imports no torch."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from cnncodes import CNNCodes
from cnncodes.codes import extractor as extractor_module
from cnncodes.codes.light import is_light
from cnncodes.codes.shared import shared_extractor
from cnncodes.linear.transformer import clear_memory_cache, clear_network_cache

from ..conftest import requires_packaged_weights, write_tree

REPO = Path(__file__).resolve().parents[2]


def min_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def animal_paths(root: Path, per_class: int = 2, classes: int = 4) -> list[str]:
    """A few real pictures: Animal-MNIST silhouettes (the demo data set) as PNG files."""
    datasets = pytest.importorskip("cnncodes.datasets")
    try:
        x, y, names = datasets.load_animal_mnist()
    except Exception as e:  # noqa: BLE001 - the package is optional (make installs it)
        pytest.skip(f"needs animal-mnist: {e}")
    idx = np.concatenate([np.flatnonzero(y == k)[:per_class] for k in range(classes)])
    datasets.write_tree(x, y, names, root, idx)
    return sorted(str(p) for p in root.glob("*/*.png"))


@requires_packaged_weights
def test_light_codes_description_sharing_and_pickling_are_the_torch_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCODES_CACHE", str(tmp_path / "cache"))
    paths = animal_paths(tmp_path / "animals")
    clear_network_cache()
    clear_memory_cache()
    kw = dict(input_size=64, cache=None)  # the embedded ImageNet MobileNetV2 weights
    ref = CNNCodes("mobilenet_v2", engine="torch", **kw).fit_transform(paths)  # torch forward
    first = CNNCodes("mobilenet_v2", **kw).fit(paths)  # torch: exports, checks, writes manifest
    first_codes = first.transform(paths)
    assert not is_light(shared_extractor(*first._options()))
    clear_network_cache()

    def no_torch(*a, **k):
        raise AssertionError("the torch extractor was built")

    real = extractor_module.CodeExtractor
    monkeypatch.setattr(extractor_module, "CodeExtractor", no_torch)
    t = CNNCodes("mobilenet_v2", **kw).fit(paths)
    ext = shared_extractor(*t._options())
    assert is_light(ext)
    codes = t.transform(paths)
    assert codes.shape == ref.shape == (8, 1280) and codes.dtype == np.float32
    assert min_cos(codes, ref) >= 0.99999 and min_cos(codes, first_codes) >= 0.99999
    assert t.provenance_ == first.provenance_ and t.n_features_out_ == first.n_features_out_
    assert list(t.get_feature_names_out()) == list(first.get_feature_names_out())
    mem = [c.set_params(cache="memory")._memory_key() for c in (t, first)]
    assert mem[0] == mem[1]  # codes of either path are one memory-cache entry
    # clones share the one extractor (the LRU); a pickle carries none and computes the same
    twin = clone(t).fit(paths)
    assert shared_extractor(*twin._options()) is ext
    back = pickle.loads(pickle.dumps(t))
    assert "_extractor" not in back.__dict__ and b"onnxruntime.capi" not in pickle.dumps(t)
    clear_memory_cache()
    assert np.allclose(back.transform(paths), codes, atol=1e-6)
    # store-backed: made torch-free, then described from the light extractor without a build,
    # as describe_codes describes it (provenance less the engine)
    store = tmp_path / "codes.h5"
    made = CNNCodes("mobilenet_v2", input_size=64, cache=store).fit(paths)
    assert np.allclose(made.transform(paths), codes, atol=1e-6)
    clear_network_cache()
    again = CNNCodes("mobilenet_v2", input_size=64, cache=store).fit(paths)
    monkeypatch.setattr(extractor_module, "CodeExtractor", real)
    desc = extractor_module.describe_codes(*again._options())
    assert desc is not None and desc.pop("dims") == {"pool": 1280}
    assert again.provenance_ == desc
    assert np.array_equal(again.transform(paths), made.transform(paths))
    # CNNCODES_TORCH_FREE=0: the torch extractor, the same description and codes
    monkeypatch.setenv("CNNCODES_TORCH_FREE", "0")
    clear_memory_cache()
    off = CNNCodes("mobilenet_v2", **kw).fit(paths)
    assert not is_light(shared_extractor(*off._options()))
    assert off.provenance_ == t.provenance_
    assert min_cos(off.transform(paths), codes) >= 0.99999


#: fit + predict a Pipeline on image paths in a fresh interpreter; say what got imported
CHILD = """
import json, sys
from pathlib import Path
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from cnncodes import CNNCodes
from cnncodes.linear.transformer import clear_network_cache

root, store = Path(sys.argv[1]), sys.argv[2]
paths = sorted(str(p) for p in root.glob("*/*.png"))
y = [Path(p).parent.name for p in paths]
out = {}
for cache in ("memory", store, store):  # in memory; a store made here, then read (no build)
    clear_network_cache()
    pipe = make_pipeline(CNNCodes("mobilenet_v2", weights="random", input_size=32, batch_size=8,
                                  cache=cache), LogisticRegression(max_iter=500))
    pipe.fit(paths, y)
    out.setdefault("pred", []).append(pipe.predict(paths).tolist())
    out.setdefault("proba", []).append(pipe.predict_proba(paths).tolist())
out["torch"] = ["torch" in sys.modules, "torchvision" in sys.modules]
print(json.dumps(out))
"""


def run_pipeline(root: Path, store: Path, cache: Path) -> dict:
    e = {**os.environ, "CNNCODES_CACHE": str(cache), "PYTHONPATH": str(REPO),
         "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run([sys.executable, "-c", CHILD, str(root), str(store)], env=e,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_pipeline_fit_predict_on_paths_imports_no_torch_once_the_graph_is_cached(tmp_path):
    root = write_tree(tmp_path / "photos", per_class=4)
    cache = tmp_path / "cache"
    warm = run_pipeline(root, tmp_path / "warm.h5", cache)
    assert warm["torch"] == [True, True]  # the first run exports and checks with torch
    light = run_pipeline(root, tmp_path / "light.h5", cache)
    assert light["torch"] == [False, False]  # scikit-learn pulls no torch either
    # the warm run's first pipeline used the torch extractor (it exported the graph), every
    # later one the torch-free extractor: all predict the same (CNNCODES_TORCH_FREE=0: above)
    for got in (*warm["pred"][1:], *light["pred"]):
        assert got == warm["pred"][0]
    for got in (*warm["proba"][1:], *light["proba"]):
        assert np.allclose(got, warm["proba"][0], atol=1e-4)
    assert len(light["pred"][0]) == 12
