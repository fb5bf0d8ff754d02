"""The package root: every public name resolves, importing it is cheap and changes no global
state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cnncodes

REPO = Path(__file__).resolve().parent.parent


def test_every_public_name_resolves_to_its_defining_module():
    for name in cnncodes.__all__:
        obj = getattr(cnncodes, name)
        mod = getattr(obj, "__module__", None)
        if mod is not None and name != "__version__":
            assert mod.startswith("cnncodes."), (name, mod)
    assert sorted(cnncodes.__all__) == sorted(set(cnncodes.__all__))


def test_import_is_lazy_and_leaves_the_environment_alone():
    code = ("import json, os, sys\n"
            "before = dict(os.environ)\n"
            "import cnncodes\n"
            "print(json.dumps({'torch': 'torch' in sys.modules,"
            " 'sklearn': 'sklearn' in sys.modules,"
            " 'env_changed': dict(os.environ) != before, 'version': cnncodes.__version__}))\n")
    env = {k: v for k, v in os.environ.items() if k != "SCIPY_ARRAY_API"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {"torch": False, "sklearn": False, "env_changed": False,
                   "version": cnncodes.__version__}


def test_unknown_attribute_is_an_attribute_error_naming_it():
    try:
        cnncodes.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")
