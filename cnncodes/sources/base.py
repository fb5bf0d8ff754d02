"""What every image source is: :class:`ImageSource` (ordered paths, labels, classes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm", ".jfif")


#: Label of an unlabelled image (flat folders, unlabelled list files).
UNLABELLED = -1


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


