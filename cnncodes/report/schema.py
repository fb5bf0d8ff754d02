"""The schema of a classifier's ``report.json`` (train / evaluate / baseline): typed sections,
the task recorded explicitly, a ``schema_version``, and the one adapter from older files.

:func:`build_report <cnncodes.report.files.build_report>` makes a :class:`LinearReport` and
writes its :meth:`~LinearReport.to_dict`; every reader (the HTML page, ``load_report``) goes through
:meth:`LinearReport.from_dict`, which checks each field's type and raises :class:`ReportError`
naming the file and the field. A file without ``schema_version`` (written before it existed, v0)
goes through :func:`adapt_v0` first: the only place that guesses the task from the command line.

Each section keeps the keys it does not type in ``extra`` (written back unchanged), so a field
added by a writer needs no schema change until a reader wants it typed. The advice, fall-through
and audit sections stay plain dicts here (:mod:`cnncodes.report.advice` owns the advice's shape).
A fine-tuning run's ``report.json`` has its own schema on these sections:
:mod:`cnncodes.report.finetune_schema`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from ..errors import ReportError

#: the version :meth:`LinearReport.to_dict` writes (files without one are version 0)
SCHEMA_VERSION = 1
#: ``report["format"]`` of a classifier report
REPORT_FORMAT = "cnncodes-report"
#: the tasks that write a classifier report
TASKS = ("train", "evaluate", "baseline")
#: the task of a version-0 report whose command line does not name one (built through the API)
UNKNOWN_TASK = "linear classifier"

S = TypeVar("S", bound="Section")


def _is_section(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, Section)


def _kind(hint: Any) -> str:
    """A type hint in words, for error messages."""
    if hint is float:
        return "a number"
    if hint is int:
        return "an integer"
    if hint is str:
        return "a string"
    if hint is bool:
        return "true or false"
    origin = typing.get_origin(hint)
    if origin is list:
        return "a list"
    if origin is dict or _is_section(hint):
        return "an object"
    return str(hint)


def _at(where: str, key: str) -> str:
    """The dotted name of field ``key`` inside ``where`` (the top level is ``""``)."""
    return f"{where}.{key}" if where else key


def _field(where: str) -> str:
    return f"field {where}" if where else "the report"


def _value(hint: Any, value: Any, where: str) -> Any:
    """``value`` checked against ``hint`` (sections and lists of sections built)."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _value(args[0], value, where)
    if value is None:
        raise ReportError(f"{_field(where)} must be {_kind(hint)}. Got null instead.")
    if _is_section(hint):
        return hint.from_dict(value, where=where)
    if origin is list:
        if not isinstance(value, list):
            raise ReportError(f"{_field(where)} must be a list. Got {type(value).__name__} "
                          "instead.")
        (item,) = typing.get_args(hint) or (Any,)
        return [_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ReportError(f"{_field(where)} must be an object. Got {type(value).__name__} "
                              "instead.")
        return dict(value)
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) if hint is float
          else isinstance(value, int) and not isinstance(value, bool) if hint is int
          else isinstance(value, hint))
    if not ok:
        raise ReportError(f"{_field(where)} must be {_kind(hint)}. Got "
                          f"{json.dumps(value)[:60]} instead.")
    return value  # an integer stays one where a number is expected (written back as read)


def _plain(v: Any) -> Any:
    if isinstance(v, Section):
        return v.to_dict()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


class Section:
    """A typed part of a report: typed fields, the other keys in ``extra``."""

    #: typed fields written as ``null`` when None (the others are left out)
    KEEP_NULL: ClassVar[tuple[str, ...]] = ()
    extra: dict[str, Any]
    #: every section is a dataclass (declared for the type checker; set by ``@dataclass``)
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    @classmethod
    def from_dict(cls: type[S], data: Any, *, where: str = "") -> S:
        """The section from its JSON object.

        Raises:
            ReportError: ``data`` is not an object, a required field is missing or a field has
                the wrong type (the message names the field as ``where.key``).
        """
        if not isinstance(data, Mapping):
            raise ReportError(f"{_field(where)} must be an object. Got {type(data).__name__} "
                              "instead.")
        hints = typing.get_type_hints(cls)
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "extra":
                continue
            if f.name not in data:
                if f.default is dataclasses.MISSING and \
                        f.default_factory is dataclasses.MISSING:
                    raise ReportError(f"{_field(_at(where, f.name))} is missing (it is "
                                      "required).")
                continue
            kw[f.name] = _value(hints[f.name], data[f.name], _at(where, f.name))
        names = {f.name for f in dataclasses.fields(cls)}
        kw["extra"] = {k: v for k, v in data.items() if k not in names}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: typed fields (None ones left out unless in ``KEEP_NULL``), then
        ``extra``."""
        out = {f.name: _plain(getattr(self, f.name))
               for f in dataclasses.fields(self)
               if f.name != "extra" and (getattr(self, f.name) is not None
                                         or f.name in self.KEEP_NULL)}
        out.update(self.extra)
        return out


@dataclass
class ModelInfo(Section):
    """What the classifier was trained on: backbone, weights, layer, preprocessing, classes."""

    layer: str
    classes: list[Any]
    model: str | None = None
    backbone: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    pooling: str | None = None
    input_size: Any = None
    preprocessing: Any = None
    n_features: int | None = None
    train_store: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    KEEP_NULL = ("model", "backbone", "weights", "weights_sha256", "pooling", "input_size",
                 "preprocessing", "n_features", "train_store")


@dataclass
class Split(Section):
    """How the labelled rows were split (``all``, ``holdout``, ``predefined``)."""

    kind: str | None = None
    n_train: int | None = None
    n_test: int | None = None
    test_size: float | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Selection(Section):
    """The C search: the chosen C and its CV score, where the search ran, the pipeline."""

    model: str | None = None
    best_C: float | None = None
    best_cv_score: float | None = None
    cv: Any = None
    scoring: str | None = None
    train_time_s: float | None = None
    c_at_grid_edge: str | None = None
    compute: dict[str, Any] | None = None
    standardize: Any = None
    class_weight: Any = None
    pca: Any = None
    steps: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    KEEP_NULL = ("class_weight", "pca")


@dataclass
class TestResult(Section):
    """The test part: accuracy (and its interval in ``extra``), per-class table, confusion."""

    accuracy: float | None = None
    n: int | None = None
    source: str | None = None
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    classes: list[Any] = field(default_factory=list)
    confusion_matrix: list[Any] = field(default_factory=list)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    KEEP_NULL = ("accuracy", "n", "balanced_accuracy", "macro_f1")


@dataclass
class ResultRow(Section):
    """One compared method (codes of a layer, raw pixels, a fine-tuned net): accuracy with its
    interval, the C search that made it, its time, or why it was skipped."""

    name: str
    kind: str | None = None
    model: str | None = None
    features: int | None = None
    accuracy: float | None = None
    accuracy_ci95: list[float] | None = None
    n_test: int | None = None
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    selection: Selection | None = None
    wall_time_s: float | None = None
    load_time_s: float | None = None
    skipped: str | None = None
    message: str | None = None
    status: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_raw_pixels(self) -> bool:
        """Whether the row is the raw-pixel baseline."""
        return self.name.startswith("raw pixels")


@dataclass
class FallThrough(Section):
    """The baseline's fall-through: the linear probe against full fine-tuning on the same split
    (``status`` ``ran`` / ``running``), or why it was ``skipped`` and the command to run."""

    status: str | None = None
    size: dict[str, Any] = field(default_factory=dict)
    forced: bool = False
    linear_probe: ResultRow | None = None
    finetune: ResultRow | None = None
    verdict: str | None = None
    message: str | None = None
    command: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LinearReport(Section):
    """A classifier's ``report.json``: provenance, the task, model, split, C search, test
    results and comparison rows, and the baseline's own sections."""

    task: str
    model: ModelInfo
    split: Split
    selection: Selection
    schema_version: int = SCHEMA_VERSION
    format: str = REPORT_FORMAT
    created: str | None = None
    cnncodes: str | None = None
    command: str | None = None
    versions: dict[str, Any] | None = None
    source: str | None = None
    test: TestResult | None = None
    rows: list[ResultRow] | None = None
    codes_vs_pixels: dict[str, Any] | None = None
    incomplete_stores: list[dict[str, Any]] | None = None
    stores: dict[str, Any] | None = None
    failures: list[Any] | None = None
    advice: dict[str, Any] | None = None
    advice_use: dict[str, Any] | None = None
    fall_through: FallThrough | None = None
    audit: dict[str, Any] | None = None
    model_file: str | None = None
    files: dict[str, Any] | None = None
    wall_time_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "") -> LinearReport:
        """The report from ``report.json``'s content, version 0 adapted (:func:`adapt_v0`).

        Raises:
            ReportError: not a classifier report, a newer schema, an unknown task, or a field
                missing or of the wrong type (named, e.g. ``field model.classes``).
        """
        version = read_version(data, "format", REPORT_FORMAT, SCHEMA_VERSION)
        rep = super().from_dict(adapt_v0(data) if version == 0 else data, where=where)
        if rep.task not in (*TASKS, UNKNOWN_TASK):
            raise ReportError(f"field task must be one of {', '.join(TASKS)}. Got {rep.task!r} "
                              "instead.")
        return rep

    def data_source(self) -> Any:
        """What the report is about: the image source, else the test codes, else the train
        store."""
        return self.source or (self.test.source if self.test else None) or \
            self.model.train_store

    def model_path(self) -> Any:
        return self.model_file or (self.files or {}).get("model")


def read_version(data: Any, key: str, kind: str, newest: int) -> int:
    """The ``schema_version`` of a report's content (0: none), after checking it is a JSON
    object of this ``kind`` (``data[key]``, when given) and not newer than ``newest``.

    Raises:
        ReportError: another kind of report, a newer or malformed version."""
    if not isinstance(data, Mapping):
        raise ReportError(f"the report must be a JSON object. Got {type(data).__name__} "
                          "instead.")
    if data.get(key, kind) != kind:
        raise ReportError(f"this is not a {kind} file: field {key} is {data.get(key)!r}.")
    version = data.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise ReportError(f"field schema_version must be a whole number. Got {version!r} "
                          "instead.")
    if version > newest:
        raise ReportError(f"field schema_version is {version}; this cnncodes reads up to "
                          f"{newest}. Upgrade cnncodes to read it.")
    return version


def guess_task(data: Mapping[str, Any]) -> str:
    """A version-0 report's task: recorded, else the first task word of its command line, else
    ``baseline`` when it lists stores (only a baseline does), else :data:`UNKNOWN_TASK`."""
    if data.get("task"):
        return str(data["task"])
    cmd = data.get("command")
    if isinstance(cmd, str):
        try:
            words = shlex.split(cmd)
        except ValueError:
            words = cmd.split()
        for w in words[1:]:
            if w in TASKS:
                return w
    return "baseline" if "stores" in data else UNKNOWN_TASK


def adapt_v0(data: Mapping[str, Any]) -> dict[str, Any]:
    """A report written before ``schema_version`` (v0) in the current shape: the task made
    explicit (:func:`guess_task`); every other section already has its current shape."""
    return {**data, "task": guess_task(data), "schema_version": SCHEMA_VERSION}


def read_report_file(path: str | os.PathLike, cls: type[S]) -> S:
    """``cls.from_dict`` of the JSON in ``path`` (a folder: its ``report.json``), errors naming the
    file (the readers of both report kinds)."""
    from ..errors import NotFoundError

    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise NotFoundError(f"{p} does not exist; pass a report folder or its report.json.") \
            from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"{p} is not valid JSON ({e}); write the report again.") from e
    try:
        return cls.from_dict(data)
    except ReportError as e:
        raise ReportError(f"{p}: {e} Write the report again with this cnncodes.") from e


def load_report(path: str | os.PathLike) -> LinearReport:
    """Read a classifier's ``report.json`` (a folder or the file) through the schema.

    Raises:
        ReportError: not JSON, or not a classifier report of this schema (names the file and
            the field).  NotFoundError: there is no such file.
    """
    return read_report_file(path, LinearReport)

