"""The "Results" view: a run's query, summary, downloads, top-k, nearest neighbours and plots, with the
why-this-image and methods-side-by-side panels inside it. Endpoints: /export, /report."""
import os
from types import SimpleNamespace

import gradio as gr

from mucs.explorer import plots, texts
from mucs.explorer.state import upscale
from mucs.explorer.serving import png_file
from mucs.ui import methods, why
from mucs.ui.common import download, gallery, plot_row


def layout(ex) -> SimpleNamespace:
    """The tab: a placeholder until a run is opened, then the run's body (hidden before: an empty tab was
    ~3,000 px of placeholders)."""
    with gr.Tab("Results", id="results", elem_id="tab-results"):
        empty = gr.Markdown(texts.RESULTS_EMPTY, elem_id="results-empty", label="results placeholder", show_label=False)
        with gr.Column(visible=False, elem_id="results-body") as body:
            with gr.Row():
                query = gr.Image(label="Query", type="pil", format="png", interactive=False, height=200,
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
                                                      elem_id="download-report", scale=1, size="md", variant="primary")
            top = gallery("Most influential training images (top-k, best first): rank · index · class · score — "
                          "click one to see why", "topk-gallery", 5)
            why_panel = why.layout(ex)
            neighbours = gallery("Nearest training images to the query in pixel space (for comparison)",
                                 "neighbour-gallery", 10)
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
            methods_panel = methods.layout()
    return SimpleNamespace(empty=empty, body=body, query=query, run_box=run_box, summary=summary,
                           export_fmt=export_fmt, dl_data=dl_data, dl_report=dl_report, top=top, neighbours=neighbours,
                           hist_plot=hist_plot, scatter_plot=scatter_plot, curve_plot=curve_plot, class_plot=class_plot,
                           why=why_panel, methods=methods_panel)


def components(r: SimpleNamespace) -> list:
    """What showing a run updates, in the order of /attribute's and /open_run's outputs (an HTTP client
    reads them by position: keep it)."""
    w, m = r.why, r.methods
    return [r.run_box, r.summary, r.empty, r.query, r.top, r.neighbours, r.hist_plot, r.scatter_plot, r.curve_plot,
            r.class_plot, w.text, w.plot, w.hist, w.neighbours, m.text, m.html, m.plot, r.body]


def run_view(ex, r: SimpleNamespace, att, run_id) -> dict:
    """What a run's results show that depends on its files alone. Images are immutable content-addressed
    PNGs (serving.png_file), so Gradio copies them atomically instead of re-encoding them in place, where
    a client downloading one saw it truncated."""
    ex.check_run(att)
    folder = os.path.join(ex.downloads_dir(), "images")
    files = lambda items: [(png_file(folder, im), caption) for im, caption in items]   # noqa: E731
    q = att.query_image
    return {r.summary: ex.summary(att, run_id),
            r.query: png_file(folder, upscale(q, 192)) if q is not None else None,
            r.top: files(ex.top_gallery(att)), r.neighbours: files(ex.neighbours(q)) if q is not None else [],
            r.hist_plot: plots.skew_histogram(att.scores, att.top),
            r.scatter_plot: plots.loss_scatter(att.loss_original, att.loss_unlearned, att.scores, att.top, att.labels,
                                               ex.class_names),
            r.curve_plot: plots.unlearning_curve(att.curve, att.loss_null, att.settings.get("tol")),
            r.class_plot: plots.class_breakdown(att.top, att.labels, ex.class_names, att.query.get("label"))}


def outputs(ex, r: SimpleNamespace, views, run_id, att=None) -> dict:
    """A stored run's results (`att`: the run as loaded or just saved), its view kept in `views` per
    version of its files: opening a run again, or the run an attribution just showed, computes nothing."""
    view = views.get((run_id, ex.store.stamp(run_id)),
                     lambda: run_view(ex, r, att if att is not None else ex.store.load(run_id), run_id))
    return {r.run_box: run_id, **view, r.empty: gr.update(visible=False), r.body: gr.update(visible=True),
            **why.reset(r.why), **methods.reset(r.methods)}


def wire(ex, r: SimpleNamespace) -> None:
    """The downloads of the run shown: its scores (/export, CSV or JSON) and its HTML report (/report)."""
    def on_export(run_id, fmt):
        """The run's scores as CSV or JSON, ready on the download button (nothing to offer without a run)."""
        return download(on_export, ex.export_file, run_id, fmt, label=f"Download {str(fmt).upper()}")

    def on_report(run_id):
        """The run's self-contained HTML report, ready on the download button."""
        return download(on_report, ex.report_file, run_id)

    gr.on([r.run_box.change, r.export_fmt.change], on_export, [r.run_box, r.export_fmt], [r.dl_data], api_name="export")
    r.run_box.change(on_report, [r.run_box], [r.dl_report], api_name="report")
