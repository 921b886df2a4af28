"""MUCS Explorer: a Gradio app to attribute diffusion-model images to their training data.

    python app.py                       # embedded Fashion-MNIST model, http://127.0.0.1:7860
    python app.py --model M --data D    # your own diffusers folder and training set
    python app.py --host 0.0.0.0 --auth user:pass
    python app.py --max-request-seconds 3600 --max-steps-limit 50000   # raise the per-request limits

Every callback calls the library (mucs.explorer: state, why, compare, report); heavy work
(sampling, attribution, replaying an unlearning) shares one queue slot; a heavy request that runs
longer than --max-request-seconds (default 900) is stopped, and an attribution shows a job id that
any client can cancel it by (`/cancel` with that id). Runs are stored in --runs (default runs/ in the
repository, or $MUCS_RUNS_DIR). HTTP API (docs/api.md): /attribute takes (label, settings), settings
being one dict of mucs.Settings fields; the page's settings widgets (SETTING_WIDGETS) fill in that dict.
"""
import argparse
import functools
import inspect
import logging
import os
import sys
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402

from mucs.explorer import plots
from mucs.explorer import texts
from mucs.defaults import DATA_REQUIRED  # noqa: E402
from mucs.sources.data import IMAGE_EXTS, MAX_IMAGE_BYTES  # noqa: E402
from mucs.errors import Cancelled, MucsError  # noqa: E402
from mucs.explorer.serving import Views, content_file, png_file, send_file  # noqa: E402
from mucs.explorer.state import HISTORY_COLUMNS, MAX_REQUEST_SECONDS, MAX_STEPS_LIMIT, Explorer, upscale  # noqa: E402
from mucs.settings import APP_WIDGETS, CHOICES, Widget, field_types  # noqa: E402

HEAVY = "heavy"          # the one queue slot shared by sampling, attribution and replays
GALLERY = ["mucs-gallery"]   # compact galleries with full captions (see CSS)
IMAGE_TYPES = list(IMAGE_EXTS)   # what the upload box offers: every format the loaders read
HISTORY_HEADERS = HISTORY_COLUMNS
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
log = logging.getLogger("mucs.app")

# The settings the page shows, row by row: (mucs.Settings field, its widget given the settings in force
# and the training-set size), as each field declares it (mucs.settings.APP_WIDGETS). The page gathers them
# into ONE dict by field name, the `settings` parameter of /attribute, so a widget added leaves the API's
# parameters as they are (tests/test_app.py checks it; tests/test_settings_source.py checks the fields).
def _setting_widget(name: str, w: Widget):
    """The widget the field declares: a checkbox for a bool, a dropdown for choices, else a number box."""
    t = field_types()[name]
    if t is bool:
        return lambda s, n: gr.Checkbox(getattr(s, name), label=w.label, elem_id=w.elem_id)
    if name in CHOICES:
        return lambda s, n: gr.Dropdown(list(CHOICES[name]), value=getattr(s, name), label=w.label, elem_id=w.elem_id)
    return lambda s, n: gr.Number(getattr(s, name), precision=0 if t is int else None, label=w.label.format(n=n),
                                  elem_id=w.elem_id)


SETTING_WIDGETS = [[(name, _setting_widget(name, w)) for name, w in APP_WIDGETS.items() if w.row == row]
                   for row in sorted({w.row for w in APP_WIDGETS.values()})]


def setting_keys() -> list:
    """The Settings fields the page shows a widget for, in page order."""
    return [name for row in SETTING_WIDGETS for name, _ in row]


def _user_error(fn, e) -> gr.Error:
    """A user error: one line in the server log (no traceback) and a clear message on the page."""
    if isinstance(e, Cancelled):
        log.warning("%s: cancelled", fn.__name__)
        return gr.Error("cancelled: nothing was saved", title="Cancelled", print_exception=False)
    log.warning("user error in %s: %s", fn.__name__, e)
    return gr.Error(str(e), title="Cannot do that", print_exception=False)


def user_errors(fn):
    """Turn the library's MucsError (a bad input or setting) and Cancelled into a visible gr.Error,
    logged as one line (for plain and generator callbacks)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except (MucsError, Cancelled) as e:
                raise _user_error(fn, e) from None
            except gr.Error:
                raise
            except Exception as e:
                raise _unexpected(fn, e) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MucsError, Cancelled) as e:
            raise _user_error(fn, e) from None
        except gr.Error:
            raise
        except Exception as e:   # a bug: the traceback once in the server log, a clean message on the page
            raise _unexpected(fn, e) from None
    return wrapper


def _unexpected(fn, e) -> gr.Error:
    log.exception("unexpected error in %s", fn.__name__)
    return gr.Error(f"unexpected {type(e).__name__} (a bug; the server log has the details): {str(e)[:200]}",
                    title="Something went wrong", print_exception=False)


def theme():
    return gr.themes.Soft(font=[gr.themes.Font("ui-sans-serif"), "system-ui", "sans-serif"],
                          font_mono=[gr.themes.Font("ui-monospace"), "Consolas", "monospace"])


CSS = """
#query-image img, #result-query img { image-rendering: pixelated; }
/* compact galleries (class mucs-gallery): as many columns as fit, each image with its full caption
   (rank · index · class · score) below it, wrapped instead of cut, at every width; no empty box */
.mucs-gallery label[data-testid="block-label"] { position: static !important; margin-bottom: 4px; }
.mucs-gallery .grid-wrap.fixed-height { min-height: 0 !important; max-height: none !important; }
.mucs-gallery .grid-container { grid-template-columns: repeat(auto-fill, minmax(92px, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important; }
.mucs-gallery .gallery-item { height: auto !important; }
.mucs-gallery .thumbnail-item { aspect-ratio: auto !important; height: auto !important; display: flex !important;
  flex-direction: column; overflow: visible !important; }
.mucs-gallery .thumbnail-lg > img { aspect-ratio: 1; height: auto !important; }
.mucs-gallery .caption-label { position: static !important; white-space: normal !important; max-width: 100% !important;
  overflow: visible !important; text-overflow: clip !important; border: 0 !important; font-size: 11px;
  line-height: 1.25; text-align: center !important; opacity: 1 !important; }
.gallery img, .mucs-gallery img, #generated-gallery img { image-rendering: pixelated; }
.mucs-gallery .empty.unpadded_box { min-height: 64px !important; height: 64px !important; }   /* no big empty box */
#results-empty { border: 1px dashed #bbb; border-radius: 8px; padding: 4px 14px; }
.plot-note { font-size: 12.5px; color: #555; }
/* narrow screens: smaller tab names, so that the three views stay visible instead of behind a menu */
@media (max-width: 640px) {
  .tab-container button { font-size: 12.5px !important; padding: 4px 7px !important; }
}
"""


def plot_row(hint: str, *plots_spec) -> list:
    """A row of plots, each (title, label, elem_id), empty with `hint` until their callback fills them."""
    with gr.Row():
        return [gr.Plot(plots.empty(title, hint), label=label, elem_id=elem_id) for title, label, elem_id in plots_spec]


def atomic_gradio_images() -> None:
    """Gradio writes each image it serves (a gallery item, an image output) to <cache>/<hash>/image.webp
    in place, again for every request showing it, also while another client downloads that very file:
    that client got it truncated or overlong (issue 21, point 12). Its writer is replaced by one that
    writes a missing file beside and renames it into place, and leaves an existing one alone."""
    from gradio import processing_utils as pu
    if getattr(pu.save_pil_to_cache, "atomic", False):
        return

    def save_pil_to_cache(img, cache_dir, name="image", format="webp"):
        return content_file(str(cache_dir), pu.encode_pil_to_bytes(img, format), f"{name}.{format}")
    save_pil_to_cache.atomic = True   # type: ignore[attr-defined]
    pu.save_pil_to_cache = save_pil_to_cache


def build(ex: Explorer) -> gr.Blocks:
    atomic_gradio_images()
    s = ex.settings
    conditional = ex.model.num_classes is not None
    text_model = ex.text       # a text-conditional model: prompts instead of classes
    choices = ex.class_choices()
    n_train = len(ex.data)

    views = Views(16)   # run views by (run id, its files' stamp): reopening a run computes nothing again

    # --- callbacks: each one calls the library and formats its answer ---------------------------
    def show_query(q, note=""):
        conv = "; ".join(q.meta.get("conversions") or [])
        info = f"Query: {q.meta.get('kind')}" + (f" ({note})" if note else "")
        if conv:
            info += f"  \nConversions: {conv}"
        return q, upscale(q.image, 192), info, gr.update(value=q.label), gr.update(value=q.prompt or "")

    @user_errors
    def on_generate(label, seed, count, steps, prompt="", guidance_scale=None, negative_prompt="",
                    request: gr.Request = None, progress=gr.Progress()):
        """Sample `count` images from consecutive seeds; a text model's from `prompt` (with guidance)."""
        with ex.job(_session(request)) as job:
            qs = ex.generate(label, seed, count, steps, progress=lambda ev: progress(ev.fraction, desc=ev.stage),
                             cancel=job.event, prompt=prompt, guidance_scale=guidance_scale,
                             negative_prompt=negative_prompt)
        gallery = [(upscale(q.image), f"seed {q.meta['seed']}") for q in qs]
        return (qs, gallery) + show_query(qs[0], f"seed {qs[0].meta['seed']}")

    @user_errors
    def on_pick_generated(qs, evt: gr.SelectData = None):
        if not qs:
            raise MucsError("generate images first")
        index = getattr(evt, "index", None)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(qs):
            raise MucsError(f"pick one of the {len(qs)} generated images (got the selection {index!r})")
        q = qs[index]
        return show_query(q, f"seed {q.meta['seed']}")

    @user_errors
    def on_upload(path):
        q = ex.upload(path)
        if q.meta["conversions"]:
            gr.Warning("The image was converted: " + "; ".join(q.meta["conversions"]))
        note = q.meta["file"] + (" — choose its class" if conditional else " — type its prompt" if text_model else "")
        return show_query(q, note)

    def on_upload_refused():
        """After a refused upload: empty the file box (the query stays the previous one)."""
        return None

    @user_errors
    def on_training(index):
        q = ex.training_item(index)
        return show_query(q, f"training item {q.meta['index']}")

    def progress_text(u) -> str:
        step = u.info.get("step")
        o = u.overall
        head = f"**{u.stage}**" + (f", step {step}" if step is not None else "")
        if o is None:
            return head
        bar = "█" * int(o.fraction * 20) + "░" * (20 - int(o.fraction * 20))
        # the time left is an estimate (the unlearning stage's length is not known in advance): said so
        return f"{head} · overall {o.fraction:.0%} `{bar}`" + (
            f" · about {_secs(o.remaining)} left ({o.note or 'estimate'})"
            if o.remaining is not None and o.fraction < 1 else "")

    def on_settings(*values):
        """The page's settings widgets gathered into the one settings dict /attribute takes (an emptied
        box is left out: the model's recommended value)."""
        return {k: v for k, v in zip(setting_keys(), values) if v is not None}

    def on_query_prompt(q, prompt):
        """Set the prompt a text model's query is attributed with (its own caption until changed);
        its own endpoint so that /attribute keeps taking (label, settings)."""
        return ex.with_prompt(q, prompt)

    @user_errors
    def on_attribute(q, label, settings=None, request: gr.Request = None, progress=gr.Progress()):
        """Attribute the session's query (made by /generate, /upload or /use_training) as class `label`
        (a text model: with the query's prompt, its own caption or the one set by /query_prompt);
        `settings` is a dict of mucs.Settings overrides by field name (missing: the model's
        recommended value; an unknown or wrong one: an error, nothing run). Streams the stage, then the
        results; the first update carries the job id that /cancel takes."""
        st = ex.user_settings(settings)
        q = ex.with_label(q, label)
        with ex.job(_session(request)) as job:
            # the job id first: any client can cancel this attribution with /cancel and this id
            yield {status: f"**starting**: job `{job.id}` · {ex.estimate_text(st)}", job_box: job.id}
            sent = None
            for u in ex.attribute_stream(q, st, job.event):
                frac = u.overall.fraction if u.overall is not None else u.fraction
                # Gradio's own bar: the stage only; the time left is on the status line alone, which Cancel
                # replaces (two lines with a time left overlapped, and one stayed after Cancel)
                progress(frac, desc=u.stage)
                if u.result is None:
                    out = {status: progress_text(u)}
                    if (len(u.curve), u.loss_null) != sent:   # the curve only when it grew: events stay small
                        sent = (len(u.curve), u.loss_null)
                        out[live_curve] = plots.unlearning_curve(u.curve, u.loss_null, st.tol)
                    yield out
                else:
                    yield {status: f"**done** in {_secs(u.overall.elapsed if u.overall else 0)}: run `{u.run_id}` saved",
                           live_curve: plots.unlearning_curve(u.curve, u.loss_null, st.tol),
                           **result_outputs(u.run_id, u.result), **history_outputs(select=u.run_id),
                           tabs: gr.Tabs(selected="results"), job_box: job.id}

    def run_view(run_id, att):
        """What a run's results show that depends on its files alone: kept per run (`views`) until they
        change. Images are immutable content-addressed PNGs (serving.png_file), so Gradio copies them
        atomically instead of re-encoding them in place, where a client downloading one saw it truncated."""
        ex.check_run(att)
        folder = os.path.join(ex.downloads_dir(), "images")
        files = lambda items: [(png_file(folder, im), caption) for im, caption in items]   # noqa: E731
        q = att.query_image
        return {summary: ex.summary(att, run_id),
                result_query: png_file(folder, upscale(q, 192)) if q is not None else None,
                top_gallery: files(ex.top_gallery(att)), neighbour_gallery: files(ex.neighbours(q)) if q is not None else [],
                hist_plot: plots.skew_histogram(att.scores, att.top),
                scatter_plot: plots.loss_scatter(att.loss_original, att.loss_unlearned, att.scores, att.top,
                                                 att.labels, ex.class_names),
                curve_plot: plots.unlearning_curve(att.curve, att.loss_null, att.settings.get("tol")),
                class_plot: plots.class_breakdown(att.top, att.labels, ex.class_names, att.query.get("label"))}

    def result_outputs(run_id, att=None):
        """A stored run's results (`att`: the run as loaded or just saved), its view computed once per
        version of its files: opening a run again, or the run an attribution just showed, computes nothing."""
        view = views.get((run_id, ex.store.stamp(run_id)),
                         lambda: run_view(run_id, att if att is not None else ex.store.load(run_id)))
        return {run_box: run_id, **view, results_empty: gr.update(visible=False), results_body: gr.update(visible=True),
                why_text: WHY_START, why_plot: EMPTY_WHY, why_hist: EMPTY_WHY_HIST, why_neighbours: [],
                methods_text: METHODS_START, methods_html: "", methods_plot: EMPTY_METHODS}

    def history_outputs(select=None, every=False):
        ids = ex.store.ids()
        return {history: ex.history_table(every), run_select: gr.update(choices=ids, value=select),
                overlap_select: gr.update(choices=ids)}

    def on_cancel(request: gr.Request, job_id: str = ""):
        """Cancel the job `job_id` (from any client: the id an attribution shows when it starts) and
        the heavy requests of the caller's own session (the browser's Cancel button)."""
        job_id = str(job_id or "").strip()
        hit = ex.cancel(job_id) if job_id else False
        hit = ex.cancel(_session(request)) or hit
        if not hit:
            return f"**nothing to cancel**: no running job `{job_id}`" if job_id else \
                "**nothing to cancel**: nothing of yours is running"
        return "**cancelled**: nothing was saved"

    @user_errors
    def on_open(run_id):
        if not run_id:
            raise MucsError("choose a run to open")
        return {**result_outputs(run_id), tabs: gr.Tabs(selected="results")}

    def on_refresh():
        return history_outputs()

    def on_history_every(every: bool = False):
        """The history table with the runs of every model and training set (`every`), or only the
        served model's and data's (the ones that open here)."""
        return history_outputs(every=bool(every))

    @user_errors
    def on_delete(run_id):
        if not run_id:
            raise MucsError("choose a run to delete")
        ex.store.delete(run_id)
        return history_outputs()

    @user_errors
    def on_overlap(run_ids):
        o = ex.overlap(run_ids)
        text = (f"Mean pairwise overlap of {len(o['names'])} runs: **{o['mean']:.3f}** "
                f"(random top-k sets of the same sizes: {o['random_mean']:.3f}). "
                + (f"{len(o['recurring'])} image(s) recur in two or more of the sets."
                   if o["recurring"] else "No image is in two or more of the sets."))
        rec = ex.recurring_gallery(o["recurring"])
        return (plots.overlap_heatmap(o["matrix"], o["names"]), plots.overlap_distribution(o["pairwise"], o["random"]),
                gr.update(value=rec, visible=bool(rec)), text)

    @user_errors
    def on_compare_runs(run_ids):
        return ex.compare_runs(run_ids)["html"]

    def on_export(run_id, fmt):
        """The run's scores as CSV or JSON, ready on the download button (nothing to offer without a run)."""
        if not run_id:
            return gr.update(value=None, interactive=False)
        try:
            path = ex.export_file(run_id, fmt)
        except MucsError as e:
            raise _user_error(on_export, e) from None
        return gr.update(value=path, interactive=True, label=f"Download {str(fmt).upper()}")

    def on_report(run_id):
        """The run's self-contained HTML report, ready on the download button."""
        if not run_id:
            return gr.update(value=None, interactive=False)
        try:
            path = ex.report_file(run_id)
        except MucsError as e:
            raise _user_error(on_report, e) from None
        return gr.update(value=path, interactive=True)

    def why_outputs(run_id, index):
        w = ex.why(run_id, index)
        att = ex.load_run(run_id)
        neigh = ex.index_gallery([(i, f"d²={d:.3g}") for i, d in w.neighbours])
        return {why_index: w.index, why_text: w.summary(), why_plot: plots.why_losses(w),
                why_hist: plots.skew_histogram(att.scores, att.top, mark=w.index), why_neighbours: neigh}

    @user_errors
    def on_why(run_id, index):
        if index is None or index == "":
            raise MucsError("type a training index or click an image of the top-k")
        return why_outputs(run_id, index)

    @user_errors
    def on_pick_top(run_id, evt: gr.SelectData):
        att = ex.load_run(run_id)
        return why_outputs(run_id, int(att.top[int(evt.index)]))

    @user_errors
    def on_replay(run_id, index, request: gr.Request = None, progress=gr.Progress()):
        with ex.job(_session(request)) as job:
            info = ex.replay(run_id, progress=lambda ev: progress(ev.fraction, desc=f"replaying {ev.stage}"),
                             cancel=job.event)
        out = why_outputs(run_id, index if index not in (None, "") else ex.load_run(run_id).top[0])
        same = "the same number of steps as the run" if info["same_steps"] else "**a different number of steps**"
        out[why_text] = (f"Unlearning replayed: {info['steps']} steps ({same}).  \n") + out[why_text]
        return out

    @user_errors
    def on_methods(run_id):
        m = ex.compare_methods(run_id)
        lines = [f"Top-{m['k']} of each method for this run's query. Shared with MUCS: " + ", ".join(
            f"{lab} {len(m['with_mucs'][n])}/{len(m['tops'][n])}" for n, lab in zip(m["names"], m["labels"])
            if n != "mucs") + "."] + [f"- **{lab}** ({m['seconds'][n]:.1f} s): {m['descriptions'][n]}"
                                      for n, lab in zip(m["names"], m["labels"])]
        lines += [f"- **{n}**: not shown: {why}" for n, why in m.get("skipped", {}).items()]
        return "\n".join(lines), m["html"], plots.methods_overlap(m["matrix"], m["labels"])

    WHY_START = "Click an image of the top-k (or type its training index and press *Explain*)."
    METHODS_START = "Press *Compare methods* to rank this run's query with the baselines too."
    EMPTY_WHY = plots.empty("Loss at each noise level", "click a top-k image to see its losses over σ")
    EMPTY_WHY_HIST = plots.empty("Where the item's skew falls", "click a top-k image")
    EMPTY_METHODS = plots.empty("Overlap of the methods' top-k", "press Compare methods")

    # --- layout -------------------------------------------------------------------------------
    with gr.Blocks(title="MUCS Explorer", analytics_enabled=False) as demo:
        gr.Markdown("# MUCS Explorer\nWhich training images made the model generate this image? "
                    "Mirrored unlearning and noise-consistent skew (Serrà et al., 2026).")
        gr.Markdown(ex.describe(), elem_id="model-info")
        with gr.Accordion("How MUCS works, in plain words (score, L_o, L_u, L_null)", open=False,
                          elem_id="help-method"):
            gr.Markdown(texts.METHOD)
        gen_state = gr.State([])
        query_state = gr.State(None)
        with gr.Tabs(elem_id="tabs", overflow_behavior="wrap") as tabs:   # a phone: every view reachable
            with gr.Tab("Query & attribute", id="query", elem_id="tab-query"):
                with gr.Row():
                    with gr.Column(scale=3):
                        with gr.Tab("Generate"):
                            with gr.Row():
                                gen_class = gr.Dropdown(choices, value=choices[0][1] if choices else None,
                                                        label="Class", visible=conditional, elem_id="gen-class")
                                gen_prompt = gr.Textbox(ex.data.caption(0) if text_model else "", label="Prompt",
                                                        visible=text_model, elem_id="gen-prompt", max_lines=2, scale=3)
                                gen_seed = gr.Number(0, precision=0, label="Seed", elem_id="gen-seed")
                                gen_count = gr.Slider(1, 16, value=4, step=1, label="Images", elem_id="gen-count")
                                gen_steps = gr.Slider(1, 1000, value=50, step=1, label="Sampler steps (DDIM)",
                                                      elem_id="gen-steps")
                            with gr.Row(visible=text_model):
                                gen_guidance = gr.Slider(1, 20, value=ex.default_guidance(), step=0.5,
                                                         label="Guidance scale (1 = none)", elem_id="gen-guidance")
                                gen_negative = gr.Textbox("", label="Negative prompt (the unconditional branch)",
                                                          elem_id="gen-negative", max_lines=1)
                            gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                            gen_gallery = gr.Gallery(label="Generated (click one to make it the query)", columns=8,
                                                     height=220, format="png", object_fit="contain",
                                                     elem_id="generated-gallery", interactive=False)
                        with gr.Tab("Upload"):
                            upload = gr.File(label=f"Image file (at most {MAX_IMAGE_BYTES // 2**20} MB)",
                                             file_types=IMAGE_TYPES, type="filepath", elem_id="upload-file")
                        with gr.Tab("Training image"):
                            with gr.Row():
                                train_index = gr.Number(0, precision=0, label=f"Training index (0..{n_train - 1})",
                                                        elem_id="train-index")
                                train_btn = gr.Button("Use this training image", elem_id="train-btn")
                    with gr.Column(scale=2):
                        query_image = gr.Image(label="Query (as the model sees it)", type="pil", format="png",
                                               interactive=False, height=220, elem_id="query-image")
                        query_info = gr.Markdown("No query yet: generate, upload or pick a training image.",
                                                 elem_id="query-info", label="query info", show_label=False)
                        query_class = gr.Dropdown(choices, value=None, label="Query class", visible=conditional,
                                                  elem_id="query-class")
                        query_prompt = gr.Textbox("", label="Query prompt (the caption it was made with, or the one "
                                                  "to ask about)", visible=text_model, elem_id="query-prompt",
                                                  max_lines=2)
                with gr.Accordion("Settings", open=False, elem_id="settings"):
                    setting_widgets = []
                    for row in SETTING_WIDGETS:
                        with gr.Row():
                            setting_widgets += [widget(s, n_train) for _, widget in row]
                # the one settings value /attribute takes: the widgets' values by field name, gathered at
                # each click (an API client passes its own dict; {} = the model's recommended settings)
                settings_box = gr.JSON({}, label="settings", visible="hidden", elem_id="settings-json")
                with gr.Row():
                    attr_btn = gr.Button("Attribute", variant="primary", elem_id="attribute-btn")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn")
                    job_box = gr.Textbox("", label="Job id (any client can cancel it: /cancel with this id)",
                                         interactive=False, max_lines=1, elem_id="job-id")
                status = gr.Markdown("", elem_id="status", label="status", show_label=False)
                live_curve = gr.Plot(plots.empty("Mirrored unlearning", "starts when you click Attribute"),
                                     label="Unlearning (live): forget loss L_f rising to L_null, retain loss L_r",
                                     elem_id="live-curve")
            with gr.Tab("Results", id="results", elem_id="tab-results"):
                results_empty = gr.Markdown(texts.RESULTS_EMPTY, elem_id="results-empty", label="results placeholder",
                                            show_label=False)
                # everything below stays hidden until a run is opened: an empty tab was ~3,000 px of placeholders
                with gr.Column(visible=False, elem_id="results-body") as results_body:
                    with gr.Row():
                        result_query = gr.Image(label="Query", type="pil", format="png", interactive=False, height=200,
                                                elem_id="result-query", scale=1, min_width=160)
                        with gr.Column(scale=4):
                            run_box = gr.Textbox(label="Run id", interactive=False, elem_id="run-id")
                            summary = gr.Markdown("", elem_id="summary", label="summary", show_label=False)
                            with gr.Row():
                                export_fmt = gr.Radio(["csv", "json"], value="csv", label="Scores of every training image as",
                                                      elem_id="export-fmt", scale=2)
                                dl_data = gr.DownloadButton("Download CSV", value=None, interactive=False,
                                                            elem_id="download-data", scale=1, size="md")
                                dl_report = gr.DownloadButton("Download report (HTML)", value=None, interactive=False,
                                                              elem_id="download-report", scale=1, size="md",
                                                              variant="primary")
                    top_gallery = gr.Gallery(label="Most influential training images (top-k, best first): "
                                                   "rank · index · class · score — click one to see why",
                                             columns=5, height="auto", format="png", object_fit="contain",
                                             elem_id="topk-gallery", elem_classes=GALLERY, interactive=False, allow_preview=False)
                    with gr.Accordion("Why this image?", open=True, elem_id="why-panel"):
                        gr.Markdown(texts.WHY, elem_classes=["plot-note"])
                        with gr.Row():
                            why_index = gr.Number(None, precision=0, label=f"training index (0..{n_train - 1})",
                                                  elem_id="why-index", scale=1, min_width=140)
                            why_btn = gr.Button("Explain", elem_id="why-btn", scale=1)
                            replay_btn = gr.Button("Replay unlearning (per-noise L_u)", elem_id="replay-btn", scale=2)
                        why_text = gr.Markdown(WHY_START, elem_id="why-text", label="why this image", show_label=False)
                        with gr.Row():
                            why_plot = gr.Plot(EMPTY_WHY, label="Loss at each noise level (x: σ, y: loss, log axes)",
                                               elem_id="plot-why")
                            why_hist = gr.Plot(EMPTY_WHY_HIST, label="Its skew among all training images",
                                               elem_id="plot-why-hist")
                        why_neighbours = gr.Gallery(label="Its nearest training images in pixel space (d² = squared "
                                                          "distance)", columns=6, height="auto", format="png",
                                                    object_fit="contain", elem_id="why-neighbours", elem_classes=GALLERY,
                                                    interactive=False, allow_preview=False)
                    neighbour_gallery = gr.Gallery(label="Nearest training images to the query in pixel space "
                                                         "(for comparison)", columns=10, height="auto", format="png",
                                                   object_fit="contain", elem_id="neighbour-gallery", elem_classes=GALLERY,
                                                   interactive=False, allow_preview=False)
                    with gr.Accordion("What the plots show (axes and how to read them)", open=False, elem_id="help-plots"):
                        gr.Markdown(texts.PLOTS)
                    hist_plot, scatter_plot = plot_row(
                        "appears after a run",
                        ("Skew of every training item", "Skew histogram (x: skew, y: images, log)", "plot-histogram"),
                        ("L_o vs L_u", "L_o vs L_u (mean loss before / after unlearning, log axes)", "plot-scatter"))
                    curve_plot, class_plot = plot_row(
                        "appears after a run",
                        ("Mirrored unlearning", "Unlearning curve (x: step, y: loss)", "plot-curve"),
                        ("Top-k classes", "Top-k classes (x: class, y: images)", "plot-classes"))
                    with gr.Accordion("Methods side by side: MUCS, pixel NN, feature NN, MUCS + pixel NN", open=True,
                                      elem_id="methods-panel"):
                        gr.Markdown(texts.METHODS, elem_classes=["plot-note"])
                        methods_btn = gr.Button("Compare methods", elem_id="methods-btn")
                        methods_text = gr.Markdown(METHODS_START, elem_id="methods-text", label="methods summary",
                                                   show_label=False)
                        methods_html = gr.HTML("", elem_id="methods-grid", label="methods top-k", show_label=False)
                        methods_plot = gr.Plot(EMPTY_METHODS, label="Overlap of the methods' top-k sets",
                                               elem_id="plot-methods")
            with gr.Tab("History & overlap", id="history", elem_id="tab-history"):
                gr.Markdown(texts.HISTORY, elem_classes=["plot-note"])
                history_every = gr.Checkbox(False, label="Runs of every model and training set (by default only "
                                            "those of the served model and data, the ones that open here)",
                                            elem_id="history-every")
                # no wrapping: each column as wide as its words (percent widths broke "converged" into
                # three lines while half the table stayed empty); a narrow screen scrolls the table
                history = gr.Dataframe(ex.history_table(), headers=HISTORY_HEADERS, interactive=False,
                                       elem_id="history-table", max_height=320, wrap=False, label="history",
                                       show_label=False)
                with gr.Row():
                    # allow_custom_value: the API takes any existing run id, also one made after the page loaded
                    run_select = gr.Dropdown(ex.store.ids(), label="Run", elem_id="run-select", allow_custom_value=True)
                    open_btn = gr.Button("Open", elem_id="open-btn")
                    delete_btn = gr.Button("Delete", variant="stop", elem_id="delete-btn")
                    refresh_btn = gr.Button("Refresh", elem_id="refresh-btn")
                with gr.Row():
                    overlap_select = gr.Dropdown(ex.store.ids(), multiselect=True, label="Runs to compare (two or more)",
                                                 elem_id="overlap-select", scale=4, allow_custom_value=True)
                    overlap_btn = gr.Button("Compare runs", elem_id="overlap-btn", scale=1, variant="primary")
                with gr.Accordion("How to read the comparison", open=False, elem_id="help-overlap"):
                    gr.Markdown(texts.OVERLAP)
                overlap_text = gr.Markdown("Choose two or more runs above and press *Compare runs*.",
                                           elem_id="overlap-summary", label="overlap summary", show_label=False)
                runs_html = gr.HTML("", elem_id="runs-grid", label="runs top-k", show_label=False)
                overlap_heat, overlap_dist = plot_row(
                    "compare two or more runs", ("Overlap matrix", "Overlap matrix", "plot-overlap"),
                    ("Overlap vs random", "Overlap vs random (x: overlap, y: fraction of pairs)", "plot-overlap-dist"))
                recurring_gallery = gr.Gallery(label="Training images in two or more of the chosen runs' top-k sets",
                                               columns=12, height="auto", format="png", object_fit="contain",
                                               elem_id="recurring-gallery", elem_classes=GALLERY, interactive=False,
                                               allow_preview=False, visible=False)
                coll_panel = collections_panel(ex)
            batch_tab = build_batch_tab(ex)

        query_outputs = [query_state, query_image, query_info, query_class, query_prompt]
        result_components = [run_box, summary, results_empty, result_query, top_gallery, neighbour_gallery, hist_plot,
                             scatter_plot, curve_plot, class_plot, why_text, why_plot, why_hist, why_neighbours,
                             methods_text, methods_html, methods_plot, results_body]
        history_components = [history, run_select, overlap_select]
        why_components = [why_index, why_text, why_plot, why_hist, why_neighbours]

        gen_ev = gen_btn.click(on_generate, [gen_class, gen_seed, gen_count, gen_steps, gen_prompt, gen_guidance,
                                             gen_negative],
                               [gen_state, gen_gallery] + query_outputs, api_name="generate",
                               concurrency_id=HEAVY, concurrency_limit=1)
        gen_gallery.select(on_pick_generated, [gen_state], query_outputs, api_name="pick_generated")
        upload.upload(on_upload, [upload], query_outputs, api_name="upload", show_progress="hidden").failure(
            on_upload_refused, None, [upload], api_name="clear_upload", queue=False)
        train_btn.click(on_training, [train_index], query_outputs, api_name="use_training")
        query_prompt.change(on_query_prompt, [query_state, query_prompt], [query_state], api_name="query_prompt",
                            queue=False, show_progress="hidden")
        attr_ev = attr_btn.click(on_settings, setting_widgets, [settings_box], api_name="page_settings",
                                 api_visibility="private", queue=False, show_progress="hidden").success(
            on_attribute, [query_state, query_class, settings_box],
            [status, live_curve, tabs] + result_components + history_components + [job_box],
            api_name="attribute", concurrency_id=HEAVY, concurrency_limit=1, show_progress="minimal")
        replay_ev = replay_btn.click(on_replay, [run_box, why_index], why_components, api_name="why_replay",
                                     concurrency_id=HEAVY, concurrency_limit=1)
        cancel_btn.click(on_cancel, [job_box], [status], api_name="cancel", cancels=[gen_ev, attr_ev, replay_ev],
                         queue=False)
        open_btn.click(on_open, [run_select], result_components + [tabs], api_name="open_run")
        refresh_btn.click(on_refresh, None, history_components, api_name="list_runs").then(
            lambda: False, None, [history_every], queue=False, api_name="history_served_only",
            api_visibility="private", show_progress="hidden")
        history_every.input(on_history_every, [history_every], history_components, api_name="list_every_run")
        delete_btn.click(on_delete, [run_select], history_components, api_name="delete_run")
        overlap_btn.click(on_overlap, [overlap_select], [overlap_heat, overlap_dist, recurring_gallery, overlap_text],
                          api_name="overlap")
        overlap_btn.click(on_compare_runs, [overlap_select], [runs_html], api_name="compare_runs")
        gr.on([run_box.change, export_fmt.change], on_export, [run_box, export_fmt], [dl_data], api_name="export")
        run_box.change(on_report, [run_box], [dl_report], api_name="report")
        top_gallery.select(on_pick_top, [run_box], why_components, api_name="pick_top")
        why_btn.click(on_why, [run_box, why_index], why_components, api_name="why")
        methods_btn.click(on_methods, [run_box], [methods_text, methods_html, methods_plot], api_name="compare_methods")
        demo.load(on_refresh, None, history_components, api_name="load_history")
        shared = SimpleNamespace(
            collections=coll_panel, tabs=tabs, on_settings=on_settings, setting_widgets=setting_widgets,
            settings_box=settings_box, result_outputs=result_outputs, result_components=result_components,
            history_outputs=history_outputs, history_components=history_components)
        wire_batch(ex, batch_tab, shared)
        wire_collections(ex, batch_tab, shared)
    return demo


COLLECTION_HEADERS = ["collection", "created (UTC)", "status", "asked", "done", "top-k"]
BATCH_HEADERS = ["#", "item", "source", "class", "status", "seconds", "steps", "run"]
# the map's points and the heatmap's row names carry data-run: a click opens that run
MAP_JS = ("element.addEventListener('click', function(e) { const t = e.target.closest('[data-run]'); "
          "if (t) { trigger('click', {run: t.getAttribute('data-run')}); } });")


def collections_panel(ex: Explorer) -> SimpleNamespace:
    """The collections in the History tab: a table, and open / delete by id (built inside that tab)."""
    with gr.Accordion("Collections (batches)", open=True, elem_id="collections-panel"):
        gr.Markdown(texts.COLLECTIONS, elem_classes=["plot-note"])
        table = gr.Dataframe(ex.collection_table(), headers=COLLECTION_HEADERS, interactive=False, wrap=True,
                             elem_id="collections-table", max_height=260, label="collections", show_label=False)
        with gr.Row():
            select = gr.Dropdown(ex.collections.ids(), label="Collection", elem_id="collection-select",
                                 allow_custom_value=True, scale=3)
            open_btn = gr.Button("Open", elem_id="collection-open-btn", scale=1)
            delete_btn = gr.Button("Delete (with its runs)", variant="stop", elem_id="collection-delete-btn", scale=1)
            refresh_btn = gr.Button("Refresh", elem_id="collection-refresh-btn", scale=1)
    return SimpleNamespace(table=table, select=select, open_btn=open_btn, delete_btn=delete_btn, refresh_btn=refresh_btn)


def build_batch_tab(ex: Explorer) -> SimpleNamespace:
    """The "Batch & collections" tab (built inside the page's Tabs): the batch form (class × seeds, or
    several uploads), its progress and per-item status, and the opened collection's summary, overlap
    figures and downloads. `wire_batch` and `wire_collections` connect it."""
    conditional = ex.model.num_classes is not None
    choices = ex.class_choices()
    with gr.Tab("Batch & collections", id="batch", elem_id="tab-batch"):
        gr.Markdown(texts.BATCH, elem_classes=["plot-note"])
        kind = gr.Radio([("generate: classes × seeds", "generate"), ("uploaded images", "upload")], value="generate",
                        label="Queries", elem_id="batch-kind")
        with gr.Row():
            classes = gr.Dropdown(choices, value=[choices[0][1]] if choices else None, multiselect=True,
                                  label="Classes (generate: each class × each seed; uploads: one for all, or one "
                                        "per image)", visible=conditional, elem_id="batch-classes", scale=3)
            seeds = gr.Textbox("0-7", label="Seeds (e.g. 0-15 or 0,3,7)", elem_id="batch-seeds", scale=1)
            steps = gr.Slider(1, 1000, value=50, step=1, label="Sampler steps (DDIM)", elem_id="batch-steps", scale=2)
        prompts = gr.Textbox("", lines=3, visible=ex.text, elem_id="batch-prompts",
                             label="Prompts, one per line (generate: each prompt × each seed; uploads: the one "
                                   "prompt the images were made with)")
        uploads = gr.File(label=f"Images to attribute (several; at most {MAX_IMAGE_BYTES // 2**20} MB each)",
                          file_count="multiple", file_types=IMAGE_TYPES, type="filepath", elem_id="batch-uploads",
                          visible=False)
        with gr.Row():
            run_btn = gr.Button("Generate and attribute the batch", variant="primary", elem_id="batch-btn")
            cancel_btn = gr.Button("Cancel the batch", variant="stop", elem_id="batch-cancel-btn")
            job_box = gr.Textbox("", label="Job id (/cancel takes it)", interactive=False, max_lines=1,
                                 elem_id="batch-job-id")
        status = gr.Markdown("The page's Settings (on *Query & attribute*) apply to every item.",
                             elem_id="batch-status", label="batch status", show_label=False)
        items = gr.Dataframe([], headers=BATCH_HEADERS, interactive=False, wrap=True, elem_id="batch-items",
                             max_height=300, visible=False, label="batch items", show_label=False)
        coll_box = gr.Textbox("", label="Collection id", interactive=False, elem_id="collection-id")
        summary = gr.Markdown("Run a batch above, or open a collection on *History & overlap*.",
                              elem_id="collection-summary", label="collection summary", show_label=False)
        with gr.Row():
            data_fmt = gr.Radio(["json", "csv"], value="json", label="Every analysis as", elem_id="collection-data-fmt",
                                scale=2)
            dl_data = gr.DownloadButton("Download the analyses", value=None, interactive=False,
                                        elem_id="collection-download-data", scale=1, size="md")
            dl_zip = gr.DownloadButton("Download the collection (zip)", value=None, interactive=False,
                                       elem_id="collection-download-zip", scale=1, size="md")
        figures = gr.HTML("", elem_id="collection-figures", js_on_load=MAP_JS, label="collection figures", show_label=False)
    return SimpleNamespace(kind=kind, classes=classes, seeds=seeds, steps=steps, uploads=uploads, prompts=prompts,
                           run_btn=run_btn,
                           cancel_btn=cancel_btn, job_box=job_box, status=status, items=items, coll_box=coll_box,
                           summary=summary, data_fmt=data_fmt, dl_data=dl_data, dl_zip=dl_zip, figures=figures)


def _collection_view(ex: Explorer, b: SimpleNamespace, coll_id) -> dict:
    """The batch tab's collection view (id, summary, figures) showing `coll_id`."""
    o = ex.open_collection(coll_id)
    return {b.coll_box: coll_id, b.summary: o["summary"], b.figures: o["html"]}


def _collection_listing(ex: Explorer, page: SimpleNamespace, select=None) -> dict:
    """The collections table and chooser, `select` chosen."""
    ids = ex.collections.ids()
    panel = page.collections
    return {panel.table: ex.collection_table(), panel.select: gr.update(choices=ids, value=select)}


def wire_batch(ex: Explorer, b: SimpleNamespace, page: SimpleNamespace) -> None:
    """The batch tab's run events: /attribute_batch (one queue job: overall progress, per-item status, time
    left; /cancel_batch keeps the finished items) and the kind switch. `page`: the components and
    callbacks of `build` they share; the collections' events: `wire_collections`."""
    kind, classes, seeds, steps, uploads = b.kind, b.classes, b.seeds, b.steps, b.uploads
    status, items, job_box = b.status, b.items, b.job_box
    lists = [page.collections.table, page.collections.select]

    def rows(u):
        return [[n + 1, r["name"], r["source"], r["class_name"], r["status"] + (f": {r['error']}" if r["error"] else ""),
                 "" if r["seconds"] is None else f"{r['seconds']:.0f}", "" if r["steps"] is None else r["steps"],
                 r["run"] or ""] for n, r in enumerate(u.items)]

    @user_errors
    def on_batch(kind_, labels, seeds_, steps_, files, settings=None, prompts_="", request: gr.Request = None):
        """Generate and attribute a batch as one collection: `kind` 'generate' (each of `labels` × each of
        `seeds`, e.g. '0-15', sampled with `sampler_steps`; a text model: each of `prompts`, one per line,
        × each seed) or 'upload' (the image files `uploads`, `labels` one class for all or one per file; a
        text model: the one prompt they were made with); `settings` the same dict as /attribute. Streams
        the overall progress and per-item status; the first update carries the job id (/cancel), the last
        the collection id and its overlap analyses."""
        st = ex.user_settings(settings)
        labels = labels if isinstance(labels, (list, tuple)) else ([] if labels in (None, "") else [labels])
        if kind_ == "upload":
            paths = [getattr(f, "name", f) for f in (files or [])]
            batch = ex.batch_uploads(paths, labels if len(labels) != 1 else labels[0], prompt=prompts_)
        elif kind_ in (None, "", "generate"):
            batch = ex.batch_generated(labels, seeds_, int(steps_ or 50), prompts=prompts_)
        else:
            raise MucsError(f"kind must be generate or upload, got {kind_!r}")
        # the app's per-request time limit applies per item
        limit = None if ex.max_request_seconds is None else ex.max_request_seconds * len(batch)
        with ex.job(_session(request), limit=limit) as job:
            yield {status: f"**starting**: {len(batch)} items, job `{job.id}`", job_box: job.id,
                   items: gr.update(value=[[n + 1, it.name, it.source, ex.class_name(it.label) if it.label is not None
                                            else (it.prompt or ""), "pending", "", "", ""]
                                           for n, it in enumerate(batch)],
                                    visible=True)}
            for u in ex.attribute_batch_stream(batch, st, job.event):
                if u.record is None:
                    yield {status: f"**{u.overall.text()}**" if u.overall else "**starting**", items: rows(u),
                           job_box: job.id}
                    continue
                done = sum(r["status"] == "done" for r in u.items)
                word = {"done": "done", "cancelled": "cancelled", "partial": "finished with failures"}.get(
                    u.record["status"], u.record["status"])
                out = {status: f"**{word}**: {done} of {len(u.items)} items saved in collection `{u.collection_id}` "
                               f"({_secs(u.record.get('seconds'))})", items: rows(u), job_box: job.id,
                       **_collection_listing(ex, page, u.collection_id), **page.history_outputs()}
                if done:
                    out.update(_collection_view(ex, b, u.collection_id))
                yield out

    def on_cancel_batch(job_id: str = "", request: gr.Request = None):
        """Cancel the batch `job_id` (and the caller's own): the item being attributed is dropped, the
        finished ones stay saved, the rest are not started."""
        hit = ex.cancel(str(job_id or "").strip()) if job_id else False
        hit = ex.cancel(_session(request)) or hit
        return ("**cancelling**: the finished items stay saved, the rest will not start" if hit
                else "**nothing to cancel**")

    def on_kind(k):
        up = k == "upload"
        return {seeds: gr.update(visible=not up), steps: gr.update(visible=not up), uploads: gr.update(visible=up),
                b.run_btn: gr.update(value="Attribute the uploaded images" if up else "Generate and attribute the batch")}

    kind.change(on_kind, [kind], [seeds, steps, uploads, b.run_btn], queue=False, api_visibility="private",
                show_progress="hidden")
    b.run_btn.click(page.on_settings, page.setting_widgets, [page.settings_box], queue=False,
                       api_visibility="private", show_progress="hidden").success(
        on_batch, [kind, classes, seeds, steps, uploads, page.settings_box, b.prompts],
        [status, items, job_box, b.coll_box, b.summary, b.figures] + lists + page.history_components,
        api_name="attribute_batch", concurrency_id=HEAVY, concurrency_limit=1, show_progress="hidden")
    b.cancel_btn.click(on_cancel_batch, [job_box], [status], api_name="cancel_batch", queue=False)


def wire_collections(ex: Explorer, b: SimpleNamespace, page: SimpleNamespace) -> None:
    """The collections' events: /open_collection, /list_collections, /delete_collection, /collection_data,
    /export_collection, and a click on the map opening a run."""
    coll_box, figures = b.coll_box, b.figures
    panel, tabs = page.collections, page.tabs
    coll_outputs = [coll_box, b.summary, figures]
    lists = [panel.table, panel.select]

    @user_errors
    def on_open_collection(coll_id):
        if not coll_id:
            raise MucsError("choose a collection to open")
        return {**_collection_view(ex, b, coll_id), tabs: gr.Tabs(selected="batch")}

    def on_list_collections():
        return _collection_listing(ex, page)

    @user_errors
    def on_delete_collection(coll_id):
        if not coll_id:
            raise MucsError("choose a collection to delete")
        ex.delete_collection(coll_id)
        return {**_collection_listing(ex, page), **page.history_outputs()}

    def on_collection_file(coll_id, fmt):
        """Every analysis of the collection as JSON, or its CSV tables in one zip."""
        if not coll_id:
            return gr.update(value=None, interactive=False)
        try:
            return gr.update(value=ex.collection_data_file(coll_id, fmt), interactive=True,
                             label=f"Download the analyses ({'JSON' if fmt == 'json' else 'CSV, zip'})")
        except MucsError as e:
            raise _user_error(on_collection_file, e) from None

    def on_export_collection(coll_id):
        """The whole collection (its record and every run folder) as one zip."""
        if not coll_id:
            return gr.update(value=None, interactive=False)
        try:
            return gr.update(value=ex.export_collection(coll_id), interactive=True)
        except MucsError as e:
            raise _user_error(on_export_collection, e) from None

    @user_errors
    def on_map_click(evt: gr.EventData):
        run_id = (getattr(evt, "_data", None) or {}).get("run")
        if not run_id:
            raise MucsError("click a point of the map (or a row name of the heatmap) to open its run")
        return {**page.result_outputs(run_id, ex.load_run(run_id)), tabs: gr.Tabs(selected="results")}

    panel.open_btn.click(on_open_collection, [panel.select], coll_outputs + [tabs], api_name="open_collection")
    panel.refresh_btn.click(on_list_collections, None, lists, api_name="list_collections")
    panel.delete_btn.click(on_delete_collection, [panel.select], lists + page.history_components,
                           api_name="delete_collection")
    gr.on([coll_box.change, b.data_fmt.change], on_collection_file, [coll_box, b.data_fmt], [b.dl_data],
          api_name="collection_data")
    coll_box.change(on_export_collection, [coll_box], [b.dl_zip], api_name="export_collection")
    figures.click(on_map_click, None, page.result_components + [tabs], api_name="open_from_map")


def _secs(sec) -> str:
    from mucs.progress import format_seconds
    return format_seconds(sec or 0)


def _session(request) -> str:
    return getattr(request, "session_hash", None) or "default"


def parse_args(argv=None):
    from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="diffusers model folder (default: the embedded model)")
    p.add_argument("--data", default=None, help="training set .npz or image folder (default: the embedded set "
                                                 "when --model is the default; required otherwise)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; any other "
                                                       "address needs --auth)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=None, help="user:password required to open the app")
    p.add_argument("--settings", default=None,
                   help="MUCS setting overrides as a JSON object or a path to a JSON file, e.g. "
                        "'{\"noises\": 16, \"max_steps\": 40}' (default: the model's recommended settings)")
    profile = p.add_mutually_exclusive_group()
    profile.add_argument("--fast", action="store_true",
                         help="serve the fast settings profile (half the unlearning batch at twice the lr, screened "
                              "scoring; docs/benchmarks.md) instead of the recommended one; --settings applies on top")
    profile.add_argument("--paper-settings", action="store_true",
                         help="serve the paper's settings (mucs.Settings()) instead of the model's recommended ones")
    p.add_argument("--train-lr", type=float, default=None,
                   help="the model's training learning rate when its folder records none (unlearning: it ÷ lr_factor)")
    p.add_argument("--cache-dir", default=None, help="where L_o, L_null and other caches are written "
                                                      "(default: $MUCS_CACHE_DIR or ~/.cache/mucs)")
    p.add_argument("--image-column", default=None,
                   help="image column of a Hugging Face dataset (default: the first Image feature)")
    p.add_argument("--label-column", default=None,
                   help="label column of a Hugging Face dataset (default: a ClassLabel feature)")
    p.add_argument("--runs", default=None, help="run history folder (default: $MUCS_RUNS_DIR or runs/ in the repo)")
    p.add_argument("--examples", default="default",
                   help="folder of read-only example runs (default: assets/examples; '' for none)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--max-request-seconds", type=float, default=MAX_REQUEST_SECONDS,
                   help=f"stop a heavy request (attribution, replay, sampling) that runs longer than this "
                        f"(default {MAX_REQUEST_SECONDS:g}); it frees the one heavy slot")
    p.add_argument("--max-steps-limit", type=int, default=MAX_STEPS_LIMIT,
                   help=f"the largest unlearning step cap a user may ask for (default {MAX_STEPS_LIMIT})")
    p.add_argument("--lora", default=None, help="a LoRA adapter on --model (folder or .safetensors)")
    p.add_argument("--caption-column", default=None,
                   help="captions of a Hugging Face dataset or an image folder's metadata file (default: text/caption/prompt)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="serve a model that does not look trained on --data (research on untrained networks only)")
    a = p.parse_args(argv)
    if not 0 < a.max_request_seconds < float("inf"):
        p.error(f"--max-request-seconds must be a positive number, got {a.max_request_seconds}")
    if a.max_steps_limit < 1:
        p.error(f"--max-steps-limit must be at least 1, got {a.max_steps_limit}")
    if not 0 <= a.port <= 65535:
        p.error(f"--port must be in 0..65535, got {a.port}")
    if a.data is None:
        if os.path.abspath(a.model) != DEFAULT_MODEL:
            p.error(DATA_REQUIRED)
        a.data = DEFAULT_DATA
    if a.host not in LOCAL_HOSTS and not a.auth:
        p.error(f"refusing to serve on {a.host} without --auth user:password")
    if a.auth is not None:
        user, sep, password = a.auth.partition(":")
        if not sep or not user.strip() or not password:
            p.error("--auth must be user:password with a non-empty user and password")
    return a


def load_overrides(text):
    """--settings: a JSON object or file, checked as the CLI's (types, ranges, nesting, file kind)."""
    from mucs.settings import load_settings_json
    return load_settings_json(text, "--settings") if text else {}


# What the login page itself needs (GET/HEAD), and the login: every other route answers 401 until the
# client has logged in (LoginWall). Gradio protects only some of its routes (not /gradio_api/cancel,
# /reset, /heartbeat, /app_id, /user, /token, /runs, /startup-events, ...), so the wall stands in front
# of all of them, including routes a later Gradio adds.
PUBLIC_EXACT = {"/", "/login", "/login/", "/favicon.ico", "/manifest.json", "/robots.txt", "/theme.css",
                "/gradio_api/theme.css", "/config", "/config/", "/pwa_icon"}
PUBLIC_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")
FILE_ROUTE = "/gradio_api/file="


# Gradio's "Use via API" page asks this route whether an MCP server runs (to show an MCP tab); the app
# runs none (mcp_server=False), so it gets an explicit answer instead of a missing route's bare 404
MCP_PROBE = "/gradio_api/mcp/schema"


class LoginWall:
    """ASGI middleware: with --auth, every HTTP and websocket request but the login page's (PUBLIC_*)
    needs the session cookie that POST /login sets. Also refuses `file=` paths to hidden entries
    (staging folders, the marker) of the run folders `roots`, and sends their other files itself
    (serving.send_file: Gradio's route measures a file by its path, then opens it again)."""

    def __init__(self, app, roots=()):
        self.app, self.roots = app, [os.path.realpath(r) for r in roots if r]

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            path = scope.get("path", "")
            refusal = None
            if not self._logged_in(scope) and not self._public(scope, path):
                refusal = (401, "Not authenticated")
            elif path == MCP_PROBE:
                refusal = (404, "MCP is off in this app: use its Python, JavaScript or HTTP API")
            else:
                target = self._run_file(path)
                if target == "":
                    refusal = (404, "File not found")
                elif target and path.startswith(FILE_ROUTE) and scope["type"] == "http" and \
                        scope.get("method") in ("GET", "HEAD") and await send_file(scope, send, target):
                    return None   # sent from the inode it opened: a run replaced meanwhile changes nothing
            if refusal is not None:
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                from starlette.responses import JSONResponse
                return await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, send)
        return await self.app(scope, receive, send)

    @staticmethod
    def _public(scope, path: str) -> bool:
        if scope["type"] != "http":
            return False
        if path == "/gradio_api/startup-events":   # Gradio's own call at launch: open until it has run once
            return getattr(scope.get("app"), "startup_events_triggered", True) is False
        return (path in PUBLIC_EXACT or path.startswith(PUBLIC_PREFIXES)) and (
            scope.get("method") in ("GET", "HEAD") or path in ("/login", "/login/"))

    @staticmethod
    def _logged_in(scope) -> bool:
        app = scope.get("app")
        if app is None or (getattr(app, "auth", None) is None and getattr(app, "auth_dependency", None) is None):
            return True   # no --auth: nothing to check
        from http.cookies import CookieError, SimpleCookie
        cookies = SimpleCookie()
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                try:
                    cookies.load(value.decode("latin-1"))
                except CookieError:
                    return False
        cid = getattr(app, "cookie_id", "")
        tokens = getattr(app, "tokens", {})
        return any(c in cookies and tokens.get(cookies[c].value) is not None
                   for c in (f"access-token-{cid}", f"access-token-unsecure-{cid}"))

    def _run_file(self, path: str):
        """For a `file=` request of an entry of the run folders: its real path, or "" for a hidden entry
        (staging folders, the marker: refused); None for any other path (left to Gradio's checks)."""
        for route in ("/gradio_api/file=", "/gradio_api/file/", "/file="):
            if path.startswith(route) and "\0" not in path:
                target = os.path.realpath(path[len(route):])
                for root in self.roots:
                    if target.startswith(root + os.sep):
                        hidden = any(part.startswith(".") for part in os.path.relpath(target, root).split(os.sep))
                        return "" if hidden else target
        return None


def launch(demo, ex, host="127.0.0.1", port=7860, auth=None, **kwargs):
    """Queue and serve `demo` with the app's options (local fonts, upload size limit, history paths,
    every route behind the login: LoginWall)."""
    from starlette.middleware import Middleware
    demo.queue(default_concurrency_limit=4)
    allowed = [ex.store.root] + ([ex.store.examples] if ex.store.examples else [])
    return demo.launch(server_name=host, server_port=port, auth=auth, max_file_size=MAX_IMAGE_BYTES, theme=theme(),
                       css=CSS, allowed_paths=allowed, footer_links=["api", "settings"], show_error=True,
                       ssr_mode=False, mcp_server=False, share=False,
                       app_kwargs={"middleware": [Middleware(LoginWall, roots=allowed)]}, **kwargs)


def main(argv=None):
    a = parse_args(argv)
    try:
        from mucs.__main__ import _check_device
        _check_device(a.device)
        ex = Explorer(a.model, a.data, load_overrides(a.settings), runs_dir=a.runs,
                      examples_dir=a.examples or None, device=a.device, max_request_seconds=a.max_request_seconds,
                      max_steps_limit=a.max_steps_limit,
                      profile="fast" if a.fast else "paper" if a.paper_settings else "recommended",
                      lora=a.lora, caption_column=a.caption_column, allow_untrained=a.allow_untrained,
                      train_lr=a.train_lr, cache_dir=a.cache_dir, image_column=a.image_column,
                      label_column=a.label_column)
    except MucsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    auth = tuple(a.auth.split(":", 1)) if a.auth else None
    launch(build(ex), ex, a.host, a.port, auth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
