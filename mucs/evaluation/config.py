"""What an evaluation is: its configuration (the training recipe, the items, the removal, the MUCS
settings) and the named presets. Changing a field that enters a cache key (the recipe, the items,
the MUCS settings) makes the evaluation compute new artefacts; the work folder keeps the old ones."""
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import numpy as np

from ..errors import MucsError
from ..settings import Settings
from ..sources.train import TrainOptions

GROUPS = ("targets", "controls")
METRICS = ("ssim", "mse", "feature_cosine")
DEFAULT_METHODS = ("mucs", "pixel_nn", "feature_nn", "mucs+pixel_nn", "mucs+feature_nn",
                   "mucs_plain_ga", "mucs_unnormalised", "mucs_fresh_noise")


@dataclass
class EvalConfig:
    # training set: a balanced subset of `data` (n_train=None: all of it)
    data: str = ""
    n_train: Optional[int] = None
    data_seed: int = 0
    # the training recipe, shared by model A and every retrain
    channels: tuple = (16, 32, 32)
    attention: bool = False
    train_steps: int = 800
    train_batch: int = 32
    lr: float = 1e-3
    ema_decay: float = 0.995
    warmup: int = 50
    train_seed: int = 0
    # replicates: more training seeds. Seed s trains its own model A (nothing removed) and retrains every
    # removal with seed s; an item's similarity is its mean over the replicates (train_seed first), so one
    # retrain's noise (its data order changes with the removed set) weighs less. Attributions stay on
    # train_seed's model A, the one that generated the targets. () = one replicate (every earlier table)
    retrain_seeds: tuple = ()
    # generated items: targets (attributed) and controls (never attributed)
    targets: int = 10
    controls: int = 10
    target_seed: int = 1000     # target i: seed target_seed + i
    control_seed: int = 2000    # control i: seed control_seed + i
    # "shared": target i has class i mod C, control i class (i + 1) mod C (every class holds both);
    # "disjoint": targets cycle through the first ceil(C/2) classes, controls through the others, so
    # removing a target's class-mates cannot move a control through its class
    control_design: str = "shared"
    sample_steps: int = 25      # DDIM steps
    # removal blocks: 0 = one removed set per method, the union of every target's top-k; B > 0 = targets
    # in consecutive blocks of B, one retrain per block without that block's union, each block's targets
    # (and every control) measured on its own retrain. More targets for tighter intervals without
    # removing a larger share of the training set (40 targets in blocks of 20: the 20-target protocol
    # replicated; block 0 reuses the 20-target run's retrains)
    target_block: int = 0
    # removal
    k_frac: float = 0.02        # top-k per target = max(1, round(k_frac·N))
    random_repeats: int = 4     # random removal sets (seeds 0 .. R−1)
    # MUCS settings for the evaluation (the paper's defaults are too slow for 2 CPU cores)
    noises: int = 32
    unlearn_batch: int = 32
    max_steps: int = 60
    lr_factor: float = 10.0     # unlearning lr = training lr ÷ this (the paper's 10)
    null_batches: int = 20
    null_batch_size: int = 64
    mucs_seed: int = 0
    # options of the other methods by name (dtrak, trak, abu; mucs.method.dtrak / abu), over the papers' defaults
    method_options: dict = field(default_factory=dict)

    def seeds(self) -> list:
        """The training seed of each replicate: train_seed, then retrain_seeds (without repeats)."""
        out = [int(self.train_seed)]
        for s in self.retrain_seeds:
            if int(s) not in out:
                out.append(int(s))
        return out

    def train_options(self, seed: Optional[int] = None) -> TrainOptions:
        """The training recipe; `seed`: a replicate's seed (default train_seed)."""
        seed = self.train_seed if seed is None else int(seed)
        return TrainOptions(steps=self.train_steps, batch_size=self.train_batch, lr=self.lr, seed=seed,
                            ema_decay=self.ema_decay, channels=tuple(self.channels), attention=self.attention,
                            warmup_steps=self.warmup, log_every=max(1, min(50, self.train_steps)))

    def mucs_settings(self) -> Settings:
        return Settings(noises=self.noises, batch_size=self.unlearn_batch, max_steps=self.max_steps, lr_factor=self.lr_factor,
                        null_batches=self.null_batches, null_batch_size=self.null_batch_size, seed=self.mucs_seed,
                        eval_batch_size=512).validate()

    def blocks(self) -> list:
        """Target indices per removal block (see `target_block`)."""
        b = self.target_block if 0 < self.target_block < self.targets else self.targets
        return [list(range(i, min(i + b, self.targets))) for i in range(0, self.targets, b)]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        d["retrain_seeds"] = list(self.retrain_seeds)
        d["method_options"] = {k: dict(v) for k, v in (self.method_options or {}).items()}
        return d

    def replace(self, **changes) -> "EvalConfig":
        d = self.to_dict()
        d.update({k: v for k, v in changes.items() if v is not None})
        d["channels"] = tuple(d["channels"])
        d["retrain_seeds"] = tuple(d["retrain_seeds"])
        return EvalConfig(**{k: v for k, v in d.items() if k in {f.name for f in fields(EvalConfig)}})

    def resolved_options(self, method: str):
        """The full options dict of a dtrak/trak/abu method (defaults filled in), else None."""
        from ..method.abu import abu_options
        from ..method.dtrak import options_from
        if method in ("dtrak", "trak"):
            return asdict(options_from(self.method_options.get(method)))
        if method == "abu":
            return asdict(abu_options(self.method_options.get(method)))
        return None

    def validate(self) -> "EvalConfig":
        for m in self.method_options or {}:
            if self.resolved_options(m) is None:
                raise MucsError(f"method options given for {m!r}: only dtrak, trak and abu take options")
        checks = [(self.targets >= 1, "at least one target is needed"), (self.controls >= 0, "controls must be ≥ 0"),
                  (0 < self.k_frac < 1, "k fraction must be in (0, 1)"),
                  (self.random_repeats >= 2, "at least two random removal repeats are needed"),
                  (self.train_steps >= 1, "training steps must be ≥ 1"), (self.sample_steps >= 1, "sampling steps must be ≥ 1"),
                  (self.n_train is None or self.n_train >= 2, "n_train must be ≥ 2"),
                  (self.control_design in ("shared", "disjoint"), "control design must be 'shared' or 'disjoint'"),
                  (self.target_block >= 0, "target block must be ≥ 0 (0: one block)"),
                  (all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) and 0 <= x < 2 ** 31
                       for x in self.retrain_seeds), "retrain seeds must be integers in [0, 2^31)")]
        for ok, msg in checks:
            if not ok:
                raise MucsError(msg)
        return self


PRESETS: dict[str, dict] = {
    # for the tests: seconds
    "tiny": dict(n_train=None, channels=(8, 16), train_steps=40, train_batch=16, lr=2e-3, ema_decay=0.99, warmup=5,
                 targets=2, controls=2, sample_steps=4, k_frac=0.1, random_repeats=2, noises=4, unlearn_batch=8,
                 max_steps=3, null_batches=2, null_batch_size=16),
    # what one sitting can run: measured 60 min of one busy CPU core (17 retrains of ~2.5 min, 40 MUCS-type
    # attributions of ~10-38 s); the published table (benchmarks/counterfactual.md)
    "small": dict(n_train=200, channels=(16, 32, 32), train_steps=800, train_batch=32, lr=1e-3, ema_decay=0.995,
                  warmup=50, targets=10, controls=10, sample_steps=25, k_frac=0.02, random_repeats=8, noises=32,
                  unlearn_batch=32, max_steps=60, null_batches=20, null_batch_size=64),
    # the published table (docs/benchmarks.md): 500 images, 20 targets + 20 controls, k = 1 % of N (5 per target, a union
    # of ~100 = 20 % of the set, as in "small"). Budget: ~4.5 min per retrain + ~15 s per MUCS-type
    # attribution on 1 thread; retrains and attributions run as tasks on the engine (Ray: one per CPU or GPU).
    # The step cap is high enough that every unlearning stops by the τ rule; controls live in
    # classes no target uses (control_design "disjoint", see benchmarks/counterfactual.md)
    "full": dict(n_train=500, channels=(16, 32, 32), train_steps=1500, train_batch=32, lr=1e-3, ema_decay=0.995,
                 warmup=50, targets=20, controls=20, sample_steps=25, k_frac=0.01, random_repeats=4, noises=32,
                 unlearn_batch=32, max_steps=400, null_batches=20, null_batch_size=64, control_design="disjoint",
                 # for 2 CPU cores: AbU takes one step of 80 × 50 = 4,000 draws instead of the published 80 × 625
                 # (~13 min per query here); D-TRAK/TRAK project to d = 4096 (their quickstart's value) instead of
                 # 32768 (their CIFAR runs; 8× the projection cost) — with N = 500 ≪ d either keeps Φ's geometry
                 method_options={"abu": {"accum": 50}, "dtrak": {"dim": 4096}, "trak": {"dim": 4096}}),   # = CPU_OPTIONS
}


def preset(name: str, **changes) -> EvalConfig:
    if name not in PRESETS:
        raise MucsError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return EvalConfig(**PRESETS[name]).replace(**changes)
