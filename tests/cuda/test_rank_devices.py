"""Under torchrun each rank gets a GPU of its own, or a clear error (CUDA_NOTES items 14, 15)."""

from __future__ import annotations

import pytest
import torch

from cnncodes._distributed import DistInfo, check_local_gpus, process_group, rank_device
from cnncodes.codes.extraction import _rank_runtime
from cnncodes.errors import OptionError
from cnncodes.options import RuntimeOptions


@pytest.fixture
def two_local_ranks(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    return DistInfo(rank=1, world=2, local_rank=1)


def gpus(monkeypatch, n):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_auto_and_cuda_give_each_rank_its_local_gpu(two_local_ranks, monkeypatch):
    gpus(monkeypatch, 2)
    for opt in ("auto", "cuda"):
        assert rank_device(opt, torch.device("cuda"), two_local_ranks) == torch.device("cuda", 1)
    r = _rank_runtime(RuntimeOptions(device="cuda"), torch.device("cuda"), two_local_ranks)
    assert r.device == torch.device("cuda", 1)


@pytest.mark.parametrize("opt", ["cuda:0", "cuda:1"])
def test_extract_refuses_an_explicit_gpu_for_every_rank(two_local_ranks, monkeypatch, opt):
    gpus(monkeypatch, 2)
    with pytest.raises(OptionError, match=f"--device {opt} would put several ranks on one GPU"):
        _rank_runtime(RuntimeOptions(device=opt), torch.device(opt), two_local_ranks)


def test_one_rank_per_node_may_name_its_gpu(monkeypatch):
    gpus(monkeypatch, 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    di = DistInfo(rank=1, world=2, local_rank=0)
    assert rank_device("cuda:0", torch.device("cuda", 0), di) == torch.device("cuda", 0)


def test_more_local_ranks_than_gpus_is_a_clear_error(two_local_ranks, monkeypatch):
    gpus(monkeypatch, 1)
    with pytest.raises(OptionError, match=r"torchrun starts 2 ranks on this machine "
                                          r"\(LOCAL_WORLD_SIZE\) but 1 CUDA device\(s\) are "
                                          r"visible.*--nproc-per-node 1"):
        check_local_gpus(two_local_ranks)
    with pytest.raises(OptionError, match="LOCAL_WORLD_SIZE"):
        rank_device("auto", torch.device("cuda"), two_local_ranks)
    called = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: called.append(i))
    with pytest.raises(OptionError, match="LOCAL_WORLD_SIZE"), process_group("cuda"):
        pass
    assert called == []  # refused before CUDA could say "invalid device ordinal"
    check_local_gpus(two_local_ranks, device_count=2)  # enough GPUs: fine
