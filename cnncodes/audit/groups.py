"""The pixel check of the near-duplicate groups within one set: which members are the same
picture as another member, and which only have look-alike codes.

A group is a connected component of the pairs the neighbour search found at or above the
threshold, so two members of one group need not be alike at all (A looks like B, B like C). Each
of those pairs is compared in pixels (:mod:`cnncodes.audit.pixels`), not each member against one
representative: a copy of a member other than the representative is still confirmed, and the
pairs are already bounded (at most ``k`` per row). The cost is one decode per grouped image (the
thumbnails are cached) plus a 16 x 16 difference per pair: less than the extraction already paid
for those images (a decode, a resize and a forward pass each).

A member is the same picture (True) when one of its pairs is within :data:`PIXEL_BOUND`, not
(False) when every pair with a readable image is farther, and unknown (NaN difference) when
it or all its partners cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .findings import groups_from_pairs
from .pixels import PIXEL_BOUND, pair_differences_cached


@dataclass
class GroupCheck:
    """The pairs ``(a[i], b[i])`` linking the groups, their thumbnail ``diff`` (NaN: unread), and
    per group and member (in the groups' order) the smallest difference to a member it is paired
    with (``member_diff``, NaN: unknown) and that member's row (``closest``, -1: none read)."""

    a: np.ndarray
    b: np.ndarray
    diff: np.ndarray
    member_diff: list[np.ndarray]
    closest: list[np.ndarray]

    def same_picture(self, g: int, bound: float = PIXEL_BOUND) -> list[bool | None]:
        """Group ``g``'s members: True (the same picture as another member), False (only
        look-alike codes), None (not read)."""
        return [None if np.isnan(d) else bool(d <= bound) for d in self.member_diff[g]]

    def confirmed(self, bound: float = PIXEL_BOUND) -> list[int]:
        """How many members of each group are the same picture as another member."""
        return [int(np.sum(d <= bound)) for d in self.member_diff]  # NaN compares False

    def extra_copies(self, n: int, bound: float = PIXEL_BOUND) -> int:
        """Images that could go with one kept of each same picture: the confirmed pairs'
        connected components, each size - 1 (``n``: rows of the set)."""
        ok = self.diff <= bound
        return int(sum(len(c) - 1 for c in groups_from_pairs(n, self.a[ok], self.b[ok])))


def check_groups(groups: list[np.ndarray], a: np.ndarray, b: np.ndarray,
                 paths: Sequence[str | os.PathLike]) -> GroupCheck:
    """Compare in pixels the pairs ``(a, b)`` (rows of ``paths``) that linked ``groups``."""
    diff = pair_differences_cached(paths, a, b) if len(a) else np.zeros(0, np.float32)
    n = len(paths)
    best = np.full(n, np.nan, np.float32)
    closest = np.full(n, -1, np.int64)
    rows, other, d = np.concatenate([a, b]), np.concatenate([b, a]), np.concatenate([diff, diff])
    ok = ~np.isnan(d)
    rows, other, d = rows[ok], other[ok], d[ok]
    order = np.lexsort((d, rows))  # by row, then the smallest difference first
    first = order[np.unique(rows[order], return_index=True)[1]]
    best[rows[first]], closest[rows[first]] = d[first], other[first]
    return GroupCheck(a, b, diff, [best[g] for g in groups], [closest[g] for g in groups])
