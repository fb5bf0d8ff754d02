"""Shared options: one default per field, keyword fields sorted into the two objects, clear errors."""

from __future__ import annotations

import inspect

import pytest

from cnncodes.errors import CnnCodesError, OptionError
from cnncodes.options import (
    BACKBONE_FIELDS,
    RUNTIME_FIELDS,
    BackboneOptions,
    RuntimeOptions,
    split_options,
)


def test_keyword_fields_override_the_objects_and_extras_are_returned():
    b, r, rest = split_options("resnet18", RuntimeOptions(batch_size=8),
                               {"layers": ["layer3", "pool"], "device": "cpu", "dtype": "float16"},
                               where="extract", allow=("dtype",))
    assert b == BackboneOptions(backbone="resnet18", layers=("layer3", "pool"))
    assert r == RuntimeOptions(batch_size=8, device="cpu")
    assert rest == {"dtype": "float16"}
    b2, _, _ = split_options(b, None, {"pooling": "max"}, where="extract")
    assert (b2.backbone, b2.pooling, b.pooling) == ("resnet18", "max", "avg")  # b is unchanged


def test_an_unknown_option_names_itself_and_the_valid_ones():
    with pytest.raises(TypeError, match=r"extract\(\) got an unexpected option 'batchsize'.*"
                                        r"batch_size"):
        split_options(None, None, {"batchsize": 3}, where="extract")


@pytest.mark.parametrize("bad, field", [
    ({"pooling": "mean"}, "pooling"), ({"input_size": 8}, "input_size"),
    ({"batch_size": 0}, "batch_size"), ({"precision": "fp8"}, "precision"),
    ({"decoder": "cv2"}, "decoder"), ({"num_workers": -1}, "num_workers"),
])
def test_bad_values_say_what_is_valid_and_what_was_given(bad, field):
    cls = BackboneOptions if field in BACKBONE_FIELDS else RuntimeOptions
    with pytest.raises(OptionError, match=rf"{field} must be .*Got .* instead") as e:
        cls(**bad)
    assert isinstance(e.value, (CnnCodesError, ValueError))


def test_library_entry_points_take_the_options_objects_not_copies_of_their_fields():
    """The shared fields are declared once (here); entry points take the objects + **options."""
    import cnncodes
    for fn in (cnncodes.extract, cnncodes.extract_arrays):
        params = inspect.signature(fn).parameters
        assert "runtime" in params and "backbone" in params
        copies = (set(BACKBONE_FIELDS[1:]) | set(RUNTIME_FIELDS)) & set(params)
        assert not copies, (fn.__name__, copies)
