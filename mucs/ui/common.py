"""What every view of the app shares: the heavy queue slot, error handling, the page's look, small formats."""
import contextlib
import functools
import inspect
import logging

import gradio as gr

from mucs.errors import Cancelled, MucsError
from mucs.explorer import plots
from mucs.explorer.serving import content_file
from mucs.sources.data import IMAGE_EXTS

HEAVY = "heavy"          # the one queue slot shared by sampling, attribution and replays
GALLERY = ["mucs-gallery"]   # compact galleries with full captions (see CSS)
IMAGE_TYPES = list(IMAGE_EXTS)   # what the upload boxes offer: every format the loaders read
log = logging.getLogger("mucs.app")


def user_error(fn, e) -> gr.Error:
    """A user error: one line in the server log (no traceback) and a clear message on the page."""
    if isinstance(e, Cancelled):
        log.warning("%s: cancelled", fn.__name__)
        return gr.Error("cancelled: nothing was saved", title="Cancelled", print_exception=False)
    log.warning("user error in %s: %s", fn.__name__, e)
    return gr.Error(str(e), title="Cannot do that", print_exception=False)


def _unexpected(fn, e) -> gr.Error:
    log.exception("unexpected error in %s", fn.__name__)
    return gr.Error(f"unexpected {type(e).__name__} (a bug; the server log has the details): {str(e)[:200]}",
                    title="Something went wrong", print_exception=False)


@contextlib.contextmanager
def _page_errors(fn):
    """MucsError and Cancelled as a clean gr.Error; a gr.Error as it is; any other exception is a bug."""
    try:
        yield
    except (MucsError, Cancelled) as e:
        raise user_error(fn, e) from None
    except gr.Error:
        raise
    except Exception as e:
        raise _unexpected(fn, e) from None


def user_errors(fn):
    """Turn the library's MucsError (a bad input or setting) and Cancelled into a visible gr.Error,
    logged as one line (for plain and generator callbacks); any other exception is a bug: its traceback
    once in the server log, a clean message on the page."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            with _page_errors(fn):
                yield from fn(*args, **kwargs)
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _page_errors(fn):
            return fn(*args, **kwargs)
    return wrapper


def download(fn, make, *args, **update):
    """A download button's update: the file `make(*args)` writes, or an inactive button without input."""
    if not args or not args[0]:
        return gr.update(value=None, interactive=False)
    try:
        return gr.update(value=make(*args), interactive=True, **update)
    except MucsError as e:
        raise user_error(fn, e) from None


def secs(sec) -> str:
    from mucs.progress import format_seconds
    return format_seconds(sec or 0)


def session(request) -> str:
    """The browser session a request comes from (the unit of "cancel what is mine")."""
    return getattr(request, "session_hash", None) or "default"


def plot_row(hint: str, *plots_spec) -> list:
    """A row of plots, each (title, label, elem_id), empty with `hint` until their callback fills them."""
    with gr.Row():
        return [gr.Plot(plots.empty(title, hint), label=label, elem_id=elem_id) for title, label, elem_id in plots_spec]


def gallery(label: str, elem_id: str, columns: int, **kwargs) -> gr.Gallery:
    """A compact read-only gallery of training images with their full captions."""
    return gr.Gallery(label=label, columns=columns, height="auto", format="png", object_fit="contain",
                      elem_id=elem_id, elem_classes=GALLERY, interactive=False, allow_preview=False, **kwargs)


def atomic_gradio_images() -> None:
    """Gradio writes each image it serves (a gallery item, an image output) to <cache>/<hash>/image.webp
    in place, again for every request showing it, also while another client downloads that very file:
    that client got it truncated or overlong. Its writer is replaced by one that writes a missing file
    beside and renames it into place, and leaves an existing one alone."""
    from gradio import processing_utils as pu
    if getattr(pu.save_pil_to_cache, "atomic", False):
        return

    def save_pil_to_cache(img, cache_dir, name="image", format="webp"):
        return content_file(str(cache_dir), pu.encode_pil_to_bytes(img, format), f"{name}.{format}")
    save_pil_to_cache.atomic = True   # type: ignore[attr-defined]
    pu.save_pil_to_cache = save_pil_to_cache


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
