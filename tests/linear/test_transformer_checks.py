"""scikit-learn's ``check_estimator`` on ``CNNCodes`` through an adapter for image inputs.

``check_estimator`` feeds numeric arrays; :class:`ArrayImages` writes each row as a small PNG (named
by the hash of the row, so a row is one file whatever the call) and hands the paths to a
``CNNCodes``. What is checked is CNNCodes' behaviour and tags: shapes, dtypes (its
``preserves_dtype`` tag says float32, what it returns), refit, clone, pickling, subset invariance,
n_features_in_ handling and input validation of the adapter.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.estimator_checks import check_estimator
from sklearn.utils.validation import check_is_fitted, validate_data

from cnncodes import CNNCodes

#: where ArrayImages writes its PNGs (a test's tmp_path, set by the fixture below)
FOLDER: list[Path] = []


class ArrayImages(TransformerMixin, BaseEstimator):
    """Rows of a numeric array as grey images -> ``CNNCodes`` (random-init ResNet-18, 32 px)."""

    def __init__(self, layer: str = "pool", input_size: int = 32):
        self.layer = layer
        self.input_size = input_size

    def _paths(self, X: np.ndarray) -> list[str]:
        folder = FOLDER[-1]
        out = []
        for row in np.asarray(X, np.float64):
            name = hashlib.sha1(row.tobytes()).hexdigest() + ".png"
            path = folder / name
            if not path.exists():
                pix = np.clip(128 + 40 * row, 0, 255).astype(np.uint8)
                Image.fromarray(np.tile(pix, (4, 1))).save(path)
            out.append(str(path))
        return out

    def fit(self, X: Any, y: Any = None) -> ArrayImages:
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        self.codes_ = CNNCodes("resnet18", weights="random", layer=self.layer,
                               input_size=self.input_size, engine="torch",
                               num_workers=0).fit(self._paths(X))
        self.n_features_out_ = self.codes_.n_features_out_
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self.codes_.transform(self._paths(X))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags = CNNCodes().__sklearn_tags__().transformer_tags
        return tags


def test_cnncodes_tags_say_what_it_returns():
    tags = CNNCodes().__sklearn_tags__()
    assert tags.transformer_tags.preserves_dtype == ["float32"]
    assert tags.input_tags.string and tags.input_tags.one_d_array
    assert not tags.input_tags.two_d_array and tags.requires_fit


def test_check_estimator_through_the_image_adapter(tmp_path):
    FOLDER.append(tmp_path)
    try:
        results = check_estimator(ArrayImages(), on_fail=None, on_skip=None)
    finally:
        FOLDER.pop()
    failed = [f"{r['check_name']}: {r['exception']}" for r in results if r["status"] == "failed"]
    assert not failed, "\n".join(failed)
    passed = [r for r in results if r["status"] == "passed"]
    assert len(passed) >= 40 and any(
        r["check_name"] == "check_transformer_preserve_dtypes" for r in passed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_adapter_returns_float32_codes(tmp_path, dtype):
    FOLDER.append(tmp_path)
    try:
        X = np.random.default_rng(0).normal(size=(3, 5)).astype(dtype)
        out = ArrayImages().fit_transform(X)
    finally:
        FOLDER.pop()
    assert out.dtype == np.float32 and out.shape == (3, 512)
