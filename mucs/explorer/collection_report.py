"""A self-contained HTML report of a collection (`mucs report COLLECTION_DIR`): what was asked, the
settings and status, every generation with its top-k, and every overlap figure with its "what is
this" line and its data as CSV / JSON links. Images and data are embedded (data URIs), charts are
inline SVG: the one file opens offline in any browser and asks no host for anything."""
import html
import os
from datetime import datetime, timezone
from typing import Optional

from . import analysis
from . import collection as coll
from .collection_store import load_members
from . import collection_figures as figs
from .batch import collection_summary, describe_asked
from .compare import png_uri
from .report import CSS as RUN_CSS, _find_data, training_set_for
from ..errors import MucsError

CSS = RUN_CSS + """
.gens { display: grid; grid-template-columns: 1fr; gap: 6px; }
.gen { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; border-bottom: 1px solid #eee; padding: 3px 0; }
.gen .h { flex: 0 0 150px; font-size: 12px; } .gen .h small { color: #666; display: block; }
.gen img { width: 44px; height: 44px; image-rendering: pixelated; border: 1px solid #ddd; }
.gen img.q { width: 52px; height: 52px; border: 2px solid #333; }
"""


def _e(s) -> str:
    return html.escape("" if s is None else str(s), quote=True)


def render(record: dict, members: list, data=None, agree: Optional[dict] = None, note: str = "") -> str:
    """The report as one HTML string: `members` = [(item name, Attribution)], `data` the training set
    (its images for the cards; without it the figures stay, the cards go), `agree` method agreement."""
    if not members:
        raise MucsError(f"collection {record.get('id')} has no finished item to report")
    names_cls = record.get("class_names") or (data.class_names if data is not None else None)

    def cname(y) -> str:
        if y is None:
            return ""
        return names_cls[int(y)] if names_cls and 0 <= int(y) < len(names_cls) else str(y)
    by_name = {it["name"]: it for it in record["items"]}
    run_ids = [f"{record['id']}/{n}" for n, _ in members]
    atts = [a for _, a in members]
    short = [coll.short_name(by_name[n], cname) for n, _ in members]
    n_items = len(atts[0].scores)
    labels = atts[0].labels if data is None else data.labels
    an = analysis.analyse(run_ids, atts, short, n_items, labels, names_cls)
    title = f"MUCS collection report — {record.get('id')}"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
             f"content='width=device-width, initial-scale=1'><title>{_e(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1>",
             f"<p class='muted'>Overlap across generations: which training images drive many generations at once? "
             f"{_e(describe_asked(record, cname))}; created {_e(record.get('created'))}; report written "
             f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}.</p>"]
    summary = collection_summary(record, an, agree, cname)
    parts.append("<p>" + "<br>".join(_md(line) for line in summary.split("  \n")) + "</p>")
    if note:
        parts.append(f"<p class='warn'>{_e(note)}</p>")
    # the generations and their top-k
    rows = []
    for (name, a), s in zip(members, short):
        it = by_name[name]
        q = f"<img class='q' src='{png_uri(a.query_image)}' alt='query {_e(name)}'>" if a.query_image is not None else ""
        tops = "".join(f"<img src='{png_uri(data.images[int(i)])}' alt='training image {int(i)}' "
                       f"title='#{r} · {int(i)} {_e(cname(labels[int(i)]) if labels is not None else '')} · "
                       f"{float(a.scores[int(i)]):.4f}'>" for r, i in enumerate(a.top, 1)) if data is not None else \
            "<span class='muted'>" + " ".join(str(int(i)) for i in a.top) + "</span>"
        rows.append(f"<div class='gen' id='run-{_e(name)}'><div class='h'>{_e(s)}<small>{_e(name)} · "
                    f"{it.get('steps', '')} steps{'' if it.get('converged', True) else ' (step cap)'}</small></div>"
                    f"{q}{tops}</div>")
    parts.append(f"<h2>The {len(members)} generations and their top-{max(an['sizes'])}</h2>"
                 "<p class='muted'>Each row: the generation (framed) and its most influential training images, best "
                 "first (hover an image for its rank, index, class and skew).</p><div class='gens'>"
                 + "".join(rows) + "</div>")
    missing = [it for it in record["items"] if it.get("status") != coll.DONE]
    if missing:
        parts.append("<p class='muted'>Not in the analyses: " + "; ".join(
            f"{_e(it['name'])} ({_e(it.get('status'))}{': ' + _e(it.get('error')) if it.get('error') else ''})"
            for it in missing) + ".</p>")
    parts.append("<h2>Overlap analyses</h2>" + figs.page(an, agree, None if data is None else data.images, cname,
                                                          prefix="coll"))
    shared = record.get("settings") or {}
    parts.append("<h2>Settings (shared by every item)</h2><table>" + "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in sorted(shared.items())) + "</table>")
    st = record.get("stage_times") or {}
    prov = [("collection id", record.get("id")), ("status", record.get("status")),
            ("model", record.get("model")), ("model fingerprint", record.get("model_fingerprint")),
            ("training set", record.get("data")), ("training-set fingerprint", record.get("data_fingerprint")),
            ("training images", record.get("num_train")), ("total seconds", record.get("seconds")),
            ("shared stages (s)", ", ".join(f"{k} {v}" for k, v in st.items()) or "cached")]
    parts.append("<h2>Provenance</h2><table>" + "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>"
                                                        for k, v in prov) + "</table>")
    parts.append("<p class='muted'>Made by MUCS Explorer. This file is self-contained: images and data are embedded "
                 "and nothing is fetched from the network.</p></body></html>")
    return "\n".join(parts)


def _md(line: str) -> str:
    """**bold** and `code` of the summary's Markdown as HTML (the rest escaped)."""
    import re
    out = _e(line)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def report_for_folder(folder: str, data_path: Optional[str] = None, model_path: Optional[str] = None) -> str:
    """Render the report of a collection folder, with the training images (and method agreement,
    when the model is found too) from the paths the collection records or the ones given."""
    record, members = load_members(folder)
    record["id"] = record.get("id") or os.path.basename(os.path.normpath(folder))
    fp = record.get("data_fingerprint")
    data, note = training_set_for(data_path or None, record.get("data"), folder, "collection",
                                  "so the images are left out and so is method agreement",
                                  lambda d: not fp or d.fingerprint() == fp)
    agree = None
    if data is not None and members:
        mpath = model_path or _find_data(record.get("model"), folder)
        if mpath is None:
            note = (f"The collection's model ({record.get('model')}) was not found: method agreement is left out; pass "
                    "--model PATH to include it.")
        else:
            agree = _agreement(mpath, data, record, members)
    return render(record, members, data, agree, note)


def _agreement(model_path: str, data, record: dict, members: list) -> dict:
    from ..method.baselines import Context
    from ..sources.models import load_model
    model = load_model(model_path, "cpu")
    data.check_matches(model)
    ctx = Context(model, data)          # the baselines only: each run's own MUCS scores are reused
    run_ids = [f"{record['id']}/{n}" for n, _ in members]
    return analysis.agreement(ctx, [a for _, a in members], run_ids, analysis.AGREEMENT_METHODS, len(data), data.labels,
                              record.get("class_names"))
