"""Every MUCS setting in one place, with the defaults of the authors' reference code."""
from dataclasses import asdict, dataclass, field, fields


@dataclass
class Settings:
    # Step 0 — consistent noise set
    noises: int = 100            # K
    noise_fraction: float = 0.7  # f: the high-noise fraction of the Karras grid that is used
    rho: float = 7.0
    sigma_min: float = 0.002     # the grid spans the sampler's σ range (EDM's, data in [-1, 1]),
    sigma_max: float = 80.0      #   clipped to the scheduler's; not the scheduler's extremes
    seed: int = 0                # noise set, null-loss init, unlearning batches
    # Training-time noise of unlearning and L_null, and the loss (MUCS.md, "Reference details")
    train_noise: str = "lognormal" # the reference's (EDM) ln σ ~ N(p_mean, p_std²) | uniform (DDPM recipe) | uniform_range
    p_mean: float = -1.2           # lognormal: ln σ ~ N(p_mean, p_std²)
    p_std: float = 1.2
    loss_weighting: str = "none"   # none: the model's own objective | edm: (σ² + σ_d²)/(σσ_d)²·‖x̂0 − x0‖²
    sigma_data: float = 0.5
    # Step 2 — null loss
    null_batches: int = 200
    null_batch_size: int = 100
    # Step 3 — mirrored, bounded unlearning
    batch_size: int = 100        # B: retain and forget batch size
    lr: float = None             # None: the model's training lr ÷ lr_factor
    lr_factor: float = 10.0
    weight_decay: float = 0.01
    lam: float = 0.2             # λ, weight of the forget term
    tol: float = 0.05            # τ: stop once L_f ≥ (1 − τ)·L_null
    max_steps: int = 200         # step cap (the reference has none; `converged` says which stopped)
    frozen: tuple = ("bias",)    # parameter-name substrings that are not updated
    # Step 5 — scoring
    top_k: int = 10
    # Screened scoring (beyond the paper): score every item on `screen_noises` of the K levels, keep the
    # `screen_keep` best, score only those on all K. 0 = off: every item on every level, as specified
    screen_noises: int = 0
    screen_keep: int = 100
    # Fragile-item correction (beyond the paper): subtract each item's mean skew over reference queries
    # of *other* classes (generated from fixed seeds, unlearned once per model and cached), so items
    # whose loss rises whatever is unlearned stop ranking high. 0 = off; else references per class
    # (class-conditional models) or in total (unconditional ones)
    fragile_refs: int = 0
    fragile_seed: int = 5000
    # Ablations studied in the paper
    bounded: bool = True         # False: plain (unbounded) gradient ascent on L_f
    retain: bool = True          # False: no retain term L_r
    consistent_noise: bool = True  # False: fresh noise for the unlearned losses
    normalised: bool = True      # False: score = mean_k (L_u − L_o)
    # Engineering
    eval_batch_size: int = 512   # (item, noise) pairs per forward pass when computing losses
    default_lr: float = 1e-4     # training lr assumed when the model folder does not record one

    def to_dict(self) -> dict:
        d = asdict(self)
        d["frozen"] = list(self.frozen)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        if "frozen" in kw:
            kw["frozen"] = tuple(kw["frozen"])
        return cls(**kw)

    def replace(self, **changes) -> "Settings":
        d = self.to_dict()
        d.update({k: v for k, v in changes.items() if v is not None})
        return Settings.from_dict(d)

    def validate(self) -> "Settings":
        from .errors import MucsError
        from .noise import TRAIN_NOISE_KINDS
        checks = [(self.noises >= 1, "noises must be ≥ 1"), (0 < self.noise_fraction <= 1, "noise fraction f must be in (0, 1]"),
                  (self.batch_size >= 1, "batch size must be ≥ 1"), (self.lam >= 0, "λ must be ≥ 0"),
                  (0 <= self.tol < 1, "tolerance τ must be in [0, 1)"), (self.max_steps >= 0, "step cap must be ≥ 0"),
                  (self.top_k >= 1, "top-k must be ≥ 1"), (self.null_batches >= 1, "null batches must be ≥ 1"),
                  (self.lr_factor > 0, "lr factor must be > 0"),
                  (0 < self.sigma_min < self.sigma_max, "need 0 < sigma_min < sigma_max"),
                  (self.train_noise in TRAIN_NOISE_KINDS, f"train_noise must be one of {', '.join(TRAIN_NOISE_KINDS)}"),
                  (self.p_std > 0, "p_std must be > 0"), (self.sigma_data > 0, "sigma_data must be > 0"),
                  (self.loss_weighting in ("none", "edm"), "loss_weighting must be 'none' or 'edm'"),
                  (self.screen_noises >= 0, "screen_noises must be ≥ 0 (0 = off)"),
                  (self.screen_keep >= 1, "screen_keep must be ≥ 1"),
                  (self.fragile_refs >= 0, "fragile_refs must be ≥ 0 (0 = off)")]
        import math
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise MucsError(f"setting {f.name} must be a finite number, got {v}")
        for ok, msg in checks:
            if not ok:
                raise MucsError(msg)
        return self
