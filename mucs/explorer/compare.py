"""Side by side: one query's top-k under MUCS and the baselines (pixel NN, feature NN, rank-averaged
ensembles), and two or more runs' top-k grids with the images they share highlighted.

The baselines come from `mucs.method.baselines`; a stored run's MUCS scores are reused, never recomputed:
they are placed in the baselines memo under a query id made from the run id, so an ensemble such as
``mucs+pixel_nn`` ranks the run's own MUCS scores."""
import base64
import hashlib
import html
import io
import time
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ..method import baselines
from ..method import overlap as ov
from ..sources.data import QueryImage, to_model_range
from ..errors import MucsError
from ..method.unlearn import top_k

METHODS = ("mucs", "dtrak", "abu", "pixel_nn", "feature_nn", "mucs+pixel_nn")
LABELS = {"mucs": "MUCS", "dtrak": "D-TRAK", "trak": "TRAK (loss gradients)", "abu": "AbU (attribution by unlearning)",
          "pixel_nn": "pixel NN", "feature_nn": "feature NN (model features)",
          "mucs+pixel_nn": "MUCS + pixel NN (rank average)", "mucs+feature_nn": "MUCS + feature NN (rank average)",
          "random": "random"}
MEMO_LIMIT = 400      # entries kept in the baselines memo before it is cleared


def query_id(run_id: str) -> int:
    """A stable query id per run (the baselines memo is keyed by (method, query id))."""
    return int(hashlib.sha1(str(run_id).encode()).hexdigest()[:15], 16)


def run_query(att) -> QueryImage:
    if att.query_image is None:
        raise MucsError("this run has no stored query image, so other methods cannot score it")
    return QueryImage(x=to_model_range(att.query_image), conversions=[], prompt=att.query.get("prompt"))


def method_scores(ctx: baselines.Context, att, run_id: str, names: Sequence[str] = METHODS,
                  timings: Optional[dict] = None) -> dict:
    """{method: (N,) scores} for the run's query; 'mucs' (alone or in an ensemble) is the run's own scores.
    `timings` (a dict) receives each method's seconds for this call (a memoised method: ~0; MUCS: the
    run's own total; D-TRAK/TRAK's first call includes its one-off feature pass, AbU's its Fisher)."""
    for n in names:
        baselines.components(n)            # unknown names: one clear error before any work
    if len(ctx.memo) > MEMO_LIMIT:
        ctx.memo.clear()
    qid = query_id(run_id)
    ctx.memo[("mucs", qid)] = np.asarray(att.scores, np.float64)
    q, label = run_query(att), att.query.get("label")
    out, seconds = {}, {}
    for n in names:
        t0 = time.perf_counter()
        s = baselines.scores(n, ctx, q, label, qid)
        seconds[n] = time.perf_counter() - t0 if n != "mucs" else float(att.stage_times.get("total", 0.0))
        if len(s) != len(att.scores):
            raise MucsError("the run and the training set differ in size")
        out[n] = s
    if timings is not None:
        timings.update(seconds)
    return out


def ranks_of(scores: np.ndarray) -> np.ndarray:
    """1-based rank of every item (the top-k order: higher score first, ties by index)."""
    order = top_k(np.asarray(scores, np.float64), len(scores))
    r = np.empty(len(order), np.int64)
    r[order] = np.arange(1, len(order) + 1)
    return r


def methods_side_by_side(ctx: baselines.Context, att, run_id: str, names: Sequence[str] = METHODS,
                         k: Optional[int] = None) -> dict:
    """Each method's top-k for the run's query, their pairwise overlap and, per method, which of
    its images MUCS also picked. Methods that cannot score this model (D-TRAK, TRAK, AbU on a latent, text or
    LoRA model) are left out, with why, in 'skipped'."""
    k = int(k or len(att.top))
    skipped = {n: why for n in names if (why := baselines.unsupported(n, ctx.model))}
    names = [n for n in names if n not in skipped]
    seconds: dict = {}
    sc = method_scores(ctx, att, run_id, names, seconds)
    tops = {n: [int(i) for i in top_k(s, min(k, len(s)))] for n, s in sc.items()}
    sets = [tops[n] for n in names]
    mucs_top = set(tops.get("mucs", [int(i) for i in att.top[:k]]))
    return dict(names=list(names), labels=[LABELS.get(n, n) for n in names], k=k, tops=tops, scores=sc, seconds=seconds,
                descriptions={n: baselines.description(n) for n in names}, skipped=skipped,
                matrix=ov.overlap_matrix(sets), shared=ov.shared_counts(sets),
                with_mucs={n: [i for i in tops[n] if i in mucs_top] for n in names})


def runs_side_by_side(atts: Sequence, names: Sequence[str]) -> dict:
    """The runs' top-k sets and the images found in two or more of them ({index: count})."""
    sets = [[int(i) for i in a.top] for a in atts]
    return dict(names=list(names), sets=sets, shared=ov.shared_counts(sets), matrix=ov.overlap_matrix(sets))


# --- HTML grids (the app's side-by-side views; data-URI images, so nothing is fetched) -------------

GRID_CSS = ("<style>.mucs-sbs{font-family:system-ui,sans-serif;font-size:12px;overflow-x:auto}"
            ".mucs-sbs .r{display:flex;gap:6px;align-items:flex-start;margin:0 0 10px 0;flex-wrap:wrap}"
            ".mucs-sbs .h{flex:0 0 130px;font-weight:600;padding-top:4px;word-break:break-word}"
            ".mucs-sbs .h small{display:block;font-weight:400;color:#666}"
            ".mucs-sbs .c{flex:0 0 76px;text-align:center;border:2px solid transparent;border-radius:5px;padding:1px}"
            ".mucs-sbs .c img{width:68px;height:68px;image-rendering:pixelated;display:block;margin:0 auto}"
            ".mucs-sbs .c.q{border-color:#333}.mucs-sbs .c.s{border-color:#e8890c;background:#fff4e0}"
            ".mucs-sbs .c.m{border-color:#2a9d4b;background:#e9f7ee}"
            ".mucs-sbs .t{line-height:1.2;word-break:break-word}.mucs-sbs .n{color:#666}"
            ".mucs-sbs .key span{display:inline-block;padding:0 6px;margin-right:8px;border:2px solid}"
            "@media (max-width:520px){.mucs-sbs .h{flex-basis:100%}}</style>")


def png_uri(img: np.ndarray) -> str:
    """uint8 (H, W[, C]) as a PNG data URI at its own size (the page scales it up, pixelated)."""
    a = np.asarray(img)
    a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(img, lines, cls="", index=None) -> str:
    data = f' data-index="{int(index)}"' if index is not None else ""
    text = "".join(f'<div class="t{" n" if j else ""}">{html.escape(str(t))}</div>' for j, t in enumerate(lines) if t)
    return f'<div class="c {cls}"{data}><img src="{png_uri(img)}" alt="{html.escape(str(lines[0]))}">{text}</div>'


def grid_html(rows: Sequence[dict], images, class_name=lambda i: "", key: str = "", elem_class: str = "") -> str:
    """Rows of aligned images. Each row: title, subtitle, optional query (uint8 image), items (training
    indices, best first), scores (dict index -> score), mark (dict index -> 's' shared / 'm' also MUCS,
    with a note). `images` is the training set's uint8 images."""
    out = [GRID_CSS, f'<div class="mucs-sbs {elem_class}">']
    if key:
        out.append(f'<div class="key" style="margin-bottom:6px">{key}</div>')
    for row in rows:
        cells = [f'<div class="h">{html.escape(row["title"])}<small>{html.escape(row.get("subtitle", ""))}</small></div>']
        if row.get("query") is not None:
            cells.append(_cell(row["query"], ["query", row.get("query_note", "")], "q"))
        for rank, i in enumerate(row["items"], 1):
            cls, note = row.get("mark", {}).get(i, ("", ""))
            sc = row.get("scores", {}).get(i)
            sc = f"{sc:.4g}" if isinstance(sc, (float, int, np.floating)) else (sc or "")
            cells.append(_cell(images[i], [f"#{rank} · {i}", class_name(i), sc, note], cls, i))
        out.append('<div class="r">' + "".join(cells) + "</div>")
    out.append("</div>")
    return "".join(out)
