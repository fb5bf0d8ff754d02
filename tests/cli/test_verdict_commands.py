"""The advisor's rendered next commands are commands of this CLI: every command
:func:`cnncodes.report.verdict_text.render` writes (for every route of the verdict, with non-default
options to repeat) parses with the real parser to the values the verdict names, whether spelled with
the parser's own option names (:func:`cnncodes.cli.common.command_flags`, what the CLI passes) or
with :data:`~cnncodes.report.verdict_text.DEFAULT_FLAGS` (what the library writes). A renamed option
fails here instead of leaving a stale hint in advice.json or on the terminal."""

from __future__ import annotations

import argparse
import shlex

import pytest

from cnncodes.advisor.evidence import SizeInfo
from cnncodes.advisor.rule import RunSetup, Thresholds, decide
from cnncodes.advisor.similarity import SimilarityEvidence
from cnncodes.advisor.verdict import Route, Verdict
from cnncodes.cli.common import command_flags
from cnncodes.cli.main import build_parser
from cnncodes.report.verdict_text import DEFAULT_FLAGS, render

from ..advisor.helpers import TWO, make_probe, make_size

SETUP = RunSetup(source="my photos/", backbone="resnet18", weights="random", input_size=112,
                 pooling="max")
SIMILAR = SimilarityEvidence(leep_share=0.9)
DISSIMILAR = SimilarityEvidence(leep_share=0.1)


def _parse(parser: argparse.ArgumentParser, command: str) -> argparse.Namespace:
    """``command`` parsed by the real CLI parser; a flag it does not know fails the test."""
    argv = shlex.split(command)
    assert argv[0] == "cnncodes", command
    try:
        return parser.parse_args(argv[1:])
    except SystemExit as e:  # argparse: unknown option, missing value, bad choice
        raise AssertionError(f"the CLI does not accept the rendered command: {command}") from e


def _verdicts() -> list[Verdict]:
    """Every route: small / medium / large x similar / dissimilar, last and earlier layers, and a
    sample too small to compare layers (its warning names advise's options) with imbalance (its
    warning names train's)."""
    out = []
    for per_class in (100, 500, 1500):
        for sim, means in ((SIMILAR, {"stage4": .80, "pool": .90}),
                           (DISSIMILAR, {"stage4": .95, "pool": .85})):
            out.append(decide(make_size(per_class), make_probe(means, depths=TWO),
                              similarity=sim))
    p = make_probe({"stage4": .9, "pool": .8}, depths=TWO, n=20, folds=2)
    p.class_counts = {"a": 18, "b": 2}
    out.append(decide(SizeInfo(5000, {"a": 4900, "b": 100}), p, thresholds=Thresholds()))
    return out


@pytest.mark.parametrize("source", ["parser", "default"])
def test_every_rendered_command_parses_with_the_real_parser(source):
    parser = build_parser()
    flags = command_flags(parser) if source == "parser" else DEFAULT_FLAGS
    seen = set()
    for v in _verdicts():
        text = render(v, SETUP, flags)
        commands = [*text.commands, *(text.also or "").split(" && "), text.finetune_command]
        for command in filter(None, commands):
            args = _parse(parser, command)
            seen.add(args.command)
            if args.command == "extract":
                assert (args.source, args.output, args.layers) == ("my photos/", "codes.h5",
                                                                   v.layer)
                assert (args.backbone, args.weights, args.input_size, args.pooling) == (
                    "resnet18", "random", 112, "max")
            elif args.command == "train":
                assert (args.store, args.layer, args.model) == ("codes.h5", v.layer,
                                                                v.classifier.value)
            else:
                assert args.command == "finetune" and v.finetune is not None
                assert (args.source, args.backbone, args.weights, args.input_size) == (
                    "my photos/", "resnet18", "random", 112)
                assert (args.head_lr_mult, args.freeze) == (v.finetune.head_lr_mult,
                                                            v.finetune.freeze)
        assert (text.finetune_command is not None) == (Route.FINETUNE in (v.route, v.also))
    assert seen == {"extract", "train", "finetune"}


def test_options_named_in_the_warnings_exist():
    parser = build_parser()
    v = _verdicts()[-1]
    assert not v.layers_compared and v.imbalance == (100, 4900)
    warnings = render(v, SETUP, command_flags(parser)).warnings
    assert "raise --sample / --budget (the data set has 5,000 images)" in warnings[0]
    assert "(cnncodes train --class-weight balanced)" in warnings[-1]
    _parse(parser, "cnncodes advise x --sample 10 --budget 1min")
    assert _parse(parser, "cnncodes train codes.h5 --class-weight balanced").class_weight == \
        "balanced"


def test_the_default_flags_are_the_parser_options():
    """Each option the library spells is an option string of that subcommand for that value."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for command, dests in DEFAULT_FLAGS.items():
        options = {x.dest: x.option_strings for x in sub.choices[command]._actions}
        for dest, flag in dests.items():
            assert flag in options.get(dest, []), (command, dest, flag)


def test_a_stale_option_name_fails_and_a_renamed_one_is_followed():
    """The check can fail: a name the parser does not have is refused; and the names rendered are
    the ones given (a parser whose option was renamed spells the new name)."""
    parser = build_parser()
    v = decide(make_size(1500), make_probe({"stage4": .8, "pool": .9}, depths=TWO),
               similarity=SIMILAR)
    stale = {**DEFAULT_FLAGS, "finetune": {**DEFAULT_FLAGS["finetune"],
                                           "head_lr_mult": "--head-lr-multiplier"}}
    command = render(v, SETUP, stale).commands[0]
    assert "--head-lr-multiplier 10" in command
    with pytest.raises(AssertionError, match="does not accept the rendered command"):
        _parse(parser, command)
    with pytest.raises(KeyError, match="no option for 'freeze' of `cnncodes finetune`"):
        render(v, SETUP, {**DEFAULT_FLAGS, "finetune": {k: f for k, f in
                                                        DEFAULT_FLAGS["finetune"].items()
                                                        if k != "freeze"}})


def test_the_cli_spells_the_commands_with_its_parsers_names(tmp_path, capsys, monkeypatch):
    """``advise`` prints and writes the next commands with the names the CLI read from its parser
    (here made to differ from the library's defaults), not with the defaults."""
    import importlib
    import json

    from cnncodes import cli

    from ..conftest import write_tree

    def renamed(parser):
        flags = command_flags(parser)
        flags["finetune"] = {**flags["finetune"], "head_lr_mult": "--head-lr-x"}
        return flags

    monkeypatch.setattr(importlib.import_module("cnncodes.cli.main"), "command_flags", renamed)
    tree = write_tree(tmp_path / "photos", per_class=8)
    argv = ["advise", str(tree), "--backbone", "resnet18", "--weights", "random", "--input-size",
            "32", "--budget", "none", "--sample", "24", "--folds", "2", "--workers", "0",
            "--no-progress", "--layers", "layer3,pool", "--large-per-class", "4",
            "--large-total", "20", "--small-per-class", "2", "--report", str(tmp_path / "rep")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "next      cnncodes finetune" in out and "--head-lr-x 1 --freeze 0" in out
    js = json.loads((tmp_path / "rep" / "advice.json").read_text())
    assert "--head-lr-x 1" in js["next_command"] and "--head-lr-mult" not in js["next_command"]
    assert js["verdict"]["route"] == "finetune" and js["verdict"]["finetune"]["freeze"] == 0
