"""Text for the codes commands: the backbone catalogue (``cnncodes models``), a store's summary
(``cnncodes info``, recorded advice included), an extraction's outcome and lists of failed files.

Each function takes library data (dicts from :func:`cnncodes.backbones.describe_backbones`,
:meth:`cnncodes.FeatureStore.info`, an :class:`~cnncodes.codes.extraction.ExtractResult`) and
returns a string; the CLI only prints it. Nothing here imports torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..stats import plural
from .text import format_failures

#: The models table's closing note (what the pooling of a map layer does, what [offline] means).
MODELS_NOTE = ("map layers are pooled by --pooling (avg, max, avgmax: 2x dim, none: dim x H x W); "
               "weights marked [offline] ship in a pip package, the others download on first use.")


def format_models(rows: Sequence[Mapping[str, Any]]) -> str:
    """The ``cnncodes models`` table: one line per backbone (default layer, weights, layers),
    each column as wide as its longest cell (a ``[offline]`` tag included)."""
    cells = [(str(r["backbone"]), str(r["default_layer"]),
              str(r["default_weights"]) + (" [offline]" if r.get("offline") else ""),
              " ".join(f"{k}:{v['dim']}{'*' if v['depth'] == 'last' else ''}"
                       for k, v in r["layers"].items())) for r in rows]
    head = ("backbone", "default", "weights (auto)", "layers (name:dim; * = last)")
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(3)]
    lines = ["  ".join([*(f"{c[i]:<{widths[i]}}" for i in range(3)), c[3]]).rstrip()
             for c in [head, *cells]]
    lines += ["", MODELS_NOTE]
    return "\n".join(lines)


def format_extract_result(res: Any) -> str:
    """What ``cnncodes extract`` did: rows, extracted (added, changed, retried), removed,
    unchanged, layers, speed, failures."""
    dims = ", ".join(f"{k} ({d}-d)" for k, d in res.layers.items())
    n = {k: getattr(res, k, 0) for k in ("added", "changed", "retried", "removed", "missing",
                                         "unverified")}
    why = ", ".join(f"{n[k]} {w}" for k, w in (("added", "new files"), ("changed", "changed"),
                                               ("retried", "failures retried")) if n[k])
    gone = f", {n['removed']} removed (file gone)" if n["removed"] else ""
    if n["missing"]:
        gone += f", {n['missing']} kept but flagged missing (file gone)"
    lines = [f"{res.path}: {plural(res.rows, 'image')}; {res.new} extracted now"
             f"{f' (of {why})' if why else ''}{gone}, {res.skipped} unchanged; layers {dims}"]
    if n["unverified"]:
        one = n["unverified"] == 1
        lines.append(f"note: {plural(n['unverified'], 'row')} {'was' if one else 'were'} made "
                     f"before cnncodes recorded file identity and {'is' if one else 'are'} not "
                     "checked against their files (--overwrite re-extracts them)")
    if getattr(res, "source_summary", ""):
        lines.append(res.source_summary)
    if res.new:
        lines.append(f"throughput: {res.images_per_s:.1f} img/s ({res.seconds:.1f} s in all)")
    if res.failed:
        lines.append(format_failures(res.failed, f"recorded in the store; `cnncodes info "
                                                 f"{res.path}` lists them"))
    return "\n".join(lines)


def format_nothing_extracted(res: Any) -> str:
    """The error of a run in which every file to extract failed (exit status 1)."""
    return (f"error: nothing was extracted: {'the' if len(res.failed) == 1 else 'all'} "
            f"{plural(len(res.failed), 'file')} to do failed (reasons "
            f"above). Fix or remove them, then run the command again; {res.path} keeps them as "
            "recorded failures, and a failed file that changes is tried again.")


def format_interrupted(res: Any) -> str:
    """The line printed when ``cnncodes extract`` is interrupted (``res``: the partial result)."""
    kept = (f" {plural(res.rows, 'row')} {'is' if res.rows == 1 else 'are'} saved in "
            f"{res.path};" if res is not None else "")
    return f"\ninterrupted:{kept} run the same command again to continue."


def format_auto_layer(layer: str, evidence: Mapping[str, Any]) -> str:
    """The line ``--layers auto`` prints: the chosen layer and the advisor's explanation."""
    return f"--layers auto -> {layer}: {evidence.get('explanation')}"


def _probe_line(probe: Mapping[str, Any], chosen: Any) -> str | None:
    """``probe (logreg, 5-fold CV on 500 images): stage4 0.910 <-, pool 0.848; raw pixels ...``"""
    layers = probe.get("layers")
    if not isinstance(layers, Mapping) or not layers:
        return None
    scores = ", ".join(f"{k} {_score(v)}{' <-' if k == chosen else ''}" for k, v in layers.items()
                       if isinstance(v, Mapping))
    raw = probe.get("raw_pixels")
    if isinstance(raw, Mapping) and raw.get("cv_accuracy") is not None:
        scores += f"; raw pixels {_score(raw)}"
    how = " ".join(str(x) for x in (
        f"{probe['method']}," if probe.get("method") else None,
        f"{probe['folds']}-fold CV" if probe.get("folds") else None,
        f"on {probe['n_images']} images" if probe.get("n_images") else None) if x).strip(",")
    return f"probe ({how}): {scores}" if how else f"probe: {scores}"


def _score(v: Mapping[str, Any]) -> str:
    acc = v.get("cv_accuracy")
    return "-" if acc is None else f"{float(acc):.3f}"


def format_advice(advice: Any, indent: str = "             ") -> str:
    """Recorded advice (the advisor's evidence kept in a store) as the few lines a person reads:
    the choice and quadrant, the reason, the probe's score per layer, warnings, the next
    command. Every further line starts with ``indent``; ``info --json`` shows all the evidence.
    """
    if not isinstance(advice, Mapping):
        return json.dumps(advice, default=str)[:200]
    layer, clf = advice.get("layer"), advice.get("classifier")
    head = f"{layer}" + (f" + {clf}" if clf else "")
    if advice.get("quadrant"):
        head += f" ({advice['quadrant']}"
        size = advice.get("size")
        if isinstance(size, Mapping) and size.get("n_images") is not None:
            med = size.get("per_class_median")
            head += (f": {size['n_images']} images, {size.get('n_classes')} classes, median "
                     f"{med if not isinstance(med, float) else format(med, 'g')} per class")
        head += ")"
    lines = [head]
    if advice.get("explanation"):
        lines.append(f"why: {advice['explanation']}")
    probe = advice.get("probe")
    line = _probe_line(probe, layer) if isinstance(probe, Mapping) else None
    if line:
        lines.append(line)
    lines += [f"warning: {w}" for w in advice.get("warnings") or []]
    if advice.get("next_command"):
        lines.append(f"next: {advice['next_command']}")
    if len(lines) > 1:
        lines.append("(all the evidence: cnncodes info --json)")
    return ("\n" + indent).join(lines)


def _verified(info: Mapping[str, Any]) -> str:
    n = info.get("unverified_rows", 0)
    if info.get("verify") is None:
        return ("no: a store of format 1 has no file identity; its rows are not checked against "
                "the files (--overwrite re-extracts them and records it)")
    mode = "size + mtime" if info["verify"] == "stat" else "size + SHA-256 of the bytes"
    extra = (f"; {plural(n, 'row')} made before identity was recorded "
             f"{'is' if n == 1 else 'are'} not checked (--overwrite re-extracts them)"
             if n else "")
    return f"each rerun compares every row's file ({mode}){extra}"


def _checksum(info: Mapping[str, Any]) -> str:
    how = {"all": "fletcher32 on every chunk of codes and labels, checked on every read",
           "some": "only on the segments written since cnncodes checksummed codes; the older "
                   "ones are not checksummed (`cnncodes compact` rewrites them all with one)",
           "none": "not checksummed (a store made before cnncodes checksummed codes: a flipped "
                   "bit reads back as a wrong code; `cnncodes compact` adds checksums)"}
    text = how.get(str(info.get("checksummed")), str(info.get("checksummed")))
    if info.get("verified_checksums") is True:
        text += "; --verify: every chunk read back intact"
    return text


def _layout(lay: Mapping[str, Any]) -> str:
    size = f"{lay.get('bytes', 0) / 2**20:.1f} MiB"
    if lay.get("kind") != "segments":
        return f"one file, {size}"
    return (f"index + {lay['segments']} segment files in .segments/ ({lay['runs']} runs), {size}; "
            "copy both; `cnncodes compact` makes it one file")


def format_store_info(info: Mapping[str, Any]) -> str:
    """The ``cnncodes info`` summary of :meth:`FeatureStore.info`."""
    prov = info["provenance"]
    out = [f"{info['path']}",
           f"  images     {info['images']} ({info['unlabelled']} unlabelled), "
           f"{len(info['failures'])} failed"]
    if info["classes"]:
        cls = ", ".join(f"{c} {n}" for c, n in info["classes"].items())
        out.append(f"  classes    {len(info['classes'])}: {cls}")
    for name, li in info["layers"].items():
        out.append(f"  layer      {name}: {li['dim']}-d {li['dtype']} (node {li.get('node')}, "
                   f"{li.get('kind')}, pooling {li.get('pooling')})")
    pp = prov.get("preprocessing", {})
    out.append(f"  backbone   {prov.get('backbone')}  weights {prov.get('weights')} "
               f"(sha256 {str(prov.get('weights_sha256') or '-')[:16]})")
    out.append(f"  preprocess resize {pp.get('resize')} crop {pp.get('crop')} "
               f"{pp.get('interpolation')} mean {pp.get('mean')} std {pp.get('std')}")
    for s in info.get("sources") or [{"path": prov.get("root"), "kind": prov.get("source_kind")}]:
        out.append(f"  source     {s.get('path') or 'paths under ' + str(s.get('root'))} "
                   f"({s.get('kind')})")
    out.append(f"  verified   {_verified(info)}")
    out.append(f"  checksum   {_checksum(info)}")
    lay = info.get("layout") or {}
    if lay:
        out.append(f"  layout     {_layout(lay)}")
    v = prov.get("versions", {})
    out.append("  versions   " + " ".join(f"{k} {x}" for k, x in v.items()))
    out.append(f"  created    {prov.get('created')}  updated {prov.get('updated')}")
    for r in prov.get("runs", []):
        why = ", ".join(f"{r[k]} {w}" for k, w in (("added", "new files"), ("changed", "changed"),
                                                   ("retried", "failures retried")) if r.get(k))
        gone = "".join(f", {r[k]} {k}" for k in ("removed", "missing") if r.get(k))
        out.append(f"  run        {r.get('time')}: {r.get('new')} extracted"
                   f"{f' (of {why})' if why else ''}{gone}, {r.get('failed')} failed, "
                   f"{r.get('images_per_s')} img/s on {r.get('device')} {r.get('precision')}"
                   f"{' (interrupted)' if r.get('interrupted') else ''}: {r.get('command')}")
        for b in r.get("bad_parts", []):
            out.append(f"  bad part   {b.get('part')}: {b.get('error')} (its images were "
                       "extracted again)")
    if "advice" in prov:
        out.append(f"  advice     {format_advice(prov['advice'])}")
    holder = info.get("in_progress")
    if holder:
        out.append(f"  IN PROGRESS an extraction is writing this store now (process "
                   f"{holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}); "
                   f"{info['pending_parts']} batches not yet folded in. What you see is a "
                   "commit point; wait for it to finish.")
    elif info["pending_parts"]:
        out.append(f"  pending    {info['pending_parts']} journal parts of an interrupted "
                   "extraction not yet folded in: rerun the extract command to finish")
    elif prov.get("complete") is False:
        left = prov.get("remaining")
        still = f" with {plural(left, 'image')} not extracted yet" if left is not None else ""
        out.append(f"  incomplete the last extraction was interrupted{still}: "
                   "rerun the extract command to finish (train and evaluate refuse the store "
                   "until then, unless --allow-incomplete)")
    if info.get("damaged"):
        out.append(f"  DAMAGED    {info['damaged']}")
    bad = info.get("nonfinite_rows") or {}
    if bad.get("count"):
        out.append(f"  CORRUPT?   {plural(bad['count'], 'row')} hold"
                   f"{'s' if bad['count'] == 1 else ''} NaN or inf codes: possibly corrupt rows "
                   f"(a damaged disk or file, or an overflow at extraction). First: "
                   f"{', '.join(bad['first'])}. To extract them again, `touch` those files and "
                   "rerun the extract command (or --overwrite).")
    miss = info.get("missing_rows") or {}
    if miss.get("count"):
        out.append(f"  missing    {plural(miss['count'], 'row')} kept (--keep-missing) although "
                   f"{'its' if miss['count'] == 1 else 'their'} file "
                   f"is gone: {', '.join(miss['first'])}")
    if info["failures"]:
        out.append("  failures:")
        out += [f"    {f['path']}: {f['reason']}" for f in info["failures"]]
    return "\n".join(out)
