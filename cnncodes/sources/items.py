"""One item of a source, decoded and preprocessed, or the reason it could not be: the shared body
of the torch loader's :class:`~cnncodes.sources.loader.ImageDataset` and the torch-free
:class:`~cnncodes.codes.light.LightDataset` (no torch here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from ..errors import DecodeError
from .folders import ImageSource
from .images import decode_rgb, load_rgb
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
