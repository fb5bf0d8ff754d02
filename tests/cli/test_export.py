"""``cnncodes export`` and :meth:`FeatureStore.export`: .npz, .csv and .parquet hold exactly what
``FeatureStore.load`` returns, with paths, classes and the store's provenance; incomplete stores
are refused like every reader; parquet without pyarrow says how to install it."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from cnncodes import FeatureStore
from cnncodes.cli import main
from cnncodes.codes.export_codes import PARQUET_KEY, export_store
from cnncodes.errors import IncompleteStoreError, OptionError

from ..linear.digits import digits_data  # noqa: F401 - session fixture
from .test_incomplete_store import interrupted


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def read_npz(path):
    with np.load(path, allow_pickle=False) as z:  # no pickles in an export
        return {k: z[k] for k in z.files}


def read_csv(path, dim):
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(path, keep_default_na=False, dtype={"path": str, "class": str})
    X = df[[f"code_{i}" for i in range(dim)]].to_numpy(np.float32)
    return df, X


@pytest.mark.parametrize("layer", ["layer3", "pool"])
def test_npz_csv_parquet_equal_load(digits_data, tmp_path, layer):  # noqa: F811
    store = FeatureStore(digits_data.train_h5)
    X, y = store.load(layer)
    paths = [str(p) for p in store.paths]
    classes = store.classes

    res = store.export(tmp_path / "c.npz", layer)
    assert res["rows"] == len(y) and res["layer"] == layer
    z = read_npz(tmp_path / "c.npz")
    assert z["codes"].dtype == np.float32 and np.array_equal(z["codes"], X)
    assert np.array_equal(z["labels"], y) and list(z["paths"]) == paths
    assert list(z["classes"]) == classes
    meta = json.loads(str(z["provenance"][0]))
    assert meta["layer"] == layer and meta["dim"] == X.shape[1]
    assert meta["provenance"]["backbone"] == "resnet18"
    assert meta["provenance"]["input_size"] == 32 and "versions" in meta["provenance"]

    res = store.export(tmp_path / "c.csv", layer)
    df, Xc = read_csv(tmp_path / "c.csv", X.shape[1])
    assert np.array_equal(Xc, X)  # %.9g round-trips float32 exactly
    assert df["label"].tolist() == y.tolist() and df["path"].tolist() == paths
    assert df["class"].tolist() == [classes[i] for i in y]
    side = json.loads((tmp_path / "c.csv.json").read_text())
    assert res["files"][1].endswith("c.csv.json") and side == meta

    pq = pytest.importorskip("pyarrow.parquet")
    store.export(tmp_path / "c.parquet", layer)
    t = pq.read_table(tmp_path / "c.parquet")
    assert np.array_equal(np.stack(t["codes"].to_numpy(zero_copy_only=False)), X)
    assert t["label"].to_pylist() == y.tolist() and t["path"].to_pylist() == paths
    assert json.loads(t.schema.metadata[PARQUET_KEY])["layer"] == layer


def test_blocks_smaller_than_the_store(digits_data, tmp_path):  # noqa: F811
    """Streaming block by block (9 rows, not a divisor of the row count) loses or repeats
    no row in any format."""
    store = FeatureStore(digits_data.train_h5)
    X, y = store.load("pool")
    assert len(y) % 9
    export_store(store, tmp_path / "b.npz", layer="pool", block=9)
    z = read_npz(tmp_path / "b.npz")
    assert np.array_equal(z["codes"], X) and np.array_equal(z["labels"], y)
    export_store(store, tmp_path / "b.csv", layer="pool", block=9)
    assert np.array_equal(read_csv(tmp_path / "b.csv", X.shape[1])[1], X)
    pq = pytest.importorskip("pyarrow.parquet")
    export_store(store, tmp_path / "b.parquet", layer="pool", block=9)
    t = pq.read_table(tmp_path / "b.parquet")
    assert t.num_rows == len(y)
    assert np.array_equal(np.stack(t["codes"].to_numpy(zero_copy_only=False)), X)


def test_cli_export_and_its_refusals(digits_data, tmp_path, capsys):  # noqa: F811
    rc, out, err = run(capsys, "export", digits_data.train_h5, "-o", tmp_path / "o.npz",
                       "--layer", "layer3")
    assert rc == 0, err
    assert "layer layer3" in out and (tmp_path / "o.npz").is_file()
    rc, _, err = run(capsys, "export", digits_data.train_h5, "-o", tmp_path / "o.txt")
    assert rc == 1 and ".npz, .csv or .parquet" in err and not (tmp_path / "o.txt").exists()
    rc, _, err = run(capsys, "export", digits_data.train_h5, "-o", tmp_path / "o.npz",
                     "--layer", "fc9")
    assert rc == 1 and "fc9" in err and "layer3, pool" in err
    rc, _, err = run(capsys, "export", tmp_path / "none.h5", "-o", tmp_path / "n.npz")
    assert rc == 1 and "none.h5" in err
    # the store itself is never an output
    rc, _, err = run(capsys, "export", digits_data.train_h5, "-o", digits_data.train_h5)
    assert rc == 1


def test_parquet_without_pyarrow_says_how_to_install(digits_data, tmp_path, monkeypatch,
                                                     capsys):  # noqa: F811
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(OptionError, match="pip install pyarrow"):
        FeatureStore(digits_data.train_h5).export(tmp_path / "p.parquet")
    rc, _, err = run(capsys, "export", digits_data.train_h5, "-o", tmp_path / "p.parquet")
    assert rc == 1 and "pip install pyarrow" in err and not (tmp_path / "p.parquet").exists()


def test_incomplete_store_refused_unless_allowed(digits_data, tmp_path, monkeypatch,
                                                 capsys):  # noqa: F811
    store = tmp_path / "part.h5"
    interrupted(monkeypatch, capsys, digits_data, digits_data.train_dir, store)
    with pytest.raises(IncompleteStoreError):
        FeatureStore(store).export(tmp_path / "p.npz")
    rc, _, err = run(capsys, "export", store, "-o", tmp_path / "p.npz")
    assert rc == 1 and "--allow-incomplete" in err and not (tmp_path / "p.npz").exists()
    rc, _, err = run(capsys, "export", store, "-o", tmp_path / "p.npz", "--allow-incomplete")
    assert rc == 0, err
    assert len(read_npz(tmp_path / "p.npz")["labels"]) == len(FeatureStore(store))
