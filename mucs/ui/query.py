"""The "Query & attribute" view: make a query (generate, upload, a training image), then attribute it.

Endpoints: /generate, /pick_generated, /upload, /use_training, /query_prompt, /attribute, /cancel."""
from types import SimpleNamespace
from typing import Optional

import gradio as gr

from mucs.errors import MucsError
from mucs.explorer import plots
from mucs.explorer.state import upscale
from mucs.sources.data import MAX_IMAGE_BYTES
from mucs.ui.common import HEAVY, IMAGE_TYPES, secs, session, user_errors
from mucs.ui.settings_panel import on_settings, settings_panel


def layout(ex) -> SimpleNamespace:
    """The tab: the query's three sources (sub-tabs), the query as the model sees it, the settings, the
    Attribute / Cancel buttons, the status line and the live unlearning curve."""
    conditional, text_model = ex.model.num_classes is not None, ex.text
    choices = ex.class_choices()
    n_train = len(ex.data)
    with gr.Tab("Query & attribute", id="query", elem_id="tab-query"):
        generated, query = gr.State([]), gr.State(None)   # the session's generated images and its query
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Tab("Generate"):
                    with gr.Row():
                        gen_class = gr.Dropdown(choices, value=choices[0][1] if choices else None, label="Class",
                                                visible=conditional, elem_id="gen-class")
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
                    gen_gallery = gr.Gallery(label="Generated (click one to make it the query)", columns=8, height=220,
                                             format="png", object_fit="contain", elem_id="generated-gallery",
                                             interactive=False)
                with gr.Tab("Upload"):
                    upload = gr.File(label=f"Image file (at most {MAX_IMAGE_BYTES // 2**20} MB)",
                                     file_types=IMAGE_TYPES, type="filepath", elem_id="upload-file")
                with gr.Tab("Training image"):
                    with gr.Row():
                        train_index = gr.Number(0, precision=0, label=f"Training index (0..{n_train - 1})",
                                                elem_id="train-index")
                        train_btn = gr.Button("Use this training image", elem_id="train-btn")
            with gr.Column(scale=2):
                image = gr.Image(label="Query (as the model sees it)", type="pil", format="png", interactive=False,
                                 height=220, elem_id="query-image")
                info = gr.Markdown("No query yet: generate, upload or pick a training image.", elem_id="query-info",
                                   label="query info", show_label=False)
                label = gr.Dropdown(choices, value=None, label="Query class", visible=conditional,
                                    elem_id="query-class")
                prompt = gr.Textbox("", label="Query prompt (the caption it was made with, or the one to ask about)",
                                    visible=text_model, elem_id="query-prompt", max_lines=2)
        setting_widgets, settings_box = settings_panel(ex.settings, n_train)
        with gr.Row():
            attr_btn = gr.Button("Attribute", variant="primary", elem_id="attribute-btn")
            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn")
            job_box = gr.Textbox("", label="Job id (any client can cancel it: /cancel with this id)",
                                 interactive=False, max_lines=1, elem_id="job-id")
        status = gr.Markdown("", elem_id="status", label="status", show_label=False)
        live_curve = gr.Plot(plots.empty("Mirrored unlearning", "starts when you click Attribute"),
                             label="Unlearning (live): forget loss L_f rising to L_null, retain loss L_r",
                             elem_id="live-curve")
    return SimpleNamespace(
        gen_class=gen_class, gen_prompt=gen_prompt, gen_seed=gen_seed, gen_count=gen_count, gen_steps=gen_steps,
        gen_guidance=gen_guidance, gen_negative=gen_negative, gen_btn=gen_btn, gen_gallery=gen_gallery, upload=upload,
        train_index=train_index, train_btn=train_btn, image=image, info=info, label=label, prompt=prompt,
        setting_widgets=setting_widgets, settings_box=settings_box, attr_btn=attr_btn, cancel_btn=cancel_btn,
        job_box=job_box, status=status, live_curve=live_curve, generated=generated, query=query,
        outputs=[query, image, info, label, prompt])


def show_query(q, note=""):
    """The query's outputs: (state, its image enlarged, a line saying what it is, its class, its prompt)."""
    conv = "; ".join(q.meta.get("conversions") or [])
    info = f"Query: {q.meta.get('kind')}" + (f" ({note})" if note else "")
    if conv:
        info += f"  \nConversions: {conv}"
    return q, upscale(q.image, 192), info, gr.update(value=q.label), gr.update(value=q.prompt or "")


def wire_sources(ex, v: SimpleNamespace) -> object:
    """The query's sources: /generate (a heavy job; returns its event for Cancel), /pick_generated,
    /upload (a refused file empties the box: /clear_upload), /use_training, /query_prompt."""
    conditional, text_model = ex.model.num_classes is not None, ex.text

    @user_errors
    def on_generate(label, seed, count, steps, prompt="", guidance_scale=None, negative_prompt="",
                    request: Optional[gr.Request] = None, progress=gr.Progress()):
        """Sample `count` images from consecutive seeds; a text model's from `prompt` (with guidance)."""
        with ex.job(session(request)) as job:
            qs = ex.generate(label, seed, count, steps, progress=lambda ev: progress(ev.fraction, desc=ev.stage),
                             cancel=job.event, prompt=prompt, guidance_scale=guidance_scale,
                             negative_prompt=negative_prompt)
        gallery = [(upscale(q.image), f"seed {q.meta['seed']}") for q in qs]
        return (qs, gallery) + show_query(qs[0], f"seed {qs[0].meta['seed']}")

    @user_errors
    def on_pick_generated(qs, evt: gr.SelectData = None):   # type: ignore[assignment]  # (Gradio: by the class)
        if not qs:
            raise MucsError("generate images first")
        index = getattr(evt, "index", None)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(qs):
            raise MucsError(f"pick one of the {len(qs)} generated images (got the selection {index!r})")
        return show_query(qs[index], f"seed {qs[index].meta['seed']}")

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

    def on_query_prompt(q, prompt):
        """Set the prompt a text model's query is attributed with (its own caption until changed);
        its own endpoint so that /attribute keeps taking (label, settings)."""
        return ex.with_prompt(q, prompt)

    gen_ev = v.gen_btn.click(on_generate, [v.gen_class, v.gen_seed, v.gen_count, v.gen_steps, v.gen_prompt,
                                           v.gen_guidance, v.gen_negative], [v.generated, v.gen_gallery] + v.outputs,
                             api_name="generate", concurrency_id=HEAVY, concurrency_limit=1)
    v.gen_gallery.select(on_pick_generated, [v.generated], v.outputs, api_name="pick_generated")
    v.upload.upload(on_upload, [v.upload], v.outputs, api_name="upload", show_progress="hidden").failure(
        on_upload_refused, None, [v.upload], api_name="clear_upload", queue=False)
    v.train_btn.click(on_training, [v.train_index], v.outputs, api_name="use_training")
    v.prompt.change(on_query_prompt, [v.query, v.prompt], [v.query], api_name="query_prompt", queue=False,
                    show_progress="hidden")
    return gen_ev


def progress_text(u) -> str:
    """The status line of a running attribution: stage, step, overall share, bar and time left."""
    step = u.info.get("step")
    o = u.overall
    head = f"**{u.stage}**" + (f", step {step}" if step is not None else "")
    if o is None:
        return head
    bar = "█" * int(o.fraction * 20) + "░" * (20 - int(o.fraction * 20))
    # the time left is an estimate (the unlearning stage's length is not known in advance): said so
    return f"{head} · overall {o.fraction:.0%} `{bar}`" + (
        f" · about {secs(o.remaining)} left ({o.note or 'estimate'})" if o.remaining is not None and o.fraction < 1
        else "")


def wire_attribute(ex, page, cancels: list) -> None:
    """/attribute (the page's settings gathered first: /page_settings, private) streaming its stage, the
    live curve and then the results; /cancel stops it, or any of `cancels`."""
    v = page.query

    @user_errors
    def on_attribute(q, label, settings=None, request: Optional[gr.Request] = None, progress=gr.Progress()):
        """Attribute the session's query (made by /generate, /upload or /use_training) as class `label`
        (a text model: with the query's prompt, its own caption or the one set by /query_prompt);
        `settings` is a dict of mucs.Settings overrides by field name (missing: the model's
        recommended value; an unknown or wrong one: an error, nothing run). Streams the stage, then the
        results; the first update carries the job id that /cancel takes."""
        st = ex.user_settings(settings)
        q = ex.with_label(q, label)
        with ex.job(session(request)) as job:
            # the job id first: any client can cancel this attribution with /cancel and this id
            yield {v.status: f"**starting**: job `{job.id}` · {ex.estimate_text(st)}", v.job_box: job.id}
            sent = None
            for u in ex.attribute_stream(q, st, job.event):
                frac = u.overall.fraction if u.overall is not None else u.fraction
                # Gradio's own bar: the stage only; the time left is on the status line alone, which Cancel
                # replaces (two lines with a time left overlapped, and one stayed after Cancel)
                progress(frac, desc=u.stage)
                if u.result is None:
                    out = {v.status: progress_text(u)}
                    if (len(u.curve), u.loss_null) != sent:   # the curve only when it grew: events stay small
                        sent = (len(u.curve), u.loss_null)
                        out[v.live_curve] = plots.unlearning_curve(u.curve, u.loss_null, st.tol)
                    yield out
                else:
                    yield {v.status: f"**done** in {secs(u.overall.elapsed if u.overall else 0)}: run `{u.run_id}` "
                                     "saved",
                           v.live_curve: plots.unlearning_curve(u.curve, u.loss_null, st.tol),
                           **page.result_outputs(u.run_id, u.result), **page.history_outputs(select=u.run_id),
                           page.tabs: gr.Tabs(selected="results"), v.job_box: job.id}

    def on_cancel(request: gr.Request, job_id: str = ""):
        """Cancel the job `job_id` (from any client: the id an attribution shows when it starts) and
        the heavy requests of the caller's own session (the browser's Cancel button)."""
        job_id = str(job_id or "").strip()
        hit = ex.cancel(job_id) if job_id else False
        hit = ex.cancel(session(request)) or hit
        if not hit:
            return f"**nothing to cancel**: no running job `{job_id}`" if job_id else \
                "**nothing to cancel**: nothing of yours is running"
        return "**cancelled**: nothing was saved"

    attr_ev = v.attr_btn.click(on_settings, v.setting_widgets, [v.settings_box], api_name="page_settings",
                               api_visibility="private", queue=False, show_progress="hidden").success(
        on_attribute, [v.query, v.label, v.settings_box],
        [v.status, v.live_curve, page.tabs] + page.result_components + page.history_components + [v.job_box],
        api_name="attribute", concurrency_id=HEAVY, concurrency_limit=1, show_progress="minimal")
    v.cancel_btn.click(on_cancel, [v.job_box], [v.status], api_name="cancel", cancels=cancels + [attr_ev],
                       queue=False)
