"""Every fine-tuning entry point hands every runtime option to the trainer (issue 27).

``FinetuneConfig.runtime`` is one :class:`~cnncodes.options.RuntimeOptions` that travels whole from
the entry point to :class:`~cnncodes.finetuning.trainer.Trainer`. One table: each entry point (the
``finetune`` CLI command, with and without ``--escalation``, ``cnncodes.finetune`` with keyword
fields and with a ``runtime=`` object, ``escalate`` and the baseline's ``run_fall_through``) is
called with one option set to a non-default value, and the trainer captures the configuration it
receives. An entry point that copies fields by hand and forgets one fails here. Every field of
RuntimeOptions is either in the table or in ``NOT_TRAINING`` with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cnncodes.errors import OptionError, StaleRunError
from cnncodes.finetuning import config as ft_config
from cnncodes.finetuning.config import (
    FINETUNE_BATCH_SIZE,
    NOT_TRAINING,
    STORED_RUNTIME,
    FinetuneConfig,
    finetune_runtime,
    make_config,
)
from cnncodes.options import RUNTIME_FIELDS, BackboneOptions, RuntimeOptions

BASE = {"backbone": "resnet18", "weights": "random", "input_size": 32}
#: (field, library value, CLI flags): each value differs from the default of its entry point
OPTIONS: list[tuple[str, Any, list[str]]] = [
    ("batch_size", 7, ["--batch-size", "7"]),
    ("num_workers", 0, ["--workers", "0"]),
    ("device", "cpu", ["--device", "cpu"]),
    ("precision", "bf16", ["--precision", "bf16"]),
    ("threads", 1, ["--threads", "1"]),
    ("max_pixels", 12_345, ["--max-pixels", "12345"]),
    ("progress", True, ["--no-progress"]),  # library: True (default False); CLI: False
]
CLI_PROGRESS = False  # the CLI shows bars unless --no-progress

LIB = ["finetune", "finetune runtime=", "escalate", "run_fall_through"]
CLI = ["finetune", "finetune --escalation"]
CASES = ([("lib", e, o) for e in LIB for o in OPTIONS]
         + [("cli", e, o) for e in CLI for o in OPTIONS])


class Captured(BaseException):  # BaseException: no `except Exception` on the way swallows it
    def __init__(self, cfg: FinetuneConfig):
        super().__init__("captured")
        self.cfg = cfg


def test_every_runtime_option_has_a_fine_tuning_decision():
    assert {f for f, _, _ in OPTIONS} | set(NOT_TRAINING) == set(RUNTIME_FIELDS)
    assert not {f for f, _, _ in OPTIONS} & set(NOT_TRAINING)
    assert set(STORED_RUNTIME) == {f for f, _, _ in OPTIONS} - {"progress"}


def _split_sources(tree: Path) -> tuple[Any, Any]:
    from cnncodes.sources.folders import open_source

    src = open_source(tree)
    rows = np.arange(len(src))
    test_rows = rows % 4 == 0

    def part(mask: np.ndarray) -> Any:
        from cnncodes.sources.folders import ImageSource

        return ImageSource(src.root, [src.paths[i] for i in rows[mask]], src.labels[mask],
                           src.classes, "list")

    return part(~test_rows), part(test_rows)


def _lib(entry: str, tree: Path, out: Path, field: str, value: Any) -> None:
    import cnncodes
    from cnncodes.workflows.compare import escalate, run_fall_through

    if entry == "finetune":
        cnncodes.finetune(tree, out, **{field: value}, **BASE)
    elif entry == "finetune runtime=":
        cnncodes.finetune(tree, out, runtime=finetune_runtime(**{field: value}), **BASE)
    elif entry == "escalate":
        escalate(tree, out, **{field: value}, **BASE)
    elif entry == "run_fall_through":
        train, test = _split_sources(tree)
        # the baseline's batch size is extraction's: fine-tuning's comes with its options
        opts = {field: value} if field == "batch_size" else {}
        runtime = RuntimeOptions(**({} if field == "batch_size" else {field: value}))
        run_fall_through(train, test, out, backbone=BackboneOptions(**BASE), runtime=runtime,
                         seed=0, overwrite=False, command=None, options=opts)
    else:
        raise AssertionError(entry)


def _cli(entry: str, tree: Path, out: Path, flags: list[str]) -> None:
    from cnncodes.cli import main

    extra = ["--escalation"] if entry == "finetune --escalation" else []
    main(["finetune", str(tree), "-o", str(out), "--backbone", "resnet18", "--weights", "random",
          "--input-size", "32", *extra, *flags])


@pytest.mark.parametrize("kind, entry, option", CASES,
                         ids=[f"{k}:{e}:{o[0]}" for k, e, o in CASES])
def test_every_entry_point_hands_every_runtime_option_to_the_trainer(
        kind, entry, option, image_tree, tmp_path, monkeypatch):
    from cnncodes.finetuning.trainer import Trainer
    from cnncodes.workflows import compare

    field, value, flags = option
    probes: list[RuntimeOptions] = []

    def capture(self: Any, split: Any, out: Any, cfg: FinetuneConfig, *args: Any,
                **kw: Any) -> None:
        raise Captured(cfg)

    def probe(split: Any, *, runtime: RuntimeOptions, **kw: Any) -> dict[str, Any]:
        probes.append(runtime)  # the escalation's linear probe: the run's runtime, too
        return {}

    monkeypatch.setattr(Trainer, "__init__", capture)
    monkeypatch.setattr(compare, "linear_probe", probe)
    expected = value
    if kind == "lib":
        call = lambda: _lib(entry, image_tree, tmp_path / "run", field, value)  # noqa: E731
    else:
        expected = CLI_PROGRESS if field == "progress" else value
        call = lambda: _cli(entry, image_tree, tmp_path / "run", flags)  # noqa: E731
    with pytest.raises(Captured) as got:
        call()
    rt = got.value.cfg.runtime
    assert isinstance(rt, RuntimeOptions)
    assert getattr(rt, field) == expected, (entry, field, rt)
    default = finetune_runtime(progress=kind == "cli")
    others = {f: getattr(default, f) for f in RUNTIME_FIELDS if f != field}
    assert {f: getattr(rt, f) for f in others} == others  # nothing else changed on the way
    if "escalat" in entry:  # the probe extracts with the same options, >= 64 images a pass
        assert probes == [rt.replace(batch_size=max(rt.batch_size, 64))]


def test_fields_training_does_not_use_are_refused_as_keywords_and_ignored_in_an_object(
        image_tree, tmp_path, monkeypatch):
    from cnncodes.finetuning.trainer import Trainer

    for name, why in NOT_TRAINING.items():
        with pytest.raises(OptionError, match=rf"Unknown fine-tuning option '{name}' \({why}\)"):
            make_config(**{name: "pil"})
    shared = RuntimeOptions(decoder="pil", engine="torch", jpeg_scaling="off", device="cpu")

    def capture(self: Any, split: Any, out: Any, cfg: FinetuneConfig, *a: Any, **k: Any) -> None:
        raise Captured(cfg)

    monkeypatch.setattr(Trainer, "__init__", capture)
    import cnncodes

    with pytest.raises(Captured) as got:  # a RuntimeOptions shared with extraction is taken whole
        cnncodes.finetune(image_tree, tmp_path / "run", runtime=shared, **BASE)
    assert got.value.cfg.runtime == shared


def test_the_stored_configuration_keeps_its_flat_layout_and_reads_back():
    cfg = make_config(batch_size=8, device="cpu", threads=1, progress=True, epochs=3)
    d = cfg.to_dict()
    assert "runtime" not in d and "progress" not in d
    assert {k: d[k] for k in STORED_RUNTIME} == {
        "batch_size": 8, "device": "cpu", "precision": "auto", "num_workers": None,
        "threads": 1, "max_pixels": finetune_runtime().max_pixels}
    back = FinetuneConfig.from_dict(d)
    assert back.to_dict() == d and back.runtime == cfg.runtime.replace(progress=False)
    # a configuration stored before the runtime object (flat, every field) reads the same
    assert FinetuneConfig.from_dict({**d, "unknown_later_field": 1}) == back
    assert FinetuneConfig().runtime.batch_size == FINETUNE_BATCH_SIZE


def test_bad_runtime_values_are_refused_with_the_option_named():
    with pytest.raises(OptionError, match=r"'batch_size' parameter of finetune\(\) must be an "
                                          r"int .* Got 2\.5 instead"):
        make_config(batch_size=2.5)
    with pytest.raises(OptionError, match="batch_size must be an integer >= 2"):
        make_config(runtime=RuntimeOptions(batch_size=1))
    with pytest.raises(OptionError, match="precision must be one of auto, fp32, fp16, bf16; "
                                          "got 'int8'"):
        make_config(runtime=RuntimeOptions(precision="int8"))
    with pytest.raises(OptionError, match="runtime must be a cnncodes.RuntimeOptions"):
        make_config(runtime={"batch_size": 8})  # type: ignore[arg-type]


def test_resume_compares_the_runtime_object_it_is_given():
    from cnncodes.finetuning.run import _given, _resume_config

    saved = make_config(batch_size=8, device="cpu", epochs=2)
    # a whole RuntimeOptions is asked for whole: its batch size (64) is not the run's
    asked = RuntimeOptions(device="cpu")
    with pytest.raises(StaleRunError, match="batch_size: run has 8, asked 64"):
        _resume_config(saved, make_config(runtime=asked), _given(None, asked, {}))
    # resumable fields change; progress is not stored and always follows the call
    opts = {"threads": 1, "num_workers": 0, "progress": True, "epochs": 2}
    cfg = _resume_config(saved, make_config(**opts), _given(None, None, opts))
    assert cfg.runtime == saved.runtime.replace(threads=1, num_workers=0, progress=True)
    assert ft_config.FinetuneConfig.RUNTIME_FIELDS >= {"threads", "num_workers", "progress"}
