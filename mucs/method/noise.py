"""Noise levels. Step 0: the consistent noise set — K (t_k, ε_k) pairs drawn once from a seed and
reused for every training item, for both models, for every query. Also the training-time noise
that unlearning and L_null draw fresh for every batch.

Both live in the *sampler's* σ range (EDM's 0.002–80 for data in [-1, 1]), not the scheduler's:
a `squaredcos_cap_v2` DDPM schedule reaches σ ≈ 20,000 at its last step, where the image is gone
and a class-conditional model sees only the label.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..settings import TRAIN_NOISE_KINDS

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0     # EDM's sampler range (Karras et al., 2022), data in [-1, 1]


@dataclass
class NoiseSet:
    """K discrete timesteps (highest noise first), their sigmas, and one image-shaped ε per level."""
    timesteps: torch.Tensor   # (K,) long
    sigmas: torch.Tensor      # (K,) float, the Karras sigma each timestep was mapped from
    eps: torch.Tensor         # (K, C, H, W) float
    params: dict              # what it was made from: part of every cache key
    timestep_sigmas: Optional[torch.Tensor] = None   # (K,) the scheduler's σ at each chosen timestep

    def __len__(self):
        return len(self.timesteps)

    def subset(self, cols) -> "NoiseSet":
        """The levels `cols` of this set (same ε and timesteps), e.g. the few a screening pass uses."""
        cols = torch.as_tensor(np.asarray(cols, np.int64))
        ts = None if self.timestep_sigmas is None else self.timestep_sigmas[cols]
        return NoiseSet(self.timesteps[cols], self.sigmas[cols], self.eps[cols], dict(self.params, subset=cols.tolist()), ts)

    def levels(self) -> list:
        """One dict per level (grid σ, timestep, the timestep's own σ): what result.json records."""
        ts = self.timestep_sigmas if self.timestep_sigmas is not None else self.sigmas
        return [dict(sigma=float(s), timestep=int(t), sigma_t=float(st))
                for s, t, st in zip(self.sigmas, self.timesteps, ts)]


def scheduler_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ_t = sqrt((1 − ᾱ_t) / ᾱ_t) for every discrete timestep."""
    ac = alphas_cumprod.double()
    return ((1 - ac) / ac).sqrt()


def clipped_range(sig_t: torch.Tensor, sigma_min: float, sigma_max: float) -> tuple:
    """[σ_min, σ_max] intersected with the range the scheduler has (its first and last step)."""
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max (got {sigma_min}, {sigma_max})")
    lo, hi = float(sig_t.min()), float(sig_t.max())
    a, b = max(sigma_min, lo), min(sigma_max, hi)
    if a >= b:
        raise ValueError(f"the σ range {sigma_min}–{sigma_max} does not overlap the scheduler's {lo:.4g}–{hi:.4g}")
    return a, b


def nearest_timesteps(sigmas, sig_t: torch.Tensor) -> np.ndarray:
    """The discrete timestep whose σ_t is nearest to each σ, in log σ."""
    log_t = sig_t.log().numpy()
    log_s = np.log(np.asarray(sigmas, np.float64))
    rows = max(1, (1 << 22) // max(1, len(log_t)))     # ~32 MiB of distances at a time, whatever K is
    return np.concatenate([np.abs(log_s[i:i + rows, None] - log_t[None, :]).argmin(1)
                           for i in range(0, len(log_s), rows)] or [np.zeros(0, np.int64)])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, first: Optional[int] = None) -> np.ndarray:
    """The Karras et al. (2022) grid from σ_max down to σ_min, n points (only the `first` ones when
    given: the same values, without allocating the rest of a fine grid)."""
    m = n if first is None else min(int(first), n)
    if m == n:
        s = np.linspace(0, 1, n)
    else:     # np.linspace(0, 1, n)[:m], computed the way numpy does (i · (1/(n−1))), so bit for bit equal
        s = np.arange(m, dtype=np.float64) * (1.0 / (n - 1))
    return (sigma_max ** (1 / rho) + s * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def make_noise_set(alphas_cumprod: torch.Tensor, shape, K: int = 100, fraction: float = 0.7,
                   rho: float = 7.0, seed: int = 0, sigma_min: float = SIGMA_MIN,
                   sigma_max: float = SIGMA_MAX) -> NoiseSet:
    """Karras grid of round(K/f) levels over [σ_min, σ_max] (clipped to the scheduler's range), keep
    the first (highest-noise) K, map each σ to the nearest discrete timestep (in log σ), and draw one
    ε_k ~ N(0, I) per level from `seed`."""
    if K < 1:
        raise ValueError("K must be at least 1")
    if not 0 < fraction <= 1:
        raise ValueError("the noise fraction f must be in (0, 1]")
    sig_t = scheduler_sigmas(alphas_cumprod)
    lo, hi = clipped_range(sig_t, sigma_min, sigma_max)
    grid = karras_sigmas(max(int(round(K / fraction)), K), lo, hi, rho, first=K)
    timesteps = nearest_timesteps(grid, sig_t)
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randn((K, *shape), generator=g)
    params = dict(K=K, fraction=fraction, rho=rho, seed=int(seed), shape=list(shape),
                  num_timesteps=len(alphas_cumprod), sigma_min=float(sigma_min), sigma_max=float(sigma_max))
    return NoiseSet(timesteps=torch.as_tensor(timesteps, dtype=torch.long),
                    sigmas=torch.as_tensor(grid, dtype=torch.float32), eps=eps, params=params,
                    timestep_sigmas=sig_t[torch.as_tensor(timesteps)].float())


class TrainingNoise:
    """Fresh training-time noise (t, ε) for unlearning and L_null, drawn on the CPU from a generator
    (so results do not depend on the device):

    - ``uniform``: t uniform over every discrete step — the DDPM recipe the model was trained with;
    - ``uniform_range``: t uniform over the steps whose σ lies in [σ_min, σ_max];
    - ``lognormal``: ln σ ~ N(p_mean, p_std²), the EDM training distribution the reference unlearns
      with, mapped to the nearest step in log σ.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, kind: str = "uniform", sigma_min: float = SIGMA_MIN,
                 sigma_max: float = SIGMA_MAX, p_mean: float = -1.2, p_std: float = 1.2):
        if kind not in TRAIN_NOISE_KINDS:
            raise ValueError(f"unknown training noise {kind!r}; known: {', '.join(TRAIN_NOISE_KINDS)}")
        self.kind, self.p_mean, self.p_std = kind, float(p_mean), float(p_std)
        self.sig_t = scheduler_sigmas(alphas_cumprod)
        self.T = len(alphas_cumprod)
        if kind == "uniform_range":
            lo, hi = clipped_range(self.sig_t, sigma_min, sigma_max)
            self.allowed = torch.nonzero((self.sig_t >= lo) & (self.sig_t <= hi)).flatten()
            if len(self.allowed) == 0:
                self.allowed = torch.as_tensor(nearest_timesteps([lo, hi], self.sig_t)).unique()

    def sample(self, n: int, shape, generator: torch.Generator, device):
        if self.kind == "uniform":
            t = torch.randint(0, self.T, (n,), generator=generator)
        elif self.kind == "uniform_range":
            t = self.allowed[torch.randint(0, len(self.allowed), (n,), generator=generator)]
        else:
            sigma = (torch.randn((n,), generator=generator, dtype=torch.float64) * self.p_std + self.p_mean).exp()
            t = torch.as_tensor(nearest_timesteps(sigma.numpy(), self.sig_t), dtype=torch.long)
        eps = torch.randn((n, *shape), generator=generator)
        return t.to(device), eps.to(device)

    def sigma_span(self) -> tuple:
        """(lowest, highest) σ this noise can reach, for the record."""
        if self.kind == "uniform":
            return float(self.sig_t.min()), float(self.sig_t.max())
        if self.kind == "uniform_range":
            return float(self.sig_t[self.allowed].min()), float(self.sig_t[self.allowed].max())
        return float(np.exp(self.p_mean - 3 * self.p_std)), float(np.exp(self.p_mean + 3 * self.p_std))
