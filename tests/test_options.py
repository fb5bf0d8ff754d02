"""Shared options: one default per field, keyword fields sorted into the two objects, clear
errors, and each option's constraint declared once (scikit-learn's parameter validation)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from cnncodes.errors import CnnCodesError, OptionError
from cnncodes.options import (
    BACKBONE_FIELDS,
    CONSTRAINTS,
    RUNTIME_FIELDS,
    BackboneOptions,
    RuntimeOptions,
    describe,
    parse_flag,
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
    with pytest.raises(OptionError, match=rf"The '{field}' parameter of {cls.__name__} must be "
                                          r".*Got .* instead\.") as e:
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


# --------------------------------------------------------------- each constraint, declared once

#: (option, values refused, values accepted): every entry of CONSTRAINTS has a row
CASES = {
    "backbone": ([3, None], ["resnet18"]),
    "weights": ([3, 1.5], ["random", None, Path("w.pth")]),
    "layers": ([3, [1, "pool"]], ["pool", ("stage3", "pool"), ["pool"], None]),
    "pooling": (["mean", 1], ["avg", "max", "avgmax", "none"]),
    "input_size": ([8, 15, 32.0, "64", True], [16, 224, None, np.int64(96)]),
    "batch_size": ([0, -1, 2.5, "64", True, None], [1, 64, np.int32(8)]),
    "num_workers": ([-1, 1.0, "2"], [0, 4, None]),
    "device": ([0, None], ["cpu", "auto", "cuda:1", torch.device("cpu")]),
    "precision": (["fp8", None], ["auto", "fp32", "fp16", "bf16"]),
    "threads": ([0, 2.0, "4"], [1, 8, None]),
    "decoder": (["cv2", None], ["auto", "tensor", "pil"]),
    "max_pixels": ([-1, 1e6, "100"], [0, 1_000_000, None]),
    "progress": ([1, "yes", None], [True, False, np.bool_(True)]),
    "engine": (["tensorrt", None], ["auto", "torch", "onnxruntime"]),
    "jpeg_scaling": (["dct2", None, 1], ["auto", "dct", "off"]),
}


def test_every_constraint_has_a_test_row():
    assert set(CASES) == set(CONSTRAINTS) == set(BACKBONE_FIELDS) | set(RUNTIME_FIELDS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_option_refuses_what_its_constraint_refuses(name):
    cls = BackboneOptions if name in BACKBONE_FIELDS else RuntimeOptions
    bad, good = CASES[name]
    for value in good:
        assert getattr(cls(**{name: value}), name) == (
            tuple(value) if isinstance(value, list) else value)
    for value in bad:
        with pytest.raises(OptionError, match=rf"^The '{name}' parameter of {cls.__name__} must "
                                              rf"be .+\. Got {re.escape(repr(value))} instead\.$"):
            cls(**{name: value})


def test_the_message_is_scikit_learns_and_names_the_entry_point():
    with pytest.raises(OptionError) as e:
        RuntimeOptions(batch_size=2.5)
    assert str(e.value) == ("The 'batch_size' parameter of RuntimeOptions must be an int in the "
                            "range [1, inf). Got 2.5 instead.")
    with pytest.raises(OptionError, match=r"^The 'batch_size' parameter of extract\(\) must be an "
                                          r"int in the range \[1, inf\)\. Got '64' instead\.$"):
        split_options(None, None, {"batch_size": "64"}, where="extract")
    with pytest.raises(OptionError, match="'num_workers' parameter of .* or None. Got -1"):
        RuntimeOptions(num_workers=-1)
    # replace() checks too: a frozen options object can never hold a bad value
    with pytest.raises(OptionError, match="'threads' parameter"):
        RuntimeOptions().replace(threads=0)


@pytest.mark.parametrize("call", ["extract", "extract_arrays", "advise"])
def test_library_entry_points_refuse_bad_values_before_any_work(call, tmp_path):
    import cnncodes

    fn = getattr(cnncodes, call)
    args = (tmp_path / "missing", tmp_path / "c.h5") if call == "extract" else (tmp_path,)
    for bad in ({"batch_size": 2.5}, {"batch_size": "64"}, {"input_size": 8.0}):
        with pytest.raises(OptionError, match=rf"'{next(iter(bad))}' parameter of {call}\(\)"):
            fn(*args, **bad)


@pytest.mark.parametrize("flag, value, name", [
    ("--batch-size", "2.5", "batch_size"), ("--batch-size", "0", "batch_size"),
    ("--workers", "-1", "num_workers"), ("--threads", "0", "threads"),
    ("--max-pixels", "-5", "max_pixels"), ("--input-size", "8", "input_size"),
])
def test_the_cli_parses_flags_with_the_same_constraints(flag, value, name, tmp_path, capsys):
    from cnncodes.cli import main

    with pytest.raises(SystemExit) as e:
        main(["extract", str(tmp_path), "-o", str(tmp_path / "c.h5"), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err
    assert f"must be {describe(CONSTRAINTS[name])}. Got {value!r} instead." in err


def test_the_cli_takes_none_and_auto_where_none_is_allowed():
    assert parse_flag("num_workers")("auto") is None
    assert parse_flag("max_pixels")("none") is None
    assert parse_flag("batch_size")("16") == 16
