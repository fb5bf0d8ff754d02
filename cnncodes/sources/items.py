"""One item of a source, decoded and preprocessed, or the reason it could not be
(:func:`decode_item`), and :class:`SourceItems`, the dataset over a source that the torch loader's
:class:`~cnncodes.sources.loader.ImageDataset` and the torch-free
:class:`~cnncodes.codes.light.LightDataset` share; they differ only in :meth:`SourceItems.prepare`
(no torch here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from ..errors import DecodeError
from ..options import DEFAULT_MAX_PIXELS
from .folders import ImageSource
from .images import decode_rgb, load_rgb
from .preprocessing import Preprocessing
from .tarshards import TarShardSource


def decode_item(source: ImageSource, i: int, preprocess: Callable[[Image.Image], Any], *,
                max_pixels: int | None, draft_to: int | None) -> tuple[int, Any, str | None]:
    """``(i, preprocess(image), None)``, or ``(i, None, reason)`` when item ``i`` cannot be read
    (a tar member by offset, else the file); never raises for one bad file."""
    try:
        if isinstance(source, TarShardSource):  # a member, read by offset
            img = decode_rgb(source.open_member(i), name=source.paths[i], max_pixels=max_pixels,
                             draft_to=draft_to)
        else:
            img = load_rgb(source.abspath(i), max_pixels=max_pixels, draft_to=draft_to)
        return i, preprocess(img), None
    except DecodeError as e:
        return i, None, str(e)
    except Exception as e:  # noqa: BLE001 - never let one file stop the run
        return i, None, f"preprocessing error: {type(e).__name__}: {e}"


class SourceItems:
    """Items ``(index, prepared image | None, failure reason | None)`` of an :class:`ImageSource`.

    ``draft_to``: JPEGs at least twice this (shorter side) are decoded DCT-scaled to keep it
    (:func:`cnncodes.sources.images.load_rgb`); None decodes in full. Subclasses say what a
    decoded image becomes (:meth:`prepare`).
    """

    def __init__(self, source: ImageSource, preprocessing: Preprocessing, *,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, draft_to: int | None = None):
        self.source = source
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels
        self.draft_to = draft_to

    def __len__(self) -> int:
        return len(self.source)

    def prepare(self, img: Image.Image) -> Any:
        """The network's input for one decoded RGB image."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        return decode_item(self.source, i, self.prepare, max_pixels=self.max_pixels,
                           draft_to=self.draft_to)
