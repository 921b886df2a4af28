"""The "History & overlap" view: the stored runs (open, delete, list), the comparison of two or more runs'
top-k sets, and the collections panel. Endpoints: /open_run, /list_runs, /list_every_run, /delete_run,
/overlap, /compare_runs, /load_history."""
from types import SimpleNamespace

import gradio as gr

from mucs.errors import MucsError
from mucs.explorer import plots, texts
from mucs.explorer.state import HISTORY_COLUMNS
from mucs.ui import collections_view
from mucs.ui.common import gallery, plot_row, user_errors


def layout(ex) -> SimpleNamespace:
    """The tab; its collections panel is `collections_view.panel`."""
    with gr.Tab("History & overlap", id="history", elem_id="tab-history"):
        gr.Markdown(texts.HISTORY, elem_classes=["plot-note"])
        every = gr.Checkbox(False, label="Runs of every model and training set (by default only those of the "
                            "served model and data, the ones that open here)", elem_id="history-every")
        # no wrapping: each column as wide as its words (percent widths broke "converged" into three lines
        # while half the table stayed empty); a narrow screen scrolls the table
        table = gr.Dataframe(ex.history_table(), headers=HISTORY_COLUMNS, interactive=False, elem_id="history-table",
                             max_height=320, wrap=False, label="history", show_label=False)
        with gr.Row():
            # allow_custom_value: the API takes any existing run id, also one made after the page loaded
            select = gr.Dropdown(ex.store.ids(), label="Run", elem_id="run-select", allow_custom_value=True)
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
        recurring = gallery("Training images in two or more of the chosen runs' top-k sets", "recurring-gallery", 12,
                            visible=False)
        panel = collections_view.panel(ex)
    return SimpleNamespace(every=every, table=table, select=select, open_btn=open_btn, delete_btn=delete_btn,
                           refresh_btn=refresh_btn, overlap_select=overlap_select, overlap_btn=overlap_btn,
                           overlap_text=overlap_text, runs_html=runs_html, overlap_heat=overlap_heat,
                           overlap_dist=overlap_dist, recurring=recurring, collections=panel,
                           components=[table, select, overlap_select])


def outputs(ex, h: SimpleNamespace, select=None, every=False) -> dict:
    """The history table (the served model's and data's runs, or `every` run) and the run choosers,
    `select` chosen."""
    ids = ex.store.ids()
    return {h.table: ex.history_table(every), h.select: gr.update(choices=ids, value=select),
            h.overlap_select: gr.update(choices=ids)}


def overlap_summary(o: dict) -> str:
    return (f"Mean pairwise overlap of {len(o['names'])} runs: **{o['mean']:.3f}** "
            f"(random top-k sets of the same sizes: {o['random_mean']:.3f}). "
            + (f"{len(o['recurring'])} image(s) recur in two or more of the sets."
               if o["recurring"] else "No image is in two or more of the sets."))


def wire(ex, page) -> None:
    """The view's events; opening a run shows it in the Results view (`page.result_outputs`)."""
    h = page.history

    @user_errors
    def on_open(run_id):
        if not run_id:
            raise MucsError("choose a run to open")
        return {**page.result_outputs(run_id), page.tabs: gr.Tabs(selected="results")}

    def on_refresh():
        return outputs(ex, h)

    def on_history_every(every: bool = False):
        """The history table with the runs of every model and training set (`every`), or only the
        served model's and data's (the ones that open here)."""
        return outputs(ex, h, every=bool(every))

    @user_errors
    def on_delete(run_id):
        if not run_id:
            raise MucsError("choose a run to delete")
        ex.store.delete(run_id)
        return outputs(ex, h)

    @user_errors
    def on_overlap(run_ids):
        o = ex.overlap(run_ids)
        rec = ex.recurring_gallery(o["recurring"])
        return (plots.overlap_heatmap(o["matrix"], o["names"]), plots.overlap_distribution(o["pairwise"], o["random"]),
                gr.update(value=rec, visible=bool(rec)), overlap_summary(o))

    @user_errors
    def on_compare_runs(run_ids):
        return ex.compare_runs(run_ids)["html"]

    h.open_btn.click(on_open, [h.select], page.result_components + [page.tabs], api_name="open_run")
    h.refresh_btn.click(on_refresh, None, h.components, api_name="list_runs").then(
        lambda: False, None, [h.every], queue=False, api_name="history_served_only", api_visibility="private",
        show_progress="hidden")
    h.every.input(on_history_every, [h.every], h.components, api_name="list_every_run")
    h.delete_btn.click(on_delete, [h.select], h.components, api_name="delete_run")
    h.overlap_btn.click(on_overlap, [h.overlap_select], [h.overlap_heat, h.overlap_dist, h.recurring, h.overlap_text],
                        api_name="overlap")
    h.overlap_btn.click(on_compare_runs, [h.overlap_select], [h.runs_html], api_name="compare_runs")
    page.demo.load(on_refresh, None, h.components, api_name="load_history")
