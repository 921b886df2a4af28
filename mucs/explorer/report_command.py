"""`mucs report`: the HTML report of a run folder (mucs.explorer.report) or of a collection folder
(mucs.explorer.collection_report), written atomically; the command's parser. Its own module so that
neither report module imports the other."""
import os

from .collection_report import report_for_folder
from .report import report_for_dir, write_report


def _is_report(path: str) -> bool:
    """True for an HTML file this module wrote (so that --out may replace it)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith("<!doctype html>") and ("<title>MUCS report" in head or "<title>MUCS collection report" in head)


def cmd_report(a) -> None:
    from ..cache import check_out_file
    from .history import COLLECTION_FILE, is_collection
    out = a.out or "report.html"
    check_out_file(out, force=getattr(a, "force", False), ours=_is_report,
                   protect=[os.path.join(a.run_dir, f) for f in ("result.json", "losses.npz", "scores.csv", "query.png",
                                                                  COLLECTION_FILE)])
    if is_collection(a.run_dir):     # a collection: its own report (every overlap figure)
        text = report_for_folder(a.run_dir, a.data, getattr(a, "model", None))
    else:
        text = report_for_dir(a.run_dir, a.data)
    write_report(out, text)
    print(f"report: {out} ({len(text) / 1024:.0f} KB, self-contained)")


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of one run or collection (opens offline)",
                       description="One HTML file with the query, the top-k images (rank, index, class, score), "
                                   "the plots, warnings, settings, timings and fingerprints of a run folder "
                                   "(as written by `attribute --out` or stored by the app); for a collection folder "
                                   "(collection.json: `attribute --seeds/--images`, the app's batches) every "
                                   "generation with its top-k and every overlap analysis with its data.")
    p.add_argument("run_dir", help="run folder (result.json, losses.npz, scores.csv, query.png) or collection folder")
    p.add_argument("--model", default=None,
                   help="a collection's model, for method agreement (default: the path recorded in the collection)")
    p.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    p.add_argument("--data", default=None,
                   help="the run's training set, for the top-k images (default: the path recorded in the run)")
    p.add_argument("--force", action="store_true", help="replace an existing --out not written by `mucs report`")
    p.set_defaults(fn=cmd_report)
