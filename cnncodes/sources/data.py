"""Image sources and robust decoding.

Sources: a tree of class folders (labels = folder names, like torchvision's ImageFolder), a flat
folder of images (unlabelled), or a list file (``.txt``: one path per line, optionally
``path<TAB>label``; ``.csv``: ``path[,label]`` with an optional header). Order is deterministic and
sorted. Decoding never raises for a bad file: the failure (path and reason) is returned instead, so a
broken image can neither stop a run nor shift a row.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from ..errors import DecodeError
from ..options import DEFAULT_MAX_PIXELS
from .preprocessing import Preprocessing

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                    ".pgm", ".pbm", ".jfif")
LIST_EXTENSIONS = (".txt", ".csv", ".tsv", ".lst")
#: Default decompression-bomb limit (pixels); PIL's own default warning threshold.
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

    def describe(self) -> dict[str, Any]:
        return {"root": os.fspath(self.root), "kind": self.kind, "n": len(self.paths),
                "classes": len(self.classes)}


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _walk_images(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in filenames if _is_image(f))
    return sorted(out, key=lambda p: p.as_posix())


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def open_source(source: str | os.PathLike | Sequence[str | os.PathLike] | ImageSource,
                *, classes: Sequence[str] | None = None) -> ImageSource:
    """Find the images of ``source`` in a deterministic order.

    Args:
        source: a folder (class tree or flat), a list file, a sequence of paths, or an
            :class:`ImageSource` (returned as is).
        classes: fix the class list (e.g. a model's classes, so label indices match); labels not in
            it raise.

    Raises:
        FileNotFoundError: the source does not exist.
        ValueError: no images found, or a malformed list file (the line is named).
    """
    if isinstance(source, ImageSource):
        return source
    if not isinstance(source, (str, os.PathLike)):
        # absolute paths, root "/": stable whatever other paths a later call passes
        paths = [Path(p).resolve() for p in source]
        root = Path(os.sep)
        return ImageSource(root, [p.as_posix() for p in paths],
                           np.full(len(paths), UNLABELLED, np.int64), list(classes or []), "list")
    src = Path(source).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"Image source {os.fspath(source)!r} does not exist; pass a folder "
                                "of images, a folder of class folders, or a .txt/.csv list.")
    if src.is_file():
        if src.suffix.lower() not in LIST_EXTENSIONS:
            raise ValueError(f"{src} is a file but not a list ({', '.join(LIST_EXTENSIONS)}); pass "
                             "the folder that contains the images, or a list file of paths.")
        return _from_list(src, classes)
    return _from_folder(src.resolve(), classes)


def _label_index(names: list[str | None], classes: Sequence[str] | None,
                 where: str) -> tuple[np.ndarray, list[str]]:
    if classes is None:
        classes = sorted({n for n in names if n is not None})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({n for n in names if n is not None and n not in index})
    if unknown:
        raise ValueError(f"{where}: labels {unknown[:5]} are not among the classes "
                         f"{list(classes)[:10]}.")
    labels = np.array([index[n] if n is not None else UNLABELLED for n in names], np.int64)
    return labels, list(classes)


def _from_folder(root: Path, classes: Sequence[str] | None) -> ImageSource:
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    subdirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    top_images = [Path(e.path) for e in entries if e.is_file() and _is_image(e.name)]
    per_class = {d.name: _walk_images(Path(d.path)) for d in subdirs}
    per_class = {k: v for k, v in per_class.items() if v}
    if per_class:
        empty = [d.name for d in subdirs if d.name not in per_class]
        if empty:
            log.warning("%s: class folders without images are ignored: %s", root, empty)
        if top_images:
            log.warning("%s: %d images directly in the root are ignored (not in a class folder)",
                        root, len(top_images))
        names: list[str | None] = []
        paths: list[str] = []
        for cls in sorted(per_class):
            for p in per_class[cls]:
                paths.append(_rel(p, root))
                names.append(cls)
        labels, cls_list = _label_index(names, classes, os.fspath(root))
        return ImageSource(root, paths, labels, cls_list, "tree",
                           [_rel(p, root) for p in top_images])
    if not top_images:
        raise ValueError(f"No images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)} "
                         "directly inside it and in class sub-folders).")
    paths = [_rel(p, root) for p in sorted(top_images, key=lambda p: p.name)]
    return ImageSource(root, paths, np.full(len(paths), UNLABELLED, np.int64),
                       list(classes or []), "flat")


def _from_list(path: Path, classes: Sequence[str] | None) -> ImageSource:
    root = path.resolve().parent
    rows: list[tuple[str, str | None]] = []
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix.lower() in (".csv", ".tsv"):
            reader = csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            lines = [r for r in reader if r and not r[0].startswith("#")]
            if lines and lines[0][0].strip().lower() in ("path", "file", "filename", "image"):
                header = [h.strip().lower() for h in lines[0]]
                lab_col = next((header.index(h) for h in ("label", "class", "target")
                                if h in header), None)
                lines = [[r[0]] + ([r[lab_col]] if lab_col is not None and lab_col < len(r)
                                   else []) for r in lines[1:]]
            for lineno, r in enumerate(lines, 1):
                rows.append((r[0].strip(), r[1].strip() if len(r) > 1 and r[1].strip() else None))
        else:
            for line in f:
                line = line.rstrip("\n").strip()
                if not line or line.startswith("#"):
                    continue
                p, _, lab = line.partition("\t")
                rows.append((p.strip(), lab.strip() or None))
    if not rows:
        raise ValueError(f"List file {path} names no images.")
    names = [lab for _, lab in rows]
    if any(n is None for n in names) and any(n is not None for n in names):
        first = next(i for i, n in enumerate(names) if n is None)
        raise ValueError(f"{path}: row {first + 1} ({rows[first][0]!r}) has no label while other "
                         "rows do; label every row or none.")
    labels, cls_list = _label_index(names, classes, os.fspath(path))
    paths = []
    for p, _ in rows:
        pp = Path(p).expanduser()
        paths.append(_rel(pp if pp.is_absolute() else root / pp, root))
    return ImageSource(root, paths, labels, cls_list, "list")


# --------------------------------------------------------------------------------------------
# Decoding


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind == "f":
        hi = 1.0 if np.nanmax(arr) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(arr) * (255.0 / hi), 0, 255).astype(np.uint8)
    hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return np.clip(arr.astype(np.float64) * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha composited on white, 16-bit scaled, CMYK converted."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if img.mode != "RGB":
        return img.convert("RGB")
    return img


def load_rgb(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open ``path`` as an 8-bit RGB PIL image with EXIF orientation applied.

    Raises:
        DecodeError: with a short reason (empty, not an image, truncated, too many pixels...).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except OSError as e:
        raise DecodeError(f"unreadable: {type(e).__name__}: {e}") from None
    if size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                w, h = img.size
                if max_pixels and w * h > max_pixels:
                    raise DecodeError(
                        f"decompression bomb: {w}x{h} = {w * h} pixels exceeds the limit of "
                        f"{max_pixels} (raise --max-pixels if the image is genuine)")
                img.seek(0)
                img.load()
                try:
                    img = ImageOps.exif_transpose(img)
                except Exception as e:  # noqa: BLE001 - a broken EXIF block is not fatal
                    log.debug("%s: EXIF orientation ignored (%s)", p, e)
                return to_rgb(img)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("not a recognised image (PIL cannot identify it)") from None
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb: {e}") from None
    except OSError as e:
        msg = str(e)
        if "truncated" in msg or "broken data stream" in msg or "EOF" in msg:
            raise DecodeError(f"truncated image: {msg}") from None
        raise DecodeError(f"unreadable: {type(e).__name__}: {msg}") from None
    except Exception as e:  # noqa: BLE001 - any decoder bug becomes a recorded failure
        raise DecodeError(f"decode error: {type(e).__name__}: {e}") from None


_INTERP = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
           "nearest": InterpolationMode.NEAREST, "lanczos": InterpolationMode.LANCZOS}


def preprocess_pil(img: Image.Image, pp: Preprocessing) -> torch.Tensor:
    """Resize (shorter side), centre-crop and return a uint8 CHW tensor (normalisation is batched)."""
    img = TF.resize(img, pp.resize, interpolation=_INTERP.get(pp.interpolation,
                                                              InterpolationMode.BILINEAR))
    img = TF.center_crop(img, [pp.crop, pp.crop])
    return TF.pil_to_tensor(img)


def normalize_batch(images: torch.Tensor, pp: Preprocessing, *, dtype: torch.dtype = torch.float32,
                    channels_last: bool = True) -> torch.Tensor:
    """uint8 NCHW -> normalised float NCHW on the images' device (channels_last memory if asked)."""
    mean = torch.tensor(pp.mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1) * 255
    std = torch.tensor(pp.std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1) * 255
    x = (images.to(torch.float32) - mean) / std
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


class ImageDataset(Dataset):
    """Items ``(index, uint8 CHW tensor | None, failure reason | None)`` for an :class:`ImageSource`."""

    def __init__(self, source: ImageSource, preprocessing: Preprocessing, *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.source = source
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            img = load_rgb(self.source.abspath(i), max_pixels=self.max_pixels)
            return i, preprocess_pil(img, self.preprocessing), None
        except DecodeError as e:
            return i, None, str(e)
        except Exception as e:  # noqa: BLE001 - never let one file stop the run
            return i, None, f"preprocessing error: {type(e).__name__}: {e}"


@dataclass
class Batch:
    """A collated batch: decoded images and the indices they belong to, plus the failures."""

    indices: list[int]
    images: torch.Tensor
    failures: list[tuple[int, str]]

    def pin_memory(self) -> Batch:
        return Batch(self.indices, self.images.pin_memory(), self.failures)


def collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> Batch:
    ok = [(i, t) for i, t, _ in items if t is not None]
    failures = [(i, r) for i, t, r in items if t is None]
    images = torch.stack([t for _, t in ok]) if ok else torch.empty(0, 3, 1, 1, dtype=torch.uint8)
    return Batch([i for i, _ in ok], images, [(i, str(r)) for i, r in failures])


def make_loader(dataset: ImageDataset, indices: Sequence[int], *, batch_size: int,
                num_workers: int, pin_memory: bool = False) -> DataLoader:
    """An ordered DataLoader over ``indices`` of ``dataset`` yielding :class:`Batch` objects."""
    sub = torch.utils.data.Subset(dataset, list(indices))
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw["prefetch_factor"] = 4
    return DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate, pin_memory=pin_memory, drop_last=False, **kw)


def truncated_policy() -> str:
    """How truncated files are treated in this process (recorded in provenance)."""
    return "accepted-grey-filled" if ImageFile.LOAD_TRUNCATED_IMAGES else "rejected"
