"""A diffusion model as MUCS sees it (denoiser, scheduler, and the VAE, text encoder and adapter it
needs), loaded from any common layout; the device; and the per-item diffusion loss with the model's
own training objective. Each in its own module (diffusion_model, loading, objective); this module
offers them all under the names they always had."""
from .diffusion_model import TRAIN_CONFIG, DiffusionModel, class_names_for, pick_device, public_config
from .layouts import LAYOUTS, PIPELINE_INDEX, model_layout, resolve_model_path
from .loading import load_model, load_scheduler
from .objective import alphas_cumprod, per_item_loss, training_noise

__all__ = ["LAYOUTS", "PIPELINE_INDEX", "TRAIN_CONFIG", "DiffusionModel", "alphas_cumprod", "class_names_for",
           "load_model", "load_scheduler", "model_layout", "per_item_loss", "pick_device", "public_config",
           "resolve_model_path", "training_noise"]
