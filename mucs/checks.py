"""Input and value checks that turn bad numbers and malformed settings into one clear MucsError:
finite arrays, strict JSON, seeds and user-supplied settings dictionaries."""
import json
import math
import numbers
import os
import stat
from dataclasses import MISSING

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


def json_default(o):
    """json.dumps' `default` for results: numpy scalars and arrays as plain numbers and lists, anything
    else as its text."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


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


def check_int(value, what: str, lo: int, hi: int) -> int:
    """An integer in lo..hi from a request's value (an int, a whole float as a number box sends, or its
    text); None, NaN, 2.5, text or a value out of range is one MucsError."""
    v = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        v = int(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) \
            and float(value).is_integer():
        v = int(float(value))
    elif isinstance(value, str):
        try:
            v = int(value.strip())
        except ValueError:
            v = None
    if v is None or not lo <= v <= hi:
        raise MucsError(f"{what} must be an integer in {lo}..{hi}, got {_shown(value) if value is not None else 'nothing'}")
    return v


def check_device(name) -> None:
    """Only cpu and cuda[:N] (a 'meta' or 'xla' device would fail late with a traceback); None passes."""
    import re
    if name is None:
        return
    if not re.fullmatch(r"cpu|cuda(:\d+)?", str(name)):
        raise MucsError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda:"):
        import torch
        if torch.cuda.is_available() and int(name[5:]) >= torch.cuda.device_count():
            raise MucsError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            tuple: "a list of strings"}.get(t, getattr(t, "__name__", str(t)))


def check_fields_dict(d, known_fields, what: str = "settings", check_value=None) -> dict:
    """Validate a user-supplied {setting: value} dictionary against dataclass fields (the Settings
    fields: mucs.settings.check_settings_dict; this module knows no Settings, so settings may import
    it): every key must be a field, every value of the field's type (int, float, bool, str, list of
    str; null only where the default is null), finite and accepted by `check_value(name, value)` (the
    settings' declared ranges). Returns a normalised copy (ints as float where a float is expected,
    lists as tuples); raises MucsError naming the first bad key."""
    if not isinstance(d, dict):
        raise MucsError(f"{what} must be a JSON object of setting: value, got {type(d).__name__}")
    known = {f.name: f for f in known_fields}
    out: dict = {}
    for key, value in d.items():
        if key not in known:
            import difflib
            close = difflib.get_close_matches(str(key).replace("-", "_").lower(), list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MucsError(f"{what}: unknown setting {key!r}{hint}; known: {', '.join(sorted(known))}")
        f = known[key]
        t = f.type if isinstance(f.type, type) else type(f.default)
        default = f.default if f.default is not MISSING else None
        bad = f"{what}: {key} must be {_type_name(t)}, got {_shown(value)}"
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
        try:
            if check_value is not None:
                check_value(key, value)     # its range, where the setting is declared (mucs.settings.RANGES)
        except MucsError as e:
            raise MucsError(f"{what}: {e}") from None
        out[key] = value
    return out


def _shown(v) -> str:
    """A short text of a JSON value for an error line (a deeply nested one is not recursed into)."""
    try:
        text = json.dumps(v)
    except (TypeError, ValueError, RecursionError):
        text = type(v).__name__
    return text if len(text) <= 80 else text[:77] + "..."


MAX_JSON_BYTES = 16 << 20   # settings and metadata files: far larger is not a settings file


def read_json(path: str, what: str = "JSON", max_bytes: int = MAX_JSON_BYTES):
    """The JSON value in the regular file `path`. Not a regular file (a FIFO would block), larger than
    `max_bytes`, unreadable, bad JSON or nested too deeply: one MucsError, nothing hangs or recurses."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise MucsError(f"cannot read {path}: not a regular file")
            if st.st_size > max_bytes:
                raise MucsError(f"cannot read {path}: {st.st_size} bytes, more than a {what} file holds "
                                f"(at most {max_bytes})")
            f = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise MucsError(f"cannot read {path}: {e.strerror or e}") from None
    return parse_json(data, f"{path}")


def parse_json(text, where: str = "JSON"):
    """json.loads(text); bad JSON, bad UTF-8 or nesting too deep for Python is one MucsError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise MucsError(f"cannot read {where}: its JSON is nested too deeply") from None
    except ValueError as e:   # JSONDecodeError and bad UTF-8
        raise MucsError(f"cannot read {where}: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from None


def read_json_object(path: str, what: str = "a JSON object"):
    """The JSON object in `path`; an unreadable file, bad JSON or a non-object is one MucsError."""
    body = read_json(path)
    if not isinstance(body, dict):
        raise MucsError(f"{path} must be {what}, got {type(body).__name__}")
    return body


def npz_headers(path: str) -> dict:
    """{array name: (shape, dtype)} of an .npz archive, read from each member's .npy header without
    decompressing the data: sizes are checked before anything is loaded. MucsError for a file that
    is not a readable archive of plain (non-object) arrays."""
    import zipfile
    out = {}
    try:
        if not os.path.isfile(path):
            raise OSError("not a regular file")
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
                if dtype.hasobject:
                    raise MucsError(f"{path}: {info.filename[:-4]} holds Python objects (pickled data is never loaded)")
                out[info.filename[:-4]] = (tuple(int(d) for d in shape), dtype)
    except MucsError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, NotImplementedError) as e:
        raise MucsError(f"cannot read {path}: not an .npz archive ({type(e).__name__}: {str(e)[:120]})") from None
    return out


def npz_nbytes(heads: dict) -> int:
    """Bytes the arrays of npz_headers take once loaded."""
    return sum(int(np.prod(shape, dtype=np.float64)) * dtype.itemsize for shape, dtype in heads.values())


# --- memory: estimate what a request needs and refuse what will not fit ----------------------------
GiB = 2**30


# the memory checks, now in mucs/memory.py, importable from here as before
from .memory import (MEMORY_ENV, available_device_memory, available_host_memory, check_request_memory,  # noqa: E402,F401
                     format_bytes, parse_bytes, request_memory)
