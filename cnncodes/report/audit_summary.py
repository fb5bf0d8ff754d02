"""The baseline report's audit summary: counts and a link to the audit page (``report.html``'s
``#audit`` section, through ``audit_summary.html.j2``) and the one or two lines the CLI prints.

Both read ``report["audit"]`` (:func:`cnncodes.workflows.baseline_audit.baseline_audit`); a
report without it (``--no-audit``, older reports) gives no section and no lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..stats import plural


def _acc(a: Any) -> str:
    return "n/a" if a is None else f"{float(a):.3f}"


def duplicates_text(audit: Mapping[str, Any]) -> str:
    """The training set's near-duplicate groups: look-alike codes (possible duplicates) and,
    when the pixel check ran, how many of them are the same picture (``audit``: an audit
    summary, :meth:`cnncodes.audit.AuditResult.summary` or ``report["audit"]``)."""
    groups = int(audit.get("duplicate_groups") or 0)
    thr, images = audit.get("duplicate_threshold"), audit.get("duplicate_images")
    text = f"{plural(groups, 'group')} of look-alikes in training (possible duplicates"
    if images is not None:
        text += f": {plural(int(images), 'image')}"
    if thr is not None:
        text += f", codes cosine >= {thr}"
    same = audit.get("duplicate_groups_same_picture")
    if same is not None:
        text += (f"; {audit.get('duplicate_images_same_picture')} images in "
                 f"{plural(int(same), 'group')} the same picture in pixels")
    return text + ")"


def _leaks(audit: Mapping[str, Any]) -> str | None:
    if audit.get("leaks") is None:
        return None
    thr = audit.get("duplicate_threshold")
    text = (f"{audit['leaks']} of {audit.get('test_rows')} test images look like training "
            "images (possible leaks" + (f": codes cosine >= {thr}" if thr is not None else ""))
    same = audit.get("leaks_same_picture")
    if same is not None:
        text += f"; {same} of them the same picture in pixels"
    text += ")"
    acc = audit.get("accuracy")
    if acc:
        which = "the same pictures" if acc.get("removed") == "same picture" else "them"
        text += (f" (test accuracy {_acc(acc.get('all'))}, without {which} "
                 f"{_acc(acc.get('without_leaks'))}, n={acc.get('n_without_leaks')})")
    return text


#: what a look-alike is and is not (shown with every audit): the codes alone decide, so
#: different images of near-identical things count too (measured on full Fashion-MNIST: 958
#: test images flagged, 4 of them nearly identical in pixels; README, audit)
LOOKALIKE_NOTE = ("Near-duplicates and possible leaks are found by the codes (cosine of centred "
                  "codes at or above the threshold): copies, re-encodes and resizes are found, "
                  "but so are different images of near-identical things (small, plain images "
                  "especially). Train -> test pairs and the pairs within training groups are "
                  "also compared in pixels (grey thumbnails; 'same picture': a mean difference "
                  "within 4 grey levels for two images of one size, 7 for a resize); "
                  "the accuracy without leaks removes the same pictures only. Check the pairs on "
                  "the audit page before removing any.")


def _labels(audit: Mapping[str, Any]) -> str:
    if audit.get("label_issues") is None:
        return f"label errors {audit.get('label_issues_note') or 'not looked for'}"
    return f"{plural(int(audit['label_issues']), 'likely label error')}"


def audit_context(audit: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The template context of the report's audit section: ``rows`` (label, value), ``page``
    (the link), ``notes`` (what was not done by default, and why) and ``seconds``."""
    if not audit:
        return None
    dup = (f"{audit.get('duplicate_groups')} groups ({audit.get('duplicate_images')} images; "
           f"cosine >= {audit.get('duplicate_threshold')})")
    items: list[dict[str, Any]] = [{"label": "near-duplicates in training", "value": dup}]
    leaks = _leaks(audit)
    if leaks is not None:
        items.append({"label": "train -> test look-alikes (possible leaks)", "value": leaks})
    items.append({"label": "likely label errors", "value": audit["label_issues"]
                  if audit.get("label_issues") is not None
                  else audit.get("label_issues_note") or "not looked for"})
    items.append({"label": "outliers", "value": audit.get("outliers")})
    ratio = audit.get("imbalance_ratio")
    items.append({"label": "class balance (largest / smallest)",
                  "value": "n/a" if ratio is None else f"{ratio:.2f}"})
    m = audit.get("map")
    items.append({"label": "map", "value": f"{m['method']}, {m['points']} images" if m
                  else "none"})
    plan = audit.get("plan") or {}
    notes = [LOOKALIKE_NOTE]
    if plan.get("mode") == "cheap":
        notes.append("The default audit: duplicates, leaks, outliers and balance always; label "
                     f"errors: {plan.get('label_reason')}; map: {plan.get('map_reason')}. "
                     "--audit runs everything, --no-audit nothing.")
    return {"rows": items, "page": audit.get("page"), "notes": notes,
            "seconds": audit.get("total_s")}


def audit_lines(audit: Mapping[str, Any] | None, folder: Any = None) -> list[str]:
    """What the audit found, in one or two lines (none without an audit)."""
    if not audit:
        return []
    found = [duplicates_text(audit)]
    leaks = _leaks(audit)
    if leaks is not None:
        found.append(leaks)
    found += [_labels(audit), plural(int(audit.get("outliers") or 0), "outlier")]
    page = audit.get("page")
    where = f"{folder}/{page}" if folder is not None and page else page
    return [f"audit: {'; '.join(found)}",
            f"audit page: {where} ({audit.get('total_s')} s; look-alikes are found by the codes "
            "alone: check the pairs there)"]
