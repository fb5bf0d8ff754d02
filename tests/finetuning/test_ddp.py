"""DDP fine-tuning under torchrun (2 CPU processes, gloo): run folder written by rank 0, metrics
reduced over ranks equal to a single-process evaluation, exact resume of a killed job, and the
same run continued without torchrun. Random-init mobilenet_v2 (it has dropout, so the per-rank
RNG states matter) at 32 px on tiny generated images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnncodes.finetuning.config import make_config
from cnncodes.finetuning.data import EpochSampler
from cnncodes.finetuning.ddp import convert_sync_bn
from cnncodes.finetuning.model_file import read_model_file
from cnncodes.finetuning.net import build_finetune_model
from cnncodes.finetuning.predict import predict_images
from cnncodes.finetuning.run import finetune

from ..conftest import kill_job_tree, wait_for_file, write_tree

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 3
ARGS = ["--backbone", "mobilenet_v2", "--weights", "random", "--input-size", "32",
        "--batch-size", "4", "--workers", "0", "--threads", "1", "--val-fraction", "0.3",
        "--test-fraction", "0.2", "--lr", "0.01", "--epochs", str(EPOCHS), "--no-progress"]


def _torchrun(photos: Path, out: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "cnncodes", "finetune", str(photos), "-o", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return cmd, env


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 12 images and one unreadable file (37 files)."""
    root = write_tree(tmp_path_factory.mktemp("ddp") / "photos", per_class=12, seed=5)
    (root / "bee" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return root


@pytest.fixture(scope="module")
def ddp_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "run"
    cmd, env = _torchrun(photos, out, *ARGS)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # rank 0 alone reports: one summary on stdout, one log line per epoch
    assert r.stdout.count("full fine-tuning of mobilenet_v2") == 1, r.stdout
    assert r.stderr.count(f"epoch 1/{EPOCHS}") == 1, r.stderr[-3000:]
    assert "rank 1/2 joined" not in r.stderr
    return out


# ------------------------------------------------------------------------------ units


def test_epoch_sampler_gives_each_rank_its_slice_of_the_epoch_order():
    n, world = 10, 3
    plain = EpochSampler(n, seed=7)
    shards = [EpochSampler(n, seed=7, rank=r, world=world) for r in range(world)]
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        for s in shards:
            s.set_epoch(epoch)
        order = [k for _, k in plain]
        parts = [list(s) for s in shards]
        assert all(e == epoch for part in parts for e, _ in part)
        assert [len(p) for p in parts] == [len(s) for s in shards] == [4, 4, 4]
        # rank r takes positions r, r + world, ... of the order padded with its first items
        padded = order + order[:shards[0].padding]
        assert [[k for _, k in p] for p in parts] == [padded[r::world] for r in range(world)]
        assert sorted(k for p in parts for _, k in p) == sorted(order + order[:2])
    plain.set_epoch(0)
    e0 = [k for _, k in plain]
    assert e0 != order  # set_epoch reshuffles
    assert EpochSampler(n, seed=7, rank=0, world=1).padding == 0
    assert [k for _, k in EpochSampler(n, seed=7, rank=0, world=1)] == e0


def test_sync_bn_conversion_keeps_frozen_stages_frozen_and_the_state_dict_layout():
    cfg = make_config(backbone="resnet18", weights="random", freeze=2, sync_bn=True)
    net, _, _ = build_finetune_model(cfg, ["a", "b"])
    net.freeze(cfg.freeze)
    keys = list(net.state_dict())
    grads = {n: p.requires_grad for n, p in net.named_parameters()}
    net = convert_sync_bn(net)
    net.train()
    bns = {n: m for n, m in net.backbone.named_modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert bns and all(isinstance(m, torch.nn.SyncBatchNorm) for m in bns.values())
    assert list(net.state_dict()) == keys  # model.pt / checkpoints keep the plain BN layout
    assert {n: p.requires_grad for n, p in net.named_parameters()} == grads
    frozen = {lv for s in net.stages[:2] for lv in s.leaves}
    for name, m in bns.items():
        assert m.training is (name not in frozen), name
    assert not net.backbone.bn1.training and net.backbone.layer4[0].bn1.training


# ------------------------------------------------------------------------------ torchrun


@pytest.mark.slow
def test_ddp_run_folder_and_metrics_equal_a_single_process_evaluation(ddp_run):
    rep = json.loads((ddp_run / "report.json").read_text())
    assert rep["status"] == "completed" and rep["epochs_run"] == EPOCHS
    assert rep["world_size"] == 2 and rep["distributed"]["backend"] == "gloo"
    assert rep["distributed"]["global_batch_size"] == 8
    # per-step curves, averaged over the ranks: one value per step of each epoch
    assert all(0 < len(h["step_loss"]) == len(h["step_acc"]) == min(h["steps"], 50)
               for h in rep["history"])
    assert json.loads((ddp_run / "config.json").read_text())["world_size"] == 2
    # the bad image was gathered from whichever rank met it and is listed once
    assert [Path(p).name for p, _ in rep["failures"]] == ["bad.png"]
    ck = torch.load(ddp_run / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == EPOCHS and ck["world_size"] == 2
    assert len(ck["rng"]["per_rank"]) == 2  # both ranks' dropout streams
    assert not torch.equal(ck["rng"]["per_rank"][0]["torch"], ck["rng"]["per_rank"][1]["torch"])
    assert not any(k.startswith("module.") for k in ck["model"])
    assert not list(ddp_run.glob(".*tmp*"))  # atomic writes by one rank: no leftovers
    sd, meta = read_model_file(ddp_run / "model.pt")
    assert meta["world_size"] == 2 and meta["epoch"] == rep["best_epoch"]

    # one process, the saved model, the same split: the same validation and test figures
    split = json.loads((ddp_run / "split.json").read_text())
    classes = split["classes"]
    for part, acc in (("val", rep["val_accuracy"]), ("test", rep["test_accuracy"])):
        rows = [(p, c) for p, c in split[part] if p != "bee/bad.png"]
        pred = predict_images(ddp_run / "model.pt", [str(Path(split["root"]) / p) for p, _ in rows],
                              device="cpu", num_workers=0, batch_size=4)
        truth = np.array([classes.index(c) for _, c in rows])
        assert acc == float(np.mean(pred.predicted == truth)), part
        loss = float(-np.log(pred.probabilities[np.arange(len(rows)), truth]).mean())
        if part == "val":
            best = next(h for h in rep["history"] if h["epoch"] == rep["best_epoch"])
            assert best["val_loss"] == pytest.approx(loss, rel=1e-4)
        else:
            assert rep["test_loss"] == pytest.approx(loss, rel=1e-4)
            confusion = np.zeros((3, 3), int)
            np.add.at(confusion, (truth, pred.predicted), 1)
            assert rep["confusion_matrix"] == confusion.tolist()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds the ranks in /proc")
def test_killed_torchrun_job_resumes_exactly(photos, ddp_run, tmp_path):
    out = tmp_path / "killed"
    cmd, env = _torchrun(photos, out, *ARGS)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    ckpt = out / "checkpoint.pt"
    wait_for_file(proc, ckpt, timeout=240, what="torchrun job")
    kill_job_tree(proc)
    proc.stderr.close()
    at_kill = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= at_kill < EPOCHS
    # --resume alone, under torchrun: every rank loads the checkpoint and its own RNG state
    cmd, env = _torchrun(photos, out, "--resume", "--no-progress")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed at epoch {at_kill}" in r.stdout
    a = torch.load(ddp_run / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert b["epoch"] == a["epoch"] == EPOCHS
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for i in a["rng"]["per_rank"], b["rng"]["per_rank"]:
        assert len(i) == 2
    for ra, rb in zip(a["rng"]["per_rank"], b["rng"]["per_rank"], strict=True):
        assert torch.equal(ra["torch"], rb["torch"])
    ja = json.loads((ddp_run / "report.json").read_text())
    jb = json.loads((out / "report.json").read_text())
    assert jb["resumed_from"] == at_kill and jb["epochs_run"] == EPOCHS
    assert [h["train_loss"] for h in ja["history"]] == [h["train_loss"] for h in jb["history"]]
    assert [h["val_acc"] for h in ja["history"]] == [h["val_acc"] for h in jb["history"]]
    assert ja["test_accuracy"] == jb["test_accuracy"]


@pytest.mark.slow
def test_ddp_run_continues_in_one_process(ddp_run, tmp_path):
    """The same run folder without torchrun: one more epoch on one process (schedule stretched,
    batches per process change, so not exact, but it trains and says so)."""
    out = tmp_path / "single"
    shutil.copytree(ddp_run, out)
    res = finetune(None, out, resume=True, epochs=EPOCHS + 1)
    assert res.status == "completed" and res.epochs_run == EPOCHS + 1
    assert res.report["world_size"] == 1 and res.resumed_from == EPOCHS
    assert [h["world_size"] for h in res.history] == [2] * EPOCHS + [1]
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == EPOCHS + 1 and ck["world_size"] == 1
