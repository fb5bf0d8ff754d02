"""Fine-tuning: head replacement, freezing, learning rates, the split, learning on a separable set,
early stopping, exact resume after kill -9, NaN guard, predict with a fine-tuned model.
Random-init models on tiny generated
images (no network)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnncodes import CodeExtractor, cli, get_spec
from cnncodes.backbones import build_model
from cnncodes.errors import FinetuneDivergedError
from cnncodes.finetuning.config import FinetuneConfig, make_config
from cnncodes.finetuning.model_file import is_finetuned_model, read_model_file
from cnncodes.finetuning.net import FinetuneNet, build_finetune_model, load_finetuned
from cnncodes.finetuning.optim import build_optimizer, lr_factor, param_groups
from cnncodes.finetuning.plots import curve_kind
from cnncodes.finetuning.predict import predict_images
from cnncodes.finetuning.run import finetune
from cnncodes.finetuning.split import make_split
from cnncodes.sources.loader import normalize_batch

from ..conftest import wait_for_file, write_tree

REPO = Path(__file__).resolve().parents[2]
#: A tiny, fast, deterministic run: random-init resnet18 at 32 px, one thread, no workers.
TINY = dict(backbone="resnet18", weights="random", input_size=32, batch_size=8, num_workers=0,
            threads=1, val_fraction=0.2, test_fraction=0.2)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 10 images of 40x48 px (18 train / 6 val / 6 test with TINY's fractions)."""
    return write_tree(tmp_path_factory.mktemp("ft") / "photos", per_class=10)


@pytest.fixture(scope="module")
def trained_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ft") / "run"
    finetune(photos, run, epochs=2, **TINY)
    return run


# ------------------------------------------------------------------------------ head and stages

# one registry entry per family, with where its final classifier is
FAMILIES = [("resnet18", "fc"), ("alexnet", "classifier.6"), ("vgg11", "classifier.6"),
            ("mobilenet_v2", "classifier.1"), ("mobilenet_v3_small", "classifier.3"),
            ("efficientnet_b0", "classifier.1"), ("densenet121", "classifier"),
            ("convnext_tiny", "classifier.2")]


@pytest.mark.parametrize("name,head_path", FAMILIES)
def test_head_replaced_by_new_xavier_layer_and_stages_cover_backbone(name, head_path):
    torch.manual_seed(0)
    classes = ["a", "b", "c", "d", "e"]
    net, resolved, pp = build_finetune_model(FinetuneConfig(backbone=name, weights="random",
                                                            input_size=64), classes)
    assert net.head_path == head_path
    # the old classifier is gone, a new layer named "head" sized to the classes replaces it
    assert isinstance(net.backbone.get_submodule(head_path), nn.Identity)
    assert isinstance(net.head, nn.Linear) and net.head.out_features == len(classes)
    assert not any(k.startswith("head") for k in net.backbone.state_dict())
    w, b = net.head.weight.detach(), net.head.bias.detach()
    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))  # xavier-uniform bound
    assert torch.all(b == 0)
    assert w.abs().max() <= bound and w.abs().max() > 0.5 * bound
    assert abs(float(w.std()) - bound / math.sqrt(3)) < 0.25 * bound / math.sqrt(3)
    net.eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 3, 64, 64)).shape == (2, len(classes))
    # stages partition the backbone's parameters, in order, and there are at least 2
    all_params = [n for n, _ in net.backbone.named_parameters()]
    assert [p for s in net.stages for p in s.params] == all_params
    assert len(net.stages) >= 2 and [s.index for s in net.stages] == list(
        range(1, len(net.stages) + 1))


def test_pretrained_layers_keep_their_weights_and_fine_tuned_file_loads_head(tmp_path):
    torch.manual_seed(1)
    stock = build_model(get_spec("resnet18"))
    ckpt = tmp_path / "resnet18-mine.pth"
    torch.save(stock.state_dict(), ckpt)
    torch.manual_seed(2)  # a different RNG state: loaded weights must not depend on it
    net, resolved, _ = build_finetune_model(FinetuneConfig(backbone="resnet18",
                                                           weights=str(ckpt)), ["x", "y"])
    assert resolved.id.startswith("file:")
    sd = stock.state_dict()
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # the new head is not the old fc (which had 1000 outputs)
    assert net.head.weight.shape == (2, 512)


def test_stages_of_resnet_follow_registry_cut_points():
    net, _, _ = build_finetune_model(FinetuneConfig(backbone="resnet18", weights="random"),
                                     ["a", "b"])
    owners = [{p.split(".")[0] for p in s.params} for s in net.stages]
    assert owners == [{"conv1", "bn1", "layer1"}, {"layer2"}, {"layer3"}, {"layer4"}]
    with pytest.raises(ValueError, match=r"freeze=5 but resnet18 has 4 stages .*choose 0\.\.4"):
        net.freeze(5)


# ------------------------------------------------------------------------------ freezing and lrs


def _one_step(net: FinetuneNet, cfg: FinetuneConfig) -> None:
    opt = build_optimizer(net, cfg)
    net.train()
    torch.manual_seed(0)
    x = torch.randn(6, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("state", ["full", "head-only"])
def test_frozen_parameters_and_bn_statistics_do_not_change(state):
    torch.manual_seed(0)
    cfg = FinetuneConfig(backbone="resnet18", weights="random", freeze=2, state=state)
    net, _, _ = build_finetune_model(cfg, ["a", "b", "c"])
    net.freeze(cfg.freeze, backbone=state == "head-only")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    _one_step(net, cfg)
    after = net.state_dict()
    frozen_stages = {1, 2} if state == "full" else {1, 2, 3, 4}
    stage_of = {}
    for s in net.stages:
        for p in s.params:
            stage_of[p.rpartition(".")[0]] = s.index
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for k in before:
        if k.startswith("head."):
            assert k in changed, k
            continue
        name = k.removeprefix("backbone.")
        module = name.rpartition(".")[0]
        if k.endswith("num_batches_tracked"):
            continue
        if stage_of[module] in frozen_stages:
            # weights, biases and BatchNorm running statistics of frozen stages stay put
            assert k not in changed, k
            assert not dict(net.named_parameters()).get(k, torch.empty(0)).requires_grad
        elif k.endswith(("weight", "running_mean", "running_var")):
            assert k in changed, k
    # BN of frozen stages is in eval mode even after net.train()
    assert not net.backbone.layer1[0].bn1.training and not net.backbone.bn1.training
    assert net.backbone.layer3[0].bn1.training is (state == "full")


def test_param_groups_have_the_configured_learning_rates():
    cfg = make_config(backbone="resnet18", weights="random", lr=0.02, head_lr_mult=25,
                      layer_decay=0.5, freeze=1)
    net, _, _ = build_finetune_model(cfg, ["a", "b"])
    net.freeze(cfg.freeze)
    groups = param_groups(net, cfg)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == pytest.approx({"stage2": 0.02 * 0.25, "stage3": 0.02 * 0.5, "stage4": 0.02,
                                 "head": 0.5})
    in_groups = {id(p) for g in groups for p in g["params"]}
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert in_groups == trainable  # frozen stage 1 has no group, everything else has one
    opt = build_optimizer(net, cfg)
    assert isinstance(opt, torch.optim.SGD)
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-3] * 4
    assert opt.param_groups[0]["momentum"] == 0.9
    cfg2 = make_config(cfg, optimizer="adamw", layer_decay=None, freeze=0)
    net2, _, _ = build_finetune_model(cfg2, ["a", "b"])
    opt2 = build_optimizer(net2, cfg2)
    assert isinstance(opt2, torch.optim.AdamW)
    assert {g["name"]: g["lr"] for g in opt2.param_groups} == pytest.approx(
        {"stage1": 0.02, "stage2": 0.02, "stage3": 0.02, "stage4": 0.02, "head": 0.5})


def test_schedule_warmup_cosine_and_step():
    f = lr_factor(FinetuneConfig(epochs=4, warmup_epochs=1, schedule="cosine"), 10)
    warm = [f(t) for t in range(10)]
    assert warm == sorted(warm) and warm[0] < 0.2 and warm[-1] < 1
    assert f(10) == pytest.approx(1.0) and f(39) < 0.01
    assert all(f(t) >= f(t + 1) for t in range(10, 39))
    g = lr_factor(FinetuneConfig(epochs=6, warmup_epochs=0, schedule="step", step_size=2,
                                 gamma=0.1), 5)
    assert [g(t) for t in (0, 9, 10, 19, 20)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


def test_config_errors_name_the_value_and_the_fix(photos, tmp_path):
    with pytest.raises(ValueError, match=r"'epoch' \(did you mean 'epochs'\?\)"):
        make_config(epoch=3)
    with pytest.raises(ValueError, match="state must be one of predict, head-only, full; "
                                         "got 'partial'"):
        make_config(state="partial")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 2"):
        make_config(batch_size=1)
    with pytest.raises(ValueError, match="state 'predict' .* --weights RUN/model.pt"):
        finetune(photos, tmp_path / "p", state="predict", **TINY)


def test_split_is_seeded_stratified_and_disjoint(photos):
    a = make_split(photos, val_fraction=0.2, test_fraction=0.3, seed=3)
    b = make_split(photos, val_fraction=0.2, test_fraction=0.3, seed=3)
    c = make_split(photos, val_fraction=0.2, test_fraction=0.3, seed=4)
    assert a.to_dict() == b.to_dict() and a.to_dict() != c.to_dict()
    assert a.sizes() == {"train": 15, "val": 6, "test": 9}
    for part in ("train", "val", "test"):
        counts = {cls: sum(1 for _, c_ in getattr(a, part) if c_ == cls) for cls in a.classes}
        assert len(set(counts.values())) == 1, (part, counts)
    paths = [p for part in ("train", "val", "test") for p, _ in getattr(a, part)]
    assert len(paths) == len(set(paths)) == 30
    with pytest.raises(ValueError, match="labelled images of at least two classes"):
        make_split(photos / "ant")


def _old_split_rule(labels: np.ndarray, n_classes: int, val: float, test: float,
                    seed: int) -> dict[str, list[int]]:
    """The per-class shuffle make_split had before it used sources.splits.stratified_parts."""
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in range(n_classes):
        idx = np.flatnonzero(labels == c)
        idx = idx[np.random.default_rng([seed, c]).permutation(len(idx))]
        n = len(idx)

        def share(f: float, n: int = n) -> int:
            k = int(round(f * n))
            return 1 if f > 0 and k == 0 and n >= 3 else k

        n_test, n_val = share(test), share(val)
        parts["test"] += idx[:n_test].tolist()
        parts["val"] += idx[n_test:n_test + n_val].tolist()
        parts["train"] += idx[n_test + n_val:].tolist()
    return {k: sorted(v) for k, v in parts.items()}


@pytest.mark.parametrize("seed,val,test", [(0, 0.15, 0.2), (3, 0.2, 0.3), (7, 0.1, 0.0)])
def test_split_keeps_the_rows_of_runs_made_before_the_shared_splitter(tmp_path, seed, val, test):
    from cnncodes import open_source
    from cnncodes.finetuning.split import Split

    photos = write_tree(tmp_path / "uneven", per_class=9, seed=1)
    for k in range(4):  # uneven classes: 9, 9, 5
        (photos / "cow" / f"img{k:03d}.png").unlink()
    src = open_source(photos)
    old = _old_split_rule(src.labels, len(src.classes), val, test, seed)
    split = make_split(photos, val_fraction=val, test_fraction=test, seed=seed)
    for part in ("train", "val", "test"):
        assert [p for p, _ in getattr(split, part)] == [src.paths[i] for i in old[part]], part
    # a split.json written by an earlier run reads back as the same split
    saved = json.loads(json.dumps(split.to_dict()))
    assert Split.from_dict(saved) == split


# ------------------------------------------------------------------------------ training runs


def test_run_writes_report_curves_and_leaves_global_state(trained_run, photos, tmp_path):
    rep = json.loads((trained_run / "report.json").read_text())
    assert rep["status"] == "completed" and rep["epochs_run"] == 2
    assert rep["split"]["train"] == 18 and rep["split"]["test"] == 6
    cm = np.array(rep["confusion_matrix"])
    assert rep["test_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert len(rep["history"]) == 2
    assert {g["name"] for g in rep["param_groups"]} == {"stage1", "stage2", "stage3", "stage4",
                                                         "head"}
    assert sum(map(sum, rep["confusion_matrix"])) == 6
    with Image.open(trained_run / "curves.png") as im:
        assert im.size[0] > 300
    ck = torch.load(trained_run / "checkpoint.pt", weights_only=True)  # plain types only
    assert ck["epoch"] == 2 and set(ck) >= {"model", "optimizer", "scheduler", "scaler", "rng"}
    # a library call leaves the caller's RNG, thread count and determinism flag as found
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    threads = torch.get_num_threads()
    finetune(photos, tmp_path / "r2", epochs=1, deterministic=True, **{**TINY, "threads": 1})
    assert torch.equal(torch.get_rng_state(), rng_before)
    # one epoch: the curves are drawn per optimiser step (18 images, batches of 8)
    (one,) = json.loads((tmp_path / "r2" / "report.json").read_text())["history"]
    assert one["steps"] >= 2 and len(one["step_loss"]) == len(one["step_acc"]) == one["steps"]
    assert curve_kind([one]) == "steps" and (tmp_path / "r2" / "curves.png").is_file()
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(ValueError, match="already holds a fine-tuning run.*--resume"):
        finetune(photos, tmp_path / "r2", epochs=1, **TINY)
    with pytest.raises(ValueError, match="Cannot resume with different training options "
                                         r"\(lr: run has None, asked 0.5\)"):
        finetune(photos, tmp_path / "r2", resume=True, lr=0.5)


def _cli_args(photos: Path, out: Path, epochs: int) -> list[str]:
    return ["finetune", str(photos), "-o", str(out), "--backbone", "resnet18", "--weights",
            "random", "--input-size", "32", "--epochs", str(epochs), "--batch-size", "8",
            "--workers", "0", "--threads", "1", "--val-fraction", "0.2", "--test-fraction",
            "0.2", "--lr", "0.005", "--no-progress"]


@pytest.fixture(scope="module")
def separable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 20 images of 32x32 px whose colour and stripes depend on the class."""
    return write_tree(tmp_path_factory.mktemp("ft") / "separable", per_class=20, size=(32, 32))


#: learns the separable set in one epoch (AdamW adapts its steps; SGD needs many more epochs)
LEARN = {**TINY, "optimizer": "adamw", "lr": 1e-3, "warmup_epochs": 0}


def test_fine_tuning_learns_and_full_beats_an_untrained_head(separable, tmp_path):
    from cnncodes.backbones.weights import weights_sha256
    from cnncodes.finetuning.model_file import save_model_file

    res = finetune(separable, tmp_path / "full", epochs=1, **LEARN)
    assert res.status == "completed" and res.report["split"]["test"] == 12
    assert res.test_accuracy >= 0.9 and res.val_accuracy >= 0.9  # chance is 1/3
    # state predict on the same test images with the untrained (new, random) head: chance level
    torch.manual_seed(0)
    cfg = make_config(**{k: v for k, v in LEARN.items() if k != "lr"})
    net, resolved, pp = build_finetune_model(cfg, res.classes)
    untrained = tmp_path / "untrained.pt"
    save_model_file(net, untrained, config=cfg.to_dict(), family="resnet",
                    base_weights=resolved.id, base_weights_sha256=weights_sha256(resolved) or "",
                    preprocessing=pp.to_dict(), epoch=0, val_accuracy=None, command="test")
    split = json.loads((res.output / "split.json").read_text())
    test_list = tmp_path / "test.csv"
    test_list.write_text("".join(f"{Path(split['root']) / p},{c}\n" for p, c in split["test"]))
    ev = finetune(test_list, tmp_path / "predict", state="predict", weights=str(untrained),
                  num_workers=0, batch_size=8)
    assert ev.status == "evaluated" and ev.report["split"]["test"] == 12
    assert ev.test_accuracy <= 0.5 < res.test_accuracy


def test_early_stopping_stops_before_max_epochs_and_keeps_the_best_model(photos, tmp_path):
    # head-only at a vanishing learning rate: the weights (and so the validation loss) cannot
    # move, so no epoch after the first improves and patience 2 ends the run after epoch 3
    res = finetune(photos, tmp_path / "es", state="head-only", epochs=10, early_stopping=2,
                   lr=1e-30, **{k: v for k, v in TINY.items()})
    assert res.status == "early-stopped" and res.epochs_run == 3 < 10
    assert res.best_epoch == 1 and res.report["best_epoch"] == 1
    _, meta = read_model_file(res.model_path)
    assert meta["epoch"] == 1  # model.pt is the best epoch's, not the last one's
    ck = torch.load(res.output / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 3 and ck["stopped"] == "early-stopped" and ck["bad_epochs"] == 2
    # resuming a stopped run trains no further
    again = finetune(photos, res.output, resume=True)
    assert again.epochs_run == 3 and again.status == "early-stopped"


@pytest.mark.slow
def test_resume_after_kill_9_reaches_the_same_weights(photos, tmp_path):
    epochs = 6
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert cli.main(["-q", *_cli_args(photos, ref, epochs)]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH",
                                                                                   "")])}
    proc = subprocess.Popen([sys.executable, "-m", "cnncodes", "-q",
                             *_cli_args(photos, killed, epochs)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = killed / "checkpoint.pt"
    wait_for_file(proc, ckpt, timeout=300, what="fine-tuning subprocess")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    at_kill = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= at_kill < epochs
    # --resume alone: the saved options are used
    assert cli.main(["-q", "finetune", str(photos), "-o", str(killed), "--resume",
                     "--no-progress"]) == 0
    a = torch.load(ref / "checkpoint.pt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["epoch"] == b["epoch"] == epochs
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for i in a["optimizer"]["state"]:
        assert torch.equal(a["optimizer"]["state"][i]["momentum_buffer"],
                           b["optimizer"]["state"][i]["momentum_buffer"])
    ra = json.loads((ref / "report.json").read_text())
    rb = json.loads((killed / "report.json").read_text())
    assert rb["resumed_from"] == at_kill and ra["resumed_from"] is None
    assert [h["train_loss"] for h in ra["history"]] == [h["train_loss"] for h in rb["history"]]
    assert ra["test_accuracy"] == rb["test_accuracy"]


def test_nan_loss_stops_with_message_and_keeps_best_checkpoint(photos, tmp_path):
    run = tmp_path / "nan"
    # epoch 2 multiplies the learning rate by 1e36: the weights overflow and the loss turns NaN
    with pytest.raises(FinetuneDivergedError, match=r"loss became (nan|inf).* at epoch 2.*"
                                                    r"best checkpoint \(epoch 1.*lower --lr"):
        finetune(photos, run, epochs=3, schedule="step", step_size=1, gamma=1e36,
                 warmup_epochs=0, **TINY)
    rep = json.loads((run / "report.json").read_text())
    assert rep["status"] == "diverged" and rep["best_epoch"] == 1 and rep["epochs_run"] == 1
    assert "epoch 2" in rep["message"]
    sd, meta = read_model_file(run / "model.pt")
    assert meta["epoch"] == 1 and all(torch.isfinite(v).all() for v in sd.values()
                                      if v.is_floating_point())
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert cli.main(["finetune", str(photos), "-o", str(tmp_path / "nan-cli"), "--backbone",
                     "resnet18", "--weights", "random", "--input-size", "32", "--epochs", "2",
                     "--batch-size", "8", "--workers", "0", "--schedule", "step", "--step-size",
                     "1", "--gamma", "1e36", "--warmup-epochs", "0", "--no-progress"]) == 1


# ------------------------------------------------------------------------------ the model file


def test_predict_with_fine_tuned_model_matches_training_evaluation(trained_run, tmp_path):
    model = trained_run / "model.pt"
    assert is_finetuned_model(model) and not is_finetuned_model(trained_run / "report.json")
    rep = json.loads((trained_run / "report.json").read_text())
    split = json.loads((trained_run / "split.json").read_text())
    root = Path(split["test_root"])
    # the test images plus one broken file: predicted per image, the broken one listed
    paths = [str(root / p) for p, _ in split["test"]]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    pred = predict_images(model, paths + [str(bad)], device="cpu", num_workers=0)
    assert len(pred.paths) == len(paths) and pred.probabilities.shape == (len(paths), 3)
    assert [Path(p).name for p, _ in pred.failures] == ["broken.png"] and pred.accuracy is None
    truth = [c for _, c in split["test"]]
    acc = np.mean([t == p for t, p in zip(truth, pred.labels, strict=True)])
    assert acc == pytest.approx(rep["test_accuracy"])
    np.testing.assert_allclose(pred.probabilities.sum(1), 1, rtol=1e-5)
    # same predictions as the network itself on the recorded preprocessing
    net, meta = load_finetuned(model)
    from cnncodes.sources.images import load_rgb
    from cnncodes.sources.loader import preprocess_pil
    from cnncodes.sources.preprocessing import Preprocessing
    pp = Preprocessing.from_dict(meta["preprocessing"])
    x = torch.stack([preprocess_pil(load_rgb(p), pp) for p in paths])
    with torch.no_grad():
        logits = net(normalize_batch(x, pp))
    assert logits.argmax(1).tolist() == pred.predicted.tolist()
    assert meta["classes"] == ["ant", "bee", "cow"] and meta["input_size"] == 32
    # state predict: evaluation only, on a labelled folder
    res = finetune(root, tmp_path / "eval", state="predict", weights=str(model),
                   num_workers=0, batch_size=4)
    full = predict_images(model, root, num_workers=0)
    assert res.status == "evaluated" and res.test_accuracy == pytest.approx(full.accuracy)


def test_fine_tuned_model_is_a_backbone_for_extraction(trained_run):
    model = trained_run / "model.pt"
    ext = CodeExtractor("resnet18", weights=str(model), input_size=32, device="cpu")
    net, _ = load_finetuned(model)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    codes = ext(x)["pool"]
    with torch.no_grad():
        feats = net.features(normalize_batch(x, ext.preprocessing)).numpy()
    np.testing.assert_allclose(codes, feats, rtol=1e-4, atol=1e-4 * np.abs(feats).max())
    # and differs from the random init it started from
    ext0 = CodeExtractor("resnet18", weights="random", input_size=32, device="cpu")
    assert not np.allclose(ext0(x)["pool"], codes)


def test_extraction_takes_the_preprocessing_recorded_in_the_model_file(trained_run, tmp_path):
    from cnncodes import FeatureStore
    from cnncodes.backbones.weights import resolve_weights
    from cnncodes.sources.preprocessing import IMAGENET

    model = trained_run / "model.pt"
    _, meta = read_model_file(model)
    r = resolve_weights(get_spec("resnet18"), str(model))
    assert r.id == f"file:{model.resolve()}"
    assert r.preprocessing.to_dict() == meta["preprocessing"] and r.preprocessing.crop == 32
    assert IMAGENET.crop == 224  # what a plain checkpoint of the family gets
    plain = tmp_path / "plain.pth"
    torch.save(build_model(get_spec("resnet18")).state_dict(), plain)
    assert resolve_weights(get_spec("resnet18"), str(plain)).preprocessing.crop == 224
    with pytest.raises(ValueError, match=r"backbone must be resnet18 .*\(a fine-tuned resnet18\)"
                                         r"\. Got mobilenet_v2 instead; pass --backbone resnet18"):
        resolve_weights(get_spec("mobilenet_v2"), str(model))
    # `cnncodes extract --weights RUN/model.pt` without --input-size: the fine-tuned model's 32 px
    split = json.loads((trained_run / "split.json").read_text())
    out = tmp_path / "codes.h5"
    assert cli.main(["-q", "extract", split["test_root"], "-o", str(out), "--backbone",
                     "resnet18", "--weights", str(model), "--no-progress", "--workers",
                     "0"]) == 0
    prov = FeatureStore(out).provenance
    assert prov["input_size"] == 32 and prov["preprocessing"] == meta["preprocessing"]
