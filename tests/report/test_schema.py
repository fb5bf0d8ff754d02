"""``report.json`` through its schema (:mod:`cnncodes.report.schema`): each task's report
round-trips, old (version 0) files from real runs render the same page as before the schema, and
a malformed file is refused with the file and the field named.

``data/v0/*.report.json`` were written by cnncodes before the schema (commit cfd7419: baseline,
``baseline --layer auto``, train with and without a test part, evaluate with raw pixels, a
fine-tuning run) and ``*.context.json`` are the page contexts that code made of them; only the
command lines were rewritten to realistic ones (the runs were made in-process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnncodes.errors import CnnCodesError, OptionError, ReportError
from cnncodes.report import finetune_context as fc
from cnncodes.report import html_context as hc
from cnncodes.report.files import build_report, write_report
from cnncodes.report.finetune_schema import load_finetune_report
from cnncodes.report.schema import (
    SCHEMA_VERSION,
    UNKNOWN_TASK,
    LinearReport,
    guess_task,
    load_report,
)

from .test_report import fitted  # noqa: F401 - module fixture

V0 = Path(__file__).parent / "data" / "v0"
LINEAR = ["baseline_raw", "baseline_auto", "train_test", "train_notest", "evaluate_raw"]
TASK = {"baseline_raw": "baseline", "baseline_auto": "baseline", "train_test": "train",
        "train_notest": UNKNOWN_TASK, "evaluate_raw": "evaluate"}


def _v0(name: str) -> dict:
    return json.loads((V0 / f"{name}.report.json").read_text())


def _stable(ctx: dict) -> dict:
    """The context without the versions row a report that recorded none gets from this
    process (it follows the installed libraries, not the report)."""
    out = json.loads(json.dumps(ctx, default=str))
    out["provenance"] = [r for r in out["provenance"] if not r[0].startswith("versions")]
    return out


@pytest.mark.parametrize("name", LINEAR)
def test_old_report_renders_as_before(name, tmp_path):
    old = _v0(name)
    assert "schema_version" not in old
    (tmp_path / "report.json").write_text(json.dumps(old))
    rep = load_report(tmp_path)
    assert rep.schema_version == SCHEMA_VERSION and rep.task == TASK[name]
    expected = json.loads((V0 / f"{name}.context.json").read_text())
    assert _stable(hc.linear_context(rep)) == _stable(expected)
    # the adapter adds the version and the task and changes nothing else
    assert rep.to_dict() == {**old, "task": TASK[name], "schema_version": SCHEMA_VERSION}


def test_old_finetune_report_renders_as_before(tmp_path):
    old = _v0("finetune")
    (tmp_path / "report.json").write_text(json.dumps(old))
    rep = load_finetune_report(tmp_path)
    assert rep.task == "finetune" and rep.split.test == 12 and rep.config.batch_size == 8
    expected = json.loads((V0 / "finetune.context.json").read_text())
    assert _stable(fc.finetune_context(rep)) == _stable(expected)
    assert rep.to_dict() == {**old, "task": "finetune", "schema_version": rep.schema_version}
    with pytest.raises(ReportError, match="not a cnncodes-report file: field format is None"):
        LinearReport.from_dict({**old, "format": None})
    with pytest.raises(ReportError, match=f"{tmp_path}.*not a cnncodes-finetune-report file"):
        load_finetune_report(_copy(tmp_path, "train_test"))


def _copy(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(_v0(name)))
    return path


def test_typed_sections_hold_the_old_values():
    rep = LinearReport.from_dict(_v0("baseline_raw"))
    codes, raw = rep.rows or []
    assert not codes.is_raw_pixels and raw.is_raw_pixels and raw.name == "raw pixels 16x16 rgb"
    assert raw.selection is not None and raw.selection.best_C == 0.001
    assert rep.test is not None and rep.test.n == 12 and rep.test.extra["accuracy_ci95"]
    assert rep.model.classes == sorted(rep.model.classes) and len(rep.model.classes) == 3
    assert rep.split.kind == "predefined" and rep.split.extra["train"].endswith("train")
    assert rep.selection.extra["c_grid"] == [0.001, 0.01, 0.1, 1.0, 10.0]  # untyped: kept
    auto = LinearReport.from_dict(_v0("baseline_auto"))
    assert auto.advice is not None and auto.advice["layer"] == auto.model.layer  # kept loose


@pytest.mark.parametrize("command, task", [
    ("cnncodes baseline imgs --report out", "baseline"),
    ("cnncodes -q evaluate m.npz 'my train.h5'", "evaluate"),
    ("cnncodes train 'unbalanced quote --report r", "train"),  # shlex fails: split on spaces
    ("/usr/bin/python script.py", UNKNOWN_TASK),
    (None, UNKNOWN_TASK)])
def test_v0_task_comes_from_the_command_line(command, task):
    assert guess_task({"command": command}) == task
    assert guess_task({"command": command, "task": "evaluate"}) == "evaluate"  # recorded wins
    assert guess_task({"command": command, "stores": {}}) == (
        "baseline" if task == UNKNOWN_TASK else task)


@pytest.mark.parametrize("task, with_test, rows", [
    ("train", False, False), ("train", True, False), ("evaluate", True, True),
    ("baseline", True, True)])
def test_each_task_round_trips(fitted, tmp_path, task, with_test, rows):  # noqa: F811
    model, ev = fitted
    table = [{"name": "digits pixels", "features": 64, "selection": model.selection,
              **{k: ev.metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1")}},
             {"name": "raw pixels 8x8 grey", "skipped": "not cheap"}] if rows else None
    extra = {"source": "digits", "stores": {"all": "x.h5"}} if task == "baseline" else \
        {"model_file": "m.npz"}
    d = build_report(model=model, task=task, evaluation=ev if with_test else None, rows=table,
                     extra=extra)
    assert d["task"] == task and d["schema_version"] == SCHEMA_VERSION
    rep = LinearReport.from_dict(d)
    assert rep.to_dict() == d and LinearReport.from_dict(rep.to_dict()) == rep
    write_report(d, tmp_path / "r", evaluation=ev if with_test else None, owner=task)
    back = load_report(tmp_path / "r")
    assert back.task == task and (back.test is not None) == with_test
    assert back.to_dict() == json.loads((tmp_path / "r" / "report.json").read_text())
    page = (tmp_path / "r" / "report.html").read_text()
    assert f"cnncodes {task}:" in page


def test_build_report_needs_a_known_task(fitted):  # noqa: F811
    with pytest.raises(OptionError, match="task must be one of train, evaluate, baseline"):
        build_report(model=fitted[0], task="advise")


@pytest.mark.parametrize("change, words", [
    (lambda d: d["model"].pop("classes"), "field model.classes is missing"),
    (lambda d: d["model"].update(classes="a,b"), "field model.classes must be a list"),
    (lambda d: d["test"].update(n="12"), 'field test.n must be an integer. Got "12"'),
    (lambda d: d["rows"][1]["selection"].update(best_C="big"),
     "field rows[1].selection.best_C must be a number"),
    (lambda d: d.update(split=None), "field split must be an object. Got null"),
    (lambda d: d.update(task="advise", schema_version=1), "field task must be one of"),
    (lambda d: d.update(schema_version=SCHEMA_VERSION + 1), "Upgrade cnncodes"),
    (lambda d: d.update(format="cnncodes-finetune-report"), "not a cnncodes-report file")])
def test_malformed_report_names_the_file_and_the_field(tmp_path, change, words):
    d = _v0("evaluate_raw")
    change(d)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ReportError) as e:
        load_report(path)
    assert isinstance(e.value, CnnCodesError)
    assert str(e.value).startswith(f"{path}: ") and words in str(e.value), str(e.value)


def test_not_json_and_missing_file_are_named(tmp_path):
    path = tmp_path / "report.json"
    path.write_text('{"model": ')
    with pytest.raises(ReportError, match=f"{path} is not valid JSON"):
        load_report(tmp_path)
    with pytest.raises(CnnCodesError, match="does not exist"):
        load_report(tmp_path / "nothing")


def test_write_report_refuses_a_report_off_the_schema(fitted, tmp_path):  # noqa: F811
    d = build_report(model=fitted[0], task="train")
    d["model"]["layer"] = 3
    with pytest.raises(ReportError, match="field model.layer must be a string"):
        write_report(d, tmp_path / "r")
    assert not (tmp_path / "r" / "report.json").exists()
