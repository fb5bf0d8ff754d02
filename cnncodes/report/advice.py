"""The text and JSON of an advice: :func:`format_advice`, the report ``cnncodes advise`` prints;
:func:`advice_json` (advice.json), :func:`advice_summary` (the provenance of ``--layers auto``) and
:func:`ranking_json` (ranking.json). The verdict's words come from
:func:`cnncodes.report.verdict_text.render`, its commands spelled with ``flags`` (default
:data:`~cnncodes.report.verdict_text.DEFAULT_FLAGS`; the CLI passes its parsers' own).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..advisor.advice import Advice
from ..advisor.ranking import Ranking
from ..advisor.similarity import LABELS, Vote
from ..atomic import finite_json
from ..stats import format_accuracy
from .verdict_text import DEFAULT_FLAGS, Flags, decision_dict, render


def advice_json(advice: Advice, flags: Flags = DEFAULT_FLAGS) -> dict[str, Any]:
    """The JSON report (JSON types only; a value that could not be computed is null with a
    ``<key>_note`` beside it): the verdict in words (``explanation``, ``next_command``,
    ``decision``) and as data (``verdict``)."""
    v, text = advice.verdict, render(advice.verdict, advice.setup, flags)
    return finite_json({
        "version": 1, "layer": advice.layer, "quadrant": v.quadrant.value,
        "explanation": text.explanation, "next_command": text.next_command,
        "layers_compared": v.layers_compared, "warnings": list(text.warnings),
        "similarity_verdict": v.similarity_verdict.to_dict(), "answers_agree": v.agree,
        "setup": asdict(advice.setup), "size": advice.size.to_dict(),
        "similarity": {"imagenet_head": advice.head, "batchnorm": advice.batchnorm,
                       "probe": advice.probe.to_dict()},
        "decision": decision_dict(v, text), "verdict": v.to_dict(),
        "thresholds": asdict(advice.thresholds), "meta": advice.meta,
    })


def advice_summary(advice: Advice, flags: Flags = DEFAULT_FLAGS) -> dict[str, Any]:
    """A compact, JSON-able record for a store's provenance (``advice``)."""
    head = {k: v for k, v in advice.head.items() if k not in ("top_categories",)}
    bn = {k: v for k, v in advice.batchnorm.items() if k != "per_layer"}
    v, text = advice.verdict, render(advice.verdict, advice.setup, flags)
    return finite_json({
        "version": 1, "layer": advice.layer, "quadrant": v.quadrant.value,
        "similarity": v.similarity.value, "size_class": v.size_class.value,
        "classifier": v.classifier.value, "explanation": text.explanation,
        "next_command": text.next_command, "comparison": v.comparison(),
        "warnings": list(text.warnings), "similarity_verdict": v.similarity_verdict.to_dict(),
        "answers_agree": v.agree, "verdict": v.to_dict(),
        "size": advice.size.to_dict(max_classes=50),
        "probe": advice.probe.to_dict(compact=True), "imagenet_head": head, "batchnorm": bn,
        "thresholds": asdict(advice.thresholds),
        "meta": {k: x for k, x in advice.meta.items() if k != "versions"},
    })


def ranking_json(ranking: Ranking, flags: Flags = DEFAULT_FLAGS) -> dict[str, Any]:
    """ranking.json: the table, the recommendation and each backbone's advice summary."""
    return finite_json({
        "version": 1, "recommendation": ranking.recommendation,
        "rows": [asdict(r) for r in ranking.rows], "skipped": dict(ranking.skipped),
        "advice": {k: advice_summary(a, flags) for k, a in ranking.advices.items()},
        "meta": ranking.meta,
    })


def format_advice(advice: Advice, flags: Flags = DEFAULT_FLAGS) -> str:
    """The human-readable report ``cnncodes advise`` prints (commands spelled with ``flags``)."""
    s, d, pr = advice.size, advice.verdict, advice.probe
    text = render(d, advice.setup, flags)
    sz = s.to_dict()
    lines = [(f"data      {advice.setup.source}: {s.n_images:,} images, {s.n_classes} classes, "
              f"{sz['per_class_min']}-{sz['per_class_max']} per class (median "
              f"{s.median_per_class:g}) -> {d.size_class.value}")]
    im = s.image_sizes
    if "width" in im:
        modes = ", ".join(f"{k} {v}" for k, v in im["modes"].items())
        lines.append(f"images    {im['width']['median']:g}x{im['height']['median']:g} px median "
                     f"(w {im['width']['min']}-{im['width']['max']}, h {im['height']['min']}-"
                     f"{im['height']['max']}; {im['sampled']} sampled; modes {modes}); "
                     f"network input {advice.meta.get('input_size')} px")
    lines.append(f"backbone  {advice.setup.backbone} ({advice.meta.get('weights_id')})")
    lines += _similarity_lines(advice)
    lines.append(f"(b) layer: {pr.method} probe, {pr.folds}-fold stratified CV on "
                 f"{pr.n_images:,} images (seed {advice.meta.get('seed')}); CV accuracy with "
                 "its 95% Wilson interval over the probed images; LogME on the same images")
    rows = list(pr.layers.values()) + ([pr.raw] if pr.raw is not None else [])
    for r in rows:
        mark = " <- recommended" if r.layer == advice.layer else ""
        same = f" (= {r.same_as})" if r.same_as else ""
        lm = "   n/a" if r.logme is None else f"{r.logme:6.3f}"
        lines.append(f"      {r.layer:<10} {r.depth:<8} {r.dim:>6}-d  "
                     f"{format_accuracy(r.mean, pr.n_images)}  LogME {lm}{same}{mark}")
    c = d.comparison()
    if d.layers_compared:
        lines.append(f"      gap {c['best_earlier']} - {c['best_last']}: {c['gap_points']:+.1f} "
                     f"+- {c['gap_ci95_points']:.1f} points (95% interval, paired over folds)")
    else:
        lines.append("      (too few images for these scores to rank the layers: see the warning)")
    if pr.excluded_classes:
        lines.append(f"      classes left out (under 2 images): {', '.join(pr.excluded_classes)}")
    lines.append(f"quadrant  {d.quadrant.value}: {text.action}")
    lines.append(f"why       {text.explanation}")
    for w in text.warnings:
        lines.append(f"warning   {w}")
    lines.append("next      " + "\n          ".join(text.commands))
    if text.also:
        lines.append(f"also      {text.also}")
    m = advice.meta
    parts = [f"budget {_seconds(m.get('budget_s'))}"]
    if m.get("extract_s") is not None:  # the progress bar shows the extraction speed
        parts.append(f"codes {m['extract_s']:.1f} s, probe {m.get('probe_s', 0):.1f} s")
    lines.append(f"took      {m['elapsed_s']:.1f} s ({'; '.join(parts)})")
    return "\n".join(lines)


def _seconds(v: object) -> str:
    return f"{v:g} s" if isinstance(v, (int, float)) and not isinstance(v, bool) else "none"


def _similarity_lines(advice: Advice) -> list[str]:
    """Answer (a): the verdict with each vote, then the side evidence it does not use."""
    d, h, b = advice.verdict, advice.head, advice.batchnorm
    ev = d.similarity_verdict.to_dict()
    head = "" if ev.get("meaningful", True) else " (not meaningful: random weights)"
    lines = [f"(a) similarity to the pretraining data: {d.similarity.value}{head}: "
             f"{ev.get('rule', 'no evidence')}"]
    for v in ev.get("votes", []):
        vote = Vote(**v)
        lines.append(f"      {LABELS[vote.measure]:<28} {vote.comparison()}")
    for name, why in ev.get("missing", {}).items():
        lines.append(f"      {LABELS.get(name, name):<28} n/a: {why}")
    if "domain_emd" in ev.get("side", {}):
        lines.append(f"      {'domain EMD (Cui et al.)':<28} {ev['side']['domain_emd']:.3f} "
                     "(shown, not a vote: cnncodes/advisor/similarity.py)")
    if h.get("available"):
        cats = ", ".join(f"{c['category']} {100 * c['share']:.0f}%" for c in h["top_categories"])
        lines.append(f"      side evidence: ImageNet head mean top-1 prob "
                     f"{h['mean_top1_prob']:.3f}, NMI(classes, ImageNet top-1) "
                     f"{h['nmi_classes_vs_imagenet']:.3f}; top: {cats}")
    if b.get("available"):
        thirds = ", ".join(f"{x:.3g}" for x in b["kl_by_depth_thirds"])
        lines.append(f"      side evidence: BatchNorm mean KL {b['mean_kl']:.3g} over "
                     f"{b['n_bn_layers']} layers (early/mid/late {thirds})")
    return lines


def format_ranking(ranking: Ranking, flags: Flags = DEFAULT_FLAGS) -> str:
    """The table ``cnncodes advise --backbones`` prints: every backbone's layers, best first."""
    accs = [format_accuracy(r.cv_accuracy, r.n_images) for r in ranking.rows]
    aw = max([len("probe CV accuracy")] + [len(a) for a in accs])
    lines = [f"rank  backbone         layer      depth      dim   {'probe CV accuracy':<{aw}}  "
             "  LogME   img/s"]
    for i, (r, acc) in enumerate(zip(ranking.rows, accs, strict=True), 1):
        lm = "    n/a" if r.logme is None else f"{r.logme:7.3f}"
        mark = " *" if r.recommended_layer else ""
        lines.append(f"{i:>4}  {r.backbone:<16} {r.layer:<10} {r.depth:<8} {r.dim:>6}  "
                     f"{acc:<{aw}}  {lm}  {r.images_per_s:6.0f}{mark}")
    lines.append("      (* = the layer that backbone's own advice recommends)")
    for name, adv in ranking.advices.items():
        d = adv.verdict
        lines.append(f"{name:<16} {d.quadrant.value}, layer {adv.layer}"
                     + ("" if d.agree else " (its similarity verdict and layer disagree)"))
        for w in render(d, adv.setup, flags).warnings:
            lines.append(f"  warning {w}")
    for name, why in ranking.skipped.items():  # the full message is in ranking.json
        lines.append(f"skipped   {name}: {why.split('; ')[0]}")
    lines.append(f"recommend {ranking.recommendation['explanation']}")
    m = ranking.meta
    lines.append(f"took      {m['elapsed_s']:.1f} s (budget {m['budget_s'] or 'none'}, "
                 f"{m['budget_per_backbone_s'] or 'none'} s per backbone)")
    return "\n".join(lines)
