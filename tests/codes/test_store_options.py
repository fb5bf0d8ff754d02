"""extract's store options (issue 27): one frozen object, each field's constraint declared once,
the fields also taken one by one as keywords (``extract(src, out, overwrite=True)``), bad values
refused with scikit-learn's message before any work."""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

import cnncodes
from cnncodes.codes.options import (
    STORE_CONSTRAINTS,
    STORE_FIELDS,
    StoreOptions,
    store_options,
)
from cnncodes.errors import OptionError

#: (option, values refused, values accepted): every store option has a row
CASES = {
    "dtype": (["float64", None, 32], ["float32", "float16"]),
    "compression": (["zstd", 9, True], ["gzip", "lzf", "none", None]),
    "overwrite": ([1, "yes", None], [True, False, np.bool_(True)]),
    "retry_failed": ([0, "no"], [True, False]),
    "repair": ([1, None], [True, False]),
    "verify": (["md5", 1, True], ["stat", "hash", None]),
    "add_source": ([1, "y"], [True, False]),
    "keep_missing": ([1, None], [True, False]),
    "commit_every": ([-1, -0.5, "600", True], [0, 0.0, 1.5, 600, None]),
}


def test_every_store_option_has_a_test_row():
    assert set(CASES) == set(STORE_CONSTRAINTS) == set(STORE_FIELDS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_store_option_refuses_what_its_constraint_refuses(name):
    bad, good = CASES[name]
    for value in good:
        assert getattr(StoreOptions(**{name: value}), name) == value
    for value in bad:
        with pytest.raises(OptionError, match=rf"^The '{name}' parameter of StoreOptions must "
                                              rf"be .+\. Got {re.escape(repr(value))} instead\.$"):
            StoreOptions(**{name: value})
    with pytest.raises(OptionError, match=rf"'{name}' parameter of StoreOptions"):
        StoreOptions().replace(**{name: bad[0]})  # frozen, and replace() checks too


def test_keyword_fields_override_the_object_and_extras_are_returned():
    base = StoreOptions(dtype="float16", commit_every=None)
    sopts, rest = store_options(base, {"overwrite": True, "command": "x"}, where="extract",
                                allow=("command",))
    assert sopts == StoreOptions(dtype="float16", commit_every=None, overwrite=True)
    assert rest == {"command": "x"} and base.overwrite is False  # base is unchanged
    assert store_options(None, {}, where="extract")[0] == StoreOptions()


def test_a_bad_store_argument_or_unknown_option_is_named():
    with pytest.raises(TypeError, match=r"^extract\(\): store must be a StoreOptions\. Got dict "
                                        r"instead\.$"):
        store_options({"overwrite": True}, {}, where="extract")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"extract\(\) got an unexpected option 'overwrit'; "
                                        r"valid options are .*overwrite"):
        store_options(None, {"overwrit": True}, where="extract")


def test_extract_takes_the_object_and_refuses_bad_values_before_any_work(tmp_path):
    params = inspect.signature(cnncodes.extract).parameters
    assert "store" in params and not set(STORE_FIELDS) & set(params)  # fields: in the object
    assert len(params) <= 12
    src, out = tmp_path / "missing", tmp_path / "c.h5"  # no source: nothing else is looked at
    for bad in ({"dtype": "float64"}, {"verify": "md5"}, {"commit_every": -1}):
        with pytest.raises(OptionError, match=rf"^The '{next(iter(bad))}' parameter of "
                                              r"extract\(\) must be "):
            cnncodes.extract(src, out, **bad)
    with pytest.raises(TypeError, match="store must be a StoreOptions"):
        cnncodes.extract(src, out, store="overwrite")
    with pytest.raises(TypeError, match=r"unexpected option 'overwrit'.*keep_missing"):
        cnncodes.extract(src, out, overwrit=True)
    assert not out.exists() and not out.parent.joinpath("c.h5.parts").exists()


def test_store_options_is_public():
    assert cnncodes.StoreOptions is StoreOptions
