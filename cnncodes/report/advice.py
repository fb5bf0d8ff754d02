"""The text of an advice: :func:`format_advice`, the report ``cnncodes advise`` prints."""

from __future__ import annotations

from ..advisor.advice import Advice


def format_advice(advice: Advice) -> str:
    """The human-readable report ``cnncodes advise`` prints."""
    s, d, pr = advice.size, advice.decision, advice.probe
    sz = s.to_dict()
    lines = [(f"data      {advice.setup.source}: {s.n_images:,} images, {s.n_classes} classes, "
              f"{sz['per_class_min']}-{sz['per_class_max']} per class (median "
              f"{s.median_per_class:g}) -> {d.size_class}")]
    im = s.image_sizes
    if "width" in im:
        modes = ", ".join(f"{k} {v}" for k, v in im["modes"].items())
        lines.append(f"images    {im['width']['median']:g}x{im['height']['median']:g} px median "
                     f"(w {im['width']['min']}-{im['width']['max']}, h {im['height']['min']}-"
                     f"{im['height']['max']}; {im['sampled']} sampled; modes {modes}); "
                     f"network input {advice.meta.get('input_size')} px")
    lines.append(f"backbone  {advice.setup.backbone} ({advice.meta.get('weights_id')})")
    lines.append("similarity evidence")
    h = advice.head
    if h.get("available"):
        cats = ", ".join(f"{c['category']} {100 * c['share']:.0f}%" for c in h["top_categories"])
        lines.append(f"  (a) ImageNet head   mean top-1 prob {h['mean_top1_prob']:.3f}, "
                     f"normalised entropy {h['mean_normalized_entropy']:.3f}, NMI(classes, "
                     f"ImageNet top-1) {h['nmi_classes_vs_imagenet']:.3f}; top: {cats}")
    else:
        lines.append(f"  (a) ImageNet head   n/a: {h.get('reason')}")
    b = advice.batchnorm
    if b.get("available"):
        thirds = ", ".join(f"{x:.3g}" for x in b["kl_by_depth_thirds"])
        lines.append(f"  (b) BatchNorm stats mean KL {b['mean_kl']:.3g} over {b['n_bn_layers']} "
                     f"layers (early/mid/late {thirds}), mean |shift| {b['mean_shift_z']:.3g} sd")
    else:
        lines.append(f"  (b) BatchNorm stats n/a: {b.get('reason')}")
    lines.append(f"  (c) linear probe    {pr.method}, {pr.folds}-fold stratified CV on "
                 f"{pr.n_images:,} images (seed {advice.meta.get('seed')})")
    rows = list(pr.layers.values()) + ([pr.raw] if pr.raw is not None else [])
    for r in rows:
        mark = " <- recommended" if r.layer == advice.layer else ""
        same = f" (= {r.same_as})" if r.same_as else ""
        lines.append(f"      {r.layer:<10} {r.depth:<8} {r.dim:>6}-d  {100 * r.mean:6.2f} "
                     f"+- {100 * r.std:4.2f}{same}{mark}")
    if not d.layers_compared:
        lines.append("      (too few images for these scores to rank the layers: see the warning)")
    if pr.excluded_classes:
        lines.append(f"      classes left out (under 2 images): {', '.join(pr.excluded_classes)}")
    lines.append(f"quadrant  {d.quadrant}: {d.action}")
    lines.append(f"why       {d.explanation}")
    for w in d.warnings:
        lines.append(f"warning   {w}")
    lines.append("next      " + "\n          ".join(d.commands))
    if d.also:
        lines.append(f"also      {d.also}")
    lines.append(f"took      {advice.meta['elapsed_s']:.1f} s (budget "
                 f"{advice.meta['budget_s'] or 'none'}; {advice.meta['images_per_s']} img/s)")
    return "\n".join(lines)
