"""The per-item diffusion loss with the model's own training objective (ε, v or x0 prediction; EDM's
weighting as an option) and the training-time noise it is evaluated at."""
from typing import Optional

import torch

from .diffusion_model import DiffusionModel


def alphas_cumprod(model: DiffusionModel) -> torch.Tensor:
    return model.scheduler.alphas_cumprod.to(torch.float32)


def per_item_loss(predict, ac: torch.Tensor, prediction_type: str, x0: torch.Tensor, cond: Optional[dict],
                  t: torch.Tensor, eps: torch.Tensor, weighting: str = "none", sigma_data: float = 0.5) -> torch.Tensor:
    """ℓ(x0, c; t, ε): mean over pixels (or latent entries) of (target − f(x_t, t, c))², one value per item.

    `predict(x_t, t, cond)` is the denoiser's prediction (DiffusionModel.predictor); `cond` the
    batch's condition dict (or None); `ac` holds ᾱ on the model's device; target is ε, v or x0 per
    the model's prediction type. weighting="edm" gives EDM's weighted x0 error instead,
    (σ² + σ_d²)/(σ·σ_d)² · ‖x̂0 − x0‖², written through the model's own error: for ε it is
    (1 + σ²/σ_d²)·‖ε̂ − ε‖² (docs/method.md, "Reference details").
    """
    a = ac[t].view(-1, 1, 1, 1)
    # Not scheduler.add_noise/get_velocity: an Euler scheduler gives x0 + σε; add_noise moves the scheduler's ᾱ to x0's device
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    pred = predict(x_t, t, cond)
    if prediction_type == "epsilon":
        target = eps
    elif prediction_type == "v_prediction":
        target = a.sqrt() * eps - (1 - a).sqrt() * x0
    else:
        target = x0
    err = ((target - pred.float()) ** 2).flatten(1).mean(1)
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
