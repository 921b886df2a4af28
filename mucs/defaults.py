"""The embedded default (a Fashion-MNIST model and its training set in assets/) and the
per-model recommended settings file."""
import os
import sys

from .settings import Settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the checkout (or site-packages)
DEFAULT_MODEL_NAME = "fashion16"
DEFAULT_DATA_NAME = "fashion_mnist_16px_1k.npz"


def is_checkout() -> bool:
    """True when the package runs from a repository checkout (plain or `pip install -e .`), False
    when it was installed into site-packages."""
    return os.path.isfile(os.path.join(REPO, "pyproject.toml")) or os.path.isdir(os.path.join(REPO, ".git"))


def assets_dir() -> str:
    """Where the embedded default lives: $MUCS_ASSETS, else assets/ in the checkout. The assets ship
    with the repository, not with the installed package: after a regular `pip install .`, set
    $MUCS_ASSETS to a checkout's assets/ folder (or pass --model/--data)."""
    env = os.environ.get("MUCS_ASSETS")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(REPO, "assets")


ASSETS = assets_dir()
DEFAULT_MODEL = os.path.join(ASSETS, DEFAULT_MODEL_NAME)
DEFAULT_DATA = os.path.join(ASSETS, DEFAULT_DATA_NAME)
DATA_REQUIRED = "--data is required with a model other than the embedded default"   # the CLI's and the app's
MISSING_DEFAULT = ("the embedded default model is not at {path}: the embedded default ships with the repository; "
                   "pass --model/--data or set MUCS_ASSETS to the repository's assets/ folder")


def is_default_path(path) -> bool:
    """True when `path` names the embedded default model or its training set."""
    if not path:
        return False
    p = os.path.abspath(os.fspath(path))
    return p in (DEFAULT_MODEL, DEFAULT_DATA)


def check_default_present(path) -> None:
    """Raise a clear MucsError when `path` is the embedded default and it is not there (a regular
    install without $MUCS_ASSETS); do nothing otherwise."""
    if is_default_path(path) and not os.path.exists(os.path.abspath(os.fspath(path))):
        from .errors import MucsError
        raise MucsError(MISSING_DEFAULT.format(path=os.path.abspath(os.fspath(path))))


def user_data_dir() -> str:
    """The per-user data folder of mucs: $XDG_DATA_HOME/mucs (default ~/.local/share/mucs) on
    Linux, ~/Library/Application Support/mucs on macOS, %LOCALAPPDATA%\\mucs on Windows."""
    if sys.platform.startswith("win"):
        base = os.environ.get("LOCALAPPDATA") or os.path.join(os.path.expanduser("~"), "AppData", "Local")
    elif sys.platform == "darwin":
        base = os.path.join(os.path.expanduser("~"), "Library", "Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "mucs")


def shown_path(path: str) -> str:
    """How a path is recorded in results and runs: relative to the repository root when it lies in
    this checkout (committed results must not carry one machine's absolute paths), else absolute.
    A relative record is read back relative to the repository (see mucs/explorer/report.py)."""
    if not path or not isinstance(path, str):
        return path
    full = os.path.abspath(os.path.expanduser(path))
    if is_checkout() and full.startswith(REPO + os.sep):
        return os.path.relpath(full, REPO)
    return full


def default_runs_dir() -> str:
    """Where runs are saved when no folder is given: $MUCS_RUNS_DIR, else runs/ in the repository
    for a checkout (ignored by git), else the per-user folder (~/.local/share/mucs/runs on Linux).
    Never inside an installed package."""
    env = os.environ.get("MUCS_RUNS_DIR")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    if is_checkout():
        return os.path.join(REPO, "runs")
    return os.path.join(user_data_dir(), "runs")
RECOMMENDED = "mucs_settings.json"   # optional, in a model folder: overrides of the paper's defaults

# The settings profiles a user picks from: "recommended" (the paper's defaults with the model folder's
# "settings"), "fast" (those, then the folder's "fast" overrides or FAST below) and "paper" (the paper's
# defaults alone). FAST trades a little agreement for speed: half the unlearning batch at twice the lr
# (about 3x less unlearning work) and screened scoring (about 6x fewer L_u forwards). Measured on the
# embedded default against the full way, side by side: docs/benchmarks.md (benchmarks/attribution_speed.py
# --compare-fast); on another model, check it the same way before trusting it.
PROFILES = ("recommended", "fast", "paper")
FAST = dict(batch_size=50, lr_factor=2.5, screen_noises=2, screen_keep=50)


def settings_for(model_path: str, profile: str = "recommended", **overrides) -> Settings:
    """The settings of a profile (see PROFILES) for a model folder, then explicit overrides."""
    from .checks import read_json_object
    from .settings import check_settings_dict
    from .errors import MucsError
    if profile not in PROFILES:
        raise MucsError(f"unknown settings profile {profile!r}: choose one of {', '.join(PROFILES)}")
    s = Settings()
    path = os.path.join(model_path, RECOMMENDED) if model_path else ""
    body = read_json_object(path, 'a JSON object with a "settings" object') if path and os.path.exists(path) else {}
    if profile != "paper":
        s = s.replace(**check_settings_dict(body.get("settings", {}), what=path))
    if profile == "fast":
        s = s.replace(**check_settings_dict(body.get("fast", FAST), what=f"{path} (fast)"))
    return s.replace(**overrides)


def has_recommended(model_path: str) -> bool:
    """Whether a model folder recommends settings of its own (mucs_settings.json with a "settings"
    object): without them the recommended profile is the paper's settings."""
    from .checks import read_json_object
    path = os.path.join(model_path, RECOMMENDED) if model_path else ""
    if not path or not os.path.exists(path):
        return False
    return bool(read_json_object(path, 'a JSON object with a "settings" object').get("settings"))


def cache_dir_for(model_path: str) -> str:
    """Where new cache files are written ($MUCS_CACHE_DIR or ~/.cache/mucs). Caches shipped in a
    model folder's cache/ (as the embedded model does) are read from there, never written."""
    from .cache import default_cache_dir
    return default_cache_dir()
