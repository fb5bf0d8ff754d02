"""The words of a verdict: :func:`render` turns the advisor's
:class:`~cnncodes.advisor.verdict.Verdict` (enums and numbers) into the action, the explanation, the
warnings and the next commands, in one place.

The commands are spelled with option names given as data (``flags``: subcommand -> option dest ->
option string). The CLI passes the names read from its own argparse parsers
(:func:`cnncodes.cli.common.command_flags`); the library (advice.json written by
:func:`cnncodes.workflows.advice.advise`, the provenance of ``--layers auto``) uses
:data:`DEFAULT_FLAGS`, which tests/cli/test_verdict_commands.py checks against those parsers and
whose rendered commands it parses with them: a renamed option fails that test instead of leaving a
stale hint. (This module sits below the CLI in the data flow and cannot import its parsers.)
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..advisor.rule import RunSetup
from ..advisor.verdict import Classifier, Route, SampleCheck, Similarity, Verdict

#: subcommand -> option dest -> the option string the rendered commands use
Flags = Mapping[str, Mapping[str, str]]
#: The program's name in the rendered commands.
PROG = "cnncodes"
#: The option names the library renders with (the CLI passes its parsers' own; a test pins these to
#: them).
DEFAULT_FLAGS: dict[str, dict[str, str]] = {
    "extract": {"output": "-o", "backbone": "--backbone", "weights": "--weights",
                "input_size": "--input-size", "pooling": "--pooling", "layers": "--layers"},
    "train": {"layer": "--layer", "model": "--model", "output": "-o",
              "class_weight": "--class-weight"},
    "finetune": {"output": "-o", "backbone": "--backbone", "weights": "--weights",
                 "input_size": "--input-size", "head_lr_mult": "--head-lr-mult",
                 "freeze": "--freeze"},
    "advise": {"sample": "--sample", "budget": "--budget"},
}
#: The classifier in words.
CLASSIFIER_NAME = {Classifier.LOGREG: "logistic regression", Classifier.LINEARSVC: "LinearSVC"}
#: The files the rendered commands name.
CODES_FILE, MODEL_FILE, RUN_FOLDER = "codes.h5", "model.npz", "run/"


@dataclass(frozen=True)
class VerdictText:
    """A verdict in words.

    Attributes:
        action: the practice in words.
        explanation: one sentence with the numbers that decided it.
        commands: the exact next commands, in order.
        also: a further command worth trying, or None.
        finetune_command: the fine-tuning command when fine-tuning is the route or the ``also``.
        warnings: caveats (a sample too small to compare layers first).
    """

    action: str
    explanation: str
    commands: list[str]
    also: str | None
    finetune_command: str | None
    warnings: list[str]

    @property
    def next_command(self) -> str:
        return " && ".join(self.commands)


def _flag(flags: Flags, command: str, dest: str) -> str:
    try:
        return flags[command][dest]
    except KeyError:
        raise KeyError(f"no option for {dest!r} of `{PROG} {command}` in the flags given") from None


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def backbone_args(setup: RunSetup, command: str, flags: Flags = DEFAULT_FLAGS) -> list[str]:
    """The backbone/weights/input-size[/pooling] options of ``command`` that differ from the
    defaults (pooling only where ``command`` has the option)."""
    def f(dest: str) -> str:
        return _flag(flags, command, dest)
    out = [f("backbone"), setup.backbone]
    if setup.weights not in ("auto", None):
        out += [f("weights"), str(setup.weights)]
    if setup.input_size:
        out += [f("input_size"), str(setup.input_size)]
    if "pooling" in flags.get(command, {}) and setup.pooling != "avg":
        out += [f("pooling"), setup.pooling]
    return out


def commands(v: Verdict, setup: RunSetup,
             flags: Flags = DEFAULT_FLAGS) -> tuple[list[str], str | None]:
    """``([extract, train], finetune)``: the codes route for the verdict's layer and, when the
    verdict names a fine-tuning policy, the fine-tuning command."""
    def f(command: str, dest: str) -> str:
        return _flag(flags, command, dest)
    codes = [
        shlex.join([PROG, "extract", setup.source, f("extract", "output"), CODES_FILE,
                    *backbone_args(setup, "extract", flags), f("extract", "layers"), v.layer]),
        shlex.join([PROG, "train", CODES_FILE, f("train", "layer"), v.layer, f("train", "model"),
                    v.classifier.value, f("train", "output"), MODEL_FILE]),
    ]
    ft = None
    if v.finetune is not None:
        ft = shlex.join([PROG, "finetune", setup.source, *backbone_args(setup, "finetune", flags),
                         f("finetune", "output"), RUN_FOLDER, f("finetune", "head_lr_mult"),
                         _fmt_num(v.finetune.head_lr_mult), f("finetune", "freeze"),
                         str(int(v.finetune.freeze))])
    return codes, ft


def sample_message(s: SampleCheck, *, short: bool = False, flags: Flags = DEFAULT_FLAGS) -> str:
    """The sentence of a sample too small to compare layers (``short``: without the fix)."""
    head = (f"not enough images to compare layers: {s.need_per_class} per class / "
            f"{s.need_images:,} in all would be needed (the probe had {s.smallest_class} "
            f"in its smallest class, {s.n_images:,} in all)")
    if short:
        return head
    fix = (f"raise {_flag(flags, 'advise', 'sample')} / {_flag(flags, 'advise', 'budget')} (the "
           f"data set has {s.source_images:,} images)" if s.source_images >= s.need_images
           else "add images")
    return (f"{head}; the measured gaps are not evidence at this size, so no layer is "
            f"claimed to lead: {fix} to compare them")


def _why_layer(v: Verdict) -> str:
    """The layer half of the explanation (answer b), with the numbers."""
    g = v.gap
    if not v.layers_compared:
        return (f"layer: {sample_message(v.sample, short=True)}; keeping the last layer "
                f"{g.last.layer}, the conventional choice, without a measured lead")
    bl, be, threshold = g.last.layer, g.earlier.layer, g.threshold
    gap = round(g.gap, 2)  # the value comparison["gap_points"] holds: one rounding everywhere
    how = (f"{v.probe_method} probe, {v.probe_folds}-fold CV on {v.probe_images:,} images; gap "
           f"{gap:+.1f} +- {g.ci:.1f} points, 95% interval")
    if abs(gap) > threshold and abs(gap) <= g.ci:
        how += ", which includes 0: the lead is not established at this sample size"
    if g.earlier_wins:
        return f"layer: {be} beats {bl} by {gap:.1f} points ({how}; margin {threshold:.1f})"
    if gap < -threshold:
        return f"layer: {bl} beats the best earlier layer {be} by {-gap:.1f} points ({how})"
    rel = "ahead of" if gap > 0 else "behind"
    return (f"layer: {be} is only {abs(gap):.1f} points {rel} {bl} ({how}; margin "
            f"{threshold:.1f}): a tie goes to the last layer {bl}")


def _disagreement(v: Verdict) -> str | None:
    """The plain sentence when (a) and (b) point different ways, else None."""
    if v.agree:
        return None
    g = v.gap
    if v.similarity is Similarity.SIMILAR:
        return (f"the two answers disagree: the evidence calls the data similar, yet the probe "
                f"finds the earlier layer {g.earlier.layer} {round(g.gap, 2):.1f} points better "
                f"than {g.last.layer}; the layer follows the probe, the quadrant the similarity "
                "evidence")
    return (f"the two answers disagree: the evidence calls the data dissimilar, yet no "
            f"earlier layer beats the last layer {g.last.layer} in the probe; the layer "
            "follows the probe, the quadrant the similarity evidence")


def warnings(v: Verdict, flags: Flags = DEFAULT_FLAGS) -> list[str]:
    """The caveats: too small a sample, raw pixels beating the codes, random weights, imbalance."""
    out: list[str] = []
    chosen = v.gap.chosen
    if not v.layers_compared:
        out.append(sample_message(v.sample, flags=flags))
    elif v.codes_beat_raw is False and v.raw_accuracy is not None:
        out.append(f"raw pixels ({v.raw_accuracy:.3f}) beat {chosen.layer} codes "
                   f"({chosen.mean:.3f}) by {100 * (v.raw_accuracy - chosen.mean):.1f} points: "
                   "these pretrained features do not help on this data; fine-tuning or training "
                   "from scratch may do better even at this size")
    if v.random_weights:
        out.append("the backbone has random weights: the probe measures random features, not "
                   "transfer from ImageNet; the similarity verdict and the quadrant are not "
                   "meaningful")
    if v.imbalance is not None:
        lo, hi = v.imbalance
        cw = _flag(flags, "train", "class_weight")
        out.append(f"classes are imbalanced ({lo} to {hi} images); consider "
                   f"class_weight=balanced ({PROG} train {cw} balanced)")
    return out


def action(v: Verdict) -> str:
    """The practice in words."""
    dissimilar = v.similarity is Similarity.DISSIMILAR
    if v.route is Route.FINETUNE:
        if dissimilar:
            return ("fine-tune the whole network from the pretrained weights (one learning rate, "
                    "nothing frozen)")
        mult = _fmt_num(v.finetune.head_lr_mult) if v.finetune is not None else "?"
        return (f"fine-tune with the pretrained layers at a lower learning rate (head x{mult}, "
                "stem and first stage frozen)")
    where = "earlier" if v.depth == "earlier" else "last"
    return (f"{where}-layer codes ({v.layer}) + "
            f"{'linear SVM' if dissimilar else 'linear classifier (logistic regression)'}")


def render(v: Verdict, setup: RunSetup, flags: Flags = DEFAULT_FLAGS) -> VerdictText:
    """The verdict in words, its commands spelled with ``flags`` (see the module docstring)."""
    sim = v.similarity_verdict
    why = f"similarity: {sim.reasons()} -> {v.similarity.value} data; {_why_layer(v)}"
    clash = _disagreement(v)
    if clash:
        why += f"; {clash}"
    codes_cmds, ft_cmd = commands(v, setup, flags)
    per_class = f"{v.median_per_class:,.0f} per class"
    act = action(v)
    also: str | None = None
    if v.route is Route.FINETUNE:
        assert ft_cmd is not None  # a fine-tuning route always carries its policy
        cmds, also = [ft_cmd], " && ".join(codes_cmds)
        sentence = f"{why}; {v.n_images:,} images ({per_class}) is large -> {act}: {ft_cmd}"
    else:
        cmds = codes_cmds
        sentence = (f"{why}; use {v.layer} codes + {CLASSIFIER_NAME[v.classifier]}"
                    f" ({v.n_images:,} images, {per_class}: {v.size_class.value})")
        if v.also is Route.FINETUNE:
            also = ft_cmd
            sentence += f"; with this much data fine-tuning may pay off next: {ft_cmd}"
    if v.codes_beat_raw is False:
        sentence += " (warning: raw pixels beat the codes)"
    return VerdictText(act, sentence, cmds, also, ft_cmd, warnings(v, flags))


def decision_dict(v: Verdict, text: VerdictText) -> dict[str, Any]:
    """The ``decision`` record of advice.json (the keys it has always had, words included)."""
    ft = None if v.finetune is None else {"head_lr_mult": v.finetune.head_lr_mult,
                                         "freeze": int(v.finetune.freeze),
                                         "command": text.finetune_command}
    return {
        "quadrant": v.quadrant.value, "size_class": v.size_class.value,
        "similarity": v.similarity.value, "layer": v.layer, "classifier": v.classifier.value,
        "action": text.action, "explanation": text.explanation, "commands": list(text.commands),
        "also": text.also, "finetune": ft, "comparison": v.comparison(),
        "warnings": list(text.warnings), "similarity_evidence": v.similarity_verdict.to_dict(),
        "agree": v.agree, "next_command": text.next_command,
    }

