"""Step 0: the consistent noise set — K (t_k, ε_k) pairs drawn once from a seed and reused for
every training item, for both models, for every query."""
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class NoiseSet:
    """K discrete timesteps (highest noise first), their sigmas, and one image-shaped ε per level."""
    timesteps: torch.Tensor   # (K,) long
    sigmas: torch.Tensor      # (K,) float, the Karras sigma each timestep was mapped from
    eps: torch.Tensor         # (K, C, H, W) float
    params: dict              # what it was made from: part of every cache key

    def __len__(self):
        return len(self.timesteps)


def scheduler_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ_t = sqrt((1 − ᾱ_t) / ᾱ_t) for every discrete timestep."""
    ac = alphas_cumprod.double()
    return ((1 - ac) / ac).sqrt()


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """The Karras et al. (2022) grid from σ_max down to σ_min, n points."""
    s = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + s * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def make_noise_set(alphas_cumprod: torch.Tensor, shape, K: int = 100, fraction: float = 0.7,
                   rho: float = 7.0, seed: int = 0) -> NoiseSet:
    """Karras grid of round(K/f) levels, keep the first (highest-noise) K, map each σ to the
    nearest discrete timestep (in log σ), and draw one ε_k ~ N(0, I) per level from `seed`."""
    if K < 1:
        raise ValueError("K must be at least 1")
    if not 0 < fraction <= 1:
        raise ValueError("the noise fraction f must be in (0, 1]")
    sig_t = scheduler_sigmas(alphas_cumprod)
    grid = karras_sigmas(max(int(round(K / fraction)), K), float(sig_t.min()), float(sig_t.max()), rho)[:K]
    log_t = sig_t.log().numpy()
    timesteps = np.abs(np.log(grid)[:, None] - log_t[None, :]).argmin(1)
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randn((K, *shape), generator=g)
    params = dict(K=K, fraction=fraction, rho=rho, seed=int(seed), shape=list(shape),
                  num_timesteps=len(alphas_cumprod))
    return NoiseSet(timesteps=torch.as_tensor(timesteps, dtype=torch.long),
                    sigmas=torch.as_tensor(grid, dtype=torch.float32), eps=eps, params=params)
