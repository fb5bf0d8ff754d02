"""torchrun extraction (gloo, CPU): one merged store equal to a single-process run; resume."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torchvision

from cnncodes import FeatureStore
from cnncodes._distributed import shard_batches
from cnncodes.codes.journal import Journal

from ..conftest import kill_job_tree, write_tree

pytestmark = pytest.mark.slow


def test_shards_are_disjoint_whole_batches_covering_everything():
    items = list(range(3, 53))  # 50 items, batch 4 -> 13 batches
    shards = [shard_batches(items, 4, r, 3) for r in range(3)]
    assert sum(shards, []) == items
    assert all(len(s) % 4 == 0 for s in shards[:-1])
    assert [len(s) for s in shards] == [16, 16, 18]
    assert [shard_batches(items[:3], 4, r, 2) for r in range(2)] == [[], items[:3]]


@pytest.fixture
def setup(tmp_path):
    src = write_tree(tmp_path / "photos", classes=("a", "b", "c"), per_class=17, seed=4)
    (src / "b" / "bad.png").write_bytes(b"")
    ckpt = tmp_path / "rand.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), ckpt)
    args = ["extract", str(src), "--weights", str(ckpt), "--input-size", "48", "--batch-size",
            "4", "--no-progress", "--workers", "0"]
    single = tmp_path / "single.h5"
    subprocess.run([sys.executable, "-m", "cnncodes", "-q", *args, "-o", str(single)],
                   check=True, capture_output=True)
    return tmp_path, args, FeatureStore(single)


def _torchrun(args, out, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "cnncodes", "-q", *args, "-o", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return cmd, env


def _same(a: FeatureStore, b: FeatureStore) -> None:
    assert list(a.paths) == list(b.paths)
    assert a.failures == b.failures and a.classes == b.classes
    Xa, ya = a.load()
    Xb, yb = b.load()
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_allclose(Xa, Xb, rtol=1e-5, atol=1e-6 * np.abs(Xa).max())
    for key in ("backbone", "weights", "weights_sha256", "layers", "preprocessing", "dtype"):
        assert a.provenance[key] == b.provenance[key]


@pytest.mark.slow
def test_torchrun_two_ranks_equals_single_process(setup):
    tmp, args, single = setup
    out = tmp / "dist.h5"
    cmd, env = _torchrun(args, out)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    merged = FeatureStore(out)
    _same(single, merged)
    assert len(merged) == 51 and merged.failures[0][0] == "b/bad.png"
    assert merged.provenance["runs"][-1]["ranks"] == 2
    assert merged.provenance["runs"][-1]["new"] == 51
    assert not Journal(out).exists()


@pytest.mark.slow
def test_killed_torchrun_job_resumes(setup):
    tmp, args, single = setup
    out = tmp / "dist.h5"
    journal = Journal(out)
    cmd, env = _torchrun(args, out)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(journal.part_files()) < 3:
        time.sleep(0.005)
    assert proc.poll() is None, "the job finished before it could be killed"
    kill_job_tree(proc)  # the launcher and every rank
    assert not out.exists() and 0 < journal.n_parts() < 13
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    _same(single, FeatureStore(out))
