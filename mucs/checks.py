"""Input and value checks that turn bad numbers and malformed settings into one clear MucsError:
finite arrays, strict JSON, seeds and user-supplied settings dictionaries."""
import json
import math
import numbers
from dataclasses import MISSING, fields

import numpy as np

from .errors import MucsError

SEED_MAX = 2**63 - 1   # torch generators take 64-bit seeds; the pipeline adds small offsets to the seed


def require_finite(name: str, value, stage: str):
    """Return `value` (a float, numpy array or torch tensor) unchanged when every entry is finite;
    otherwise raise MucsError("non-finite values in <name> during <stage>: ...")."""
    if hasattr(value, "detach"):                       # a torch tensor, without importing torch here
        arr = value.detach().float().cpu().numpy()
    else:
        arr = np.asarray(value, dtype=np.float64) if not isinstance(value, np.ndarray) else value
    if arr.dtype.kind not in "fc":
        if arr.dtype.kind in "iub":
            return value
        arr = np.asarray(arr, dtype=np.float64)
    ok = np.isfinite(arr)
    if bool(ok.all()):
        return value
    flat = arr.reshape(-1)
    bad = np.flatnonzero(~ok.reshape(-1))
    n_nan = int(np.isnan(flat[bad]).sum())
    n_inf = len(bad) - n_nan
    where = "" if arr.ndim == 0 else f" ({len(bad)} of {flat.size} entries, first at index {int(bad[0])})"
    kinds = ", ".join(k for k, n in (("NaN", n_nan), ("inf", n_inf)) if n)
    raise MucsError(f"non-finite values in {name} during {stage}: {kinds}{where}; "
                    "the settings make the computation diverge (try a smaller λ or learning rate)")


def _first_non_finite(obj, path="$"):
    if isinstance(obj, float) and not math.isfinite(obj):
        return path
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = _first_non_finite(v, f"{path}.{k}")
            if p:
                return p
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            p = _first_non_finite(v, f"{path}[{i}]")
            if p:
                return p
    return None


def dumps_strict(obj, what: str = "JSON", **kw) -> str:
    """json.dumps(obj, allow_nan=False, **kw); a NaN/inf raises MucsError naming where it is."""
    try:
        return json.dumps(obj, allow_nan=False, **kw)
    except ValueError as e:
        if "Out of range float" not in str(e):
            raise
        plain = json.loads(json.dumps(obj, **kw))   # apply `default=` conversions, then locate the value
        raise MucsError(f"refusing to write {what}: non-finite value at {_first_non_finite(plain) or '?'} "
                        "(NaN and inf are not JSON)") from e


def check_seed(seed, what: str = "--seed", limit: int = SEED_MAX) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= limit:
        raise MucsError(f"{what} must be an integer in 0..{limit}, got {seed!r}")
    return int(seed)


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            tuple: "a list of strings"}.get(t, getattr(t, "__name__", str(t)))


def check_settings_dict(d, what: str = "settings") -> dict:
    """Validate a user-supplied {setting: value} dictionary against mucs.settings.Settings: every key
    must be a setting, every value of the setting's type (int, float, bool, str, list of str; null
    only where the default is null) and finite. Returns a normalised copy (ints as float where a
    float is expected, lists as tuples); raises MucsError naming the first bad key."""
    from .settings import Settings
    if not isinstance(d, dict):
        raise MucsError(f"{what} must be a JSON object of setting: value, got {type(d).__name__}")
    known = {f.name: f for f in fields(Settings)}
    out = {}
    for key, value in d.items():
        if key not in known:
            import difflib
            close = difflib.get_close_matches(str(key).replace("-", "_").lower(), list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MucsError(f"{what}: unknown setting {key!r}{hint}; known: {', '.join(sorted(known))}")
        f = known[key]
        t = f.type if isinstance(f.type, type) else type(f.default)
        default = f.default if f.default is not MISSING else None
        bad = f"{what}: {key} must be {_type_name(t)}, got {json.dumps(value) if _jsonable(value) else repr(value)}"
        if value is None:
            if default is None:
                out[key] = None
                continue
            raise MucsError(bad)
        if t is bool:
            if not isinstance(value, bool):
                raise MucsError(bad)
        elif t is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                if isinstance(value, float) and value.is_integer() and math.isfinite(value):
                    value = int(value)
                else:
                    raise MucsError(bad)
            value = int(value)
            if key == "seed":
                check_seed(value, f"{what}: seed")
        elif t is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise MucsError(bad)
            value = float(value)
            if not math.isfinite(value):
                raise MucsError(f"{what}: {key} must be finite, got {value}")
        elif t is str:
            if not isinstance(value, str):
                raise MucsError(bad)
        elif t is tuple:
            if isinstance(value, str):
                value = [p for p in value.split(",") if p]
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise MucsError(bad)
            value = tuple(value)
        out[key] = value
    return out


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def read_json_object(path: str, what: str = "a JSON object"):
    """The JSON object in `path`; an unreadable file, bad JSON or a non-object is one MucsError."""
    try:
        with open(path) as f:
            body = json.load(f)
    except (OSError, ValueError) as e:   # ValueError: JSONDecodeError and bad UTF-8
        raise MucsError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from e
    if not isinstance(body, dict):
        raise MucsError(f"{path} must be {what}, got {type(body).__name__}")
    return body
