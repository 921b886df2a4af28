"""The denoiser families MUCS attributes: how each backbone is called with its conditioning and
what its output means. Every loss, unlearning step and sample goes through `Family.predict`.

A condition is a dict of per-item tensors (or None for an unconditional model): class models get
``{"class_labels": (n,) long}``, text models ``{"encoder_hidden_states": (n, L, D)}`` (plus
``"encoder_attention_mask"`` for T5-conditioned transformers). Batches of conditions are built
with the helpers at the end (`cond_index`, `cond_cat`, `cond_repeat`, `cond_to`).
"""
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..errors import MucsError

SUPPORTED_DENOISERS = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel", "PixArtTransformer2DModel",
                       "Transformer2DModel")
# denoisers and schedulers that are refused with a reason (checked before anything is loaded)
FLOW_MATCHING = "flow-matching models (Stable Diffusion 3, Flux, ...) are not supported: MUCS Explorer needs a " \
                "noise-prediction model with a DDPM-style (alphas_cumprod) noise schedule"
REFUSED_DENOISERS = {
    "SD3Transformer2DModel": FLOW_MATCHING, "FluxTransformer2DModel": FLOW_MATCHING,
    "SanaTransformer2DModel": FLOW_MATCHING, "HunyuanDiT2DModel": "HunyuanDiT (two text encoders, image-meta "
                                                                   "conditioning) is not supported",
    "UNet2DConditionModel/text_time": "SDXL-style UNets (two text encoders, pooled and size conditioning: "
                                      "addition_embed_type 'text_time') are not supported",
}
REFUSED_SCHEDULERS = {
    "FlowMatchEulerDiscreteScheduler": FLOW_MATCHING, "FlowMatchHeunDiscreteScheduler": FLOW_MATCHING,
    "EDMEulerScheduler": "sigma-based (EDM-parameterised) schedulers such as EDMEulerScheduler are not supported: "
                         "MUCS Explorer needs a DDPM-style noise schedule with alphas_cumprod (DDPM, DDIM, PNDM, "
                         "Euler, DPM-Solver, ...)",
    "EDMDPMSolverMultistepScheduler": "sigma-based (EDM-parameterised) schedulers are not supported: MUCS Explorer "
                                      "needs a DDPM-style noise schedule with alphas_cumprod",
}


@dataclass(frozen=True)
class Family:
    """One backbone family: its name, what conditions it (none | class | text), and how to call it."""
    name: str            # unet2d | unet2d_condition | dit | pixart
    conditioning: str    # none | class | text
    learned_sigma: bool = False   # output holds [prediction, variance]: keep the first in_channels channels

    def predict(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Optional[dict]) -> torch.Tensor:
        """The network's prediction (ε, v or x0 per the scheduler) for x_t at timesteps t."""
        args, kwargs = self.inputs(net, x, t, cond)
        return self.output(net(*args, **kwargs), x.shape[1])

    def inputs(self, net, x, t, cond) -> tuple:
        """(args, kwargs) of the network's forward: the one place that knows each family's signature."""
        cond = cond or {}
        if self.name == "unet2d":
            return (x, t), dict(class_labels=cond.get("class_labels"))
        if self.name == "unet2d_condition":
            return (x, t), dict(encoder_hidden_states=cond["encoder_hidden_states"])
        if self.name == "dit":
            return (x,), dict(timestep=t, class_labels=cond["class_labels"])
        # pixart: T5 caption embeddings with their attention mask; resolution/aspect-ratio conditions only
        # where the model was built with them (PixArt-α 1024px)
        extra: dict = {"resolution": None, "aspect_ratio": None}
        if getattr(net, "use_additional_conditions", False):
            n, size = len(x), float(x.shape[-1] * 8)
            extra = {"resolution": torch.tensor([[size, size]], device=x.device).expand(n, 2),
                     "aspect_ratio": torch.ones((n, 1), device=x.device)}
        return (x,), dict(encoder_hidden_states=cond["encoder_hidden_states"], timestep=t, added_cond_kwargs=extra,
                          encoder_attention_mask=cond.get("encoder_attention_mask"))

    def output(self, out, channels: int) -> torch.Tensor:
        pred = out.sample if hasattr(out, "sample") else out[0]
        return pred[:, :channels] if self.learned_sigma else pred


def family_of(net: Any) -> Family:
    """The Family of a loaded denoiser (refusing one MUCS cannot attribute, with the reason)."""
    name = type(net).__name__
    cfg = net.config
    if name == "UNet2DModel":
        return Family("unet2d", "class" if cfg.get("num_class_embeds") else "none")
    if name == "UNet2DConditionModel":
        if cfg.get("addition_embed_type") or cfg.get("class_embed_type") or cfg.get("num_class_embeds"):
            raise MucsError(REFUSED_DENOISERS["UNet2DConditionModel/text_time"] if cfg.get("addition_embed_type") ==
                            "text_time" else "UNet2DConditionModels with extra class or added embeddings "
                            f"(addition_embed_type={cfg.get('addition_embed_type')!r}, class_embed_type="
                            f"{cfg.get('class_embed_type')!r}) are not supported: only text conditioning is")
        return Family("unet2d_condition", "text")
    learned = int(cfg.get("out_channels") or cfg.get("in_channels")) == 2 * int(cfg.get("in_channels"))
    if name == "DiTTransformer2DModel":
        return Family("dit", "class", learned)
    if name == "PixArtTransformer2DModel":
        return Family("pixart", "text", learned)
    if name == "Transformer2DModel":   # the older, general class: DiT (ada_norm_zero) or PixArt (ada_norm_single)
        if cfg.get("in_channels") is None or cfg.get("sample_size") is None:
            raise MucsError("Transformer2DModel without in_channels/sample_size is not an image denoiser")
        if cfg.get("norm_type") == "ada_norm_zero" and cfg.get("num_embeds_ada_norm"):
            return Family("dit", "class", learned)
        if cfg.get("norm_type") == "ada_norm_single" and cfg.get("cross_attention_dim"):
            return Family("pixart", "text", learned)
        raise MucsError(f"Transformer2DModel with norm_type {cfg.get('norm_type')!r} is not supported (DiT's "
                        "ada_norm_zero with class labels and PixArt's ada_norm_single with captions are)")
    raise MucsError(refusal(name))


def refusal(class_name: str) -> str:
    """The one-line reason a denoiser class is not attributed."""
    if class_name in REFUSED_DENOISERS:
        return f"{class_name}: {REFUSED_DENOISERS[class_name]}"
    return (f"unsupported denoiser class {class_name!r}: MUCS Explorer attributes {', '.join(SUPPORTED_DENOISERS)} "
            "(see docs/models.md)")


# --- batches of conditions -----------------------------------------------------------------------
def cond_index(cond: Optional[dict], idx) -> Optional[dict]:
    return None if cond is None else {k: v[idx] for k, v in cond.items()}


def cond_cat(a: Optional[dict], b: Optional[dict]) -> Optional[dict]:
    if a is None or b is None:
        if (a is None) != (b is None):
            raise ValueError("cannot join a conditioned and an unconditioned batch")
        return None
    return {k: torch.cat([a[k], b[k]]) for k in a}


def cond_repeat(cond: Optional[dict], k: int) -> Optional[dict]:
    """Each item `k` times in a row (repeat_interleave), as the loss loop repeats each image K times."""
    return None if cond is None else {n: v.repeat_interleave(k, 0) for n, v in cond.items()}


def cond_expand(cond: Optional[dict], n: int) -> Optional[dict]:
    """A one-item condition replicated `n` times (the forget batch: the query B times)."""
    return None if cond is None else {k: v[:1].expand(n, *v.shape[1:]) for k, v in cond.items()}


def cond_to(cond: Optional[dict], device, non_blocking: bool = False) -> Optional[dict]:
    return None if cond is None else {k: v.to(device, non_blocking=non_blocking) for k, v in cond.items()}
