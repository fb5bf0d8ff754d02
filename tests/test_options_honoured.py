"""Every entry point that computes codes honours every option (issue 27).

One table: each CLI command and public function that takes backbone/runtime options is called with
one option set to a non-default value, and the deepest call (``CodeExtractor``, which every path
that computes codes goes through) captures the options objects it receives. An entry point that
forwards fields by hand and forgets one (``extract --layers auto`` once dropped ``decoder`` and
``engine`` for its layer probe) fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cnncodes.options import BackboneOptions, RuntimeOptions, split_options

#: (field, library value, CLI flags): each a non-default value
OPTIONS: list[tuple[str, Any, list[str]]] = [
    ("batch_size", 7, ["--batch-size", "7"]),
    ("num_workers", 0, ["--workers", "0"]),
    ("device", "cpu", ["--device", "cpu"]),  # "auto" would mean cuda here (patched below)
    ("precision", "bf16", ["--precision", "bf16"]),
    ("threads", 1, ["--threads", "1"]),
    ("decoder", "pil", ["--decoder", "pil"]),
    ("max_pixels", 12_345, ["--max-pixels", "12345"]),
    ("progress", None, ["--no-progress"]),  # library: True (default False); CLI: False
    ("engine", "torch", ["--engine", "torch"]),
    ("weights", "random", ["--weights", "random"]),
    ("pooling", "max", ["--pooling", "max"]),
    ("input_size", 32, ["--input-size", "32"]),
    ("layers", "stage3,pool", ["--layers", "stage3,pool"]),
]
LIB_PROGRESS = True
CLI_PROGRESS = False


class Captured(BaseException):  # BaseException: no `except Exception` on the way swallows it
    def __init__(self, bopts: BackboneOptions, ropts: RuntimeOptions):
        super().__init__("captured")
        self.bopts, self.ropts = bopts, ropts


def _lib(name: str, root: Path, tree: Path, opts: dict[str, Any]) -> None:
    import cnncodes
    from cnncodes.workflows.advice import advise, choose_layer
    from cnncodes.workflows.baseline import baseline

    if name == "extract":
        cnncodes.extract(tree, root / "c.h5", **opts)
    elif name == "extract_arrays":
        cnncodes.extract_arrays(tree, **opts)
    elif name == "advise":
        advise(tree, budget=None, **opts)
    elif name == "choose_layer":
        choose_layer(tree, budget=None, **opts)
    elif name == "baseline":
        baseline(tree, report=None, cache=root / "cache", **opts)
    elif name == "CNNCodes":
        from cnncodes.linear.transformer import CNNCodes

        opts = {("layer" if k == "layers" else k): v for k, v in opts.items()}
        CNNCodes(**opts).fit([str(p) for p in sorted(tree.rglob("*.png"))])
    else:
        raise AssertionError(name)


def _cli(name: str, root: Path, tree: Path, flags: list[str]) -> None:
    from cnncodes.cli import main

    argv = {
        "extract": ["extract", str(tree), "-o", str(root / "c.h5")],
        "extract --layers auto": ["extract", str(tree), "-o", str(root / "c.h5"), "--budget",
                                  "10min", "--layers", "auto"],
        "advise": ["advise", str(tree), "--budget", "none"],
        "baseline": ["baseline", str(tree), "--cache", str(root / "cache"), "--report",
                     str(root / "rep"), "--no-raw-baseline"],
    }[name]
    main(argv + flags)


LIB = ["extract", "extract_arrays", "advise", "choose_layer", "baseline", "CNNCodes"]
CLI = ["extract", "extract --layers auto", "advise", "baseline"]
#: entry points that read one layer
ONE_LAYER = ("baseline", "CNNCodes")
#: what an entry point does not take, with the reason
NOT_TAKEN = {
    ("CNNCodes", "progress"): "a transformer inside a Pipeline never shows a bar",
    ("extract --layers auto", "layers"): "--layers is `auto` there",
}
CASES = ([("lib", e, o) for e in LIB for o in OPTIONS]
         + [("cli", e, o) for e in CLI for o in OPTIONS])


def _layers(value: Any) -> tuple[str, ...]:
    return tuple(value.split(",")) if isinstance(value, str) else tuple(value or ())


@pytest.mark.parametrize("kind, entry, option", CASES,
                         ids=[f"{k}:{e}:{o[0]}" for k, e, o in CASES])
def test_every_entry_point_honours_every_option(kind, entry, option, image_tree, tmp_path,
                                                monkeypatch):
    field, value, flags = option
    if field == "layers" and entry in ONE_LAYER:
        value, flags = "stage3", ["--layers", "stage3"]
    if (entry, field) in NOT_TAKEN:
        pytest.skip(NOT_TAKEN[(entry, field)])
    # the torch path: a torch-free manifest written by an earlier test (codes/light.py) would
    # skip CodeExtractor, where the options are captured
    monkeypatch.setenv("CNNCODES_TORCH_FREE", "0")
    from cnncodes.codes.extractor import CodeExtractor

    def capture(self: Any, backbone: Any = "mobilenet_v2", *, runtime: Any = None,
                **options: Any) -> None:
        options = {k: v for k, v in options.items()
                   if k not in ("channels_last", "fuse_bn")}
        b, r, _ = split_options(backbone, runtime, options, where="CodeExtractor")
        raise Captured(b, r)

    monkeypatch.setattr(CodeExtractor, "__init__", capture)
    if field == "device":  # so that a dropped --device cpu shows (auto -> cuda)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if kind == "lib":
        expected = LIB_PROGRESS if field == "progress" else value
        call = lambda: _lib(entry, tmp_path, image_tree, {field: expected})  # noqa: E731
    else:
        expected = CLI_PROGRESS if field == "progress" else value
        call = lambda: _cli(entry, tmp_path, image_tree, flags)  # noqa: E731
    with pytest.raises(Captured) as got:
        call()
    b, r = got.value.bopts, got.value.ropts
    if field == "layers":
        assert _layers(b.layers) == _layers(expected)
    elif field in ("weights", "pooling", "input_size"):
        assert getattr(b, field) == expected
    elif field == "device":
        assert str(r.device) == expected
    else:
        assert getattr(r, field) == expected, (entry, field, getattr(r, field))
