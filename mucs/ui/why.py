"""The "Why this image?" panel of the Results view: one training item's losses over σ, where its skew
falls, its nearest images, and a replay of the unlearning. Endpoints: /pick_top, /why, /why_replay."""
from types import SimpleNamespace
from typing import Optional

import gradio as gr

from mucs.errors import MucsError
from mucs.explorer import plots, texts
from mucs.ui.common import HEAVY, gallery, session, user_errors

START = "Click an image of the top-k (or type its training index and press *Explain*)."


def _empty_plots() -> tuple:
    return (plots.empty("Loss at each noise level", "click a top-k image to see its losses over σ"),
            plots.empty("Where the item's skew falls", "click a top-k image"))


def layout(ex) -> SimpleNamespace:
    """The panel (built inside the Results view)."""
    empty_plot, empty_hist = _empty_plots()
    with gr.Accordion("Why this image?", open=True, elem_id="why-panel"):
        gr.Markdown(texts.WHY, elem_classes=["plot-note"])
        with gr.Row():
            index = gr.Number(None, precision=0, label=f"training index (0..{len(ex.data) - 1})", elem_id="why-index",
                              scale=1, min_width=140)
            btn = gr.Button("Explain", elem_id="why-btn", scale=1)
            replay_btn = gr.Button("Replay unlearning (per-noise L_u)", elem_id="replay-btn", scale=2)
        text = gr.Markdown(START, elem_id="why-text", label="why this image", show_label=False)
        with gr.Row():
            plot = gr.Plot(empty_plot, label="Loss at each noise level (x: σ, y: loss, log axes)", elem_id="plot-why")
            hist = gr.Plot(empty_hist, label="Its skew among all training images", elem_id="plot-why-hist")
        neighbours = gallery("Its nearest training images in pixel space (d² = squared distance)", "why-neighbours", 6)
    return SimpleNamespace(index=index, btn=btn, replay_btn=replay_btn, text=text, plot=plot, hist=hist,
                           neighbours=neighbours)


def reset(w: SimpleNamespace) -> dict:
    """The panel as it is before an item is chosen (a run just opened)."""
    empty_plot, empty_hist = _empty_plots()
    return {w.text: START, w.plot: empty_plot, w.hist: empty_hist, w.neighbours: []}


def wire(ex, r: SimpleNamespace):
    """The panel's events on the run shown in the Results view `r`; returns the replay's event (Cancel
    stops it)."""
    w = r.why
    outputs = [w.index, w.text, w.plot, w.hist, w.neighbours]

    def why_outputs(run_id, index):
        e = ex.why(run_id, index)
        att = ex.load_run(run_id)
        neigh = ex.index_gallery([(i, f"d²={d:.3g}") for i, d in e.neighbours])
        return {w.index: e.index, w.text: e.summary(), w.plot: plots.why_losses(e),
                w.hist: plots.skew_histogram(att.scores, att.top, mark=e.index), w.neighbours: neigh}

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
    def on_replay(run_id, index, request: Optional[gr.Request] = None, progress=gr.Progress()):
        with ex.job(session(request)) as job:
            info = ex.replay(run_id, progress=lambda ev: progress(ev.fraction, desc=f"replaying {ev.stage}"),
                             cancel=job.event)
        out = why_outputs(run_id, index if index not in (None, "") else ex.load_run(run_id).top[0])
        same = "the same number of steps as the run" if info["same_steps"] else "**a different number of steps**"
        out[w.text] = f"Unlearning replayed: {info['steps']} steps ({same}).  \n" + out[w.text]
        return out

    replay_ev = w.replay_btn.click(on_replay, [r.run_box, w.index], outputs, api_name="why_replay",
                                   concurrency_id=HEAVY, concurrency_limit=1)
    r.top.select(on_pick_top, [r.run_box], outputs, api_name="pick_top")
    w.btn.click(on_why, [r.run_box, w.index], outputs, api_name="why")
    return replay_ev
