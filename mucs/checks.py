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
MEMORY_ENV = "MUCS_AVAILABLE_MEMORY"   # an operator's override of the measured host memory, e.g. "8G"


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def parse_bytes(text: str) -> int:
    """'8G', '512M', '1.5GiB', '1000000' → bytes; MucsError for anything else."""
    t = str(text).strip().upper().replace("IB", "").replace("B", "")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in "KMGT" else t) * mult
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise MucsError(f"{MEMORY_ENV} must be a size such as 8G or 512M, got {text!r}")
    return int(value)


def _meminfo_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available():
    """Room left under a cgroup (container) memory limit, None when there is no limit."""
    for limit_path, used_path in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                   "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_path) as f:
                raw = f.read().strip()
            if raw == "max":
                return None
            limit = int(raw)
            with open(used_path) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit >= 2**60:       # cgroup v1's "no limit"
            return None
        return max(0, limit - used)
    return None


def available_host_memory():
    """Bytes of RAM this process can still allocate: $MUCS_AVAILABLE_MEMORY when set, else psutil's
    figure when psutil is installed, else /proc/meminfo's MemAvailable, else sysconf's free pages;
    bounded by a cgroup limit when there is one. None when nothing can be measured."""
    import os
    if os.environ.get(MEMORY_ENV):
        return parse_bytes(os.environ[MEMORY_ENV])
    avail = None
    try:
        import psutil   # optional; only used when already installed
        avail = int(psutil.virtual_memory().available)
    except Exception:
        avail = _meminfo_available()
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    room = _cgroup_available()
    if room is not None:
        avail = room if avail is None else min(avail, room)
    return avail


def available_device_memory(device):
    """Free bytes on a CUDA device (what torch could still allocate, its own cache included); None
    for other devices, and (with a warning naming the reason) when the CUDA runtime cannot tell."""
    if getattr(device, "type", str(device).split(":")[0]) != "cuda":
        return None
    import torch
    try:
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    except Exception as e:   # a driver or runtime error: skip the device check, but say so
        import logging
        logging.getLogger("mucs").warning("could not read the free memory of %s (%s: %s): the GPU memory check "
                                          "is skipped", device, type(e).__name__, e)
        return None


def _condition_floats(model) -> int:
    """Floats of one item's condition: a caption embedding (L × D) for a text model, else ~0."""
    if getattr(model, "conditioning", "none") != "text":
        return 0
    cfg = model.unet.config
    dim = int(cfg.get("cross_attention_dim") or cfg.get("caption_channels") or 768)
    length = int(getattr(model.tokenizer, "model_max_length", 77) or 77)
    return min(length, 512) * dim


def _transformer_floats(config: dict, size: int, training: bool) -> float:
    """Rough float count of one sample's activations in a DiT/PixArt transformer: per block about 20
    token × hidden tensors for the backward (norms, attention projections, MLP at 4× width), plus the
    attention maps (heads × tokens²) when attention is not memory-efficient."""
    patch = int(config.get("patch_size") or 2)
    tokens = max(1, size // patch) ** 2
    heads = int(config.get("num_attention_heads") or 16)
    hidden = heads * int(config.get("attention_head_dim") or 72)
    layers = int(config.get("num_layers") or 28)
    per_block = tokens * hidden * 20 + heads * tokens * tokens * 2
    return per_block * layers if training else per_block * 2


def _activation_floats(config: dict, size: int, training: bool) -> float:
    if "num_layers" in config and "patch_size" in config:     # a transformer (DiT, PixArt)
        return _transformer_floats(config, size, training)
    return _unet_floats(config, size, training)


def _unet_floats(config: dict, size: int, training: bool) -> float:
    """Rough float count of one sample's activations in a diffusers UNet2DModel: every resnet keeps
    about 15 feature-map-sized tensors for the backward pass (norms, activations, convs, time
    embedding sums; measured on the embedded model), at each level, down
    and up (layers_per_block + 1 resnets on the way up), plus attention maps where there is
    attention. Without gradients only the skip connections and a few maps are alive at once."""
    chans = list(config.get("block_out_channels") or [64])
    layers = int(config.get("layers_per_block") or 1)
    hd = config.get("attention_head_dim") or 8
    head_dim = int(hd[0] if isinstance(hd, (list, tuple)) else hd) or 8
    kinds = list(config.get("down_block_types") or []) + list(config.get("up_block_types") or [])
    attn = any("Attn" in str(k) for k in kinds)
    total, skips = 0.0, 0.0
    down = list(config.get("down_block_types") or [])
    cross = bool(config.get("cross_attention_dim"))   # a text UNet: (cross-)attention at every "Attn" level
    for i, c in enumerate(chans):
        hw = max(1, size // (2 ** i)) ** 2
        total += hw * c * (2 * layers + 1) * 15
        skips += hw * c * (layers + 1)
        level_attn = "Attn" in str(down[i]) if cross and i < len(down) else attn and i == len(chans) - 1
        if level_attn:     # a pixel UNet's attention usually sits at the lowest resolutions
            heads = head_dim if cross else max(1, c // head_dim)   # diffusers' SD configs give heads here
            total += hw * hw * heads * 3 * 2 + hw * c * 8 * 2
    return total if training else skips + total / (2 * layers + 1) / 2


def request_memory(model, num_train: int, s) -> dict:
    """Estimated peak bytes of one attribution with settings `s`, split into host (RAM) and device
    parts and by what needs them: the consistent noise set (K×C×H×W floats; two sets without
    consistent noise), the N×K loss matrices and their scoring temporaries, and the largest of the
    per-batch working sets (a loss-matrix forward of the eval batch — never fewer than K pairs —,
    an unlearning step on B forget + B retain samples with gradients and AdamW state, a null-loss
    batch). A rough figure: good to refuse what cannot fit, not to predict the exact peak."""
    unet = model.unet
    config = dict(getattr(unet, "config", {}) or {})
    C, H, _ = (int(v) for v in getattr(model, "x0_shape", (model.channels, model.size, model.size)))
    sample = C * H * H * 4
    K, N = int(s.noises), int(num_train)
    params = sum(p.numel() for p in unet.parameters()) * 4
    # the frozen parts stay resident beside the denoiser: a VAE and a text encoder
    frozen = sum(p.numel() for part in (getattr(model, "vae", None), getattr(model, "text_encoder", None))
                 if part is not None for p in part.parameters()) * 4
    cond = _condition_floats(model) * 4           # one item's condition (a caption embedding) on the device
    noise = K * sample * (1 if s.consistent_noise else 2) + K * 8 * 4
    matrices = N * K * 4 * 6                      # L_o, L_u, mask/NaN copies, skew temporaries
    per_chunk = max(1, int(s.eval_batch_size) // K)
    fb = per_chunk * K                            # pairs in one loss-matrix forward pass
    act_eval = _activation_floats(config, H, False) * 4
    act_train = _activation_floats(config, H, True) * 4
    batches = {
        "loss-matrix batch": fb * (sample * 6 + cond + act_eval),
        # a micro-batched step (unlearn_chunk) holds one chunk's activations; its inputs stay whole
        "unlearning batch": params * 4 + 2 * int(s.batch_size) * (sample * 6 + cond)
        + _unlearn_items(s) * act_train,
        "null-loss batch": params + int(s.null_batch_size) * (sample * 6 + cond + act_eval),
    }
    work_name = max(batches, key=lambda name: batches[name])
    on_cuda = getattr(model.device, "type", str(model.device)) == "cuda"
    host = {"noise set": noise, "loss matrices": matrices}
    device = {work_name: batches[work_name]}
    if frozen:
        device["VAE and text encoder"] = frozen
    if on_cuda:
        device["noise set on the device"] = K * sample
    else:
        host.update(device)
        device = {}
    return dict(host=host, device=device, host_total=sum(host.values()), device_total=sum(device.values()))


def _unlearn_items(s) -> int:
    """Items whose activations one unlearning forward+backward holds: 2·B, or the micro-batch."""
    chunk = int(s.unlearn_chunk)
    return min(2 * int(s.batch_size), chunk) if chunk > 0 else 2 * int(s.batch_size)


def check_request_memory(model, num_train: int, s, what: str = "this request") -> dict:
    """Refuse (MucsError, one line with the numbers) an attribution whose estimated memory does
    not fit in what this machine (and its CUDA device) has available; returns the estimate."""
    est = request_memory(model, num_train, s)
    for part, total, avail, where in (
            ("host", est["host_total"], available_host_memory(), "this machine has"),
            ("device", est["device_total"], available_device_memory(model.device), f"{model.device} has")):
        if not total or avail is None or total <= avail:
            continue
        biggest = max(est[part], key=est[part].get)
        raise MucsError(f"{what} needs ~{format_bytes(total)} of {'GPU ' if part == 'device' else ''}memory "
                        f"(mostly the {biggest}: {format_bytes(est[part][biggest])}), {where} "
                        f"{format_bytes(avail)} available: lower noises K (now {s.noises}), the batch size "
                        f"(now {s.batch_size}; or micro-batch it with unlearn_chunk, now {s.unlearn_chunk}) "
                        f"or the eval batch size (now {s.eval_batch_size})")
    return est
