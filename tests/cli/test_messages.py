"""CLI messages in CLI words: the library's Python option names become the options the user
types (errors and logged warnings alike), and counts agree with their nouns ("1 image")."""

from __future__ import annotations

import argparse
import logging

from PIL import Image

from cnncodes.cli.common import cli_message, option_names


def test_plain_word_options_are_translated_only_as_name_equals_value():
    p = argparse.ArgumentParser()
    p.add_argument("--freeze", type=int)
    p.add_argument("--layers", "--layer", dest="layers")
    p.add_argument("--workers", dest="num_workers")
    names = option_names(p)
    assert names == {"freeze": "--freeze", "layers": "--layers", "num_workers": "--workers"}
    msg = ("freeze=5 but resnet18 has 4 stages; the layers freeze. Got layers='x' instead; "
           "num_workers must be >= 0 (a/freeze=1.png, x==freeze)")
    assert cli_message(msg, names) == (
        "--freeze 5 but resnet18 has 4 stages; the layers freeze. Got --layers 'x' instead; "
        "--workers must be >= 0 (a/freeze=1.png, x==freeze)")


def test_logged_warnings_name_the_commands_options(tmp_path, capsys):
    """A library warning logged while a command runs says ``--workers``, not ``num_workers``;
    the next command's names replace the previous one's."""
    from cnncodes.cli import main

    (tmp_path / "photos").mkdir()
    assert main(["info", str(tmp_path / "nope.h5")]) == 1  # sets up the handler for `info`
    capsys.readouterr()
    from cnncodes.cli.main import _setup_logging

    _setup_logging(0, False, {"num_workers": "--workers", "freeze": "--freeze"})
    logging.getLogger("cnncodes.sources").warning("num_workers=3 is more than needed; freeze=2")
    err = capsys.readouterr().err
    assert "cnncodes: --workers 3 is more than needed; --freeze 2" in err
    _setup_logging(0, False, {})
    logging.getLogger("cnncodes.sources").warning("num_workers=3")
    assert "cnncodes: num_workers=3" in capsys.readouterr().err


def test_one_of_a_thing_is_singular(tmp_path, caplog):
    from types import SimpleNamespace

    from cnncodes.report.store_info import format_extract_result
    from cnncodes.sources.folders import open_source

    root = tmp_path / "photos"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / c / "0.png")
    Image.new("RGB", (8, 8)).save(root / "loose.png")
    with caplog.at_level(logging.WARNING, logger="cnncodes"):
        open_source(root)
    assert "1 image directly in the root is ignored" in caplog.text
    res = SimpleNamespace(path="c.h5", rows=1, new=0, skipped=1, layers={"pool": 1280},
                          added=0, changed=0, retried=0, removed=0, missing=0, unverified=1,
                          failed=[], source_summary="")
    text = format_extract_result(res)
    assert "c.h5: 1 image;" in text and "note: 1 row was made before" in text
    assert "and is not checked" in text
