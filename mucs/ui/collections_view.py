"""The collections panel (in the "History & overlap" view) and the collections' events: /open_collection,
/list_collections, /delete_collection, /collection_data, /export_collection, /open_from_map."""
from types import SimpleNamespace

import gradio as gr

from mucs.errors import MucsError
from mucs.explorer import texts
from mucs.ui.common import download, user_errors

COLLECTION_HEADERS = ["collection", "created (UTC)", "status", "asked", "done", "top-k"]


def panel(ex) -> SimpleNamespace:
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


def view(ex, b: SimpleNamespace, coll_id) -> dict:
    """The batch tab's collection view (id, summary, figures) showing `coll_id`."""
    o = ex.open_collection(coll_id)
    return {b.coll_box: coll_id, b.summary: o["summary"], b.figures: o["html"]}


def listing(ex, page: SimpleNamespace, select=None) -> dict:
    """The collections table and chooser, `select` chosen."""
    ids = ex.collections.ids()
    c = page.collections
    return {c.table: ex.collection_table(), c.select: gr.update(choices=ids, value=select)}


def wire(ex, b: SimpleNamespace, page: SimpleNamespace) -> None:
    """The collections' events: /open_collection, /list_collections, /delete_collection, /collection_data,
    /export_collection, and a click on the map opening a run."""
    coll_box, figures = b.coll_box, b.figures
    c, tabs = page.collections, page.tabs
    coll_outputs = [coll_box, b.summary, figures]
    lists = [c.table, c.select]

    @user_errors
    def on_open_collection(coll_id):
        if not coll_id:
            raise MucsError("choose a collection to open")
        return {**view(ex, b, coll_id), tabs: gr.Tabs(selected="batch")}

    def on_list_collections():
        return listing(ex, page)

    @user_errors
    def on_delete_collection(coll_id):
        if not coll_id:
            raise MucsError("choose a collection to delete")
        ex.delete_collection(coll_id)
        return {**listing(ex, page), **page.history_outputs()}

    def on_collection_file(coll_id, fmt):
        """Every analysis of the collection as JSON, or its CSV tables in one zip."""
        return download(on_collection_file, ex.collection_data_file, coll_id, fmt,
                        label=f"Download the analyses ({'JSON' if fmt == 'json' else 'CSV, zip'})")

    def on_export_collection(coll_id):
        """The whole collection (its record and every run folder) as one zip."""
        return download(on_export_collection, ex.export_collection, coll_id)

    @user_errors
    def on_map_click(evt: gr.EventData):
        run_id = (getattr(evt, "_data", None) or {}).get("run")
        if not run_id:
            raise MucsError("click a point of the map (or a row name of the heatmap) to open its run")
        return {**page.result_outputs(run_id, ex.load_run(run_id)), tabs: gr.Tabs(selected="results")}

    c.open_btn.click(on_open_collection, [c.select], coll_outputs + [tabs], api_name="open_collection")
    c.refresh_btn.click(on_list_collections, None, lists, api_name="list_collections")
    c.delete_btn.click(on_delete_collection, [c.select], lists + page.history_components,
                       api_name="delete_collection")
    gr.on([coll_box.change, b.data_fmt.change], on_collection_file, [coll_box, b.data_fmt], [b.dl_data],
          api_name="collection_data")
    coll_box.change(on_export_collection, [coll_box], [b.dl_zip], api_name="export_collection")
    figures.click(on_map_click, None, page.result_components + [tabs], api_name="open_from_map")

