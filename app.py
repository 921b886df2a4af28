"""MUCS Explorer: a Gradio app to attribute diffusion-model images to their training data.

    python app.py                       # embedded Fashion-MNIST model, http://127.0.0.1:7860
    python app.py --model M --data D    # your own diffusers folder and training set
    python app.py --host 0.0.0.0 --auth user:pass
    python app.py --max-request-seconds 3600 --max-steps-limit 50000   # raise the per-request limits

The page is built in mucs/ui (one module per view), whose callbacks call the library (mucs.explorer); heavy work
(sampling, attribution, replaying an unlearning) shares one queue slot; a heavy request that runs
longer than --max-request-seconds (default 900) is stopped, and an attribution shows a job id that
any client can cancel it by (`/cancel` with that id). Runs are stored in --runs (default runs/ in the
repository, or $MUCS_RUNS_DIR). HTTP API (docs/api.md): /attribute takes (label, settings), settings
being one dict of mucs.Settings fields; the page's settings widgets (SETTING_WIDGETS) fill in that dict.
"""
import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mucs.defaults import DATA_REQUIRED  # noqa: E402
from mucs.errors import MucsError  # noqa: E402
from mucs.explorer.state import HISTORY_COLUMNS, MAX_REQUEST_SECONDS, MAX_STEPS_LIMIT, Explorer  # noqa: E402
# the page and its server live in mucs/ui (one module per view); these names are the app's Python API
from mucs.ui import HEAVY, SETTING_WIDGETS, LoginWall, build, launch, setting_keys  # noqa: E402

__all__ = ["HEAVY", "HISTORY_HEADERS", "SETTING_WIDGETS", "LoginWall", "MucsError", "build", "launch", "load_overrides",
           "main", "parse_args", "setting_keys"]
HISTORY_HEADERS = HISTORY_COLUMNS
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_args(argv=None):
    from mucs.defaults import DEFAULT_DATA, DEFAULT_MODEL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="diffusers model folder (default: the embedded model)")
    p.add_argument("--data", default=None, help="training set .npz or image folder (default: the embedded set "
                                                 "when --model is the default; required otherwise)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; any other "
                                                       "address needs --auth)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--auth", default=None, help="user:password required to open the app")
    p.add_argument("--settings", default=None,
                   help="MUCS setting overrides as a JSON object or a path to a JSON file, e.g. "
                        "'{\"noises\": 16, \"max_steps\": 40}' (default: the model's recommended settings)")
    profile = p.add_mutually_exclusive_group()
    profile.add_argument("--fast", action="store_true",
                         help="serve the fast settings profile (half the unlearning batch at twice the lr, screened "
                              "scoring; docs/benchmarks.md) instead of the recommended one; --settings applies on top")
    profile.add_argument("--paper-settings", action="store_true",
                         help="serve the paper's settings (mucs.Settings()) instead of the model's recommended ones")
    p.add_argument("--train-lr", type=float, default=None,
                   help="the model's training learning rate when its folder records none (unlearning: it ÷ lr_factor)")
    p.add_argument("--cache-dir", default=None, help="where L_o, L_null and other caches are written "
                                                      "(default: $MUCS_CACHE_DIR or ~/.cache/mucs)")
    p.add_argument("--image-column", default=None,
                   help="image column of a Hugging Face dataset (default: the first Image feature)")
    p.add_argument("--label-column", default=None,
                   help="label column of a Hugging Face dataset (default: a ClassLabel feature)")
    p.add_argument("--runs", default=None, help="run history folder (default: $MUCS_RUNS_DIR or runs/ in the repo)")
    p.add_argument("--examples", default="default",
                   help="folder of read-only example runs (default: assets/examples; '' for none)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--max-request-seconds", type=float, default=MAX_REQUEST_SECONDS,
                   help=f"stop a heavy request (attribution, replay, sampling) that runs longer than this "
                        f"(default {MAX_REQUEST_SECONDS:g}); it frees the one heavy slot")
    p.add_argument("--max-steps-limit", type=int, default=MAX_STEPS_LIMIT,
                   help=f"the largest unlearning step cap a user may ask for (default {MAX_STEPS_LIMIT})")
    p.add_argument("--lora", default=None, help="a LoRA adapter on --model (folder or .safetensors)")
    p.add_argument("--caption-column", default=None,
                   help="captions of a Hugging Face dataset or an image folder's metadata file (default: text/caption/prompt)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="serve a model that does not look trained on --data (research on untrained networks only)")
    a = p.parse_args(argv)
    if not 0 < a.max_request_seconds < float("inf"):
        p.error(f"--max-request-seconds must be a positive number, got {a.max_request_seconds}")
    if a.max_steps_limit < 1:
        p.error(f"--max-steps-limit must be at least 1, got {a.max_steps_limit}")
    if not 0 <= a.port <= 65535:
        p.error(f"--port must be in 0..65535, got {a.port}")
    if a.data is None:
        if os.path.abspath(a.model) != DEFAULT_MODEL:
            p.error(DATA_REQUIRED)
        a.data = DEFAULT_DATA
    if a.host not in LOCAL_HOSTS and not a.auth:
        p.error(f"refusing to serve on {a.host} without --auth user:password")
    if a.auth is not None:
        user, sep, password = a.auth.partition(":")
        if not sep or not user.strip() or not password:
            p.error("--auth must be user:password with a non-empty user and password")
    return a


def load_overrides(text):
    """--settings: a JSON object or file, checked as the CLI's (types, ranges, nesting, file kind)."""
    from mucs.settings import load_settings_json
    return load_settings_json(text, "--settings") if text else {}


def main(argv=None):
    a = parse_args(argv)
    try:
        from mucs.cli.common import check_device
        check_device(a.device)
        ex = Explorer(a.model, a.data, load_overrides(a.settings), runs_dir=a.runs,
                      examples_dir=a.examples or None, device=a.device, max_request_seconds=a.max_request_seconds,
                      max_steps_limit=a.max_steps_limit,
                      profile="fast" if a.fast else "paper" if a.paper_settings else "recommended",
                      lora=a.lora, caption_column=a.caption_column, allow_untrained=a.allow_untrained,
                      train_lr=a.train_lr, cache_dir=a.cache_dir, image_column=a.image_column,
                      label_column=a.label_column)
    except MucsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    auth = tuple(a.auth.split(":", 1)) if a.auth else None
    launch(build(ex), ex, a.host, a.port, auth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
