"""The embedded default (a Fashion-MNIST model and its training set in assets/) and the
per-model recommended settings file."""
import json
import os

from .settings import Settings

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEFAULT_MODEL = os.path.join(ASSETS, "fashion16")
DEFAULT_DATA = os.path.join(ASSETS, "fashion_mnist_16px_1k.npz")
RECOMMENDED = "mucs_settings.json"   # optional, in a model folder: overrides of the paper's defaults


def settings_for(model_path: str, **overrides) -> Settings:
    """The paper's defaults, updated by the model folder's recommended settings (if any), then by
    explicit overrides (None means 'not given')."""
    from .checks import check_settings_dict
    from .errors import MucsError
    s = Settings()
    path = os.path.join(model_path, RECOMMENDED)
    if os.path.exists(path):
        try:
            with open(path) as f:
                body = json.load(f)
        except (OSError, ValueError) as e:   # ValueError: JSONDecodeError and bad UTF-8
            raise MucsError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from e
        if not isinstance(body, dict):
            raise MucsError(f"{path} must be a JSON object with a \"settings\" object")
        s = s.replace(**check_settings_dict(body.get("settings", {}), what=path))
    return s.replace(**overrides)


def cache_dir_for(model_path: str) -> str:
    """Where new cache files are written ($MUCS_CACHE_DIR or ~/.cache/mucs). Caches shipped in a
    model folder's cache/ (as the embedded model does) are read from there, never written."""
    from .cache import default_cache_dir
    return default_cache_dir()
