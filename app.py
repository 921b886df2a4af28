"""MUCS Explorer: a Gradio app to attribute diffusion-model images to their training data.

    python app.py                       # embedded Fashion-MNIST model, http://127.0.0.1:7860
    python app.py --model M --data D    # your own diffusers folder and training set
    python app.py --host 0.0.0.0 --auth user:pass

Every callback calls the library (mucs.explorer); heavy work (sampling, attribution) shares
one queue slot. Runs are stored in --runs (default runs/ in the repository, or $MUCS_RUNS_DIR).
"""
import argparse
import functools
import inspect
import json
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402

from mucs import plots  # noqa: E402
from mucs.data import MAX_IMAGE_BYTES  # noqa: E402
from mucs.errors import Cancelled, MucsError  # noqa: E402
from mucs.explorer import Explorer, upscale  # noqa: E402

HEAVY = "heavy"          # the one queue slot shared by sampling and attribution
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"]
HISTORY_HEADERS = ["id", "created (UTC)", "kind", "source", "class", "steps", "converged", "top-k", "seconds"]
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def user_errors(fn):
    """Turn the library's MucsError (a bad input or setting) into a visible gr.Error
    (for plain and generator callbacks)."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except MucsError as e:
                raise gr.Error(str(e), title="Cannot do that") from e
            except Cancelled:
                raise gr.Error("cancelled: nothing was saved", title="Cancelled") from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MucsError as e:
            raise gr.Error(str(e), title="Cannot do that") from e
        except Cancelled:
            raise gr.Error("cancelled: nothing was saved", title="Cancelled") from None
    return wrapper


def theme():
    return gr.themes.Soft(font=[gr.themes.Font("ui-sans-serif"), "system-ui", "sans-serif"],
                          font_mono=[gr.themes.Font("ui-monospace"), "Consolas", "monospace"])


CSS = """
#query-image img { image-rendering: pixelated; }
/* captions carry rank · index · class · score: wrap them instead of cutting them off */
#topk-gallery .caption-label, #neighbour-gallery .caption-label, #recurring-gallery .caption-label {
  white-space: normal; max-width: 100%; overflow: visible; text-overflow: clip; font-size: 11px; line-height: 1.25; }
.gallery img, #generated-gallery img, #topk-gallery img, #neighbour-gallery img { image-rendering: pixelated; }
"""


def build(ex: Explorer) -> gr.Blocks:
    s = ex.settings
    conditional = ex.model.num_classes is not None
    choices = ex.class_choices()

    # --- callbacks: each one calls the library and formats its answer ---------------------------
    def show_query(q, note=""):
        conv = "; ".join(q.meta.get("conversions") or [])
        info = f"Query: {q.meta.get('kind')}" + (f" ({note})" if note else "")
        if conv:
            info += f"  \nConversions: {conv}"
        return q, upscale(q.image, 192), info, gr.update(value=q.label)

    @user_errors
    def on_generate(label, seed, count, steps, request: gr.Request, progress=gr.Progress()):
        cancel = ex.cancel_event(_session(request))
        qs = ex.generate(label, seed, count, steps, progress=lambda ev: progress(ev.fraction, desc=ev.stage),
                         cancel=cancel)
        gallery = [(upscale(q.image), f"seed {q.meta['seed']}") for q in qs]
        return (qs, gallery) + show_query(qs[0], f"seed {qs[0].meta['seed']}")

    @user_errors
    def on_pick_generated(qs, evt: gr.SelectData):
        if not qs:
            raise MucsError("generate images first")
        q = qs[int(evt.index)]
        return show_query(q, f"seed {q.meta['seed']}")

    @user_errors
    def on_upload(path):
        q = ex.upload(path)
        if q.meta["conversions"]:
            gr.Warning("The image was converted: " + "; ".join(q.meta["conversions"]))
        note = q.meta["file"] + (" — choose its class" if conditional else "")
        return show_query(q, note)

    @user_errors
    def on_training(index):
        q = ex.training_item(index)
        return show_query(q, f"training item {q.meta['index']}")

    @user_errors
    def on_attribute(q, label, top_k, noises, fraction, lam, tol, max_steps, seed, bounded, retain, consistent,
                     normalised, sigma_min=None, sigma_max=None, train_noise=None, loss_weighting=None,
                     request: gr.Request = None, progress=gr.Progress()):
        q = ex.with_label(q, label)
        st = ex.user_settings(dict(top_k=top_k, noises=noises, noise_fraction=fraction, lam=lam, tol=tol,
                                   max_steps=max_steps, seed=seed, bounded=bounded, retain=retain,
                                   consistent_noise=consistent, normalised=normalised, sigma_min=sigma_min,
                                   sigma_max=sigma_max, train_noise=train_noise, loss_weighting=loss_weighting))
        cancel = ex.cancel_event(_session(request))
        for u in ex.attribute_stream(q, st, cancel):
            progress(u.fraction, desc=u.stage)
            if u.result is None:
                step = u.info.get("step")
                msg = f"**{u.stage}** {u.fraction:.0%}" + (f", step {step}" if step is not None else "")
                yield {status: msg, live_curve: plots.unlearning_curve(u.curve, u.loss_null, st.tol)}
            else:
                yield {status: f"**done**: run `{u.run_id}` saved", live_curve: plots.unlearning_curve(
                    u.curve, u.loss_null, st.tol), **result_outputs(u.run_id, u.result),
                    **history_outputs(select=u.run_id), tabs: gr.Tabs(selected="results")}

    def result_outputs(run_id, att):
        ex.check_run(att)
        tol = att.settings.get("tol")
        return {run_box: run_id, summary: ex.summary(att, run_id),
                result_query: upscale(att.query_image, 192) if att.query_image is not None else None,
                top_gallery: ex.top_gallery(att),
                neighbour_gallery: ex.neighbours(att.query_image) if att.query_image is not None else [],
                hist_plot: plots.skew_histogram(att.scores, att.top),
                scatter_plot: plots.loss_scatter(att.loss_original, att.loss_unlearned, att.scores, att.top,
                                                 att.labels, ex.class_names),
                curve_plot: plots.unlearning_curve(att.curve, att.loss_null, tol),
                class_plot: plots.class_breakdown(att.top, att.labels, ex.class_names, att.query.get("label"))}

    def history_outputs(select=None):
        ids = ex.store.ids()
        return {history: ex.store.table(), run_select: gr.update(choices=ids, value=select),
                overlap_select: gr.update(choices=ids)}

    def on_cancel(request: gr.Request):
        ex.cancel(_session(request))
        return "**cancelled**: nothing was saved"

    @user_errors
    def on_open(run_id):
        if not run_id:
            raise MucsError("choose a run to open")
        return {**result_outputs(run_id, ex.store.load(run_id)), tabs: gr.Tabs(selected="results")}

    def on_refresh():
        return history_outputs()

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
                f"(random top-k sets of the same sizes: {o['random_mean']:.3f}).")
        return (plots.overlap_heatmap(o["matrix"], o["names"]), plots.overlap_distribution(o["pairwise"], o["random"]),
                ex.recurring_gallery(o["recurring"]), text)

    @user_errors
    def on_export(run_id, fmt):
        if not run_id:
            raise MucsError("no run to export: attribute a query or open a run first")
        return ex.store.export(run_id, fmt, class_names=ex.class_names)

    # --- layout -------------------------------------------------------------------------------
    with gr.Blocks(title="MUCS Explorer", analytics_enabled=False) as demo:
        gr.Markdown("# MUCS Explorer\nWhich training images made the model generate this image? "
                    "Mirrored unlearning and noise-consistent skew (Serrà et al., 2026).")
        gr.Markdown(ex.describe(), elem_id="model-info")
        gen_state = gr.State([])
        query_state = gr.State(None)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Query & attribute", id="query", elem_id="tab-query"):
                with gr.Row():
                    with gr.Column(scale=3):
                        with gr.Tab("Generate"):
                            with gr.Row():
                                gen_class = gr.Dropdown(choices, value=choices[0][1] if choices else None,
                                                        label="Class", visible=conditional, elem_id="gen-class")
                                gen_seed = gr.Number(0, precision=0, label="Seed", elem_id="gen-seed")
                                gen_count = gr.Slider(1, 16, value=4, step=1, label="Images", elem_id="gen-count")
                                gen_steps = gr.Slider(5, 200, value=50, step=1, label="Sampler steps (DDIM)",
                                                      elem_id="gen-steps")
                            gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                            gen_gallery = gr.Gallery(label="Generated (click one to make it the query)", columns=8,
                                                     height=220, format="png", object_fit="contain",
                                                     elem_id="generated-gallery", interactive=False)
                        with gr.Tab("Upload"):
                            upload = gr.File(label=f"Image file (at most {MAX_IMAGE_BYTES // 2**20} MB)",
                                             file_types=IMAGE_TYPES, type="filepath", elem_id="upload-file")
                        with gr.Tab("Training image"):
                            with gr.Row():
                                train_index = gr.Number(0, precision=0, label=f"Training index (0..{len(ex.data) - 1})",
                                                        elem_id="train-index")
                                train_btn = gr.Button("Use this training image", elem_id="train-btn")
                    with gr.Column(scale=2):
                        query_image = gr.Image(label="Query (as the model sees it)", type="pil", format="png",
                                               interactive=False, height=220, elem_id="query-image")
                        query_info = gr.Markdown("No query yet: generate, upload or pick a training image.",
                                                 elem_id="query-info")
                        query_class = gr.Dropdown(choices, value=None, label="Query class", visible=conditional,
                                                  elem_id="query-class")
                with gr.Accordion("Settings", open=False, elem_id="settings"):
                    with gr.Row():
                        top_k = gr.Number(s.top_k, precision=0, label="top-k", elem_id="set-top-k")
                        noises = gr.Number(s.noises, precision=0, label="noises K", elem_id="set-noises")
                        fraction = gr.Number(s.noise_fraction, label="noise fraction f", elem_id="set-f")
                        lam = gr.Number(s.lam, label="λ (forget weight)", elem_id="set-lam")
                        tol = gr.Number(s.tol, label="τ (stop tolerance)", elem_id="set-tol")
                        max_steps = gr.Number(s.max_steps, precision=0, label="step cap", elem_id="set-max-steps")
                        seed = gr.Number(s.seed, precision=0, label="seed", elem_id="set-seed")
                    with gr.Row():
                        bounded = gr.Checkbox(s.bounded, label="bounded forget loss", elem_id="set-bounded")
                        retain = gr.Checkbox(s.retain, label="retain term", elem_id="set-retain")
                        consistent = gr.Checkbox(s.consistent_noise, label="consistent noise", elem_id="set-consistent")
                        normalised = gr.Checkbox(s.normalised, label="normalised skew", elem_id="set-normalised")
                    with gr.Row():
                        sigma_min = gr.Number(s.sigma_min, label="σ min of the noise grid", elem_id="set-sigma-min")
                        sigma_max = gr.Number(s.sigma_max, label="σ max of the noise grid", elem_id="set-sigma-max")
                        train_noise = gr.Dropdown(["uniform", "uniform_range", "lognormal"], value=s.train_noise,
                                                  label="training-time noise (unlearning, L_null)",
                                                  elem_id="set-train-noise")
                        loss_weighting = gr.Dropdown(["none", "edm"], value=s.loss_weighting, label="loss weighting",
                                                     elem_id="set-loss-weighting")
                with gr.Row():
                    attr_btn = gr.Button("Attribute", variant="primary", elem_id="attribute-btn")
                    cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn")
                status = gr.Markdown("", elem_id="status")
                live_curve = gr.Plot(plots.empty("Mirrored unlearning", "starts when you click Attribute"),
                                     label="Unlearning (live)", elem_id="live-curve")
            with gr.Tab("Results", id="results", elem_id="tab-results"):
                with gr.Row():
                    result_query = gr.Image(label="Query", type="pil", format="png", interactive=False, height=200,
                                            elem_id="result-query", scale=1)
                    with gr.Column(scale=4):
                        run_box = gr.Textbox(label="Run id", interactive=False, elem_id="run-id")
                        summary = gr.Markdown("", elem_id="summary")
                        with gr.Row():
                            export_fmt = gr.Radio(["csv", "json"], value="csv", label="Export as", elem_id="export-fmt")
                            export_btn = gr.Button("Export", elem_id="export-btn")
                            export_file = gr.File(label="Download", interactive=False, elem_id="export-file")
                top_gallery = gr.Gallery(label="Most influential training images (top-k, best first): "
                                               "rank · index · class · score", columns=5,
                                         height="auto", format="png", object_fit="contain", elem_id="topk-gallery",
                                         interactive=False)
                neighbour_gallery = gr.Gallery(label="Nearest training images in pixel space (for comparison)",
                                               columns=10, height=200, format="png", object_fit="contain",
                                               elem_id="neighbour-gallery", interactive=False)
                with gr.Row():
                    hist_plot = gr.Plot(label="Skew histogram", elem_id="plot-histogram")
                    scatter_plot = gr.Plot(label="L_o vs L_u", elem_id="plot-scatter")
                with gr.Row():
                    curve_plot = gr.Plot(label="Unlearning curve", elem_id="plot-curve")
                    class_plot = gr.Plot(label="Top-k classes", elem_id="plot-classes")
            with gr.Tab("History & overlap", id="history", elem_id="tab-history"):
                history = gr.Dataframe(ex.store.table(), headers=HISTORY_HEADERS, interactive=False,
                                       elem_id="history-table", max_height=320)
                with gr.Row():
                    run_select = gr.Dropdown(ex.store.ids(), label="Run", elem_id="run-select")
                    open_btn = gr.Button("Open", elem_id="open-btn")
                    delete_btn = gr.Button("Delete", variant="stop", elem_id="delete-btn")
                    refresh_btn = gr.Button("Refresh", elem_id="refresh-btn")
                with gr.Row():
                    overlap_select = gr.Dropdown(ex.store.ids(), multiselect=True, label="Runs to compare (two or more)",
                                                 elem_id="overlap-select", scale=4)
                    overlap_btn = gr.Button("Compare overlap", elem_id="overlap-btn", scale=1)
                overlap_text = gr.Markdown("", elem_id="overlap-summary")
                with gr.Row():
                    overlap_heat = gr.Plot(label="Overlap matrix", elem_id="plot-overlap")
                    overlap_dist = gr.Plot(label="Overlap vs random", elem_id="plot-overlap-dist")
                recurring_gallery = gr.Gallery(label="Training images recurring across the chosen runs", columns=12,
                                               height=200, format="png", object_fit="contain",
                                               elem_id="recurring-gallery", interactive=False)

        query_outputs = [query_state, query_image, query_info, query_class]
        result_components = [run_box, summary, result_query, top_gallery, neighbour_gallery, hist_plot, scatter_plot,
                             curve_plot, class_plot]
        history_components = [history, run_select, overlap_select]

        gen_ev = gen_btn.click(on_generate, [gen_class, gen_seed, gen_count, gen_steps],
                               [gen_state, gen_gallery] + query_outputs, api_name="generate",
                               concurrency_id=HEAVY, concurrency_limit=1)
        gen_gallery.select(on_pick_generated, [gen_state], query_outputs, api_name="pick_generated")
        upload.upload(on_upload, [upload], query_outputs, api_name="upload", show_progress="hidden")
        train_btn.click(on_training, [train_index], query_outputs, api_name="use_training")
        attr_ev = attr_btn.click(on_attribute, [query_state, query_class, top_k, noises, fraction, lam, tol, max_steps,
                                                seed, bounded, retain, consistent, normalised, sigma_min, sigma_max,
                                                train_noise, loss_weighting],
                                 [status, live_curve, tabs] + result_components + history_components,
                                 api_name="attribute", concurrency_id=HEAVY, concurrency_limit=1,
                                 show_progress="minimal")
        cancel_btn.click(on_cancel, None, [status], api_name="cancel", cancels=[gen_ev, attr_ev], queue=False)
        open_btn.click(on_open, [run_select], result_components + [tabs], api_name="open_run")
        refresh_btn.click(on_refresh, None, history_components, api_name="list_runs")
        delete_btn.click(on_delete, [run_select], history_components, api_name="delete_run")
        overlap_btn.click(on_overlap, [overlap_select], [overlap_heat, overlap_dist, recurring_gallery, overlap_text],
                          api_name="overlap")
        export_btn.click(on_export, [run_box, export_fmt], [export_file], api_name="export")
        demo.load(on_refresh, None, history_components, api_name="load_history")
    return demo


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
    p.add_argument("--runs", default=None, help="run history folder (default: $MUCS_RUNS_DIR or runs/ in the repo)")
    p.add_argument("--examples", default="default",
                   help="folder of read-only example runs (default: assets/examples; '' for none)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    a = p.parse_args(argv)
    if not 0 <= a.port <= 65535:
        p.error(f"--port must be in 0..65535, got {a.port}")
    if a.data is None:
        if os.path.abspath(a.model) != DEFAULT_MODEL:
            p.error("--data is required with a model other than the embedded default")
        a.data = DEFAULT_DATA
    if a.host not in LOCAL_HOSTS and not a.auth:
        p.error(f"refusing to serve on {a.host} without --auth user:password")
    if a.auth is not None:
        user, sep, password = a.auth.partition(":")
        if not sep or not user.strip() or not password:
            p.error("--auth must be user:password with a non-empty user and password")
    return a


def load_overrides(text):
    if not text:
        return {}
    try:
        if os.path.isfile(text):
            with open(text) as f:
                d = json.load(f)
        else:
            d = json.loads(text)
    except (OSError, ValueError) as e:
        raise MucsError(f"--settings is neither a JSON object nor a readable JSON file: {e}") from e
    if not isinstance(d, dict):
        raise MucsError("--settings must be a JSON object")
    from mucs.checks import check_settings_dict
    return check_settings_dict(d.get("settings", d), what="--settings")


def launch(demo, ex, host="127.0.0.1", port=7860, auth=None, **kwargs):
    """Queue and serve `demo` with the app's options (local fonts, upload size limit, history paths)."""
    demo.queue(default_concurrency_limit=4)
    allowed = [ex.store.root] + ([ex.store.examples] if ex.store.examples else [])
    return demo.launch(server_name=host, server_port=port, auth=auth, max_file_size=MAX_IMAGE_BYTES, theme=theme(),
                       css=CSS, allowed_paths=allowed, footer_links=["api", "settings"], show_error=True,
                       ssr_mode=False, mcp_server=False, share=False, **kwargs)


def main(argv=None):
    a = parse_args(argv)
    try:
        from mucs.__main__ import _check_device
        _check_device(a.device)
        ex = Explorer(a.model, a.data, load_overrides(a.settings), runs_dir=a.runs,
                      examples_dir=a.examples or None, device=a.device)
    except MucsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    auth = tuple(a.auth.split(":", 1)) if a.auth else None
    launch(build(ex), ex, a.host, a.port, auth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
