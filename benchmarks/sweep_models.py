"""Sweep every torchvision classification builder and one timm model per family: codes or one
clear reason (see :mod:`cnncodes.codes.sweep`). ``make sweep`` runs it.

    python benchmarks/sweep_models.py                         # everything (long on 2 cores)
    python benchmarks/sweep_models.py --only torchvision --limit 10
    python benchmarks/sweep_models.py --rows results/sweep.jsonl --table results/sweep.md

Rows are appended to ``--rows`` (JSON lines) as each model finishes, and models already there are
skipped, so an interrupted sweep continues where it stopped. The summary table (Markdown) goes to
``--table`` and stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sys
from pathlib import Path

import torch

from cnncodes.atomic import atomic_write_text
from cnncodes.codes.sweep import summary_table, sweep_one, timm_family_models, torchvision_models

HERE = Path(__file__).resolve().parent


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["torchvision", "timm"], default=None)
    ap.add_argument("--limit", type=int, default=None, help="first N models of each library")
    ap.add_argument("--rows", type=Path, default=HERE / "results" / "sweep.jsonl")
    ap.add_argument("--table", type=Path, default=HERE / "results" / "sweep.md")
    ap.add_argument("--max-forward-mib", type=float, default=256,
                    help="models with more parameter bytes get metadata only (default 256 MiB)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--report", action="store_true",
                    help="only write the table of the rows already in --rows (a partial sweep)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(a.threads)
    names: list[str] = []
    if a.only in (None, "torchvision"):
        names += torchvision_models()[:a.limit]
    if a.only in (None, "timm"):
        names += timm_family_models()[:a.limit]
    a.rows.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if a.rows.is_file():
        for line in a.rows.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["backbone"]] = r
    signal.signal(signal.SIGALRM, _alarm)
    for i, name in enumerate(names):
        if name in done or a.report:
            continue
        signal.alarm(a.timeout)
        try:
            row = sweep_one(name, max_forward_bytes=int(a.max_forward_mib * 2**20))
        except _Timeout:
            row = {"backbone": name, "status": "failed", "reason": f"over {a.timeout} s"}
        finally:
            signal.alarm(0)
        done[name] = row
        # every finished row kept (rewritten whole, atomically): an interrupted sweep resumes
        atomic_write_text(a.rows, "".join(json.dumps(r) + "\n" for r in done.values()))
        print(f"[{i + 1}/{len(names)}] {name}: {row['status']} {row.get('seconds', '')} s "
              f"{row['reason'][:120]}", flush=True)
    rows = [done[n] for n in names if n in done]
    head = (f"Sweep of {len(rows)} of {len(names)} models ({platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {a.threads} thread(s), random weights, smallest size that "
            f"works; {sum(r.get('seconds', 0) for r in rows):.0f} s of model time)")
    table = head + "\n\n" + summary_table(rows) + "\n"
    atomic_write_text(a.table, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
