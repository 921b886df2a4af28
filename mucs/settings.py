"""Every MUCS setting in one place, with the defaults of the authors' reference code.

This module is the single source of truth for settings: the `mucs attribute` options are built
from the `Settings` fields and the help texts in `HELP` (see `add_cli_options`), `--settings` JSON
and a model folder's `mucs_settings.json` are checked against the same fields
(check_settings_dict, below), and `APP_EXCLUDED` names the fields the app does not show as a
widget (tests/test_settings_source.py checks that the app covers every other one)."""
import json
import logging
import os
from dataclasses import asdict, dataclass, fields

from .checks import check_fields_dict, read_json_object
from .errors import MucsError

log = logging.getLogger("mucs")
LOSS_WEIGHTINGS = ("none", "edm")
PRECISIONS = ("fp32", "bf16")   # of the loss-matrix forwards (unlearning always runs in fp32)
MEMORY_FORMATS = ("contiguous", "channels_last")   # of the loss-matrix forwards
COMPILE_BACKENDS = ("off", "inductor", "aot_eager")   # torch.compile of the loss-matrix forwards
TRAIN_NOISE_KINDS = ("uniform", "uniform_range", "lognormal")   # training-time noise of unlearning and L_null (method/noise.py)
UNLEARN_PARAMS = ("auto", "adapter", "all")   # which weights unlearning updates (auto: a LoRA's adapter, else all)
# the fields that take one of a fixed set of values: checked by validate, offered as CLI choices
CHOICES = {"train_noise": TRAIN_NOISE_KINDS, "loss_weighting": LOSS_WEIGHTINGS, "precision": PRECISIONS,
           "memory_format": MEMORY_FORMATS, "compile": COMPILE_BACKENDS, "unlearn_params": UNLEARN_PARAMS}


@dataclass
class Settings:
    # Step 0 — consistent noise set
    noises: int = 100            # K
    noise_fraction: float = 0.7  # f: the high-noise fraction of the Karras grid that is used
    rho: float = 7.0
    sigma_min: float = 0.002     # the grid spans the sampler's σ range (EDM's, data in [-1, 1]),
    sigma_max: float = 80.0      #   clipped to the scheduler's; not the scheduler's extremes
    seed: int = 0                # noise set, null-loss init, unlearning batches
    # Training-time noise of unlearning and L_null, and the loss (docs/method.md, "Reference details")
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
    lr: float = None             # type: ignore[assignment]  # None: the model's training lr ÷ lr_factor (field_types reads float)
    lr_factor: float = 10.0
    weight_decay: float = 0.01
    lam: float = 0.2             # λ, weight of the forget term
    tol: float = 0.05            # τ: stop once L_f ≥ (1 − τ)·L_null
    max_steps: int = 200         # step cap (the reference has none; `converged` says which stopped)
    frozen: tuple = ("bias",)    # parameter-name substrings that are not updated
    unlearn_params: str = "auto" # auto: a LoRA fine-tune's adapter only (as it was fine-tuned), else every weight | adapter | all
    unlearn_chunk: int = 0       # items per forward+backward of an unlearning step (gradient accumulation,
                                 #   same step to float tolerance); 0 = the whole 2·B batch at once
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
    precision: str = "fp32"      # loss matrices L_o/L_u: fp32 | bf16 (autocast; for GPUs: check top-k vs fp32)
    memory_format: str = "contiguous"   # loss matrices: contiguous | channels_last (weights and inputs; for GPUs)
    compile: str = "off"         # loss matrices: torch.compile backend (off | inductor | aot_eager); compiles once
    default_lr: float = 1e-4     # training lr assumed when the model folder does not record one

    def to_dict(self) -> dict:
        d = asdict(self)
        d["frozen"] = list(self.frozen)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Settings":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        dropped = sorted(str(k) for k in d if k not in names)
        if dropped:   # e.g. a run written by another version: say so instead of dropping them silently
            log.warning("ignoring unknown setting(s) %s (not fields of mucs.Settings)", ", ".join(dropped))
        if "frozen" in kw:
            kw["frozen"] = tuple(kw["frozen"])
        return cls(**kw)

    def replace(self, **changes) -> "Settings":
        """A copy with each of `changes` applied as given. None is a value, not "keep": it resets a field
        whose default is None (`lr`: the model's training lr ÷ lr_factor) and is a MucsError for any other;
        a caller that means "keep the current value" leaves the key out."""
        defaults = {f.name: f.default for f in fields(self)}
        for k, v in changes.items():
            if v is None and k in defaults and defaults[k] is not None:
                raise MucsError(f"setting {k} cannot be None (leave it out to keep its value)")
        d = self.to_dict()
        d.update(changes)
        return Settings.from_dict(d)

    def validate(self) -> "Settings":
        """Every field in its range (RANGES), of its choices (CHOICES), finite; σ_min < σ_max."""
        from .errors import MucsError
        for f in fields(self):
            check_value(f.name, getattr(self, f.name))
        if not self.sigma_min < self.sigma_max:
            raise MucsError(f"need sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        return self


INF = float("inf")
LR_RANGE = (1e-8, 10.0)   # a learning rate below this changes no fp32 weight; above, AdamW diverges at once
# The range of every number setting, declared once: (low, high, low included, high included).
# Settings.validate and check_settings_dict (below) (so --settings, every flag, mucs_settings.json
# and the app's settings) check each value against it before anything is loaded or computed.
RANGES = {
    "noises": (1, INF, True, False), "noise_fraction": (0, 1, False, True), "rho": (0, 100, False, True),
    "sigma_min": (0, INF, False, False), "sigma_max": (0, INF, False, False), "seed": (0, 2**63 - 1, True, True),
    "p_mean": (-20, 20, True, True), "p_std": (0, 10, False, True), "sigma_data": (0, 100, False, True),
    "null_batches": (1, INF, True, False), "null_batch_size": (1, INF, True, False),
    "batch_size": (1, INF, True, False), "lr": LR_RANGE + (True, True), "lr_factor": (1e-3, 1e6, True, True),
    "weight_decay": (0, 1, True, True), "lam": (0, 1000, True, True), "tol": (0, 1, True, False),
    "max_steps": (0, 10**7, True, True), "unlearn_chunk": (0, INF, True, False), "top_k": (1, INF, True, False),
    "screen_noises": (0, INF, True, False), "screen_keep": (1, INF, True, False),
    "fragile_refs": (0, 10**4, True, True), "fragile_seed": (0, 2**62, True, True),
    "eval_batch_size": (1, INF, True, False), "default_lr": LR_RANGE + (True, True),
}


def range_text(name: str) -> str:
    """RANGES[name] as a reader writes it: '≥ 1', '> 0', 'in (0, 1]'."""
    lo, hi, lo_in, hi_in = RANGES[name]
    if hi == INF:
        return f"{'≥' if lo_in else '>'} {lo:g}"
    return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def check_value(name: str, value) -> None:
    """MucsError (one line) when `value` is not a finite number in RANGES[name], or not one of
    CHOICES[name]; None (lr's 'derive it') passes."""
    import math
    from .errors import MucsError
    if name in CHOICES and value not in CHOICES[name]:
        raise MucsError(f"{name} must be one of {', '.join(CHOICES[name])}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise MucsError(f"setting {name} must be a finite number, got {value}")
    if name not in RANGES or value is None or isinstance(value, bool):
        return
    lo, hi, lo_in, hi_in = RANGES[name]
    if not ((value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)):
        raise MucsError(f"setting {name} must be {range_text(name)}, got {value:g}")


def check_settings_dict(d, what: str = "settings") -> dict:
    """Validate a user-supplied {setting: value} dictionary (a --settings JSON, mucs_settings.json, the
    app's and the HTTP API's overrides) against the Settings fields (mucs.checks.check_fields_dict):
    every key a setting, every value of its type and finite. Returns a normalised copy; raises
    MucsError naming the first bad key."""
    return check_fields_dict(d, fields(Settings), what, check_value)

# --- the command line, built from the fields above ------------------------------------------------
# One help text per field (tests/test_settings_source.py fails when a field has none).
HELP = {
    "noises": "K, size of the consistent noise set",
    "noise_fraction": "f, high-noise fraction of the Karras grid",
    "rho": "ρ of the Karras grid",
    "sigma_min": "lowest σ of the noise grid (EDM's sampler range)",
    "sigma_max": "highest σ of the noise grid (EDM's sampler range)",
    "seed": "seed of the noise set, the null-loss init and the unlearning batches",
    "train_noise": "training-time noise of unlearning and L_null: log-normal in σ as the reference's EDM, "
                   "uniform over all steps (the DDPM recipe), or uniform over the steps in [σ_min, σ_max]",
    "p_mean": "lognormal training noise: mean of ln σ",
    "p_std": "lognormal training noise: standard deviation of ln σ",
    "loss_weighting": "none: the model's own objective; edm: EDM's weighted x0 error",
    "sigma_data": "σ_data of the edm loss weighting",
    "null_batches": "batches of the null-loss estimate L_null",
    "null_batch_size": "batch size of the null-loss estimate",
    "batch_size": "B, retain/forget batch size",
    "lr": "unlearning learning rate (default: the model's training lr ÷ --lr-factor)",
    "lr_factor": "unlearning lr = training lr ÷ this",
    "weight_decay": "AdamW weight decay of the unlearning",
    "lam": "λ, weight of the forget term",
    "tol": "τ, stop once L_f ≥ (1−τ)·L_null",
    "max_steps": "unlearning step cap",
    "frozen": "comma-separated parameter-name substrings to freeze",
    "unlearn_params": "which weights unlearning updates: auto (a LoRA adapter's only when one is loaded, as the "
                      "fine-tuning did; else all), adapter, or all (the full denoiser, adapter included)",
    "precision": "loss matrices in fp32 or under bf16 autocast (faster on GPUs with bf16 units; slower on most "
                 "CPUs; benchmarks/throughput.py --precision bf16 reports its top-k agreement with fp32)",
    "memory_format": "loss matrices with channels-last weights and inputs (often faster on GPUs with tensor cores; "
                     "the same losses to float tolerance)",
    "compile": "torch.compile the loss-matrix forward with this backend (inductor: compiles once per shape, "
               "minutes on a CPU; pays off on large N or a GPU), or off",
    "unlearn_chunk": "micro-batch of an unlearning step: items per forward+backward, gradients accumulated "
                     "(for a large model on a small GPU; 0 = the whole batch)",
    "top_k": "how many training images to report",
    "screen_noises": "screened scoring: noise levels every item is scored on first (0 = off)",
    "screen_keep": "screened scoring: items kept for scoring on all K levels",
    "fragile_refs": "fragile-item correction: reference queries per class (0 = off)",
    "fragile_seed": "fragile-item correction: seed of the first reference query",
    "bounded": "ablation: plain gradient ascent (no L_null bound)",
    "retain": "ablation: no retain term",
    "consistent_noise": "ablation: fresh noise for the unlearned losses",
    "normalised": "ablation: score = mean(L_u − L_o)",
    "eval_batch_size": "(item, noise) pairs per forward pass when computing losses",
    "default_lr": "training lr assumed when the model folder records none (prefer --train-lr)",
}
# Flags whose name is not the field's name with '-' for '_'. A boolean setting (default true) is
# switched off by its ablation flag.
FLAG_NAMES = {"lr": "--unlearning-lr", "bounded": "--unbounded", "retain": "--no-retain",
              "consistent_noise": "--fresh-noise", "normalised": "--unnormalised"}
# Reachable through `--settings` (JSON) only, not by a flag of their own.
CLI_SETTINGS_ONLY = {"default_lr": "--train-lr gives the model's training lr; this is the fallback when neither is known"}
# Fields the app shows no widget for (they come from the model's mucs_settings.json or the app's
# --settings): engineering knobs and the reference's constants, not per-query choices.
APP_EXCLUDED = {
    "rho": "a constant of the Karras grid",
    "p_mean": "a constant of the reference's training noise", "p_std": "a constant of the reference's training noise",
    "sigma_data": "a constant of the edm weighting",
    "null_batches": "a property of the model's cached L_null", "null_batch_size": "a property of the model's cached L_null",
    "batch_size": "a per-model choice (mucs_settings.json)", "lr": "derived from the training lr",
    "lr_factor": "a per-model choice (mucs_settings.json)", "weight_decay": "the reference's constant",
    "frozen": "the reference's constant", "unlearn_params": "a per-model choice (mucs_settings.json, --unlearn-params)",
    "screen_noises": "a per-model speed choice (mucs_settings.json)",
    "screen_keep": "a per-model speed choice (mucs_settings.json)",
    "fragile_refs": "a per-model choice (mucs_settings.json)", "fragile_seed": "a per-model choice (mucs_settings.json)",
    "eval_batch_size": "a machine choice, not a result-changing one",
    "unlearn_chunk": "a machine choice (memory), not a result-changing one",
    "precision": "a machine choice (GPU speed), set per model or by the app's --settings",
    "memory_format": "a machine choice (GPU speed), set per model or by the app's --settings",
    "compile": "a machine choice (speed on large runs), set per model or by the app's --settings",
    "default_lr": "--train-lr / mucs_train.json",
}


def field_types() -> dict:
    """{field name: python type} of Settings (the annotation, or the default's type)."""
    return {f.name: f.type if isinstance(f.type, type) else type(f.default) for f in fields(Settings)}


def flag_for(name: str) -> str:
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def choices_for(name: str):
    return CHOICES.get(name)


def add_cli_options(parser, group_title: str = "MUCS settings (mucs.Settings; default: the model's mucs_settings.json, "
                                                "else the paper's)") -> list:
    """Add one option per Settings field (except CLI_SETTINGS_ONLY) and `--settings JSON` to an
    argparse parser; every option's dest is the field's name and its default None ('not given').
    Returns the field names that got a flag."""
    g = parser.add_argument_group(group_title)
    types = field_types()
    defaults = Settings().to_dict()
    added = []
    for name, t in types.items():
        if name in CLI_SETTINGS_ONLY:
            continue
        flag, help_ = flag_for(name), HELP[name]
        d = defaults[name]
        if t is bool:   # every boolean defaults to on; its flag turns it off
            g.add_argument(flag, dest=name, action="store_const", const=not d, default=None, help=help_)
        elif t is tuple:
            g.add_argument(flag, dest=name, default=None, help=f"{help_} (default: {','.join(d)})")
        else:
            shown = "training lr ÷ lr factor" if d is None else d
            limits = f"; {range_text(name)}" if name in RANGES and name != "seed" else ""
            g.add_argument(flag, dest=name, type=t, default=None, choices=choices_for(name),
                           help=f"{help_} (default {shown}{limits})")
        added.append(name)
    g.add_argument("--settings", dest="settings_json", default=None, metavar="JSON",
                   help="any settings as a JSON object or a path to a JSON file, e.g. '{\"noises\": 16}'; "
                        "flags given as well win. Unknown keys and wrong types are errors")
    return added


def cli_overrides(args) -> dict:
    """The settings given on a command line built by `add_cli_options`: `--settings` first, then
    the flags; checked like mucs_settings.json (unknown keys and wrong types are one MucsError)."""
    out = {}
    text = getattr(args, "settings_json", None)
    if text:
        out.update(load_settings_json(text, "--settings"))
    flags = {}
    for name in field_types():
        v = getattr(args, name, None)
        if v is not None and name not in CLI_SETTINGS_ONLY:
            flags[name] = v
    for name, v in check_settings_dict(flags, what="command line").items():
        out[name] = v
    return out


def load_settings_json(text: str, what: str = "--settings") -> dict:
    """Settings from a JSON object given inline or as a path to a JSON file (a {"settings": {...}}
    wrapper, as in mucs_settings.json, is accepted), checked against the fields."""
    if os.path.isfile(text):
        d = read_json_object(text, "a JSON object of setting: value")
        where = f"{what} {text}"
    else:
        try:
            d = json.loads(text)
        except RecursionError:
            raise MucsError(f"{what}: its JSON is nested too deeply") from None
        except ValueError as e:
            raise MucsError(f"{what} is neither a readable JSON file nor a JSON object: {str(e)[:160]}") from None
        where = what
    if isinstance(d, dict) and isinstance(d.get("settings"), dict):   # the mucs_settings.json layout
        other = sorted(str(k) for k in d if k != "settings")
        if other:
            log.info("%s: using its \"settings\" object; ignoring the other key(s) %s", where, ", ".join(other))
        d = d["settings"]
    return check_settings_dict(d, what=where)
