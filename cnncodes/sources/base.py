"""What every image source is: :class:`ImageSource` (ordered paths, labels, classes)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SourceError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm", ".jfif")
#: the extensions of JPEG files (the only ones ``--jpeg-scaling`` concerns)
JPEG_EXTENSIONS = (".jpg", ".jpeg", ".jfif")


def has_jpeg(paths: Iterable[str]) -> bool:
    """Whether any of ``paths`` names a JPEG file (by its extension, any case)."""
    return any(p.lower().endswith(JPEG_EXTENSIONS) for p in paths)


#: Label of an unlabelled image (flat folders, unlabelled list files).
UNLABELLED = -1


def label_index(names: list[str | None], classes: Sequence[str] | None,
                where: str) -> tuple[np.ndarray, list[str]]:
    """Labels (int64, :data:`UNLABELLED` for None) of ``names`` against ``classes`` (default: the
    sorted names).

    Raises:
        SourceError: a name that is not among ``classes``, naming ``where``.
    """
    if classes is None:
        classes = sorted({n for n in names if n is not None})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({n for n in names if n is not None and n not in index})
    if unknown:
        raise SourceError(f"{where}: labels {unknown[:5]} are not among the classes "
                          f"{list(classes)[:10]}.")
    labels = np.array([index[n] if n is not None else UNLABELLED for n in names], np.int64)
    return labels, list(classes)


@dataclass
class ImageSource:
    """An ordered list of image files with optional labels.

    Attributes:
        root: folder the relative ``paths`` are relative to.
        paths: file paths as stored (posix, relative to ``root`` where possible).
        labels: int64 array, class index per path, ``-1`` where unlabelled.
        classes: class names, index = label.
        kind: ``tree``, ``flat`` or ``list``.
    """

    root: Path
    paths: list[str]
    labels: np.ndarray
    classes: list[str]
    kind: str
    ignored: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def abspath(self, i: int) -> Path:
        p = Path(self.paths[i])
        return p if p.is_absolute() else self.root / p


