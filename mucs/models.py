"""Load and describe a diffusers model folder (unet/ + scheduler/), pick the device, and
compute the per-item diffusion loss with the model's own training objective."""
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from .errors import MucsError

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
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class DiffusionModel:
    """A noise-prediction UNet, its noise scheduler, and what training recorded about it."""
    unet: torch.nn.Module
    scheduler: object
    path: str = ""
    train_config: dict = field(default_factory=dict)
    _fingerprint: Optional[str] = None

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
        lr = self.train_config.get("lr")
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


def load_model(path: str, device: Optional[str] = None) -> DiffusionModel:
    """Load `path/unet` and `path/scheduler` (diffusers layout) offline, in eval mode."""
    from diffusers import DDPMScheduler, UNet2DModel
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not os.path.isdir(path):
        raise MucsError(f"model folder not found: {path}")
    for sub in ("unet", "scheduler"):
        if not os.path.isdir(os.path.join(path, sub)):
            raise MucsError(f"{path} is not a diffusers model folder: missing {sub}/ (expected unet/ and scheduler/)")
    try:
        unet = UNet2DModel.from_pretrained(path, subfolder="unet", low_cpu_mem_usage=False)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    except Exception as e:  # diffusers raises many kinds for broken folders
        raise MucsError(f"cannot load the model in {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    if scheduler.config.prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise MucsError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")
    train_config = {}
    cfg_path = os.path.join(path, TRAIN_CONFIG)
    if os.path.exists(cfg_path):
        try:
            with open(cfg_path) as f:
                train_config = json.load(f)
        except (OSError, ValueError) as e:   # ValueError: JSONDecodeError and bad UTF-8
            raise MucsError(f"cannot read {cfg_path}: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from e
        if not isinstance(train_config, dict):
            raise MucsError(f"{cfg_path} must be a JSON object, got {type(train_config).__name__}")
        lr = train_config.get("lr")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf")):
            raise MucsError(f"{cfg_path}: lr must be a positive number, got {json.dumps(lr)}")
        names = train_config.get("class_names")
        if names is not None and not (isinstance(names, list) and all(isinstance(n, (str, int)) for n in names)):
            raise MucsError(f"{cfg_path}: class_names must be a list of names")
    unet = unet.to(pick_device(device)).eval()
    return DiffusionModel(unet=unet, scheduler=scheduler, path=os.path.abspath(path), train_config=train_config)


def alphas_cumprod(model: DiffusionModel) -> torch.Tensor:
    return model.scheduler.alphas_cumprod.to(torch.float32)


def per_item_loss(unet: torch.nn.Module, ac: torch.Tensor, prediction_type: str, x0: torch.Tensor,
                  y: Optional[torch.Tensor], t: torch.Tensor, eps: torch.Tensor, weighting: str = "none",
                  sigma_data: float = 0.5) -> torch.Tensor:
    """ℓ(x0, y; t, ε): mean over pixels of (target − f(x_t, t, y))², one value per batch item.

    `ac` holds ᾱ on the model's device; target is ε, v or x0 per the model's prediction type.
    weighting="edm" gives EDM's weighted x0 error instead, (σ² + σ_d²)/(σ·σ_d)² · ‖x̂0 − x0‖², written
    through the model's own error: for ε it is (1 + σ²/σ_d²)·‖ε̂ − ε‖² (MUCS.md, "Reference details").
    """
    a = ac[t].view(-1, 1, 1, 1)
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
