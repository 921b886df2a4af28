"""Memory: what the host (cgroup limits included) and a device have available, and the estimate of
what an attribution's forwards and unlearning need, so a request that cannot fit is refused in one
line before any work."""
import math
import os

from .errors import MucsError

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
