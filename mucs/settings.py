"""Every MUCS setting in one place, with the defaults of the authors' reference code.

Each field is declared once, with everything the entry points need beside it (`setting`, below):
its CLI help and flag, its range or choices, whether the paper fixes it, whether it only changes
scoring, and the app's widget for it (or why the app shows none). The tables the rest of the code
reads (HELP, RANGES, CHOICES, APP_WIDGETS, PAPER_KEYS, SCORING_ONLY, ...) are derived from these
declarations (`tables`), so a new setting is one new field: `mucs attribute` gets its option
(`add_cli_options`), `--settings` JSON and a model folder's `mucs_settings.json` are checked against
it (check_settings_dict), and the app shows or leaves it as declared (tests/test_settings_source.py)."""
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple, Optional

from .checks import check_fields_dict, read_json_object
from .errors import MucsError

log = logging.getLogger("mucs")
LOSS_WEIGHTINGS = ("none", "edm")
PRECISIONS = ("fp32", "bf16")   # of the loss-matrix forwards (unlearning always runs in fp32)
MEMORY_FORMATS = ("contiguous", "channels_last")   # of the loss-matrix forwards
COMPILE_BACKENDS = ("off", "inductor", "aot_eager")   # torch.compile of the loss-matrix forwards
TRAIN_NOISE_KINDS = ("uniform", "uniform_range", "lognormal")   # training-time noise of unlearning and L_null (method/noise.py)
UNLEARN_PARAMS = ("auto", "adapter", "all")   # which weights unlearning updates (auto: a LoRA's adapter, else all)
INF = float("inf")
LR_RANGE = (1e-8, 10.0)   # a learning rate below this changes no fp32 weight; above, AdamW diverges at once


class Widget(NamedTuple):
    """The app's widget for a setting: its place in the settings panel (row, column), its label
    ('{n}' is replaced by the training-set size) and its element id. Its kind follows the field:
    a checkbox for a bool, a dropdown for choices, a number box otherwise (whole numbers for an int)."""
    row: int
    col: int
    label: str
    elem_id: str


def setting(default, help: str, *, flag: Optional[str] = None, json_only: Optional[str] = None,
            range: Optional[tuple] = None, choices: Optional[tuple] = None, paper: bool = False,
            scoring_only: bool = False, float_tolerance: bool = False, app: Optional[Widget] = None,
            app_hidden: Optional[str] = None):
    """A Settings field and its declaration (kept in the field's metadata):
    help: the CLI help text; flag: the CLI flag when it is not --name-with-dashes (a bool, default
    true, is switched off by it); json_only: why it has no flag (reachable through --settings only);
    range: (low, high, low included, high included) of a number; choices: the values a string takes;
    paper: one of the paper's choices (a run "used the paper's settings" when all are at their default);
    scoring_only: changes how L_u and L_o become scores, not the unlearned model or L_u;
    float_tolerance: a machine choice that changes L_o/L_u only to float tolerance;
    app: its widget in the app, or app_hidden: why the app shows none (it comes from the model's
    mucs_settings.json or the app's --settings)."""
    given = dict(help=help, flag=flag, json_only=json_only, range=range, choices=choices, paper=paper,
                 scoring_only=scoring_only, float_tolerance=float_tolerance, app=app, app_hidden=app_hidden)
    return field(default=default, metadata={k: v for k, v in given.items() if v is not None and v is not False})


MODEL_CHOICE = "a per-model choice (mucs_settings.json)"
NULL_CACHE = "a property of the model's cached L_null"
GPU_SPEED = "a machine choice (GPU speed), set per model or by the app's --settings"


@dataclass
class Settings:
    """Every setting of one MUCS attribution (the paper's defaults; docs/method.md). Each field's
    metadata declares its help, flag, range or choices and its place in the app (`setting`)."""
    # Step 0 — consistent noise set
    noises: int = setting(100, "K, size of the consistent noise set", range=(1, INF, True, False), paper=True,
                          app=Widget(0, 1, "noises K", "set-noises"))
    noise_fraction: float = setting(0.7, "f, high-noise fraction of the Karras grid",   # f: the high-noise fraction used
                                    range=(0, 1, False, True), paper=True,
                                    app=Widget(0, 2, "noise fraction f", "set-f"))
    rho: float = setting(7.0, "ρ of the Karras grid", range=(0, 100, False, True), paper=True,
                         app_hidden="a constant of the Karras grid")
    # the grid spans the sampler's σ range (EDM's, data in [-1, 1]), clipped to the scheduler's; not
    # the scheduler's extremes
    sigma_min: float = setting(0.002, "lowest σ of the noise grid (EDM's sampler range)", range=(0, INF, False, False),
                               paper=True, app=Widget(2, 0, "σ min of the noise grid", "set-sigma-min"))
    sigma_max: float = setting(80.0, "highest σ of the noise grid (EDM's sampler range)", range=(0, INF, False, False),
                               paper=True, app=Widget(2, 1, "σ max of the noise grid", "set-sigma-max"))
    seed: int = setting(0, "seed of the noise set, the null-loss init and the unlearning batches",
                        range=(0, 2**63 - 1, True, True), app=Widget(0, 6, "seed", "set-seed"))
    # Training-time noise of unlearning and L_null, and the loss (docs/method.md, "Reference details"):
    # the reference's (EDM) ln σ ~ N(p_mean, p_std²) | uniform (DDPM recipe) | uniform_range
    train_noise: str = setting("lognormal", "training-time noise of unlearning and L_null: log-normal in σ as the "
                               "reference's EDM, uniform over all steps (the DDPM recipe), or uniform over the steps "
                               "in [σ_min, σ_max]", choices=TRAIN_NOISE_KINDS, paper=True,
                               app=Widget(2, 2, "training-time noise (unlearning, L_null)", "set-train-noise"))
    p_mean: float = setting(-1.2, "lognormal training noise: mean of ln σ", range=(-20, 20, True, True),
                            app_hidden="a constant of the reference's training noise")
    p_std: float = setting(1.2, "lognormal training noise: standard deviation of ln σ", range=(0, 10, False, True),
                           app_hidden="a constant of the reference's training noise")
    # none: the model's own objective | edm: (σ² + σ_d²)/(σσ_d)²·‖x̂0 − x0‖²
    loss_weighting: str = setting("none", "none: the model's own objective; edm: EDM's weighted x0 error",
                                  choices=LOSS_WEIGHTINGS, paper=True,
                                  app=Widget(2, 3, "loss weighting", "set-loss-weighting"))
    sigma_data: float = setting(0.5, "σ_data of the edm loss weighting", range=(0, 100, False, True),
                                app_hidden="a constant of the edm weighting")
    # Step 2 — null loss
    null_batches: int = setting(200, "batches of the null-loss estimate L_null", range=(1, INF, True, False),
                                paper=True, app_hidden=NULL_CACHE)
    null_batch_size: int = setting(100, "batch size of the null-loss estimate", range=(1, INF, True, False),
                                   paper=True, app_hidden=NULL_CACHE)
    # Step 3 — mirrored, bounded unlearning
    batch_size: int = setting(100, "B, retain/forget batch size", range=(1, INF, True, False), paper=True,
                              app_hidden=MODEL_CHOICE)
    # None: the model's training lr ÷ lr_factor (field_types reads float)
    lr: float = setting(None, "unlearning learning rate (default: the model's training lr ÷ --lr-factor)",
                        flag="--unlearning-lr", range=LR_RANGE + (True, True), paper=True,
                        app_hidden="derived from the training lr")
    lr_factor: float = setting(10.0, "unlearning lr = training lr ÷ this", range=(1e-3, 1e6, True, True), paper=True,
                               app_hidden=MODEL_CHOICE)
    weight_decay: float = setting(0.01, "AdamW weight decay of the unlearning", range=(0, 1, True, True), paper=True,
                                  app_hidden="the reference's constant")
    lam: float = setting(0.2, "λ, weight of the forget term", range=(0, 1000, True, True), paper=True,
                         app=Widget(0, 3, "λ (forget weight)", "set-lam"))
    tol: float = setting(0.05, "τ, stop once L_f ≥ (1−τ)·L_null", range=(0, 1, True, False), paper=True,
                         app=Widget(0, 4, "τ (stop tolerance)", "set-tol"))
    # step cap (the reference has none; `converged` says which stopped)
    max_steps: int = setting(200, "unlearning step cap", range=(0, 10**7, True, True),
                             app=Widget(0, 5, "step cap", "set-max-steps"))
    frozen: tuple = setting(("bias",), "comma-separated parameter-name substrings to freeze", paper=True,
                            app_hidden="the reference's constant")
    unlearn_params: str = setting("auto", "which weights unlearning updates: auto (a LoRA adapter's only when one is "
                                  "loaded, as the fine-tuning did; else all), adapter, or all (the full denoiser, "
                                  "adapter included)", choices=UNLEARN_PARAMS,
                                  app_hidden="a per-model choice (mucs_settings.json, --unlearn-params)")
    # items per forward+backward of an unlearning step (gradient accumulation, same step to float
    # tolerance); 0 = the whole 2·B batch at once
    unlearn_chunk: int = setting(0, "micro-batch of an unlearning step: items per forward+backward, gradients "
                                 "accumulated (for a large model on a small GPU; 0 = the whole batch)",
                                 range=(0, INF, True, False), float_tolerance=True,
                                 app_hidden="a machine choice (memory), not a result-changing one")
    # Step 5 — scoring
    top_k: int = setting(10, "how many training images to report", range=(1, INF, True, False), scoring_only=True,
                         app=Widget(0, 0, "top-k (1..{n})", "set-top-k"))
    # Screened scoring (beyond the paper): score every item on `screen_noises` of the K levels, keep the
    # `screen_keep` best, score only those on all K. 0 = off: every item on every level, as specified
    screen_noises: int = setting(0, "screened scoring: noise levels every item is scored on first (0 = off)",
                                 range=(0, INF, True, False), scoring_only=True,
                                 app_hidden="a per-model speed choice (mucs_settings.json)")
    screen_keep: int = setting(100, "screened scoring: items kept for scoring on all K levels",
                               range=(1, INF, True, False), scoring_only=True,
                               app_hidden="a per-model speed choice (mucs_settings.json)")
    # Fragile-item correction (beyond the paper): subtract each item's mean skew over reference queries
    # of *other* classes (generated from fixed seeds, unlearned once per model and cached), so items
    # whose loss rises whatever is unlearned stop ranking high. 0 = off; else references per class
    # (class-conditional models) or in total (unconditional ones)
    fragile_refs: int = setting(0, "fragile-item correction: reference queries per class (0 = off)",
                                range=(0, 10**4, True, True), scoring_only=True, app_hidden=MODEL_CHOICE)
    fragile_seed: int = setting(5000, "fragile-item correction: seed of the first reference query",
                                range=(0, 2**62, True, True), scoring_only=True, app_hidden=MODEL_CHOICE)
    # Ablations studied in the paper
    bounded: bool = setting(True, "ablation: plain gradient ascent (no L_null bound)", flag="--unbounded",
                            paper=True, app=Widget(1, 0, "bounded forget loss", "set-bounded"))
    retain: bool = setting(True, "ablation: no retain term", flag="--no-retain", paper=True,
                           app=Widget(1, 1, "retain term", "set-retain"))
    consistent_noise: bool = setting(True, "ablation: fresh noise for the unlearned losses", flag="--fresh-noise",
                                     paper=True, app=Widget(1, 2, "consistent noise", "set-consistent"))
    normalised: bool = setting(True, "ablation: score = mean(L_u − L_o)", flag="--unnormalised", paper=True,
                               scoring_only=True, app=Widget(1, 3, "normalised skew", "set-normalised"))
    # Engineering
    eval_batch_size: int = setting(512, "(item, noise) pairs per forward pass when computing losses",
                                   range=(1, INF, True, False), float_tolerance=True,
                                   app_hidden="a machine choice, not a result-changing one")
    # loss matrices L_o/L_u: fp32 | bf16 (autocast; for GPUs: check top-k vs fp32)
    precision: str = setting("fp32", "loss matrices in fp32 or under bf16 autocast (faster on GPUs with bf16 units; "
                             "slower on most CPUs; benchmarks/throughput.py --precision bf16 reports its top-k "
                             "agreement with fp32)", choices=PRECISIONS, app_hidden=GPU_SPEED)
    memory_format: str = setting("contiguous", "loss matrices with channels-last weights and inputs (often faster on "
                                 "GPUs with tensor cores; the same losses to float tolerance)",
                                 choices=MEMORY_FORMATS, float_tolerance=True, app_hidden=GPU_SPEED)
    # torch.compile of the loss-matrix forward; compiles once
    compile: str = setting("off", "torch.compile the loss-matrix forward with this backend (inductor: compiles once "
                           "per shape, minutes on a CPU; pays off on large N or a GPU), or off",
                           choices=COMPILE_BACKENDS, float_tolerance=True,
                           app_hidden="a machine choice (speed on large runs), set per model or by the app's --settings")
    default_lr: float = setting(1e-4, "training lr assumed when the model folder records none (prefer --train-lr)",
                                json_only="--train-lr gives the model's training lr; this is the fallback when "
                                          "neither is known",
                                range=LR_RANGE + (True, True), app_hidden="--train-lr / mucs_train.json")

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


def tables(cls=None) -> dict:
    """The tables derived from the field declarations of `cls` (default Settings; see `setting`), by
    name: HELP, FLAG_NAMES, CLI_SETTINGS_ONLY, RANGES, CHOICES and APP_EXCLUDED ({field: declared
    value}), APP_WIDGETS ({field: Widget}, in page order), PAPER_KEYS, SCORING_ONLY_DECLARED and
    FLOAT_TOLERANCE_ONLY (tuples of fields)."""
    fs = fields(cls or Settings)

    def table(key):
        return {f.name: f.metadata[key] for f in fs if key in f.metadata}
    return dict(HELP=table("help"), FLAG_NAMES=table("flag"), CLI_SETTINGS_ONLY=table("json_only"),
                RANGES=table("range"), CHOICES=table("choices"), APP_EXCLUDED=table("app_hidden"),
                APP_WIDGETS=dict(sorted(table("app").items(), key=lambda kv: kv[1][:2])),
                PAPER_KEYS=tuple(table("paper")), SCORING_ONLY_DECLARED=tuple(table("scoring_only")),
                FLOAT_TOLERANCE_ONLY=tuple(table("float_tolerance")))


_T = tables()
# One help text per field (tests/test_settings_source.py fails when a field has none).
HELP = _T["HELP"]
# Flags whose name is not the field's name with '-' for '_'. A boolean setting (default true) is
# switched off by its ablation flag.
FLAG_NAMES = _T["FLAG_NAMES"]
# Reachable through `--settings` (JSON) only, not by a flag of their own.
CLI_SETTINGS_ONLY = _T["CLI_SETTINGS_ONLY"]
# The range of every number setting: (low, high, low included, high included). Settings.validate and
# check_settings_dict (below) (so --settings, every flag, mucs_settings.json and the app's settings)
# check each value against it before anything is loaded or computed.
RANGES = _T["RANGES"]
# the fields that take one of a fixed set of values: checked by validate, offered as CLI choices
CHOICES = _T["CHOICES"]
# Fields the app shows no widget for (they come from the model's mucs_settings.json or the app's
# --settings): engineering knobs and the reference's constants, not per-query choices.
APP_EXCLUDED = _T["APP_EXCLUDED"]
# The app's widget of every other field, in page order: the settings a user may change per run in the app.
APP_WIDGETS = _T["APP_WIDGETS"]
# The paper's choices (Settings() defaults) that decide whether a run "used the paper's settings"; top_k,
# the step cap (the paper has none) and engineering options do not count.
PAPER_KEYS = _T["PAPER_KEYS"]
# Machine choices that change L_o/L_u only to float tolerance: left out of the L_u and reference-skew
# cache keys (L_o's key never held them), so a cached matrix serves any batching, memory format or backend.
FLOAT_TOLERANCE_ONLY = _T["FLOAT_TOLERANCE_ONLY"]
# Settings that change only how L_u and L_o are turned into scores, not the unlearned model or L_u, and
# the machine choices that change them only to float tolerance: left out of the cached L_u's key.
SCORING_ONLY = _T["SCORING_ONLY_DECLARED"] + FLOAT_TOLERANCE_ONLY


def _range_text(r: tuple) -> str:
    lo, hi, lo_in, hi_in = r
    if hi == INF:
        return f"{'≥' if lo_in else '>'} {lo:g}"
    return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def range_text(name: str) -> str:
    """RANGES[name] as a reader writes it: '≥ 1', '> 0', 'in (0, 1]'."""
    return _range_text(RANGES[name])


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
def _type(f) -> type:
    return f.type if isinstance(f.type, type) else type(f.default)


def field_types(cls=None) -> dict:
    """{field name: python type} of Settings (the annotation, or the default's type)."""
    return {f.name: _type(f) for f in fields(cls or Settings)}


def flag_for(name: str) -> str:
    return FLAG_NAMES.get(name, "--" + name.replace("_", "-"))


def choices_for(name: str):
    return CHOICES.get(name)


def add_cli_options(parser, group_title: str = "MUCS settings (mucs.Settings; default: the model's mucs_settings.json, "
                                                "else the paper's)", cls=None) -> list:
    """Add one option per field of `cls` (default Settings; except the json_only ones) and `--settings
    JSON` to an argparse parser, each as its field declares it (`setting`); every option's dest is the
    field's name and its default None ('not given'). Returns the field names that got a flag."""
    g = parser.add_argument_group(group_title)
    added = []
    for f in fields(cls or Settings):
        m, t, d = f.metadata, _type(f), f.default
        if "json_only" in m:
            continue
        flag, help_ = m.get("flag", "--" + f.name.replace("_", "-")), m["help"]
        if t is bool:   # every boolean defaults to on; its flag turns it off
            g.add_argument(flag, dest=f.name, action="store_const", const=not d, default=None, help=help_)
        elif t is tuple:
            listed = ','.join(map(str, d if isinstance(d, tuple) else ()))
            g.add_argument(flag, dest=f.name, default=None, help=f"{help_} (default: {listed})")
        else:
            shown = "training lr ÷ lr factor" if d is None else d
            limits = f"; {_range_text(m['range'])}" if "range" in m and f.name != "seed" else ""
            g.add_argument(flag, dest=f.name, type=t, default=None, choices=m.get("choices"),
                           help=f"{help_} (default {shown}{limits})")
        added.append(f.name)
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
