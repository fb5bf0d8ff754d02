"""The torch-free path (codes/light.py, codes/ort_engine.py) honours every option that applies to
it, and steps aside for the ones that do not (tests/test_options_honoured.py covers the torch path
with ``CNNCODES_TORCH_FREE=0``).

One manifest is made once (a torch-path run with ``engine="onnxruntime"`` writes it). Then:

* each runtime option the light path consumes is set to a non-default value in every entry point
  that can take the light path, and the value is captured where the light loop uses it
  (:func:`~cnncodes.codes.light.iter_light`: batch size, decoding threads, the dataset's pixel
  limit and DCT target, the extractor's JPEG scaling, ONNX Runtime's threads);
* each runtime option that the light path cannot honour (engine torch, fp16/bf16, the tensor
  decoder, CUDA) makes :func:`~cnncodes.codes.light.light_extractor` return None, so the torch
  path runs and honours it;
* each backbone option is part of the manifest key: a request differing in any one finds no
  manifest (else codes of another layer, pooling, size or weights would be served).

Every field of RuntimeOptions and BackboneOptions must be in one of these tables (or in
``NOT_LIGHT`` with the reason), so an option added later without a light-path decision fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cnncodes.codes import batches, light
from cnncodes.options import BACKBONE_FIELDS, RUNTIME_FIELDS, BackboneOptions, RuntimeOptions

from ..conftest import write_tree

BASE = {"backbone": "mobilenet_v2", "weights": "random", "input_size": 32}

#: runtime options the light path consumes: (field, non-default value, what the loop must see)
CONSUMED: list[tuple[str, Any, dict[str, Any]]] = [
    ("batch_size", 7, {"batch_size": 7}),
    ("num_workers", 3, {"decode_threads": 3}),
    ("threads", 1, {"ort_threads": 1}),
    ("max_pixels", 12_345, {"max_pixels": 12_345}),
    ("jpeg_scaling", "off", {"jpeg_scaling": "off", "draft_to": None}),
]
#: runtime values the light path cannot honour: it must step aside (the torch path runs)
STEP_ASIDE: list[tuple[str, Any]] = [
    ("engine", "torch"), ("precision", "bf16"), ("precision", "fp16"), ("decoder", "tensor"),
    ("device", "cuda"), ("device", "cuda:1"),
]
#: runtime values the light path takes as they are (no other value means anything there)
TAKEN_AS_IS = {("engine", "onnxruntime"), ("precision", "fp32"), ("decoder", "pil"),
               ("device", "cpu")}
#: fields that do not reach the light extractor, with the reason
NOT_LIGHT = {"progress": "the bar belongs to the extraction loop, the same for both paths"}
#: backbone options with another value: each must miss the manifest made for BASE
OTHER_BACKBONE = {"backbone": "resnet18", "weights": "DEFAULT", "layers": "stage3,pool",
                  "pooling": "max", "input_size": 64}


class Captured(BaseException):  # BaseException: no `except Exception` on the way swallows it
    def __init__(self, seen: dict[str, Any]):
        super().__init__("captured")
        self.seen = seen


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A small tree and the torch-free manifest of BASE (made by one torch-path run)."""
    root = tmp_path_factory.mktemp("light")
    tree = write_tree(root / "photos", per_class=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNCODES_CACHE", str(root / "cache"))
        mp.delenv(light.TORCH_FREE_ENV, raising=False)
        assert light.light_extractor(BackboneOptions(**BASE), RuntimeOptions()) is None
        import cnncodes

        cnncodes.extract(tree, root / "first.h5", engine="onnxruntime", num_workers=0, **BASE)
        assert light.manifest_path(BackboneOptions(**BASE)).is_file()
        # predict rebuilds the extractor from the model (layers=("pool",): its own manifest,
        # written by its first, torch-path run)
        model = cnncodes.train(root / "first.h5", c_grid=[0.1], cv=2)
        cnncodes.save_model(model, root / "model.npz")
        cnncodes.predict(root / "model.npz", tree, num_workers=0)
        yield tree, root


@pytest.fixture
def light_env(manifest, monkeypatch):
    tree, root = manifest
    monkeypatch.setenv("CNNCODES_CACHE", str(root / "cache"))
    monkeypatch.delenv(light.TORCH_FREE_ENV, raising=False)
    return tree


def test_every_option_has_a_light_path_decision():
    decided = ({f for f, _, _ in CONSUMED} | {f for f, _ in STEP_ASIDE} | set(NOT_LIGHT))
    assert set(RUNTIME_FIELDS) == decided
    assert set(BACKBONE_FIELDS) == set(OTHER_BACKBONE)


def _capture(monkeypatch) -> None:
    def iter_light(dataset: Any, ext: Any, indices: Any, *, batch_size: int, threads: int):
        raise Captured({"batch_size": batch_size, "decode_threads": threads,
                        "ort_threads": ext.engine.threads, "max_pixels": dataset.max_pixels,
                        "draft_to": dataset.draft_to, "jpeg_scaling": ext.jpeg_scaling})
        yield  # a generator, like the real one

    monkeypatch.setattr(batches, "iter_light", iter_light)


def _run(entry: str, tree: Path, tmp: Path, field: str | None, value: Any) -> None:
    import cnncodes
    from cnncodes.cli import main

    opts = {**BASE, **({field: value} if field else {})}
    if entry == "extract":
        cnncodes.extract(tree, tmp / "c.h5", **opts)
    elif entry == "extract_arrays":
        cnncodes.extract_arrays(tree, **opts)
    elif entry == "predict":
        if field == "jpeg_scaling":  # the model was made with DCT scaling: full decoding is refused
            from cnncodes.errors import ModelMismatchError

            with pytest.raises(ModelMismatchError, match="decoding"):
                cnncodes.predict(tree.parent / "model.npz", tree, **{field: value})
            raise Captured({"jpeg_scaling": "off", "draft_to": None})
        cnncodes.predict(tree.parent / "model.npz", tree, **({field: value} if field else {}))
    elif entry == "cli extract":
        flag = {"num_workers": "--workers"}.get(field or "", f"--{(field or '').replace('_', '-')}")
        main(["extract", str(tree), "-o", str(tmp / "c.h5"), "--weights", "random",
              "--input-size", "32", *([flag, str(value)] if field else [])])
    else:
        raise AssertionError(entry)


ENTRIES = ["extract", "extract_arrays", "cli extract", "predict"]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("field, value, expected", CONSUMED, ids=[c[0] for c in CONSUMED])
def test_consumed_options_reach_the_light_loop(light_env, tmp_path, monkeypatch, entry, field,
                                               value, expected):
    _capture(monkeypatch)
    with pytest.raises(Captured) as base:  # the defaults: each expected value differs from them
        _run(entry, light_env, tmp_path, None, None)
    assert all(base.value.seen[k] != v for k, v in expected.items()), base.value.seen
    with pytest.raises(Captured) as got:
        _run(entry, light_env, tmp_path, field, value)
    assert {k: got.value.seen[k] for k in expected} == expected


@pytest.mark.parametrize("field, value", STEP_ASIDE, ids=[f"{f}={v}" for f, v in STEP_ASIDE])
def test_options_the_light_path_cannot_honour_send_the_run_to_torch(light_env, field, value):
    bopts = BackboneOptions(**BASE)
    assert light.light_extractor(bopts, RuntimeOptions()) is not None
    assert light.light_extractor(bopts, RuntimeOptions(**{field: value})) is None
    for f, v in TAKEN_AS_IS:
        if f == field:  # the value it can honour keeps the light path
            assert light.light_extractor(bopts, RuntimeOptions(**{f: v})) is not None


def test_torch_free_env_zero_turns_the_light_path_off(light_env, monkeypatch):
    monkeypatch.setenv(light.TORCH_FREE_ENV, "0")
    assert light.light_extractor(BackboneOptions(**BASE), RuntimeOptions()) is None


@pytest.mark.parametrize("field", list(OTHER_BACKBONE))
def test_every_backbone_option_is_part_of_the_manifest_key(light_env, field):
    ok = light.light_extractor(BackboneOptions(**BASE), RuntimeOptions())
    assert ok is not None and ok.layers == ["pool"]
    other = BackboneOptions(**{**BASE, field: OTHER_BACKBONE[field]})
    assert light.light_extractor(other, RuntimeOptions()) is None
