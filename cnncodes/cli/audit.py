"""``cnncodes similar`` and ``cnncodes audit``: what the codes say about the data
(:mod:`cnncodes.audit`)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import add_runtime_options, runtime_options


def add_similar(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("similar", help="the stored images most similar to an image (cosine of "
                                       "codes)")
    p.add_argument("store", help="an .h5 code store (`cnncodes extract`)")
    p.add_argument("query", help="an image path in the store, or an image file / folder / list "
                                 "file (its codes are extracted with the store's settings)")
    p.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--layer", default=None, help="layer compared (default the store's default)")
    p.add_argument("-o", "--output", default="similar.csv",
                   help="CSV to write (query, rank, path, label, score; default similar.csv)")
    p.add_argument("--report", default=None,
                   help="also write REPORT/report.html: thumbnails of each query and its "
                        "neighbours with labels and scores (self-contained)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing -o file that is not a CSV, or write into a "
                        "--report folder another command wrote")
    p.add_argument("--method", default="auto", choices=("auto", "exact", "faiss"),
                   help="neighbour search (auto: exact up to 20,000 rows, faiss above when "
                        "installed)")
    add_runtime_options(p)
    return p


def cmd_similar(args: argparse.Namespace) -> int:
    from ..atomic import atomic_write_csv
    from ..audit.similar import similar
    from ..errors import OptionError
    from ..outputs import check_output

    if args.k < 1:
        raise OptionError(f"-k must be at least 1. Got {args.k} instead.")
    out = check_output(args.output, inputs=(args.store, args.query), expect="csv",
                       overwrite=args.overwrite, option="-o")
    if args.report:
        from ..audit.similar_page import SIMILAR_FILES
        from ..report.files import check_report_folder

        check_report_folder(args.report, inputs=(args.store, args.query), files=SIMILAR_FILES,
                            owner="similar", overwrite=args.overwrite)
    res = similar(args.store, args.query, k=args.k, layer=args.layer,
                  runtime=runtime_options(args), method=args.method)
    rows = res.rows()
    atomic_write_csv(out, ["query", "rank", "path", "label", "score"],
                     [[r["query"], r["rank"], r["path"], r["label"], f"{r['score']:.4f}"]
                      for r in rows])
    for m in res.matches:
        print(f"{m.query}{' (in the store)' if m.in_store else ''}:")
        for r, (p, lab, s) in enumerate(zip(m.paths, m.labels, m.scores, strict=True), 1):
            print(f"  {r:3d}  {s:.4f}  {lab or '-':<16} {p}")
    for p, why in res.failures:
        print(f"could not read {p}: {why}")
    print(f"({res.layer} codes, cosine of centred codes, {res.method} search; written {out})")
    if args.report:
        from .._runtime import command_line
        from ..audit.similar_page import write_similar

        page = write_similar(res, args.report, store=args.store,
                             inputs=(args.store, args.query), overwrite=args.overwrite,
                             command=command_line())
        print(f"thumbnails: {page}")
    return 0 if res.matches else 1


def add_audit(sub: Any) -> argparse.ArgumentParser:
    from ..audit.defaults import AuditSettings

    d = AuditSettings()
    p = sub.add_parser("audit", help="near-duplicates, train/test leaks, likely label errors, "
                                     "outliers, class balance and a 2-D map of a code store")
    p.add_argument("store", help="the training .h5 code store")
    p.add_argument("--test", default=None, help="a test store (leaks; accuracy without them)")
    p.add_argument("--report", default=None,
                   help="folder for audit.html, audit.json and the CSVs")
    p.add_argument("--layer", default=None, help="layer compared (default the store's default)")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help=f"cosine similarity of look-alikes (possible duplicates; default "
                        f"{d.threshold}, calibrated: see README); each pair is then compared in "
                        "pixels (the same picture or not)")
    p.add_argument("--method", default=d.method, choices=("auto", "exact", "faiss"),
                   help="neighbour search (auto: exact up to 20,000 rows, faiss above when "
                        "installed)")
    p.add_argument("--no-label-issues", action="store_true",
                   help="skip the label-error search (needs cleanlab otherwise)")
    p.add_argument("--map", default=d.map_method, choices=("tsne", "umap", "none"),
                   help="2-D map method (default tsne; umap needs umap-learn)")
    p.add_argument("--map-rows", type=int, default=d.map_rows,
                   help=f"images on the map at most (default {d.map_rows})")
    p.add_argument("-C", type=float, default=d.C,
                   help="inverse regularisation of the logistic regressions (default 1)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a --report folder another command wrote")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="read stores whose extraction was stopped before it finished")
    return p


def cmd_audit(args: argparse.Namespace) -> int:
    from .._runtime import command_line
    from ..audit.defaults import AuditSettings
    from ..audit.page import AUDIT_FILES, write_audit
    from ..audit.run import audit
    from ..report.audit_summary import duplicates_text
    from ..report.files import check_report_folder

    inputs = tuple(x for x in (args.store, args.test) if x)
    if args.report:
        check_report_folder(args.report, inputs=inputs, files=AUDIT_FILES, owner="audit",
                            overwrite=args.overwrite)
    settings = AuditSettings(threshold=args.threshold, method=args.method,
                             label_issues=not args.no_label_issues, C=args.C,
                             map_method=None if args.map == "none" else args.map,
                             map_rows=args.map_rows)
    res = audit(args.store, args.test, layer=args.layer, settings=settings,
                allow_incomplete=args.allow_incomplete)
    s = res.summary()
    print(f"{s['rows']} images, {s['classes']} classes ({res.layer}; {s['neighbour_search']} "
          f"neighbour search, duplicate threshold {s['duplicate_threshold']})")
    print(f"  {duplicates_text(s)}")
    if s["leaks"] is not None:
        same = s["leaks_same_picture"]
        print(f"  leaks: {s['leaks']} of {s['test_rows']} test images have a near-duplicate in "
              "training (look-alikes, possible leaks" + ("" if same is None else
                                                         f"; {same} the same picture in pixels")
              + ")")
    acc = s["accuracy"]
    if acc:
        wl = acc["without_leaks"]
        which = "the same pictures" if acc.get("removed") == "same picture" else "the leaks"
        print(f"  test accuracy {acc['all']:.3f} (n={acc['n']}); without {which} "
              f"{'n/a' if wl is None else f'{wl:.3f}'} (n={acc['n_without_leaks']})")
    if s["label_issues"] is not None:
        print(f"  likely label errors: {s['label_issues']}")
        for path, given, sug, q in res.tables()["label_issues"][1][:10]:
            print(f"    {q:.3f}  {given} -> {sug}  {path}")
    ratio = s["imbalance_ratio"]
    print(f"  outliers: {s['outliers']}; imbalance (largest / smallest class): "
          f"{ratio if ratio is None else round(ratio, 2)}")
    if args.report:
        files = write_audit(res, args.report, inputs=inputs, overwrite=args.overwrite,
                            command=command_line())
        print(f"audit written to {files['html']}")
    return 0
