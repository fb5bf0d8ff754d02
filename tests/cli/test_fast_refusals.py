"""A wrong command line is refused before the heavy imports: a missing store, model or image
source, a bad export extension or cache option, an extract option that conflicts with the store,
all exit 1 with their message while torch (and scikit-learn) were never imported. Checked in a
fresh interpreter (``sys.modules``), never by timing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..linear.digits import digits_data  # noqa: F401 - session fixture

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from cnncodes.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    rc = main(argv)
    out.append({"argv": argv, "rc": rc, "torch": "torch" in sys.modules,
                "sklearn": "sklearn" in sys.modules})
print("RESULT" + json.dumps(out))
"""


def test_refusals_import_neither_torch_nor_sklearn(digits_data, tmp_path):  # noqa: F811
    store = tmp_path / "codes.h5"
    shutil.copy(digits_data.train_h5, store)
    (tmp_path / "photos").mkdir()
    cases = {
        "No code store at": [["export", "nope.h5", "-o", "x.npz"], ["info", "nope.h5"],
                             ["compact", "nope.h5"], ["train", "nope.h5"],
                             ["train", str(store), "--test", "nope.h5"],
                             ["evaluate", str(store), "nope.h5"]],
        "No model file at": [["predict", "nope.npz", "photos"], ["evaluate", "nope.npz",
                                                                 str(store)]],
        "does not exist": [["extract", "nope", "-o", "c.h5"], ["advise", "nope"],
                           ["finetune", "nope", "-o", "run"], ["baseline", "nope"],
                           ["predict", str(store), "nope"]],
        ".npz, .csv or .parquet": [["export", str(store), "-o", "x.txt"]],
        "--older-than must be": [["cache", "--prune", "--older-than", "soon"]],
        "(the store has --backbone resnet18)": [
            ["extract", str(digits_data.train_dir), "-o", str(store), "--backbone",
             "mobilenet_v2"]],
        "--force-finetune goes with --fall-through": [["baseline", "photos",
                                                       "--force-finetune"]],
    }
    argvs = [a for group in cases.values() for a in group]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]), "CNNCODES_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    results = json.loads(line[len("RESULT"):])
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == len(argvs), proc.stderr
    k = 0
    for says, group in cases.items():
        for argv in group:
            r, err = results[k], errors[k]
            k += 1
            assert r["rc"] == 1 and says in err, (argv, err)
            assert not r["torch"] and not r["sklearn"], (argv, "imported torch/sklearn")


def _probe(argvs: list[list[str]], tmp_path: Path) -> tuple[list[dict], list[str], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]), "CNNCODES_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    errors = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    return json.loads(line[len("RESULT"):]), errors, proc.stdout


def test_unknown_backbone_is_refused_without_torch(tmp_path):
    """`models NAME`, and every command taking --backbone(s), refuse a name that names nothing
    from the registry's data (catalog), before torch or torchvision is imported."""
    (tmp_path / "photos").mkdir()
    argvs = [["models", "resnet5"], ["models", "nope"],
             ["extract", "photos", "-o", "c.h5", "--backbone", "resnet5"],
             ["advise", "photos", "--backbone", "nope"],
             ["advise", "photos", "--backbones", "resnet18,nope"],
             ["baseline", "photos", "--backbone", "nope"],
             ["finetune", "photos", "-o", "run", "--backbone", "nope"]]
    results, errors, _ = _probe(argvs, tmp_path)
    assert len(errors) == len(argvs)
    for r, err in zip(results, errors, strict=True):
        assert r["rc"] == 1 and "backbone must be a registered name" in err, (r["argv"], err)
        assert not r["torch"] and not r["sklearn"], (r["argv"], "imported torch/sklearn")
    assert "Did you mean resnet50?" in errors[0]


def test_models_listing_and_a_registry_entry_need_no_torch(tmp_path):
    """The registry table and one entry's layers are data: printed without importing torch."""
    results, errors, out = _probe([["models"], ["models", "resnet50"],
                                   ["models", "mobilenet_v2", "--json"]], tmp_path)
    assert not errors
    assert [r["rc"] for r in results] == [0, 0, 0]
    assert not any(r["torch"] for r in results)
    assert "ResNet50_Weights.IMAGENET1K_V2" in out and "convnext_tiny" in out
    assert '"default_layer": "pool"' in out


def test_finetune_without_backbone_gets_past_the_fast_checks(tmp_path, capsys):
    """finetune's parser leaves unset options out of its namespace: the fast backbone check must
    not need ``--backbone`` (it failed with an internal error, exit 70, when none was given)."""
    from cnncodes.cli import main

    (tmp_path / "empty").mkdir()
    rc = main(["finetune", str(tmp_path / "empty"), "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1 and "internal error" not in err and "error:" in err
