"""A fine-tune checkpoint records its resolved precision; a resume in another one is refused by
name, and an empty (disabled) scaler state is not loaded (CUDA_NOTES item 4)."""

from __future__ import annotations

import pytest
import torch

from cnncodes.errors import OptionError
from cnncodes.finetuning.checkpoint import check_resume_precision, checkpoint_precision
from cnncodes.finetuning.run import finetune

from ..conftest import write_tree

TINY = dict(backbone="resnet18", weights="random", input_size=32, batch_size=8, num_workers=0,
            threads=1, val_fraction=0.2, test_fraction=0.2)


def test_checkpoint_precision_of_new_and_old_checkpoints():
    assert checkpoint_precision({"precision": "bf16", "config": {"precision": "auto"}}) == "bf16"
    assert checkpoint_precision({"config": {"precision": "fp32"}, "scaler": {}}) == "fp32"
    # before the resolved precision was saved: auto was fp16 exactly when the scaler ran
    assert checkpoint_precision({"config": {"precision": "auto"}, "scaler": {}}) == "fp32"
    assert checkpoint_precision({"config": {"precision": "auto"},
                                 "scaler": {"scale": 65536.0}}) == "fp16"
    check_resume_precision({"precision": "fp32"}, "fp32", torch.device("cpu"))
    with pytest.raises(OptionError, match=r"trained in fp16 on cuda:0; resuming it on cpu would "
                                          r"train in fp32\. Resume with --precision fp16"):
        check_resume_precision({"precision": "fp16", "device": "cuda:0"}, "fp32",
                               torch.device("cpu"))


def test_resume_refuses_a_precision_change_and_skips_an_empty_scaler(tmp_path):
    photos = write_tree(tmp_path / "photos", per_class=10)
    run = tmp_path / "run"
    finetune(photos, run, epochs=1, **TINY)
    ck_path = run / "checkpoint.pt"
    ck = torch.load(ck_path, weights_only=True)
    assert ck["precision"] == "fp32" and ck["device"] == "cpu" and ck["scaler"] == {}
    # an older checkpoint (no resolved precision): auto + empty scaler = fp32, resumes on CPU
    old = {k: v for k, v in ck.items() if k not in ("precision", "device")}
    torch.save(old, ck_path)
    res = finetune(photos, run, resume=True, epochs=2)
    assert res.epochs_run == 2
    # a run trained in fp16 on a GPU cannot go on in fp32 on the CPU
    ck = torch.load(ck_path, weights_only=True)
    ck.update(precision="fp16", device="cuda:0")
    torch.save(ck, ck_path)
    with pytest.raises(OptionError, match="trained in fp16 on cuda:0; resuming it on cpu"):
        finetune(photos, run, resume=True, epochs=3)
