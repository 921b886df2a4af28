"""The "Batch & collections" view: many queries attributed as one collection (class × seeds, prompts ×
seeds, or several uploads), with overall progress, per-item status, and the collection's overlap
analyses and downloads. Endpoints: /attribute_batch, /cancel_batch."""
from types import SimpleNamespace
from typing import Optional

import gradio as gr

from mucs.errors import MucsError
from mucs.explorer import texts
from mucs.sources.data import MAX_IMAGE_BYTES
from mucs.ui import collections_view
from mucs.ui.common import HEAVY, IMAGE_TYPES, secs, session, user_errors
from mucs.ui.settings_panel import on_settings

BATCH_HEADERS = ["#", "item", "source", "class", "status", "seconds", "steps", "run"]
# the map's points and the heatmap's row names carry data-run: a click opens that run
MAP_JS = ("element.addEventListener('click', function(e) { const t = e.target.closest('[data-run]'); "
          "if (t) { trigger('click', {run: t.getAttribute('data-run')}); } });")


def layout(ex) -> SimpleNamespace:
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




def wire(ex, b: SimpleNamespace, page: SimpleNamespace) -> None:
    """The batch tab's run events: /attribute_batch (one queue job: overall progress, per-item status, time
    left; /cancel_batch keeps the finished items) and the kind switch. `page`: the components and
    callbacks of the page they share; the collections' events: `collections_view.wire`."""
    kind, classes, seeds, steps, uploads = b.kind, b.classes, b.seeds, b.steps, b.uploads
    status, items, job_box = b.status, b.items, b.job_box
    lists = [page.collections.table, page.collections.select]

    def rows(u):
        return [[n + 1, r["name"], r["source"], r["class_name"], r["status"] + (f": {r['error']}" if r["error"] else ""),
                 "" if r["seconds"] is None else f"{r['seconds']:.0f}", "" if r["steps"] is None else r["steps"],
                 r["run"] or ""] for n, r in enumerate(u.items)]

    @user_errors
    def on_batch(kind_, labels, seeds_, steps_, files, settings=None, prompts_="", request: Optional[gr.Request] = None):
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
        with ex.job(session(request), limit=limit) as job:
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
                               f"({secs(u.record.get('seconds'))})", items: rows(u), job_box: job.id,
                       **collections_view.listing(ex, page, u.collection_id), **page.history_outputs()}
                if done:
                    out.update(collections_view.view(ex, b, u.collection_id))
                yield out

    def on_cancel_batch(job_id: str = "", request: Optional[gr.Request] = None):
        """Cancel the batch `job_id` (and the caller's own): the item being attributed is dropped, the
        finished ones stay saved, the rest are not started."""
        hit = ex.cancel(str(job_id or "").strip()) if job_id else False
        hit = ex.cancel(session(request)) or hit
        return ("**cancelling**: the finished items stay saved, the rest will not start" if hit
                else "**nothing to cancel**")

    def on_kind(k):
        up = k == "upload"
        return {seeds: gr.update(visible=not up), steps: gr.update(visible=not up), uploads: gr.update(visible=up),
                b.run_btn: gr.update(value="Attribute the uploaded images" if up else "Generate and attribute the batch")}

    kind.change(on_kind, [kind], [seeds, steps, uploads, b.run_btn], queue=False, api_visibility="private",
                show_progress="hidden")
    b.run_btn.click(on_settings, page.setting_widgets, [page.settings_box], queue=False,
                    api_visibility="private", show_progress="hidden").success(
        on_batch, [kind, classes, seeds, steps, uploads, page.settings_box, b.prompts],
        [status, items, job_box, b.coll_box, b.summary, b.figures] + lists + page.history_components,
        api_name="attribute_batch", concurrency_id=HEAVY, concurrency_limit=1, show_progress="hidden")
    b.cancel_btn.click(on_cancel_batch, [job_box], [status], api_name="cancel_batch", queue=False)


