"""Load and describe a diffusers model (any common layout, or a Hub id in the local cache), pick the device, and
compute the per-item diffusion loss with the model's own training objective."""
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..checks import read_json_object
from ..errors import MucsError

log = logging.getLogger("mucs")
TRAIN_CONFIG = "mucs_train.json"   # training options written by `mucs train` (the lr among them)


def public_config(config) -> dict:
    """A diffusers config without its private keys (`_name_or_path`, `_diffusers_version`, ...),
    which change with where and by what the model was saved, not with what it computes."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def pick_device(name: Optional[str] = None) -> torch.device:
    """CUDA when present, else CPU; an explicit name ('cpu', 'cuda', 'cuda:1') overrides."""
    if name:
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise MucsError(f"unknown device {name!r}") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise MucsError(f"device {name!r} requested but CUDA is not available")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MucsError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA device(s)")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class DiffusionModel:
    """A noise-prediction UNet, its noise scheduler, and what training recorded about it."""
    unet: Any                  # a diffusers UNet2DModel (Any: its config attributes are dynamic)
    scheduler: Any             # a diffusers scheduler with alphas_cumprod
    path: str = ""
    train_config: dict = field(default_factory=dict)
    _fingerprint: Optional[str] = None
    _warned_lr: bool = field(default=False, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def size(self) -> int:
        s = self.unet.config.sample_size
        return int(s[0] if isinstance(s, (list, tuple)) else s)

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes of a class-conditional UNet, None when unconditional."""
        n = self.unet.config.num_class_embeds
        return int(n) if n else None

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def learning_rate(self) -> Optional[float]:
        """The training learning rate (mucs_train.json or load_model's train_lr); None, with a
        warning the first time, when the model records none."""
        lr = self.train_config.get("lr")
        if lr is None and not self._warned_lr:
            self._warned_lr = True
            log.warning("the model in %s records no training learning rate (no mucs_train.json): unlearning "
                        "assumes the default (Settings.default_lr); pass --train-lr to set it", self.path or "memory")
        return float(lr) if lr is not None else None

    @property
    def class_names(self) -> Optional[list]:
        return self.train_config.get("class_names")

    def fingerprint(self) -> str:
        """sha256 of the weights (names, shapes, values) and the scheduler config: a cache key."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for name, t in sorted(self.unet.state_dict().items()):
                h.update(name.encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            h.update(json.dumps(public_config(self.scheduler.config), sort_keys=True, default=str).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def check_label(self, label: Optional[int]) -> Optional[int]:
        """Validate a class label against the model: required iff conditional, in range."""
        if self.num_classes is None:
            if label is not None:
                raise MucsError("this model is unconditional: do not pass a label")
            return None
        if label is None:
            raise MucsError(f"this model is class-conditional: a label in 0..{self.num_classes - 1} is required")
        if not 0 <= int(label) < self.num_classes:
            raise MucsError(f"label {label} out of range: this model has classes 0..{self.num_classes - 1}")
        return int(label)

    def fresh_copy(self, seed: int = 0) -> torch.nn.Module:
        """A freshly initialised (untrained) UNet of the same config: the 'knows nothing' model."""
        from diffusers import UNet2DModel
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DModel.from_config(self.unet.config)
        return unet.to(self.device).eval()


PIPELINE_INDEX = "model_index.json"   # a diffusers pipeline folder (DDPMPipeline, DDIMPipeline, ...)
LAYOUTS = ("a diffusers model folder: config.json + scheduler_config.json at the top (as google/ddpm-cifar10-32), "
           "unet/ + scheduler/, or a pipeline folder with model_index.json; or a Hub id in the local Hugging Face cache")


def resolve_model_path(path: str) -> str:
    """A local folder as given, or the snapshot folder of a Hub id ("org/name") in the local Hugging
    Face cache. Never downloads: fetch a model first (`hf download org/name`); HF_HUB_OFFLINE is the
    user's choice and is left alone."""
    from ..defaults import check_default_present
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    check_default_present(path)
    if os.path.exists(path) or not _looks_like_repo_id(path):
        raise MucsError(f"model folder not found: {path}")
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(repo_id=path, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError, ...
        log.debug("Hub id %s not in the local cache: %s", path, e)
        raise MucsError(f"model not found: {path} is neither a folder nor a Hub id in the local Hugging Face cache "
                        f"(download it first, e.g. `hf download {path}`)") from e


def _looks_like_repo_id(path: str) -> bool:
    """"org/name" as the Hub spells ids (letters, digits, '-', '_', '.'), not a relative path."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", path) is not None and ".." not in path


def model_layout(path: str) -> tuple:
    """(unet subfolder, scheduler subfolder) of a model folder; None means "at the top". Reads
    model_index.json when there is one (its unet and scheduler entries name the subfolders)."""
    unet_sub, sched_sub = "unet", "scheduler"
    index = os.path.join(path, PIPELINE_INDEX)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                entries = json.load(f)
        except (OSError, ValueError) as e:
            raise MucsError(f"cannot read {index}: {e}") from e
        comps = {k: v for k, v in entries.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2}
        unets = [k for k, v in comps.items() if str(v[1]).endswith("UNet2DModel")] or [k for k in comps if k == "unet"]
        scheds = [k for k, v in comps.items() if str(v[1]).endswith("Scheduler")] or [k for k in comps if k == "scheduler"]
        if not unets or not scheds:
            raise MucsError(f"{index} names no UNet2DModel and scheduler (components: {sorted(comps) or 'none'})")
        unet_sub, sched_sub = unets[0], scheds[0]

    def where(sub, config_name):
        if os.path.isfile(os.path.join(path, sub, config_name)):
            return sub
        if os.path.isfile(os.path.join(path, config_name)):
            return None   # root level (pipelines saved with their components at the top, too)
        raise MucsError(f"{path} is not {LAYOUTS}: no {sub}/{config_name} nor {config_name}")
    return where(unet_sub, "config.json"), where(sched_sub, "scheduler_config.json")


def load_scheduler(path: str, subfolder: Optional[str]):
    """The scheduler class named in scheduler_config.json (`_class_name`), DDPMScheduler when that
    class is unknown; refused unless it defines ᾱ (`alphas_cumprod`), which MUCS needs."""
    import diffusers
    cfg_path = os.path.join(path, subfolder or "", "scheduler_config.json")
    try:
        with open(cfg_path) as f:
            name = json.load(f).get("_class_name") or "DDPMScheduler"
    except (OSError, ValueError) as e:
        raise MucsError(f"cannot read {cfg_path}: {e}") from e
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        log.warning("unknown scheduler class %r in %s: loading it as a DDPMScheduler", name, cfg_path)
        cls = diffusers.DDPMScheduler
    scheduler = cls.from_pretrained(path, subfolder=subfolder)
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise MucsError(f"the scheduler {type(scheduler).__name__} has no alphas_cumprod (ᾱ): MUCS needs a "
                        "DDPM-style (variance-preserving) noise schedule")
    return scheduler


def load_model(path: str, device: Optional[str] = None, train_lr: Optional[float] = None) -> DiffusionModel:
    """Load a diffusers UNet2DModel and its noise scheduler, in eval mode, from any common layout:
    config.json + scheduler_config.json at the top, unet/ + scheduler/, a pipeline folder with
    model_index.json, or a Hub id already in the local Hugging Face cache (nothing is downloaded).
    `train_lr` sets the training learning rate when the folder records none (or overrides it)."""
    from diffusers import UNet2DModel
    root = resolve_model_path(path)
    unet_sub, sched_sub = model_layout(root)
    weights = os.listdir(os.path.join(root, unet_sub or ""))
    if not any(f.endswith(".safetensors") for f in weights):
        pickled = [f for f in weights if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        raise MucsError(f"no safetensors UNet weights in {os.path.join(root, unet_sub or '')}"
                        + (f" (only {pickled[0]}: pickled weights can run code and are not loaded; convert them "
                           "with diffusers' save_pretrained(..., safe_serialization=True))" if pickled else ""))
    try:
        unet = UNet2DModel.from_pretrained(root, subfolder=unet_sub, low_cpu_mem_usage=False, use_safetensors=True)
        scheduler = load_scheduler(root, sched_sub)
    except MucsError:
        raise
    except Exception as e:  # diffusers raises many kinds for broken folders
        raise MucsError(f"cannot load the model in {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise MucsError(f"unsupported prediction_type {prediction_type!r}")
    train_config = {}
    cfg_path = os.path.join(root, TRAIN_CONFIG)
    if os.path.exists(cfg_path):
        train_config = read_json_object(cfg_path)
        lr = train_config.get("lr")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf")):
            raise MucsError(f"{cfg_path}: lr must be a positive number, got {json.dumps(lr)}")
        names = train_config.get("class_names")
        if names is not None and not (isinstance(names, list) and all(isinstance(n, (str, int)) for n in names)):
            raise MucsError(f"{cfg_path}: class_names must be a list of names")
    if train_lr is not None:
        if not train_lr > 0:
            raise MucsError(f"--train-lr must be positive, got {train_lr}")
        train_config["lr"] = float(train_lr)
    unet = unet.to(pick_device(device)).eval()
    log.info("loaded %s (%s, unet=%s, scheduler=%s/%s)", path, type(scheduler).__name__,
             unet_sub or ".", sched_sub or ".", "mucs_train.json" if train_config else "no mucs_train.json")
    return DiffusionModel(unet=unet, scheduler=scheduler, path=os.path.abspath(root), train_config=train_config)


def alphas_cumprod(model: DiffusionModel) -> torch.Tensor:
    return model.scheduler.alphas_cumprod.to(torch.float32)


def per_item_loss(unet: torch.nn.Module, ac: torch.Tensor, prediction_type: str, x0: torch.Tensor,
                  y: Optional[torch.Tensor], t: torch.Tensor, eps: torch.Tensor, weighting: str = "none",
                  sigma_data: float = 0.5) -> torch.Tensor:
    """ℓ(x0, y; t, ε): mean over pixels of (target − f(x_t, t, y))², one value per batch item.

    `ac` holds ᾱ on the model's device; target is ε, v or x0 per the model's prediction type.
    weighting="edm" gives EDM's weighted x0 error instead, (σ² + σ_d²)/(σ·σ_d)² · ‖x̂0 − x0‖², written
    through the model's own error: for ε it is (1 + σ²/σ_d²)·‖ε̂ − ε‖² (docs/method.md, "Reference details").
    """
    a = ac[t].view(-1, 1, 1, 1)
    # Not scheduler.add_noise/get_velocity: an Euler scheduler gives x0 + σε; add_noise moves the scheduler's ᾱ to x0's device
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    pred = unet(x_t, t, class_labels=y).sample
    if prediction_type == "epsilon":
        target = eps
    elif prediction_type == "v_prediction":
        target = a.sqrt() * eps - (1 - a).sqrt() * x0
    else:
        target = x0
    err = ((target - pred) ** 2).flatten(1).mean(1)
    if weighting == "none":
        return err
    a = a.flatten()
    sigma2 = (1 - a) / a
    # ‖x̂0 − x0‖² from the model's own error: x̂0 = (x_t − √(1−ᾱ)·ε̂)/√ᾱ gives σ²·err for ε-models
    if prediction_type == "epsilon":
        x0_err = sigma2 * err
    elif prediction_type == "v_prediction":
        x0_err = (1 - a) * err          # x̂0 = √ᾱ·x_t − √(1−ᾱ)·v̂, so x̂0 − x0 = −√(1−ᾱ)(v̂ − v)
    else:
        x0_err = err
    return (sigma2 + sigma_data ** 2) / (sigma2 * sigma_data ** 2) * x0_err


def training_noise(n: int, shape, num_train_timesteps: int, generator: torch.Generator, device):
    """Training-time noise: t uniform over the discrete steps, ε ~ N(0, I), drawn on the CPU
    from `generator` (so results do not depend on the device) and moved to `device`."""
    t = torch.randint(0, num_train_timesteps, (n,), generator=generator)
    eps = torch.randn((n, *shape), generator=generator)
    return t.to(device), eps.to(device)


def class_names_for(model, data=None) -> Optional[list]:
    """The names of `model`'s classes, index by index: the training set's names when it has them,
    else those in the model folder, else the index itself; None for an unconditional model."""
    if model.num_classes is None:
        return None
    names = (data.class_names if data is not None else None) or model.class_names
    return [str(names[i]) if names and i < len(names) else str(i) for i in range(model.num_classes)]
