"""Command line: python -m mucs {train,generate,attribute} ... (errors: one line, exit status 2)."""
import argparse
import json
import math
import os
import re
import sys

from .errors import MucsError

FORCE_HELP = "replace an existing --out even when it was not written by mucs (never an input of this command)"


def _check_device(name):
    """Only cpu and cuda[:N] (a 'meta' or 'xla' device would fail late with a traceback)."""
    if name is None:
        return
    if not re.fullmatch(r"cpu|cuda(:\d+)?", str(name)):
        raise MucsError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda:"):
        import torch
        if torch.cuda.is_available() and int(name[5:]) >= torch.cuda.device_count():
            raise MucsError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _check_numbers(a):
    """Every float option finite, every --seed in range: one error line instead of NaN results."""
    from .checks import check_seed
    for dest, v in sorted(vars(a).items()):
        flag = "--" + dest.replace("_", "-")
        if isinstance(v, float) and not math.isfinite(v):
            raise MucsError(f"{flag} must be a finite number, got {v}")
        if dest == "seed" and v is not None:
            check_seed(v, flag)


def _force_adopt(a, kind):
    """--force: mark a foreign --out folder as ours right before the swap replaces it."""
    from .cache import adopt_dir
    return bool(getattr(a, "force", False)) and adopt_dir(a.out, kind)


def _add_model_args(p, data=True):
    from .defaults import DEFAULT_DATA, DEFAULT_MODEL
    p.add_argument("--model", default=DEFAULT_MODEL, help="diffusers model folder (default: the embedded Fashion-MNIST model)")
    if data:
        p.add_argument("--data", default=None, help="training set: .npz or image folder (default: the embedded set when --model is the default)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present, else CPU)")


def _resolve_data(a):
    from .defaults import DEFAULT_DATA, DEFAULT_MODEL
    if a.data:
        return a.data
    if os.path.abspath(a.model) == DEFAULT_MODEL:
        return DEFAULT_DATA
    raise MucsError("--data is required with a model other than the embedded default")


def cmd_train(a):
    from .cache import check_out_dir
    from .data import load_dataset
    from .progress import TextBar
    from .train import TrainOptions, train
    _check_device(a.device)
    try:
        channels = tuple(int(c) for c in a.channels.split(","))
    except ValueError:
        raise MucsError(f"--channels must be comma-separated integers such as 32,64,64, got {a.channels!r}") from None
    opts = TrainOptions(steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, ema_decay=a.ema_decay,
                        channels=channels, layers_per_block=a.layers_per_block,
                        attention=not a.no_attention, prediction_type=a.prediction_type,
                        beta_schedule=a.beta_schedule, num_train_timesteps=a.timesteps, save_every=a.save_every)
    opts.validate()
    if a.size is not None and a.size < 1:
        raise MucsError(f"--size must be ≥ 1, got {a.size}")
    check_out_dir(a.out, "model", force=a.force, protect=[a.data])
    data = load_dataset(a.data)
    if a.size and a.size != data.size:
        raise MucsError(f"--size {a.size} does not match the dataset's {data.size}x{data.size} images")
    from .models import pick_device
    bar = TextBar()
    rec = train(data, a.out, opts, device=pick_device(a.device), progress=bar, force=a.force)
    bar.close()
    print(f"saved {a.out}: {rec['parameters']} parameters, {a.steps} steps, final loss {rec['final_loss']:.4f}, "
          f"{rec['train_seconds']:.0f} s")


def cmd_generate(a):
    from .cache import check_out_file
    from .generate import check_steps, generate, is_generated_png, save_generated_png
    from .models import load_model
    from .progress import TextBar
    _check_device(a.device)
    check_steps(a.steps)
    if not a.out.lower().endswith(".png"):
        raise MucsError("--out must be a .png file")
    # an existing --out is replaced only when it is a PNG that generate wrote (or with --force)
    check_out_file(a.out, force=a.force, ours=is_generated_png, protect=[a.model])
    model = load_model(a.model, a.device)
    label = model.check_label(a.label)
    check_steps(a.steps, model.scheduler.config.num_train_timesteps)
    bar = TextBar()
    img = generate(model, [label], [a.seed], steps=a.steps, progress=bar)[0]
    bar.close()
    save_generated_png(img, a.out, dict(label=label, seed=a.seed, steps=a.steps))
    print(f"wrote {a.out} (label={label}, seed={a.seed}, steps={a.steps})")


def cmd_attribute(a):
    from .attribute import Attributor
    from .data import load_dataset, load_query_image
    from .defaults import cache_dir_for, settings_for
    from .models import load_model
    from .progress import TextBar
    from .settings import Settings
    from .cache import check_out_dir, check_writable_dir, unadopt_dir
    _check_device(a.device)
    cache_dir = a.cache_dir or cache_dir_for(a.model)
    # before anything is loaded or computed: --out must be new, empty or an earlier run (or --force),
    # never one of this command's inputs; the cache folder must be writable
    check_out_dir(a.out, "run", force=a.force, protect=[a.model, a.data, a.image, cache_dir])
    check_writable_dir(cache_dir, "--cache-dir" if a.cache_dir else "the cache folder ($MUCS_CACHE_DIR)")
    from .distributed import device_for_rank
    model = load_model(a.model, a.device or device_for_rank(), train_lr=a.train_lr)
    label = model.check_label(a.label)
    data = load_dataset(_resolve_data(a), image_column=a.image_column, label_column=a.label_column)
    data.check_matches(model)
    query = load_query_image(a.image, model.channels, model.size)
    base = Settings() if a.paper_settings else settings_for(a.model)
    s = base.replace(noises=a.noises, lr_factor=a.lr_factor, top_k=a.top_k, seed=a.seed, max_steps=a.max_steps,
                     lam=a.lam, tol=a.tol, noise_fraction=a.noise_fraction, batch_size=a.batch_size,
                     bounded=False if a.unbounded else None, retain=False if a.no_retain else None,
                     consistent_noise=False if a.fresh_noise else None,
                     normalised=False if a.unnormalised else None, sigma_min=a.sigma_min, sigma_max=a.sigma_max,
                     train_noise=a.train_noise, loss_weighting=a.loss_weighting)
    if a.frozen is not None:
        s = s.replace(frozen=tuple(p for p in a.frozen.split(",") if p))
    s.validate()
    names = [n for n, _ in model.unet.named_parameters()]
    if not [n for n in names if not any(p in n for p in s.frozen)]:
        raise MucsError(f"--frozen {','.join(s.frozen)} matches all {len(names)} parameters: nothing is left to unlearn")
    from .distributed import init_from_env
    group = init_from_env()     # under torchrun: the loss matrices are split over the ranks
    bar = TextBar() if group is None or group.rank == 0 else None
    res = Attributor(model, data, s, cache_dir=cache_dir).attribute(
        query, label, progress=bar, source=os.path.abspath(a.image))
    if bar is not None:
        bar.close()
    if group is not None and group.rank != 0:
        return                  # rank 0 writes the run
    for note in res.query["conversions"]:
        print(f"note: query {note}")
    adopted = _force_adopt(a, "run")
    try:
        res.save(a.out)
    except BaseException:
        if adopted:
            unadopt_dir(a.out)
        raise
    print(f"unlearning: {res.steps} steps, converged={res.converged}, L_null={res.loss_null:.4f}")
    print("stage times (s): " + ", ".join(f"{k}={v:.1f}" for k, v in res.stage_times.items()))
    print("top-k: " + " ".join(f"{int(i)}({res.scores[i]:.4f})" for i in res.top))
    from .diagnostics import warnings
    for w in warnings(res.scores, res.top, res.labels, res.query.get("label"), res.converged, res.steps):
        print(f"warning: {w}")
    print(f"wrote {a.out}/scores.csv and {a.out}/result.json")


def build_parser():
    ap = argparse.ArgumentParser(prog="python -m mucs", description="MUCS training-data attribution for diffusion models")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("train", help="train a diffusers UNet2DModel (class-conditional when the data has labels)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--channels", default="32,64,64", help="block_out_channels, comma separated")
    p.add_argument("--layers-per-block", type=int, default=1)
    p.add_argument("--no-attention", action="store_true")
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction", "sample"])
    p.add_argument("--beta-schedule", default="squaredcos_cap_v2")
    p.add_argument("--timesteps", type=int, default=1000)
    p.add_argument("--save-every", type=int, default=0, help="also save the EMA weights every N steps")
    p.add_argument("--size", type=int, default=None, help="check that the data has this resolution")
    p.add_argument("--device", default=None)
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("generate", help="sample one image; the same seed gives the same image")
    _add_model_args(p, data=False)
    p.add_argument("--label", type=int, default=None)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps, 1..1000")
    p.add_argument("--out", required=True, help="a new .png file, or one that generate wrote before")
    p.add_argument("--force", action="store_true", help="replace an existing --out even when generate did not write it")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("attribute", help="rank the training images by their MUCS skew for a query image")
    _add_model_args(p)
    p.add_argument("--image", required=True)
    p.add_argument("--label", type=int, default=None)
    p.add_argument("--noises", type=int, default=None, help="K, size of the consistent noise set")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--lam", type=float, default=None, help="λ, weight of the forget term")
    p.add_argument("--tol", type=float, default=None, help="τ, stop once L_f ≥ (1−τ)·L_null")
    p.add_argument("--max-steps", type=int, default=None, help="unlearning step cap")
    p.add_argument("--noise-fraction", type=float, default=None, help="f, high-noise fraction of the Karras grid")
    p.add_argument("--batch-size", type=int, default=None, help="B, retain/forget batch size")
    p.add_argument("--sigma-min", type=float, default=None, help="lowest σ of the noise grid (default 0.002, EDM's sampler)")
    p.add_argument("--sigma-max", type=float, default=None, help="highest σ of the noise grid (default 80, EDM's sampler)")
    p.add_argument("--train-noise", default=None, choices=["uniform", "uniform_range", "lognormal"],
                   help="training-time noise of unlearning and L_null: uniform over all steps (default), "
                        "uniform over the steps in [σ_min, σ_max], or log-normal in σ as the reference's EDM")
    p.add_argument("--loss-weighting", default=None, choices=["none", "edm"],
                   help="none: the model's own objective (default); edm: EDM's weighted x0 error")
    p.add_argument("--lr-factor", type=float, default=None, help="unlearning lr = training lr ÷ this")
    p.add_argument("--paper-settings", action="store_true",
                   help="start from the paper's defaults, ignoring the model folder's mucs_settings.json")
    p.add_argument("--frozen", default=None, help="comma-separated parameter-name substrings to freeze")
    p.add_argument("--unbounded", action="store_true", help="ablation: plain gradient ascent (no L_null bound)")
    p.add_argument("--no-retain", action="store_true", help="ablation: no retain term")
    p.add_argument("--fresh-noise", action="store_true", help="ablation: fresh noise for the unlearned losses")
    p.add_argument("--unnormalised", action="store_true", help="ablation: score = mean(L_u − L_o)")
    p.add_argument("--train-lr", type=float, default=None,
                   help="the model's training learning rate, when its folder has no mucs_train.json (or to override it)")
    p.add_argument("--image-column", default=None, help="Hugging Face dataset: image column (default: the first Image feature)")
    p.add_argument("--label-column", default=None, help="Hugging Face dataset: label column (default: a ClassLabel feature)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default="mucs_out", help="run folder: new, empty, or an earlier run's (replaced)")
    p.add_argument("--force", action="store_true", help=FORCE_HELP)
    p.set_defaults(fn=cmd_attribute)

    try:  # the counterfactual evaluation lives in its own module
        from .evaluate import add_parser as add_evaluate_parser
    except ImportError:
        add_evaluate_parser = None
    if add_evaluate_parser is not None:
        add_evaluate_parser(sub)
        ev = sub.choices.get("evaluate")
        if ev is not None and "--force" not in ev._option_string_actions:
            ev.add_argument("--force", action="store_true",
                            help="replace an existing --out even when it is not an evaluate results JSON")
            ev.set_defaults(fn=_guard_evaluate_out(ev.get_default("fn")))
    from .report import add_parser as add_report_parser   # python -m mucs report RUN_DIR --out report.html
    add_report_parser(sub)
    return ap


def _is_evaluate_json(path):
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and "methods" in d and "scale" in d


def _guard_evaluate_out(fn):
    """evaluate --out: an existing file is replaced only when it holds evaluate's results (or --force)."""
    def cmd(a):
        from .cache import check_out_file
        if a.out is not None:
            check_out_file(a.out, force=a.force, ours=_is_evaluate_json)
        return fn(a)
    return cmd


def main(argv=None):
    a = build_parser().parse_args(argv)
    try:
        _check_numbers(a)
        a.fn(a)
    except MucsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
