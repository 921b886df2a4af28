"""The overlap figures of a collection as HTML blocks (inline SVG charts, image cards as data URIs):
each with its title, a one-line "what is this", and its data as CSV and JSON links (data URIs, so
the same block works in the app and in the self-contained report, offline). Clicking a point of
the map (or a row label of the heatmap) carries `data-run`: the app opens that run."""
import base64
import html
import json
from typing import Callable, Optional

import numpy as np

from ..checks import json_default
from . import svg
from .analysis import json_parts, tables, to_csv
from .compare import png_uri

ORDER = ("coverage", "recurring", "concentration", "classes", "heatmap", "map", "agreement")
TITLES = {
    "coverage": "Distinct training images covered",
    "recurring": "Images that recur most",
    "concentration": "How concentrated influence is",
    "classes": "Overlap within and across classes",
    "heatmap": "Pairwise overlap, in clustering order",
    "map": "Map of the generations",
    "agreement": "Method agreement over the collection",
}
WHAT = {
    "coverage": "How many different training images the top-k sets of the first G generations cover together (blue), "
                "against G·k (every set new, dashed) and random top-k sets of the same sizes (grey: 95 % of random "
                "draws); a curve below the grey band means the generations share influential images more than chance.",
    "recurring": "The training images found in the most top-k sets (how many, and their class): the images that "
                 "drive many generations at once.",
    "concentration": "The share of all top-k slots taken by the 1 % and 10 % most frequent training images, and the "
                     "Gini coefficient of how often each image appears (0: evenly spread, near 1: a few images "
                     "everywhere), against random top-k sets (orange; whiskers: 95 % of random draws).",
    "classes": "The overlap |A∩B| / min(|A|,|B|) of every pair of generations of the same class against pairs of "
               "different classes and random top-k sets (each dot a pair): is influence shared by class?",
    "heatmap": "The overlap of every pair of generations, rows and columns ordered by clustering (average linkage "
               "on 1 − overlap), so that groups of generations sharing images show as dark blocks; click a row "
               "name to open that run.",
    "map": "Each dot is a generation, placed so that generations with overlapping top-k sets lie close together "
           "(classical MDS of 1 − overlap); colour: class. Click a dot to open its run.",
    "agreement": "How far other methods agree with MUCS over the collection: the mean overlap@k of each method's "
                 "top-k with MUCS's for the same query (whiskers: lowest to highest query), against random top-k "
                 "sets (orange); below, the images each method alone puts in its top-k.",
}

CSS = ("<style>.mucs-coll{font-family:system-ui,sans-serif;font-size:13px;display:grid;gap:14px;"
       "grid-template-columns:repeat(auto-fill,minmax(min(100%,540px),1fr))}"
       ".mucs-coll figure.wide{grid-column:1/-1}"
       ".mucs-coll figure{margin:0;border:1px solid #e3e3e3;border-radius:8px;padding:8px 10px;"
       "background:#fff}.mucs-coll h3{font-size:14px;margin:0 0 2px 0}"
       ".mucs-coll .what{color:#555;font-size:12.5px;margin:0 0 6px 0}"
       ".mucs-coll .dl{font-size:12px;margin-top:4px}.mucs-coll .dl a{margin-right:10px}"
       ".mucs-coll svg.chart{max-width:100%;height:auto}"
       ".mucs-coll .cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(84px,1fr));gap:8px}"
       ".mucs-coll .card{border:1px solid #ddd;border-radius:6px;padding:3px;text-align:center;font-size:11px}"
       ".mucs-coll .card img{width:100%;aspect-ratio:1;image-rendering:pixelated;display:block}"
       ".mucs-coll .grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}"
       ".mucs-coll .pt:hover circle{stroke:#000;stroke-width:2}"
       "@media (max-width:520px){.mucs-coll .grid2{grid-template-columns:1fr}}</style>")


def _e(s) -> str:
    return html.escape("" if s is None else str(s), quote=True)


def data_uri(text: str, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(text.encode("utf-8")).decode("ascii")


def charts(an: dict, agree: Optional[dict] = None) -> dict:
    """{figure key: SVG} of the charts (recurring images and the method galleries are cards, see blocks)."""
    c = an["coverage"]
    out = {"coverage": svg.lines(
        [dict(name="these generations", x=c["g"], y=c["distinct"], color=svg.BLUE, markers=len(c["g"]) <= 60),
         dict(name="G·k (no image shared)", x=c["g"], y=c["bound"], color=svg.GREY, markers=False, dash="5 4"),
         dict(name="random top-k sets (mean)", x=c["g"], y=c["random_mean"], color="#555555", markers=False,
              dash="2 3")],
        TITLES["coverage"], "generations G", "distinct training images",
        bands=[dict(name="random: 95 % of draws", x=c["g"], lo=c["random_lo"], hi=c["random_hi"], color=svg.GREY)])}
    conc = an["concentration"]
    keys = list(conc)
    out["concentration"] = svg.interval_bars(
        [f"{k} share of slots" if k.startswith("top") else "Gini" for k in keys],
        [conc[k]["observed"] for k in keys], lo=[conc[k]["random_lo"] for k in keys],
        hi=[conc[k]["random_hi"] for k in keys], ref=[conc[k]["random_mean"] for k in keys],
        title=TITLES["concentration"], ylabel="share / Gini", top=1.0, ref_label="random top-k sets (mean)")
    p = an["pairs"]
    groups = [("same class", p["within_values"]), ("different classes", p["across_values"])]
    out["classes"] = svg.strips(groups, TITLES["classes"], "overlap of a pair",
                                hlines=[(p["random_mean"], f"random top-k sets: {p['random_mean']:.3f}"
                                         if p["random_mean"] is not None else "", svg.ORANGE)])
    order = an["order"][:MAX_SHOWN]
    names = [an["names"][i] for i in order]
    m = np.asarray(an["matrix"], float)[np.ix_(order, order)] if order else np.zeros((0, 0))
    out["heatmap"] = svg.heatmap(m, names, TITLES["heatmap"], data=[{"run": an["run_ids"][i]} for i in order])
    labels = [f"{n} ({c})" if c else n for n, c in zip(an["names"], an["classes"])]
    out["map"] = svg.points(an["map"]["x"], an["map"]["y"], an["classes"], labels, TITLES["map"],
                            "MDS axis 1", "MDS axis 2", data=[{"run": r} for r in an["run_ids"]])
    if agree is not None:
        rows = [r for r in agree["methods"] if r["method"] != "mucs"]   # MUCS against itself is 1
        out["agreement"] = svg.interval_bars(
            [r["label"] for r in rows], [r["mean"] if r["mean"] is not None else np.nan for r in rows],
            lo=[r["min"] if r["min"] is not None else np.nan for r in rows],
            hi=[r["max"] if r["max"] is not None else np.nan for r in rows],
            ref=[agree["random_mean"]] * len(rows), title="Mean overlap@k with MUCS over the collection",
            ylabel="overlap with MUCS", top=1.0, ref_label="random top-k sets")
    return out


MAX_SHOWN = 60     # the heatmap shows at most this many generations


def _cards(items, images, caption: Callable) -> str:
    return "<div class='cards'>" + "".join(
        f"<div class='card' data-index='{int(it['index'])}'><img src='{png_uri(images[int(it['index'])])}' "
        f"alt='training image {int(it['index'])}'><div>{_e(caption(it))}</div></div>" for it in items) + "</div>"


def blocks(an: dict, agree: Optional[dict], images, class_name: Callable = lambda y: "",
           prefix: str = "coll") -> dict:
    """{figure key: HTML <figure>} with title, what-is-this line, the chart or cards, CSV and JSON links."""
    ch = charts(an, agree)
    tab = tables(an, agree)
    js = json_parts(an, agree)
    out = {}
    for key in ORDER:
        if key == "agreement" and agree is None:
            continue
        if key == "recurring":
            recs = an["recurring"]
            body = (_cards(recs, images, lambda r: f"{r['index']} {r['class_name']} · in {r['count']} of "
                                                   f"{an['count']}") if recs and images is not None else
                    "<p class='what'>" + ("No training image is in two or more of the top-k sets." if not recs else
                                          "(the training images are not available here)") + "</p>")
            body += (f"<p class='what'>{an['distinct']} distinct images fill the {an['slots']} top-k slots of "
                     f"{an['count']} generations.</p>")
        elif key == "agreement":
            body = ch[key] + "<div class='grid2'>" + "".join(
                f"<div><b>{_e(r['label'])} alone</b> <span class='what'>({r['alone_images']} images, "
                f"{r['alone_slots']} top-k slots no other method has)</span>"
                + (_cards(r["alone"], images, lambda a: f"{a['index']} {class_name(a['label'])} · ×{a['queries']}")
                   if images is not None and r["alone"] else "") + "</div>" for r in (agree or {}).get("methods", [])) + "</div>"
        else:
            body = ch[key]
        header, rows = tab[key]
        as_json = json.dumps(js[key], indent=1, allow_nan=False, default=json_default)
        links = (f"<div class='dl'>Data: <a download='{prefix}-{key}.csv' href='{data_uri(to_csv(header, rows), 'text/csv')}'>"
                 f"CSV</a><a download='{prefix}-{key}.json' href='{data_uri(as_json, 'application/json')}'>JSON</a></div>")
        wide = " wide" if key in ("recurring", "agreement") else ""
        out[key] = (f"<figure id='{prefix}-{key}' class='coll-fig{wide}'><h3>{_e(TITLES[key])}</h3>"
                    f"<p class='what'>What is this: {_e(WHAT[key])}</p>{body}{links}</figure>")
    return out


def page(an: dict, agree: Optional[dict], images, class_name: Callable = lambda y: "", prefix: str = "coll") -> str:
    """Every block in one HTML fragment (with its CSS)."""
    b = blocks(an, agree, images, class_name, prefix)
    return CSS + "<div class='mucs-coll'>" + "".join(b[k] for k in ORDER if k in b) + "</div>"
