"""The pixel check of the near-duplicate groups within one set: which members are the same
picture as another member, and which only have look-alike codes.

A group is a connected component of the pairs the neighbour search found at or above the
threshold, so two members of one group need not be alike at all (A looks like B, B like C). Each
of those pairs is compared in pixels (:mod:`cnncodes.audit.pixels`), not each member against one
representative: a copy of a member other than the representative is still confirmed, and the
pairs are already bounded (at most ``k`` per row). The cost is one decode per grouped image (the
thumbnails are cached) plus a 16 x 16 difference per pair: less than the extraction already paid
for those images (a decode, a resize and a forward pass each).

A member is the same picture (True) when one of its pairs is within its bound
(:func:`~cnncodes.audit.pixels.pair_bound`: 4 grey levels for two images of one size, 7 for a
resize), not (False) when every pair with a readable image is farther, and unknown (NaN
difference) when it or all its partners cannot be read. A member's closest member is the one
whose pair is the farthest inside its bound (or the least outside it).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .findings import groups_from_pairs
from .pixels import PixelPairs, pair_differences_cached


@dataclass
class GroupCheck:
    """The pairs ``(a[i], b[i])`` linking the groups, their thumbnail ``diff`` and ``bound`` (NaN:
    unread), and per group and member (in the groups' order) the difference to its closest
    member (``member_diff``, NaN: unknown), that pair's bound (``member_bound``) and that
    member's row (``closest``, -1: none read)."""

    a: np.ndarray
    b: np.ndarray
    diff: np.ndarray
    bound: np.ndarray
    member_diff: list[np.ndarray]
    member_bound: list[np.ndarray]
    closest: list[np.ndarray]

    def same_picture(self, g: int) -> list[bool | None]:
        """Group ``g``'s members: True (the same picture as another member), False (only
        look-alike codes), None (not read)."""
        return [None if np.isnan(d) else bool(d <= m)
                for d, m in zip(self.member_diff[g], self.member_bound[g], strict=True)]

    def confirmed(self) -> list[int]:
        """How many members of each group are the same picture as another member."""
        return [int(np.sum(d <= m))  # NaN compares False
                for d, m in zip(self.member_diff, self.member_bound, strict=True)]

    def extra_copies(self, n: int) -> int:
        """Images that could go with one kept of each same picture: the confirmed pairs'
        connected components, each size - 1 (``n``: rows of the set)."""
        ok = self.diff <= self.bound
        return int(sum(len(c) - 1 for c in groups_from_pairs(n, self.a[ok], self.b[ok])))


def check_groups(groups: list[np.ndarray], a: np.ndarray, b: np.ndarray,
                 paths: Sequence[str | os.PathLike]) -> GroupCheck:
    """Compare in pixels the pairs ``(a, b)`` (rows of ``paths``) that linked ``groups``."""
    px = pair_differences_cached(paths, a, b) if len(a) else PixelPairs.empty()
    n = len(paths)
    best = np.full(n, np.nan, np.float32)
    best_bound = np.full(n, np.nan, np.float32)
    closest = np.full(n, -1, np.int64)
    rows, other = np.concatenate([a, b]), np.concatenate([b, a])
    d, m = np.concatenate([px.diff, px.diff]), np.concatenate([px.bound, px.bound])
    ok = ~np.isnan(d)
    rows, other, d, m = rows[ok], other[ok], d[ok], m[ok]
    order = np.lexsort((d - m, rows))  # by row, then the pair farthest inside its bound first
    first = order[np.unique(rows[order], return_index=True)[1]]
    best[rows[first]], best_bound[rows[first]] = d[first], m[first]
    closest[rows[first]] = other[first]
    return GroupCheck(a, b, px.diff, px.bound, [best[g] for g in groups],
                      [best_bound[g] for g in groups], [closest[g] for g in groups])
