"""The diffusion model as MUCS sees it (`DiffusionModel`: denoiser, scheduler, and the VAE, text
encoder and adapter it needs, with its conditions, encodings and fingerprint) and the device."""
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from ..errors import MucsError
from .families import family_of

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
    """A denoiser (a UNet or a transformer: `unet` keeps its first family's name), its noise
    scheduler, the pipeline parts it needs (a VAE for latent diffusion, a text encoder and tokenizer
    for captions, a LoRA adapter), and what training recorded about it."""
    unet: Any                  # a diffusers denoiser (Any: its config attributes are dynamic)
    scheduler: Any             # a diffusers scheduler with alphas_cumprod
    path: str = ""
    train_config: dict = field(default_factory=dict)
    vae: Any = None                      # diffusers AutoencoderKL (Any: dynamic configs), or None
    text_encoder: Any = None             # transformers CLIPTextModel / T5EncoderModel, or None
    tokenizer: Any = None
    lora: Optional[dict] = None          # {"path", "parameters", "keys"} of a loaded LoRA adapter
    _fingerprint: Optional[str] = None
    _warned_lr: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self):
        self.family = family_of(self.unet)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # --- shapes: `channels`/`size` are the images' (what data and queries must be), x0_shape the denoiser's
    @property
    def latent(self) -> bool:
        return self.vae is not None

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    @property
    def x0_shape(self) -> tuple:
        s = self.unet.config.sample_size
        s = int(s[0] if isinstance(s, (list, tuple)) else s)
        return int(self.unet.config.in_channels), s, s

    @property
    def channels(self) -> int:
        return int(self.vae.config.in_channels) if self.vae is not None else self.x0_shape[0]

    @property
    def size(self) -> int:
        return self.x0_shape[1] * self.vae_scale

    # --- conditioning
    @property
    def conditioning(self) -> str:
        """none | class | text: what the denoiser is conditioned on."""
        return self.family.conditioning

    @property
    def num_classes(self) -> Optional[int]:
        """Number of classes of a class-conditional model, None otherwise."""
        if self.conditioning != "class":
            return None
        n = self.unet.config.get("num_class_embeds") or self.unet.config.get("num_embeds_ada_norm")
        return int(n) if n else None

    @property
    def null_class(self) -> Optional[int]:
        """The label of the unconditional branch of a class model trained with label dropout (DiT's
        extra embedding row), for classifier-free guidance; None when it has none."""
        return self.num_classes if self.family.name == "dit" else None

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

    def describe(self) -> str:
        """One line: family, conditioning, latent or pixel, adapter (for logs, the app and result.json)."""
        parts = [type(self.unet).__name__, f"{self.conditioning}-conditioned" if self.conditioning != "none"
                 else "unconditional", f"latent {'x'.join(map(str, self.x0_shape))} (VAE ×{self.vae_scale})"
                 if self.latent else f"pixel {self.size}x{self.size}x{self.channels}"]
        if self.lora:
            parts.append(f"LoRA adapter ({self.lora['parameters']:,} parameters)")
        return ", ".join(parts)

    def predict(self, net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Optional[dict]) -> torch.Tensor:
        """`net` (this model's denoiser or a copy of it) applied to x_t: its ε, v or x0 prediction."""
        return self.family.predict(net, x, t, cond)

    def predictor(self, net: Optional[torch.nn.Module] = None):
        """(x_t, t, cond) -> prediction, for per_item_loss."""
        net = self.unet if net is None else net
        return lambda x, t, cond: self.family.predict(net, x, t, cond)

    def fingerprint(self) -> str:
        """sha256 of the weights (names, shapes, values) and the scheduler config, and of the VAE, text
        encoder and adapter where there are some (the x0 and conditions depend on them): a cache key.
        A pixel UNet2DModel's fingerprint is what it always was."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            _hash_weights(h, self.unet)
            h.update(json.dumps(public_config(self.scheduler.config), sort_keys=True, default=str).encode())
            for name, part in (("vae", self.vae), ("text_encoder", self.text_encoder)):
                if part is not None:
                    h.update(name.encode())
                    _hash_weights(h, part)
            if self.tokenizer is not None:
                h.update(json.dumps(sorted(self.tokenizer.get_vocab().items()), default=str).encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def check_label(self, label: Optional[int]) -> Optional[int]:
        """Validate a class label against the model: required iff class-conditional, in range."""
        if self.num_classes is None:
            if label is not None:
                raise MucsError("this model is unconditional: do not pass a label" if self.conditioning == "none" else
                                "this model is text-conditional: give a prompt, not a class label")
            return None
        if label is None:
            raise MucsError(f"this model is class-conditional: a label in 0..{self.num_classes - 1} is required")
        if isinstance(label, bool) or not isinstance(label, (int, np.integer)) and not (
                isinstance(label, float) and float(label).is_integer()):
            raise MucsError(f"label must be an integer class index, got {label!r}")
        if not 0 <= int(label) < self.num_classes:
            raise MucsError(f"label {label} out of range: this model has classes 0..{self.num_classes - 1}")
        return int(label)

    def check_prompt(self, prompt: Optional[str]) -> Optional[str]:
        """A text model's prompt (required, a non-empty string); None for the others (refused if given)."""
        if self.conditioning != "text":
            if prompt not in (None, ""):
                raise MucsError("this model is not text-conditional: do not pass a prompt")
            return None
        if not isinstance(prompt, str) or not prompt.strip():
            raise MucsError("this model is text-conditional: a prompt is required")
        return prompt

    def condition(self, label: Optional[int] = None, prompt: Optional[str] = None) -> Optional[dict]:
        """The one-item condition of a query: its class label, its prompt's embedding, or None."""
        if self.conditioning == "class":
            return self.label_cond([self.check_label(label)])
        if self.conditioning == "text":
            return self.encode_prompts([self.check_prompt(prompt)])
        self.check_label(label)
        return None

    def label_cond(self, labels) -> Optional[dict]:
        if self.conditioning != "class" or labels is None:
            return None
        if torch.is_tensor(labels):
            return {"class_labels": labels.long()}
        return {"class_labels": torch.as_tensor(np.asarray(labels), dtype=torch.long)}

    @torch.inference_mode()
    def encode_prompts(self, prompts, batch_size: int = 64) -> dict:
        """Caption embeddings from the pipeline's text encoder, on the CPU: encoder_hidden_states
        (n, L, D) (and the attention mask a T5-conditioned transformer takes), as its pipeline makes them."""
        if self.text_encoder is None or self.tokenizer is None:
            raise MucsError("this model has no text encoder")
        use_mask = self.family.name == "pixart"
        length = int(self.train_config.get("max_sequence_length") or (120 if use_mask else
                                                                       self.tokenizer.model_max_length))
        dev = next(self.text_encoder.parameters()).device
        embs, masks = [], []
        for i in range(0, len(prompts), batch_size):
            tok = self.tokenizer(list(prompts[i:i + batch_size]), padding="max_length", max_length=length,
                                 truncation=True, return_tensors="pt")
            mask = tok.attention_mask.to(dev)
            out = self.text_encoder(tok.input_ids.to(dev), attention_mask=mask if use_mask else None)[0]
            embs.append(out.float().cpu())
            masks.append(mask.cpu())
        cond = {"encoder_hidden_states": torch.cat(embs)}
        if use_mask:
            cond["encoder_attention_mask"] = torch.cat(masks)
        return cond

    @torch.inference_mode()
    def encode_images(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Pixels (n, C, H, W) in [-1, 1] -> what the denoiser sees: for a latent model the VAE
        posterior's mean × scaling_factor (the diffusers training scripts draw a sample; the mean is
        its deterministic centre), else the pixels themselves. On the CPU."""
        if self.vae is None:
            return x
        dev = next(self.vae.parameters()).device
        sf = float(self.vae.config.get("scaling_factor") or 1.0)
        shift = float(self.vae.config.get("shift_factor") or 0.0)
        out = [(self.vae.encode(x[i:i + batch_size].to(dev)).latent_dist.mean - shift) * sf
               for i in range(0, len(x), batch_size)]
        return torch.cat(out).float().cpu()

    @torch.inference_mode()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """What the denoiser made -> pixels in [-1, 1] (the VAE decoder for a latent model)."""
        if self.vae is None:
            return z
        sf = float(self.vae.config.get("scaling_factor") or 1.0)
        shift = float(self.vae.config.get("shift_factor") or 0.0)
        dev = next(self.vae.parameters()).device
        return self.vae.decode(z.to(dev) / sf + shift).sample.float()

    def trainable_names(self, scope: str = "auto") -> Optional[set]:
        """Parameter names unlearning may update: an adapter's only (scope "adapter", or "auto" with a
        LoRA loaded: as the fine-tuning did), or None for every parameter ("all", or no adapter)."""
        if scope == "all" or (scope == "auto" and not self.lora):
            return None
        if not self.lora:
            raise MucsError("unlearn_params 'adapter' needs a LoRA adapter (--lora)")
        return {n for n, _ in self.unet.named_parameters() if "lora_" in n}

    def fresh_copy(self, seed: int = 0) -> torch.nn.Module:
        """A freshly initialised (untrained) denoiser of the same config: the 'knows nothing' model.
        (For a LoRA fine-tune, too: the bound is a network that knows nothing, not the base model.)"""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = type(self.unet).from_config(self.unet.config)
        return net.to(self.device).eval()


def _hash_weights(h, module: torch.nn.Module) -> None:
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().float().numpy().tobytes() if t.dtype == torch.bfloat16
                 else t.detach().cpu().contiguous().numpy().tobytes())


def class_names_for(model, data=None) -> Optional[list]:
    """The names of `model`'s classes, index by index: the training set's names when it has them,
    else those in the model folder, else the index itself; None for an unconditional model."""
    if model.num_classes is None:
        return None
    names = (data.class_names if data is not None else None) or model.class_names
    return [str(names[i]) if names and i < len(names) else str(i) for i in range(model.num_classes)]
