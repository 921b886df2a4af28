"""The whole page: `build` lays out the views, tab by tab, then wires each view's events.

A new view is a module with `layout(ex)` (its components, built inside the page's Tabs) and `wire(...)`
(its own events), and one line of each here."""
from types import SimpleNamespace

import gradio as gr

from mucs.explorer import texts
from mucs.explorer.serving import Views
from mucs.ui import batch, collections_view, history, methods, query, results, why
from mucs.ui.common import atomic_gradio_images


def build(ex) -> gr.Blocks:
    """The app for the Explorer `ex`: Query & attribute, Results (with why-this-image and methods side by
    side), History & overlap (with collections), Batch & collections."""
    atomic_gradio_images()
    page = SimpleNamespace(views=Views(16))   # run views by (run id, its files' stamp): reopening computes nothing
    with gr.Blocks(title="MUCS Explorer", analytics_enabled=False) as demo:
        gr.Markdown("# MUCS Explorer\nWhich training images made the model generate this image? "
                    "Mirrored unlearning and noise-consistent skew (Serrà et al., 2026).")
        gr.Markdown(ex.describe(), elem_id="model-info")
        with gr.Accordion("How MUCS works, in plain words (score, L_o, L_u, L_null)", open=False, elem_id="help-method"):
            gr.Markdown(texts.METHOD)
        with gr.Tabs(elem_id="tabs", overflow_behavior="wrap") as tabs:   # a phone: every view reachable
            page.query = query.layout(ex)
            page.results = results.layout(ex)
            page.history = history.layout(ex)
            page.batch = batch.layout(ex)
        shared(ex, page, demo, tabs)
        gen_ev = query.wire_sources(ex, page.query)
        replay_ev = why.wire(ex, page.results)
        query.wire_attribute(ex, page, cancels=[gen_ev, replay_ev])
        results.wire(ex, page.results)
        methods.wire(ex, page.results)
        history.wire(ex, page)
        batch.wire(ex, page.batch, page)
        collections_view.wire(ex, page.batch, page)
    return demo


def shared(ex, page: SimpleNamespace, demo, tabs) -> None:
    """What the views share on `page`: the tabs, the settings, what showing a run or the history updates."""
    page.demo, page.tabs, page.collections = demo, tabs, page.history.collections
    page.setting_widgets, page.settings_box = page.query.setting_widgets, page.query.settings_box
    page.result_components = results.components(page.results)
    page.history_components = page.history.components
    page.result_outputs = lambda run_id, att=None: results.outputs(ex, page.results, page.views, run_id, att)
    page.history_outputs = lambda select=None, every=False: history.outputs(ex, page.history, select, every)
