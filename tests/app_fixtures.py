"""What tests/test_app.py and tests/test_app_client.py share: the settings they attribute with and small
helpers (their fixtures `env` and `two_runs` are in conftest.py)."""
import os

import numpy as np
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported
import gradio as gr  # noqa: E402  (a dependency: a missing gradio must fail, not skip)
from mucs.sources.data import MAX_IMAGE_BYTES  # noqa: E402

FAST = dict(noises=16, batch_size=32, null_batches=10, null_batch_size=32, max_steps=8, top_k=5)
# the settings dict /attribute takes (mucs.Settings field: value), here as the page sends it
ATTR = dict(top_k=5, noises=16, noise_fraction=0.7, lam=0.2, tol=0.05, max_steps=8, seed=0, bounded=True,
            retain=True, consistent_noise=True, normalised=True)
LONG_RUN = dict(ATTR, tol=0.0, max_steps=10_000)    # τ = 0: runs to the step cap, a long run to cancel


def request():
    return gr.Request()


def runs_on_disk(ex):
    return sorted(os.listdir(ex.store.root))


def by_id(out: dict) -> dict:
    return {getattr(k, "elem_id", None): v for k, v in out.items()}


def bad_files(d):
    """Each bad upload the rules name, written into folder `d`."""
    d.mkdir(exist_ok=True)
    corrupt = d / "corrupt.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(corrupt)
    data = corrupt.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2] + b"\x00garbage")        # truncated, broken chunk
    text = d / "notes.png"
    text.write_text("this is not an image\n")
    huge = d / "huge.png"
    with open(huge, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.seek(MAX_IMAGE_BYTES + 1024)
        f.write(b"\0")
    return dict(corrupt=str(corrupt), text=str(text), huge=str(huge)), None
