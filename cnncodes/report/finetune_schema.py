"""The schema of a fine-tuning run's ``report.json`` (written by :mod:`cnncodes.finetuning`):
:class:`FinetuneReport` with its split and settings, read back by :func:`load_finetune_report`.

The typed-section machinery (:class:`~cnncodes.report.schema.Section`, field checks naming the
field, ``extra`` for untyped keys) is the classifier report's, in :mod:`cnncodes.report.schema`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ReportError
from ..finetuning.config import REPORT_KIND as FINETUNE_KIND
from ..finetuning.config import REPORT_SCHEMA_VERSION as FINETUNE_VERSION
from .schema import REPORT_FORMAT, Section, read_report_file, read_version


@dataclass
class RunSplit(Section):
    """A fine-tuning run's split: images per part and its seed."""

    train: int | None = None
    val: int | None = None
    test: int | None = None
    seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig(Section):
    """The fine-tuning settings the page shows (the rest of ``config.json`` in ``extra``)."""

    optimizer: str | None = None
    lr: float | None = None
    head_lr_mult: float | None = None
    batch_size: int | None = None
    freeze: Any = None
    epochs: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    KEEP_NULL = ("optimizer", "lr", "head_lr_mult", "batch_size", "freeze", "epochs")


@dataclass
class FinetuneReport(Section):
    """A fine-tuning run's ``report.json`` (written by :mod:`cnncodes.finetuning`): the run's
    state and status, its split, per-epoch history, test and validation accuracy, provenance."""

    state: str
    status: str
    task: str = "finetune"
    kind: str = FINETUNE_KIND
    schema_version: int = FINETUNE_VERSION
    message: str | None = None
    backbone: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    classes: list[Any] = field(default_factory=list)
    input_size: Any = None
    preprocessing: Any = None
    device: str | None = None
    precision: str | None = None
    world_size: int | None = None
    split: RunSplit = field(default_factory=RunSplit)
    param_groups: list[dict[str, Any]] | None = None
    trainable_params: int | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    val_accuracy: float | None = None
    val_accuracy_note: str | None = None
    test_accuracy: float | None = None
    test_accuracy_note: str | None = None
    per_class_test_accuracy: dict[str, Any] | None = None
    per_class_test_accuracy_note: str | None = None
    confusion_matrix: list[Any] | None = None
    seconds: float | None = None
    history: list[dict[str, Any]] | None = None
    failures: list[Any] | None = None
    config: RunConfig = field(default_factory=RunConfig)
    command: str | None = None
    versions: dict[str, Any] | None = None
    created: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    KEEP_NULL = ("message", "best_epoch", "val_accuracy", "test_accuracy",
                 "per_class_test_accuracy", "confusion_matrix")

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "") -> FinetuneReport:
        """The run's report from its ``report.json`` content (version 0: the task added).

        Raises:
            ReportError: not a fine-tuning report, a newer schema, or a field missing or of the
                wrong type (named).
        """
        if isinstance(data, Mapping) and data.get("format") == REPORT_FORMAT:
            raise ReportError(f"this is a classifier report (field format is {REPORT_FORMAT!r}), "
                              f"not a {FINETUNE_KIND} file; read it with load_report.")
        version = read_version(data, "kind", FINETUNE_KIND, FINETUNE_VERSION)
        if version == 0:
            data = {**data, "task": "finetune", "schema_version": FINETUNE_VERSION}
        rep = super().from_dict(data, where=where)
        if rep.task != "finetune":
            raise ReportError(f"field task must be finetune. Got {rep.task!r} instead.")
        return rep

    def notes(self) -> dict[str, str]:
        """Why an accuracy is missing: ``{"val_accuracy": note, ...}`` for those with a note."""
        return {k: v for k, v in (("val_accuracy", self.val_accuracy_note),
                                  ("test_accuracy", self.test_accuracy_note),
                                  ("per_class_test_accuracy",
                                   self.per_class_test_accuracy_note)) if v}


def load_finetune_report(path: str | os.PathLike) -> FinetuneReport:
    """Read a fine-tuning run's ``report.json`` (the run folder or the file) through the
    schema (errors as :func:`~cnncodes.report.schema.load_report`)."""
    return read_report_file(path, FinetuneReport)
