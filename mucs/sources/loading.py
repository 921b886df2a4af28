"""Loading a diffusion model from any common layout (mucs.sources.layouts): each part with the class
its config names, the scheduler, an optional LoRA adapter, the training record (mucs_train.json)."""
import json
import logging
import os
from typing import Optional

import torch

from ..checks import read_json_object
from ..errors import MucsError
from .diffusion_model import TRAIN_CONFIG, DiffusionModel, pick_device
from .families import REFUSED_SCHEDULERS, family_of
from .layouts import model_layout, resolve_model_path

log = logging.getLogger("mucs")


def load_scheduler(path: str, subfolder: Optional[str], class_name: Optional[str] = None):
    """The scheduler class named in scheduler_config.json (`_class_name`), DDPMScheduler when that
    class is unknown (a scheduler holds no weights: only its ᾱ and prediction type are used); refused
    unless it defines ᾱ (`alphas_cumprod`), which MUCS needs."""
    import diffusers
    name = class_name or "DDPMScheduler"
    if name in REFUSED_SCHEDULERS:
        raise MucsError(f"{name}: {REFUSED_SCHEDULERS[name]}")
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        log.warning("unknown scheduler class %r in %s: loading it as a DDPMScheduler", name,
                    os.path.join(path, subfolder or "", "scheduler_config.json"))
        cls = diffusers.DDPMScheduler
    config = os.path.join(path, subfolder or "", "scheduler_config.json")
    steps = read_json_object(config).get("num_train_timesteps", 1000) if os.path.isfile(config) else 1000
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 100_000:
        raise MucsError(f"{config}: num_train_timesteps must be an integer in 1..100000, got {json.dumps(steps)}")
    scheduler = cls.from_pretrained(path, subfolder=subfolder)
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise MucsError(f"the scheduler {type(scheduler).__name__} has no alphas_cumprod (ᾱ): MUCS needs a "
                        "DDPM-style (variance-preserving) noise schedule")
    return scheduler


def load_model(path: str, device: Optional[str] = None, train_lr: Optional[float] = None,
               lora: Optional[str] = None) -> DiffusionModel:
    """Load a diffusers denoiser (UNet2DModel, UNet2DConditionModel, DiT, PixArt) with its noise
    scheduler and the pipeline parts it needs (VAE, text encoder, tokenizer), in eval mode, from any
    common layout: config.json + scheduler_config.json at the top, unet/ (or transformer/) +
    scheduler/, a pipeline folder with model_index.json, or a Hub id already in the local Hugging
    Face cache (nothing is downloaded). Each network is loaded with the class its config names and
    refused when any weight is missing. `lora` adds a LoRA adapter (a folder or .safetensors file);
    `train_lr` sets the training learning rate when the folder records none (or overrides it)."""
    from ..cache import recover_for_reading
    from .layouts import library_of, load_component, load_tokenizer
    recover_for_reading(os.fspath(path))   # a kill between a save's two renames: the kept old copy comes back
    root = resolve_model_path(path)
    layout = model_layout(root)
    (den_sub, den_cls), (sched_sub, sched_cls) = layout["denoiser"], layout["scheduler"]
    try:
        unet = load_component(root, den_sub, den_cls)
        family_of(unet)             # refuse an unsupported denoiser before reading the other parts
        scheduler = load_scheduler(root, sched_sub, sched_cls)
        parts = {}
        for role in ("vae", "text_encoder"):
            if role in layout and (role == "vae" or den_cls in ("UNet2DConditionModel", "PixArtTransformer2DModel")):
                sub, cls = layout[role]
                parts[role] = load_component(root, sub, cls, library_of(root, role, cls))
        if "text_encoder" in parts:
            parts["tokenizer"] = load_tokenizer(root, *layout["tokenizer"])
    except MucsError:
        raise
    except Exception as e:  # diffusers and transformers raise many kinds for broken folders
        raise MucsError(f"cannot load the model in {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise MucsError(f"unsupported prediction_type {prediction_type!r}")
    train_config = _train_config(root)
    dev = pick_device(device)
    model = DiffusionModel(unet=unet.to(dev).eval(), scheduler=scheduler, path=os.path.abspath(root),
                           train_config=train_config, **{k: v.to(dev).eval() if hasattr(v, "eval") else v
                                                         for k, v in parts.items()})
    for part in (model.vae, model.text_encoder):   # frozen: only the denoiser (or its adapter) is unlearned
        if part is not None:
            part.requires_grad_(False)
    if lora:
        from .lora import load_lora
        model.lora = load_lora(model, lora)
        train_config.update({k: v for k, v in model.lora.get("train_config", {}).items() if k == "lr"})
    if train_lr is not None:
        from ..settings import LR_RANGE
        if not LR_RANGE[0] <= train_lr <= LR_RANGE[1]:
            raise MucsError(f"--train-lr must be in [{LR_RANGE[0]:g}, {LR_RANGE[1]:g}], got {train_lr}")
        train_config["lr"] = float(train_lr)
    _check_finite_weights(model, path)
    log.info("loaded %s: %s, %s (%s)", path, model.describe(), type(scheduler).__name__,
             "mucs_train.json" if train_config else "no mucs_train.json")
    return model


def _check_finite_weights(model, path: str) -> None:
    """Refuse weights holding NaN or inf (a diverged training, a damaged file): they would sample
    black images and attribute NaN."""
    for what, part in (("denoiser", model.unet), ("VAE", model.vae), ("text encoder", model.text_encoder)):
        for name, p in part.named_parameters() if part is not None else ():
            if not bool(torch.isfinite(p).all()):
                raise MucsError(f"the model in {path}: its {what} weight {name} holds NaN or inf (a diverged or "
                                "damaged training); nothing can be generated or attributed with it")


def _train_config(root: str) -> dict:
    cfg_path = os.path.join(root, TRAIN_CONFIG)
    if not os.path.exists(cfg_path):
        return {}
    train_config = read_json_object(cfg_path)
    lr = train_config.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < float("inf")):
        raise MucsError(f"{cfg_path}: lr must be a positive number, got {json.dumps(lr)}")
    names = train_config.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, (str, int)) for n in names)):
        raise MucsError(f"{cfg_path}: class_names must be a list of names")
    return train_config
