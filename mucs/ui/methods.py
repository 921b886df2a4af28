"""The "Methods side by side" panel of the Results view: the run's query ranked by the baselines too,
with each method's top-k, their overlaps and timings. Endpoint: /compare_methods."""
from types import SimpleNamespace

import gradio as gr

from mucs.explorer import plots, texts
from mucs.ui.common import user_errors

START = "Press *Compare methods* to rank this run's query with the baselines too."


def _empty_plot():
    return plots.empty("Overlap of the methods' top-k", "press Compare methods")


def layout() -> SimpleNamespace:
    """The panel (built inside the Results view)."""
    with gr.Accordion("Methods side by side: MUCS, pixel NN, feature NN, MUCS + pixel NN", open=True,
                      elem_id="methods-panel"):
        gr.Markdown(texts.METHODS, elem_classes=["plot-note"])
        btn = gr.Button("Compare methods", elem_id="methods-btn")
        text = gr.Markdown(START, elem_id="methods-text", label="methods summary", show_label=False)
        html = gr.HTML("", elem_id="methods-grid", label="methods top-k", show_label=False)
        plot = gr.Plot(_empty_plot(), label="Overlap of the methods' top-k sets", elem_id="plot-methods")
    return SimpleNamespace(btn=btn, text=text, html=html, plot=plot)


def reset(m: SimpleNamespace) -> dict:
    """The panel as it is before a comparison (a run just opened)."""
    return {m.text: START, m.html: "", m.plot: _empty_plot()}


def summary(m: dict) -> str:
    """One line on the overlaps with MUCS, then one per method: its label, seconds and what it is."""
    lines = [f"Top-{m['k']} of each method for this run's query. Shared with MUCS: " + ", ".join(
        f"{lab} {len(m['with_mucs'][n])}/{len(m['tops'][n])}" for n, lab in zip(m["names"], m["labels"])
        if n != "mucs") + "."]
    lines += [f"- **{lab}** ({m['seconds'][n]:.1f} s): {m['descriptions'][n]}" for n, lab in zip(m["names"], m["labels"])]
    lines += [f"- **{n}**: not shown: {why}" for n, why in m.get("skipped", {}).items()]
    return "\n".join(lines)


def wire(ex, r: SimpleNamespace) -> None:
    m = r.methods

    @user_errors
    def on_methods(run_id):
        c = ex.compare_methods(run_id)
        return summary(c), c["html"], plots.methods_overlap(c["matrix"], c["labels"])

    m.btn.click(on_methods, [r.run_box], [m.text, m.html, m.plot], api_name="compare_methods")
