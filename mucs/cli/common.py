"""What the commands share: model and data options, checks made before any work, the settings in force,
the one-line errors and the log's handler."""
import logging
import math
import os
import sys

from mucs.errors import MucsError

FORCE_HELP = ("also write into an existing --out folder that mucs did not make, beside its files: they are all kept "
              "(without --force such a folder is refused). Never needed for a new or empty folder or an earlier "
              "%s folder (only the files mucs wrote there are replaced; files you added are kept); never "
              "allowed for a folder that is, holds or lies inside an input")


def check_device(name):
    from mucs.checks import check_device as check
    check(name)


def check_numbers(a):
    """Every float option finite, every --seed in range: one error line instead of NaN results."""
    from mucs.checks import check_seed
    for dest, v in sorted(vars(a).items()):
        flag = "--" + dest.replace("_", "-")
        if isinstance(v, float) and not math.isfinite(v):
            raise MucsError(f"{flag} must be a finite number, got {v}")
        if dest == "seed" and v is not None:
            check_seed(v, flag)


def add_model_args(p, data=True):
    from mucs.defaults import DEFAULT_MODEL
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="diffusers model: a folder in any common layout (root-level, unet/ + scheduler/, a pipeline with "
                        "model_index.json) or a Hub id in the local Hugging Face cache (default: the embedded model)")
    if data:
        p.add_argument("--data", default=None,
                       help="training set: .npz, image folder, or a Hugging Face dataset saved with save_to_disk "
                            "(default: the embedded set when --model is the default)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present, else CPU)")


def default_model() -> str:
    from mucs.defaults import DEFAULT_MODEL
    return DEFAULT_MODEL


def resolve_data(a):
    """--data, or the embedded set when --model is the embedded model (else an error: data is required)."""
    from mucs.defaults import DATA_REQUIRED, DEFAULT_DATA
    if a.data:
        return a.data
    if os.path.abspath(a.model) == default_model():
        return DEFAULT_DATA
    raise MucsError(DATA_REQUIRED)


def load_data(a, model):
    """The training set of --data (or the embedded one), checked against the model."""
    from mucs.sources.data import load_dataset
    data = load_dataset(resolve_data(a), image_column=a.image_column, label_column=a.label_column,
                        caption_column=a.caption_column)
    data.check_matches(model)
    return data


def profile(a) -> str:
    """The settings' starting point: the paper's, the fast profile or the model's recommended ones."""
    if a.paper_settings and a.fast:
        raise MucsError("--fast and --paper-settings are two different starting points: pass one")
    return "paper" if a.paper_settings else "fast" if a.fast else "recommended"


def settings_in_force(a, model, data, overrides):
    """The one resolution of the settings (as the library's and the app's): the profile's settings for
    the model's folder, then the flags' overrides, validated, with top-k no larger than the data."""
    from mucs.defaults import settings_for
    s = settings_for(model.path if os.path.isdir(model.path or "") else a.model, profile(a)).replace(**overrides)
    s.validate()
    if s.top_k > len(data):
        raise MucsError(f"--top-k {s.top_k} is more than the {len(data)} training images")
    return s


def setup_logging(verbose: int = 0):
    """Send the library's log (logger "mucs") to stderr: warnings only by default, info with
    --verbose, debug with -vv. Returns a function that undoes it (main calls it on the way out, so
    a caller of main() in the same process keeps its own logging setup)."""
    logger = logging.getLogger("mucs")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "warning: %(message)s"))
    handler.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING)
    old_level = logger.level
    logger.addHandler(handler)
    if verbose and (logger.level == logging.NOTSET or logger.level > handler.level):
        logger.setLevel(handler.level)

    def undo():
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return undo


def error(text: str, verbose: int = 0, status: int = 2) -> int:
    """Print one `error:` line on a line of its own (after any progress bar); the traceback with -v."""
    from mucs.progress import close_open_bars
    close_open_bars()
    if verbose:
        import traceback
        traceback.print_exc()
    print(f"error: {text}", file=sys.stderr)
    return status
