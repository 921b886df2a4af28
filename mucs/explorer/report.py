"""A self-contained HTML report of one run: the query, the top-k training images with ranks,
classes and scores, the plots as inline SVG, the warnings, every setting, the timings, the noise
levels and the model and data fingerprints. Images are embedded as base64 PNGs, so the single file
opens offline in any browser and asks no host for anything.

    python -m mucs report RUN_DIR --out report.html [--data PATH]
"""
import base64
import html
import io
import logging
import os
from datetime import datetime, timezone
from typing import Optional

import numpy as np
from PIL import Image

from . import svg
from ..method.attribute import Attribution
from ..errors import MucsError

log = logging.getLogger("mucs")

METHOD = (
    "MUCS (mirrored unlearning and noise-consistent skew; Serrà et al., 2026) copies the trained model and "
    "makes the copy <em>forget the query image</em> by gradient ascent on its diffusion loss, bounded by the loss "
    "of an untrained model (L<sub>null</sub>), while the copy keeps fitting the training data. Training images "
    "that the copy forgets along with the query are the ones the query depends on. For every training image "
    "the diffusion loss of the original model (L<sub>o</sub>) and of the unlearned copy (L<sub>u</sub>) is "
    "measured on the same fixed set of K noise levels and noise samples, and the normalised rise "
    "<code>skew = mean<sub>k</sub> (L<sub>u</sub> − L<sub>o</sub>) / (L<sub>u</sub> + L<sub>o</sub> + 0.001)</code> "
    "ranks them: a skew near 1 means the image became as hard for the model as noise, near 0 means unlearning "
    "the query did not touch it.")

PLOT_NOTES = {
    "hist": "How many training images have each skew (log count). The dashed red line is the top-k cut-off: "
            "images right of it are the ones listed above. A clear gap before the cut-off means a confident top-k.",
    "scatter": "Each dot is a training image: its mean loss before (L<sub>o</sub>, x) and after unlearning "
               "(L<sub>u</sub>, y), log axes, coloured by skew. Dots far above the dotted diagonal became harder "
               "after the model forgot the query; the top-k are ringed in red.",
    "curve": "The unlearning run step by step: the bounded forget loss L<sub>f</sub> on the query rises towards "
             "L<sub>null</sub> (the loss of an untrained model) while the retain loss L<sub>r</sub> on training "
             "images stays low. It stops at the red line, (1 − τ)·L<sub>null</sub>, or at the step cap.",
    "classes": "Classes of the top-k images (query class in red) against how many of each class random picks "
               "would give (black ticks).",
}

CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 16px 20px 40px; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.5em; margin: 0.2em 0; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.muted { color: #666; } .warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: 6px 10px; margin: 6px 0; }
.row { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.query img { width: 192px; height: 192px; image-rendering: pixelated; border: 1px solid #ccc; }
.grid { display: grid; grid-template-columns: repeat(var(--cols, 5), minmax(0, 1fr)); gap: 10px; }
@media (max-width: 900px) { .grid { grid-template-columns: repeat(var(--half, 5), minmax(0, 1fr)); gap: 6px; } }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 4px; text-align: center; font-size: 12px; }
.card img { width: 100%; aspect-ratio: 1; image-rendering: pixelated; display: block; }
.card .cap { margin-top: 3px; word-break: break-word; } .card .sub { color: #666; font-size: 11px; }
table { border-collapse: collapse; font-size: 13px; } td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f6f8fa; } code { font-size: 12px; word-break: break-all; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 14px; }
.plots figure { margin: 0; } .plots svg { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 12.5px; color: #444; margin-top: 4px; }
@media (max-width: 520px) { .plots { grid-template-columns: 1fr; } .card { font-size: 10px; padding: 2px; } }
"""


def _e(s) -> str:
    return html.escape("" if s is None else str(s), quote=True)


def png_data_uri(img: np.ndarray, target: int = 128) -> str:
    """uint8 (H, W[, C]) -> 'data:image/png;base64,...', enlarged by an integer factor (crisp pixels)."""
    a = np.asarray(img)
    a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
    h, w = a.shape[:2]
    f = max(1, int(round(target / max(h, w))))
    im = Image.fromarray(np.ascontiguousarray(a)).resize((w * f, h * f), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _table(rows) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _class_names(att: Attribution, data=None, class_names=None) -> Optional[list]:
    if class_names:
        return [str(c) for c in class_names]
    if data is not None and data.class_names:
        return [str(c) for c in data.class_names]
    return None


def _name(label, names) -> str:
    if label is None:
        return ""
    label = int(label)
    return names[label] if names and 0 <= label < len(names) else str(label)


def plot_svgs(att: Attribution, class_names=None) -> dict:
    """The four result plots as SVG strings: hist, scatter, curve, classes."""
    scores, top = np.asarray(att.scores, float), np.asarray(att.top, int)
    cut = (float(scores[top].min()), f"top-{len(top)} cut-off {float(scores[top].min()):.4g}") if len(top) else None
    out = {"hist": svg.histogram(scores, 60, "Skew of every training image", "skew", "images", vline=cut)}
    labels = att.labels
    names = [f"item {i}" + (f" ({_name(labels[i], class_names)})" if labels is not None else "")
             for i in range(len(scores))]
    out["scatter"] = svg.scatter(att.loss_original, att.loss_unlearned, colour=scores, highlight=top,
                                 title="Loss before (L_o) and after unlearning (L_u), mean over the K noises",
                                 xlabel="L_o, original model (log)", ylabel="L_u, unlearned model (log)",
                                 log_x=True, log_y=True, diagonal=True, labels=names, colour_label="skew")
    curve = att.curve or []
    tol = (att.settings or {}).get("tol")
    hl = [] if att.loss_null is None else [(att.loss_null, "L_null", svg.GREY)]
    if tol is not None and att.loss_null is not None:
        hl.append(((1 - tol) * att.loss_null, "stop: (1−τ)·L_null", svg.RED))
    series = [dict(name="L_f (forget, on the query)", x=[c["step"] for c in curve], y=[c["loss_f"] for c in curve],
                   color=svg.BLUE, markers=len(curve) <= 60),
              dict(name="L_r (retain, training images)", x=[c["step"] for c in curve],
                   y=[c.get("loss_r") if c.get("loss_r") is not None else np.nan for c in curve], color=svg.ORANGE,
                   markers=len(curve) <= 60)]
    out["curve"] = (svg.lines(series, "Mirrored unlearning", "step", "loss", hlines=hl) if curve
                    else svg.empty("Mirrored unlearning", "no unlearning curve recorded"))
    if labels is None:
        out["classes"] = svg.empty("Top-k classes", "unconditional model: no classes")
    else:
        lab = np.asarray(labels, int)
        n = len(class_names) if class_names else int(lab.max()) + 1
        counts = np.bincount(lab[top], minlength=n) if len(top) else np.zeros(n)
        expected = np.bincount(lab, minlength=n) / max(1, len(lab)) * len(top)
        q = att.query.get("label")
        out["classes"] = svg.bars([_name(i, class_names) for i in range(n)], counts[:n], expected[:n],
                                  None if q is None else int(q), "Classes among the top-k (query class in red)",
                                  "class", "images")
    return out


def _query_label(att: Attribution, names) -> tuple:
    """(label, class name) of the run's query."""
    q = att.query or {}
    label = q.get("label")
    return label, q.get("class_name") or _name(label, names)


def _head(att: Attribution, title: str, meta: dict, names) -> list:
    """The document's head, title, one-line summary of the query and how to read the report."""
    q = att.query or {}
    label, cls = _query_label(att, names)
    return [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>",
            f"<h1>{_e(title)}</h1>",
            f"<p class='muted'>Which training images made the model generate this image? Query: "
            f"{_e(q.get('source') or meta.get('source') or 'unknown source')}"
            + (f", class <b>{_e(cls)}</b> ({_e(label)})" if label is not None else "")
            + (f", prompt <b>“{_e(q['prompt'])}”</b>" if q.get("prompt") else "")
            + (f"; run created {_e(meta['created'])}" if meta.get("created") else "")
            + f"; report written {datetime.now(timezone.utc).isoformat(timespec='seconds')}.</p>",
            f"<details open><summary><b>How to read this</b></summary><p>{METHOD}</p></details>"]


def _query_section(att: Attribution, meta: dict, names) -> list:
    """The query image beside the run in brief, then the run's warnings in words."""
    from .diagnostics import warnings
    q, info = att.query or {}, att.info or {}
    label, cls = _query_label(att, names)
    stop = ("converged: the forget loss reached (1 − τ)·L<sub>null</sub>" if att.converged
            else "<b>hit the step cap</b> before the query was forgotten")
    brief = [("method", _e(f"{info.get('method', 'mucs')}: {info.get('method_description', 'MUCS')}")),
             ("query source", _e(q.get("source") or meta.get("source") or "")),
             (("query prompt", _e(q["prompt"])) if q.get("prompt") else
              ("query class", _e(f"{cls} ({label})" if label is not None else "none (unconditional)"))),
             ("model", _e(" · ".join(str(info[k]) for k in ("denoiser", "model_family", "conditioning") if info.get(k))
                          or "UNet2DModel")),
             ("conversions of the query", _e("; ".join(q.get("conversions") or []) or "none")),
             ("unlearning", f"{att.steps} steps, {stop}"),
             ("L_null (untrained model's loss)", "–" if att.loss_null is None else f"{att.loss_null:.6g}"),
             ("unlearning learning rate", _e(_fmt(info.get("unlearning_lr", "")))),
             ("training images", _e(len(att.scores))),
             ("top-k", _e(len(att.top)))]
    qimg = (f"<img src='{png_data_uri(att.query_image, 192)}' alt='query image'>" if att.query_image is not None
            else "<p class='muted'>(no query image stored)</p>")
    parts = [f"<h2>Query</h2><div class='row'><div class='query'>{qimg}</div>{_table(brief)}</div>"]
    for w in warnings(att.scores, att.top, att.labels, label, att.converged, att.steps):
        parts.append(f"<div class='warn'>⚠️ {_e(w)}</div>")
    return parts


def _top_k_section(att: Attribution, data, names, data_note: str) -> list:
    """The top-k training images as cards (without pictures when the training set is not at hand)."""
    parts = [f"<h2>The {len(att.top)} most influential training images</h2>"
             "<p class='muted'>Best first. Caption: rank · training index · class · skew; below: mean "
             "L<sub>o</sub> → L<sub>u</sub>.</p>"]
    if data_note:
        parts.append(f"<p class='warn'>{_e(data_note)}</p>")
    cards = []
    for rank, i in enumerate(np.asarray(att.top, int), 1):
        lab = "" if att.labels is None else _name(att.labels[i], names)
        img = (f"<img src='{png_data_uri(data.images[i], 96)}' alt='training image {i}'>" if data is not None
               else "<div style='aspect-ratio:1;background:#eee'></div>")
        cards.append(f"<div class='card' data-index='{i}'>{img}<div class='cap'>#{rank} · {i}"
                     f"{(' · ' + _e(lab)) if lab else ''} · {float(att.scores[i]):.4f}</div>"
                     + (f"<div class='sub'>“{_e(att.captions[i])}”</div>" if att.captions is not None else "")
                     + (f"<div class='sub'>{float(att.loss_original[i]):.3g} → {float(att.loss_unlearned[i]):.3g}</div>"
                        if np.isfinite(att.loss_original[i]) else "") + "</div>")
    # whole rows: the top-10 in one row of 10 (two of 5 on narrow screens), never 9 + 1
    cols = max(1, min(len(cards), 10))
    parts.append(f"<div class='grid' id='topk' style='--cols:{cols};--half:{-(-cols // 2)}'>{''.join(cards)}</div>")
    return parts


def _settings_sections(att: Attribution) -> list:
    """Settings, timings and the noise levels every item was scored at."""
    info = att.info or {}
    parts = ["<h2>Settings</h2>" + _table((k, _e(_fmt(v))) for k, v in sorted((att.settings or {}).items()))]
    times = att.stage_times or {}
    parts.append("<h2>Timings</h2>" + _table((k.replace("_", " "), f"{float(v):.1f} s") for k, v in times.items()))
    levels = info.get("noise_levels")
    if levels:
        rows = "".join(f"<tr><td>{k + 1}</td><td>{lv['sigma']:.4g}</td><td>{lv['timestep']}</td>"
                       f"<td>{lv['sigma_t']:.4g}</td></tr>" for k, lv in enumerate(levels))
        parts.append(f"<h2>Noise levels (K = {len(levels)})</h2><p class='muted'>Every training image is scored "
                     "at these levels with the same noise samples, for both models.</p><table><tr><th>k</th>"
                     f"<th>grid σ</th><th>timestep</th><th>σ at that timestep</th></tr>{rows}</table>")
    else:
        parts.append("<h2>Noise levels</h2><p class='muted'>Not recorded: this run was made before the noise "
                     "grid was limited to the sampler's σ range (it spans the scheduler's full range).</p>")
    return parts


def _provenance(att: Attribution, run_id: str, meta: dict) -> str:
    """Where the run came from: model, training set, their fingerprints, the machine, the version."""
    info = att.info or {}
    prov = [("run id", _e(run_id)), ("model", _e(info.get("model", meta.get("model", "")))),
            ("model fingerprint (sha256 of weights + scheduler)", f"<code>{_e(info.get('model_fingerprint', ''))}</code>"),
            ("training set", _e(info.get("data", meta.get("data", "")))),
            ("training-set fingerprint (sha256 of pixels + labels)", f"<code>{_e(info.get('data_fingerprint', ''))}</code>"),
            ("device", _e(info.get("device", ""))), ("torch threads", _e(info.get("torch_threads", ""))),
            ("cache hits", _e(info.get("cache_hits", ""))), ("mucs version", _e(info.get("mucs_version", "")))]
    prov += [(f"query {k}", _e(_fmt(v))) for k, v in meta.items()
             if k in ("kind", "seed", "sampler_steps", "index", "file")]
    return "<h2>Provenance</h2>" + _table(prov)


def render_report(att: Attribution, run_id: str = "", meta: Optional[dict] = None, data=None,
                  class_names=None, data_note: str = "") -> str:
    """The report as one HTML string. `data` (the run's training set) supplies the top-k images;
    without it the report lists them without pictures and says so (`data_note`)."""
    meta = dict(meta or {})
    names = _class_names(att, data, class_names)
    title = f"MUCS report — {run_id}" if run_id else "MUCS report"
    parts = _head(att, title, meta, names) + _query_section(att, meta, names)
    parts += _top_k_section(att, data, names, data_note)
    figs = plot_svgs(att, names)
    parts.append("<h2>Plots</h2><div class='plots'>" + "".join(
        f"<figure id='plot-{k}'>{figs[k]}<figcaption>{PLOT_NOTES[k]}</figcaption></figure>"
        for k in ("hist", "scatter", "curve", "classes")) + "</div>")
    parts += _settings_sections(att)
    parts.append(_provenance(att, run_id, meta))
    parts.append("<p class='muted'>Made by MUCS Explorer. This file is self-contained: images are embedded and "
                 "nothing is fetched from the network.</p></body></html>")
    return "\n".join(parts)


def _find_data(path: Optional[str], run_dir: str) -> Optional[str]:
    """The training set a run names: as stored, relative to the working folder, to the repository,
    or to the run folder; None when none exists."""
    if not path:
        return None
    from .history import REPO
    for p in (path, os.path.join(REPO, path), os.path.join(run_dir, path)):
        if os.path.exists(p):
            return p
    if os.path.isabs(path):   # a run made in another checkout: try the same path inside this one
        tail = path.split(os.sep + "assets" + os.sep, 1)
        if len(tail) == 2 and os.path.exists(os.path.join(REPO, "assets", tail[1])):
            return os.path.join(REPO, "assets", tail[1])
    return None


def load_run(run_dir: str) -> tuple:
    """(Attribution, meta) of a run folder (meta.json is optional: plain `attribute --out` folders lack it)."""
    if not os.path.isdir(run_dir):
        raise MucsError(f"no run folder at {run_dir}")
    try:
        att = Attribution.load(run_dir)
    except (OSError, ValueError, KeyError) as e:
        raise MucsError(f"{run_dir} is not a readable run folder (result.json, losses.npz, scores.csv): "
                        f"{type(e).__name__}: {e}") from None
    meta = {}
    if os.path.isfile(os.path.join(run_dir, "meta.json")):
        from ..runfiles import read_meta
        try:
            meta = read_meta(run_dir)
        except MucsError as e:   # the metadata is optional: a damaged one is left out, and said
            log.warning("%s; the report leaves the run's metadata out", e)
    return att, meta


def training_set_for(data_path: Optional[str], recorded: Optional[str], folder: str, what: str, left_out: str,
                     matches, detail: str = "") -> tuple:
    """The training set a report shows: `data_path` when given (missing: an error), else the one the
    run or collection (`what`) records, found as _find_data finds it; (data or None, a note saying what is
    `left_out` when none was found). A set that does not `match` the results is an error."""
    from ..sources.data import load_dataset
    path = data_path if data_path is not None else _find_data(recorded, folder)
    if path is None or not os.path.exists(path):
        if data_path is not None:
            raise MucsError(f"training set not found: {data_path}")
        return None, (f"The {what}'s training set ({recorded or 'not recorded'}) was not found, {left_out}; pass "
                      "--data PATH to include them.")
    data = load_dataset(path)
    if not matches(data):
        raise MucsError(f"{path} is not the training set this {what} was made with{detail}")
    return data, ""


def report_for_dir(run_dir: str, data_path: Optional[str] = None) -> str:
    """Render the report of a run folder, with the training images when its training set is found
    (and matches the run's fingerprint)."""
    att, meta = load_run(run_dir)
    fp = att.info.get("data_fingerprint")
    data, note = training_set_for(
        data_path, att.info.get("data"), run_dir, "run",
        "so the top-k are listed without their images",
        lambda d: len(d) == len(att.scores) and not (fp and fp != d.fingerprint()), " (different size or content)")
    run_id = meta.get("id") or os.path.basename(os.path.normpath(run_dir))
    return render_report(att, run_id, meta, data, data_note=note)


def write_report(path: str, text: str) -> str:
    from ..cache import atomic_write
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    atomic_write(path, text.encode("utf-8"))
    return path
