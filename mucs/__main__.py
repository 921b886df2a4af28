"""Command line: `mucs [-v] {train,generate,attribute,report,evaluate} ...` (also `python -m mucs`).
Errors: one line, exit status 2. The attribute options are generated from mucs.settings.Settings."""
import argparse
import dataclasses
import json
import logging
import math
import os
import sys

from .errors import MucsError

FORCE_HELP = ("also write into an existing --out folder that mucs did not make, beside its files: they are all kept "
              "(without --force such a folder is refused). Never needed for a new or empty folder or an earlier "
              "%s folder (only the files mucs wrote there are replaced; files you added are kept); never "
              "allowed for a folder that is, holds or lies inside an input")


def _check_device(name):
    from .checks import check_device
    check_device(name)


def _check_numbers(a):
    """Every float option finite, every --seed in range: one error line instead of NaN results."""
    from .checks import check_seed
    for dest, v in sorted(vars(a).items()):
        flag = "--" + dest.replace("_", "-")
        if isinstance(v, float) and not math.isfinite(v):
            raise MucsError(f"{flag} must be a finite number, got {v}")
        if dest == "seed" and v is not None:
            check_seed(v, flag)


def _add_model_args(p, data=True):
    from .defaults import DEFAULT_MODEL
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="diffusers model: a folder in any common layout (root-level, unet/ + scheduler/, a pipeline with "
                        "model_index.json) or a Hub id in the local Hugging Face cache (default: the embedded model)")
    if data:
        p.add_argument("--data", default=None,
                       help="training set: .npz, image folder, or a Hugging Face dataset saved with save_to_disk "
                            "(default: the embedded set when --model is the default)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present, else CPU)")


def _resolve_data(a):
    from .defaults import DATA_REQUIRED, DEFAULT_DATA, DEFAULT_MODEL
    if a.data:
        return a.data
    if os.path.abspath(a.model) == DEFAULT_MODEL:
        return DEFAULT_DATA
    raise MucsError(DATA_REQUIRED)


def cmd_train(a):
    from .cache import check_out_dir, default_cache_dir
    from .sources.data import load_dataset
    from .progress import TextBar
    from .sources.train import TrainOptions, train
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
    check_out_dir(a.out, "model", force=a.force, protect=[a.data], inside=[default_cache_dir()])
    data = load_dataset(a.data)
    if a.size and a.size != data.size:
        raise MucsError(f"--size {a.size} does not match the dataset's {data.size}x{data.size} images")
    from .sources.models import pick_device
    bar = TextBar()
    rec = train(data, a.out, opts, device=pick_device(a.device), progress=bar, force=a.force)
    bar.close()
    print(f"saved {a.out}: {rec['parameters']} parameters, {a.steps} steps, final loss {rec['final_loss']:.4f}, "
          f"{rec['train_seconds']:.0f} s")


def cmd_generate(a):
    from .cache import check_out_file
    from .sources.generate import (check_guidance, check_steps, default_guidance, generate, is_generated_png,
                                   save_generated_png)
    from .sources.models import load_model
    from .progress import TextBar
    _check_device(a.device)
    check_steps(a.steps)
    if not a.out.lower().endswith(".png"):
        raise MucsError("--out must be a .png file")
    # an existing --out is replaced only when it is a PNG that generate wrote (or with --force)
    check_out_file(a.out, force=a.force, ours=is_generated_png, protect=[a.model, a.lora])
    if a.guidance_scale is not None:
        check_guidance(a.guidance_scale)
    model = load_model(a.model, a.device, lora=a.lora)
    label, prompt = model.check_label(a.label), model.check_prompt(a.prompt)
    check_steps(a.steps, model.scheduler.config.num_train_timesteps)
    guidance = default_guidance(model) if a.guidance_scale is None else a.guidance_scale
    bar = TextBar()
    img = generate(model, [label], [a.seed], steps=a.steps, progress=bar,
                   prompts=None if prompt is None else [prompt], guidance_scale=guidance,
                   negative_prompt=a.negative_prompt)[0]
    bar.close()
    info = dict(label=label, seed=a.seed, steps=a.steps)
    if prompt is not None:
        info.update(prompt=prompt, guidance_scale=guidance, negative_prompt=a.negative_prompt)
    save_generated_png(img, a.out, info)
    print(f"wrote {a.out} (" + ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in info.items()) + ")")


def _list_classes(a):
    """--list-classes: print `index: name` for every class of the model (names from the data when
    given, else from the model's mucs_train.json), then stop."""
    from .sources.data import load_dataset
    from .sources.models import class_names_for, load_model
    model = load_model(a.model, a.device or "cpu", train_lr=a.train_lr, lora=a.lora)
    data_path = a.data or (_resolve_data(a) if os.path.abspath(a.model) == _default_model() else None)
    data = load_dataset(data_path, image_column=a.image_column, label_column=a.label_column,
                        caption_column=a.caption_column) if data_path else None
    if model.conditioning == "text":
        from .sources.captions import caption_preview
        print("the model is text-conditional: attribute with --prompt (the caption the image was made with)")
        if data is None:
            print("(pass --data to see the training captions)")
            return
        if data.captions is None:
            raise MucsError("the model is text-conditional but the dataset has no captions (--caption-column)")
        distinct = len(set(data.captions))
        print(f"{len(data.captions)} training captions, {distinct} distinct; the most frequent:")
        for caption, count in caption_preview(data.captions):
            print(f"  {count:>6}  {caption}")
        return
    names = class_names_for(model, data)
    if names is None:
        print("the model is unconditional: it has no classes (attribute without --label)")
        return
    for i, name in enumerate(names):
        print(f"{i}: {name}")


def _default_model():
    from .defaults import DEFAULT_MODEL
    return DEFAULT_MODEL


def cmd_attribute(a):
    from .method.attribute import Attributor
    from .sources.data import load_dataset, load_query_image
    from .defaults import cache_dir_for, default_runs_dir, settings_for
    from .sources.models import class_names_for, load_model
    from .progress import TextBar
    from .settings import cli_overrides
    from .cache import check_out_dir, check_writable_dir
    _check_device(a.device)
    overrides = cli_overrides(a)        # unknown keys and wrong types: one error before anything is loaded
    if a.list_classes:
        return _list_classes(a)
    if sum(bool(v) for v in (a.image, a.images, a.seeds)) > 1:
        raise MucsError("give one of --image FILE ..., --images DIR or --seeds (with --label): one kind of query per call")
    if a.images or a.seeds:
        return _attribute_collection(a, overrides)
    if not a.image:
        raise MucsError("--image is required (or --images DIR, --seeds 0-15, or --list-classes to see the model's classes)")
    if a.out and a.runs:
        raise MucsError("give --out DIR (this folder) or --runs DIR (a new run in that runs folder), not both")
    method_options = _method_options(a)
    if a.paper_settings and a.fast:
        raise MucsError("--fast and --paper-settings are two different starting points: pass one")
    images, labels, prompts = list(a.image), list(a.label or []), list(a.prompt or [])
    if len(labels) > 1 and len(labels) != len(images):
        raise MucsError(f"give one --label for every --image ({len(images)}), or a single one for all of them")
    if len(prompts) > 1 and len(prompts) != len(images):
        raise MucsError(f"give one --prompt for every --image ({len(images)}), or a single one for all of them")
    labels = labels * len(images) if len(labels) == 1 else (labels or [None] * len(images))
    prompts = prompts * len(images) if len(prompts) == 1 else (prompts or [None] * len(images))
    cache_dir = a.cache_dir or cache_dir_for(a.model)
    runs_root = "" if a.out else os.path.abspath(a.runs or default_runs_dir())   # "": unused with --out
    outs = _query_outs(a.out, images)
    # before anything is loaded or computed: every --out must be new, empty or an earlier run (or
    # --force), never one of this command's inputs; the cache and runs folders must be writable
    for out in outs if a.out else ():
        check_out_dir(out, "run", force=a.force, protect=[a.model, a.data, cache_dir, a.lora] + images,
                      exact=[default_runs_dir()])
    if not a.out:
        check_writable_dir(runs_root, "--runs" if a.runs else "the runs folder ($MUCS_RUNS_DIR)")
    check_writable_dir(cache_dir, "--cache-dir" if a.cache_dir else "the cache folder ($MUCS_CACHE_DIR)")
    from .method.distributed import device_for_rank
    model = load_model(a.model, a.device or device_for_rank(), train_lr=a.train_lr, lora=a.lora)
    labels = [model.check_label(lab) for lab in labels]
    prompts = [model.check_prompt(p if p is not None else _png_prompt(im, model)) for p, im in zip(prompts, images)]
    from .method.baselines import check_supported
    check_supported(a.method, model)   # D-TRAK/TRAK/AbU: pixel UNet2DModel only, one line before any work
    data = load_dataset(_resolve_data(a), image_column=a.image_column, label_column=a.label_column,
                        caption_column=a.caption_column)
    data.check_matches(model)
    # every query read before any work; transparency composited on the training set's background
    queries = [load_query_image(im, model.channels, model.size, data.background()) for im in images]
    profile = "paper" if a.paper_settings else "fast" if a.fast else "recommended"
    base = settings_for(model.path if os.path.isdir(model.path or "") else a.model, profile)
    s = base.replace(**overrides)
    s.validate()
    if s.top_k > len(data):
        raise MucsError(f"--top-k {s.top_k} is more than the {len(data)} training images")
    from .method.distributed import init_from_env
    group = init_from_env()     # under torchrun: the loss matrices are split over the ranks
    # one Attributor for every query: the noise set, L_o and L_null are computed (or read) once
    attributor = Attributor(model, data, s, cache_dir=cache_dir, allow_untrained=a.allow_untrained)
    ctx = None
    if a.method != "mucs":   # another method, in the same run format (its query-independent part computed once)
        from .method.baselines import Context
        ctx = Context(model, data, s, cache_dir=cache_dir, options={a.method: method_options})
        ctx._attributor = attributor
    class_names = class_names_for(model, data)
    if ctx is None and (group is None or group.rank == 0):   # before a long run: which settings, how long
        print(f"{profile} settings (K={s.noises}, B={s.batch_size}, step cap {s.max_steps}); per query "
              f"{attributor.estimate(s).text()}", file=sys.stderr)
    for n, (image, query, label, prompt, out) in enumerate(zip(images, queries, labels, prompts, outs)):
        if len(images) > 1 and (group is None or group.rank == 0):
            print(f"query {n + 1}/{len(images)}: {image}")
        bar = TextBar() if group is None or group.rank == 0 else None
        if ctx is not None:
            from .method.baselines import attribution
            res = attribution(a.method, ctx, dataclasses.replace(query, prompt=prompt), label,
                              source=os.path.abspath(image), progress=bar)
        else:
            res = attributor.attribute(query, label, progress=bar, source=os.path.abspath(image), prompt=prompt)
        if bar is not None:
            bar.close()
        if group is None or group.rank == 0:   # rank 0 writes the runs
            _write_cli_run(res, out, runs_root, a.force, image, model, data, class_names)


def _method_options(a) -> dict:
    """--method and --method-options checked before anything is loaded (one error line)."""
    from .method import baselines
    baselines.components(a.method)
    if a.method_options is None:
        return {}
    text = a.method_options
    if os.path.isfile(text):
        with open(text) as f:
            text = f.read()
    try:
        opts = json.loads(text)
    except ValueError as e:
        raise MucsError(f"--method-options must be a JSON object: {e}") from None
    if not isinstance(opts, dict):
        raise MucsError("--method-options must be a JSON object, e.g. '{\"dim\": 4096}'")
    if a.method in ("dtrak", "trak"):
        from .method.dtrak import options_from
        options_from(opts)
    elif a.method == "abu":
        from .method.abu import abu_options
        abu_options(opts)
    elif opts:
        raise MucsError(f"--method-options: the method {a.method!r} takes none (MUCS takes its settings flags)")
    return opts


def _attribute_collection(a, overrides):
    """--images DIR or --seeds (class × seeds, generated first): one collection (a folder with
    collection.json and a run folder per item; mucs/explorer/collection.py), the one the app writes."""
    from .cache import check_out_dir, check_writable_dir
    from .defaults import cache_dir_for, default_runs_dir, settings_for
    from .explorer import collection as coll
    from .method.attribute import Attributor
    from .method.distributed import device_for_rank, init_from_env
    from .progress import BatchProgress, TextBar, format_seconds
    from .sources.data import load_dataset, load_query_image
    from .sources.models import class_names_for, load_model
    if a.paper_settings and a.fast:
        raise MucsError("--fast and --paper-settings are two different starting points: pass one")
    if a.out and a.runs:
        raise MucsError("give --out DIR (this folder) or --runs DIR (a new collection in that runs folder), not both")
    files = coll.images_in(a.images) if a.images else []
    seeds = coll.parse_seeds(a.seeds) if a.seeds else []
    labels = list(a.label or [])
    if files and len(labels) > 1 and len(labels) != len(files):
        raise MucsError(f"give one --label for every image in {a.images} ({len(files)}), or a single one for all")
    cache_dir = a.cache_dir or cache_dir_for(a.model)
    if a.out:
        out = os.path.abspath(a.out)
    else:
        runs_root = os.path.abspath(a.runs or default_runs_dir())
        check_writable_dir(runs_root, "--runs" if a.runs else "the runs folder ($MUCS_RUNS_DIR)")
        os.makedirs(runs_root, exist_ok=True)
        out = os.path.join(runs_root, coll.new_id())
    check_out_dir(out, coll.KIND, force=a.force, what="--out", protect=[a.model, a.data, cache_dir, a.lora, a.images] + files)
    check_writable_dir(cache_dir, "--cache-dir" if a.cache_dir else "the cache folder ($MUCS_CACHE_DIR)")
    model = load_model(a.model, a.device or device_for_rank(), train_lr=a.train_lr, lora=a.lora)
    prompts = [model.check_prompt(p) for p in (a.prompt or [])]
    if model.conditioning == "text" and not prompts:
        raise MucsError("the model is text-conditional: give --prompt (with --seeds: the prompts to generate, each × "
                        "each seed; with --images: one for all images or one per image)")
    if files and len(prompts) > 1 and len(prompts) != len(files):
        raise MucsError(f"give one --prompt for every image in {a.images} ({len(files)}), or a single one for all")
    data = load_dataset(_resolve_data(a), image_column=a.image_column, label_column=a.label_column,
                        caption_column=a.caption_column)
    data.check_matches(model)
    if seeds:
        from .sources.generate import check_steps
        steps = check_steps(a.sampler_steps, model.scheduler.config.num_train_timesteps)
        labs = [model.check_label(v) for v in (labels or [None])]
        items = coll.prompt_items(prompts, seeds, steps) if prompts else coll.generated_items(labs, seeds, steps)
    else:
        labs = labels * len(files) if len(labels) == 1 else (labels or [None] * len(files))
        labs = [model.check_label(v) for v in labs]
        for f in files:     # every image read before any work: a bad one is one error, nothing written
            load_query_image(f, model.channels, model.size)
        items = coll.image_items(files, labs)
        for it, p in zip(items, (prompts * len(files) if len(prompts) == 1 else prompts)):
            it.prompt = p
    profile = "paper" if a.paper_settings else "fast" if a.fast else "recommended"
    s = settings_for(model.path if os.path.isdir(model.path or "") else a.model, profile).replace(**overrides)
    s.validate()
    if s.top_k > len(data):
        raise MucsError(f"--top-k {s.top_k} is more than the {len(data)} training images")
    group = init_from_env()
    lead = group is None or group.rank == 0
    # one Attributor for every item: the noise set, L_o and L_null are computed once
    attributor = Attributor(model, data, s, cache_dir=cache_dir, allow_untrained=a.allow_untrained)
    attributor.check_memory(s)
    class_names = class_names_for(model, data)
    cid = os.path.basename(out)
    asked = (dict(kind="generated", labels=labs, seeds=seeds, sampler_steps=items[0].sampler_steps) if seeds
             else dict(kind="images", files=[it.record()["file"] for it in items], labels=labs))
    if prompts:
        asked["prompts"] = prompts
    record = coll.new_record(cid, items, asked, s.to_dict(), model, data, class_names)
    if lead:
        coll.create_folder(out, record, force=a.force)
    bp = BatchProgress(len(items), max_steps=s.max_steps)
    bar: dict = {"bar": None}

    def progress(ev):
        if not lead:
            return
        if ev.event is not None:
            bp(ev.event)
            bar["bar"](ev.event)
            return
        if ev.status == coll.RUNNING:
            bp.start_item()
            bar["bar"] = TextBar()
            print(f"item {ev.index + 1}/{ev.count}: {ev.item.source}"
                  + (f", class {ev.item.label}" if ev.item.label is not None else "")
                  + (f", prompt “{ev.item.prompt}”" if ev.item.prompt else ""), file=sys.stderr)
            return
        if bar["bar"] is not None:
            bar["bar"].close()
        bp.finish_item(ev.seconds, saved=ev.status == coll.DONE)
        o = bp()
        left = f", about {format_seconds(o.remaining)} left" if o.remaining and o.done < o.count else ""
        what = f"saved {ev.item.name} ({ev.item.seconds:.0f} s)" if ev.status == coll.DONE else \
            f"failed {ev.item.name}: {ev.item.error}"
        print(f"{what}; {o.done}/{o.count} done{left}", file=sys.stderr)

    record = coll.run_batch(attributor, items, s, out, record, class_names, progress, write=lead)
    if lead:
        done = sum(it["status"] == coll.DONE for it in record["items"])
        st = record.get("stage_times") or {}
        print(f"collection: {done}/{len(items)} items attributed ({record['status']}) in {record['seconds']:.0f} s"
              + ("; shared stages: " + ", ".join(f"{k}={v:.1f}s" for k, v in st.items()) if st else ""))
        for it in record["items"]:
            if it["status"] == coll.FAILED:
                print(f"warning: {it['name']} failed: {it.get('error')}")
        print(f"collection saved: {out}  (report: mucs report {out}; the app lists it with: "
              f"python app.py --runs {os.path.dirname(out)})")


def _png_prompt(path, model):
    """A text model's query made by `mucs generate` keeps its prompt (the PNG's mucs chunk): used when
    no --prompt is given."""
    if model.conditioning != "text":
        return None
    from .sources.generate import generated_info
    return (generated_info(path) or {}).get("prompt")


def _query_outs(out, images) -> list:
    """Where each query's run goes: --out itself for one image; for several, a subfolder of --out
    per image, named after it (with its position when two images share a name); None: the runs folder."""
    if not out:
        return [None] * len(images)
    if len(images) == 1:
        return [out]
    from .cache import folder_kind
    if os.path.isdir(out) and folder_kind(out) == "run":
        raise MucsError(f"--out {out} is a run folder; with several --image give a folder for their runs")
    stems = [os.path.splitext(os.path.basename(im))[0] or "query" for im in images]
    return [os.path.join(out, st if stems.count(st) == 1 else f"{n + 1}-{st}") for n, st in enumerate(stems)]


def _write_cli_run(res, out, runs_root, force, image, model, data, class_names):
    """Write one query's run (into `out`, or a new run in `runs_root`) and print what it found."""
    for note in res.query["conversions"]:
        print(f"note: query {note}")
    from .explorer.history import RunStore, write_run
    meta = dict(kind="cli", source=os.path.abspath(image), model=model.path, data=data.source,
                method=res.info.get("method", "mucs"))
    if out:
        out = write_run(res, out, meta, force=force, class_names=class_names)
    else:
        store = RunStore(runs_root, examples=None)
        out = store.path(store.save(res, meta, class_names=class_names))
    if res.loss_null is None:
        print(f"method {res.info.get('method')}: {res.info.get('method_description')}")
    else:
        print(f"unlearning: {res.steps} steps, converged={res.converged}, L_null={res.loss_null:.4f}")
    print("stage times (s): " + ", ".join(f"{k}={v:.1f}" for k, v in res.stage_times.items()))
    print("top-k: " + " ".join(f"{int(i)}({res.scores[i]:.4f})" for i in res.top))
    from .explorer.diagnostics import warnings
    for w in warnings(res.scores, res.top, res.labels, res.query.get("label"), res.converged, res.steps) \
            if res.loss_null is not None else ():   # the tie and saturation warnings read MUCS's skew
        print(f"warning: {w}")
    print(f"wrote {out}/scores.csv and {out}/result.json")
    print(f"run saved: {out}  (the app lists it with: python app.py --runs {os.path.dirname(out)})")


def build_parser():
    from . import __version__
    from .settings import add_cli_options
    ap = argparse.ArgumentParser(prog="mucs", description="MUCS training-data attribution for diffusion models")
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="log what the library does (fallbacks, cache misses and rebuilds, dropped settings) to "
                         "stderr; -vv for debug detail")
    ap.add_argument("--version", action="version", version=f"mucs {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("train", help="train a diffusers UNet2DModel (class-conditional when the data has labels)",
                       description="Train a small pixel-space UNet2DModel from scratch on a training set, with an "
                                   "EMA of its weights; the folder written (model_index.json, unet/, scheduler/, "
                                   "mucs_train.json) is what `mucs attribute --model` and the app load. Every "
                                   "default is shown in brackets.")
    p.add_argument("--data", required=True,
                   help="the training set: an .npz (images, labels), an image folder or a Hugging Face dataset")
    p.add_argument("--out", required=True, help="the model folder to write (new, empty, or a model train wrote)")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps [2000]")
    p.add_argument("--batch-size", type=int, default=64, help="training images per step [64]")
    p.add_argument("--lr", type=float, default=2e-4,
                   help="AdamW learning rate [0.0002]; recorded in mucs_train.json, unlearning's lr is a fraction of it")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights, batches and noise [0]")
    p.add_argument("--ema-decay", type=float, default=0.999, help="decay of the weights' exponential moving average [0.999]")
    p.add_argument("--channels", default="32,64,64", help="block_out_channels, comma separated [32,64,64]")
    p.add_argument("--layers-per-block", type=int, default=1, help="ResNet layers per UNet block [1]")
    p.add_argument("--no-attention", action="store_true", help="no attention blocks (default: attention in the lowest block)")
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction", "sample"],
                   help="what the network predicts [epsilon]")
    p.add_argument("--beta-schedule", default="squaredcos_cap_v2", help="the DDPM noise schedule [squaredcos_cap_v2]")
    p.add_argument("--timesteps", type=int, default=1000, help="diffusion timesteps of the scheduler [1000]")
    p.add_argument("--save-every", type=int, default=0, help="also save the EMA weights every N steps [0: only at the end]")
    p.add_argument("--size", type=int, default=None, help="check that the data has this resolution [no check]")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:1 [the first GPU, else cpu]")
    p.add_argument("--force", action="store_true", help=FORCE_HELP % "model")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("generate", help="sample one image; the same seed gives the same image")
    _add_model_args(p, data=False)
    p.add_argument("--label", type=int, default=None, help="the class (class-conditional models)")
    p.add_argument("--prompt", default=None, help="the caption to sample from (text-conditional models)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale, 1..50 (default: the model's recorded one, else its pipeline's)")
    p.add_argument("--negative-prompt", default="", help="the unconditional branch of guidance (default: empty)")
    p.add_argument("--lora", default=None, help="a LoRA adapter for the model (folder or .safetensors)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps, 1..1000")
    p.add_argument("--out", required=True, help="a new .png file, or one that generate wrote before")
    p.add_argument("--force", action="store_true", help="replace an existing --out even when generate did not write it")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("attribute", help="rank the training images by their MUCS skew for a query image")
    _add_model_args(p)
    p.add_argument("--image", nargs="+", default=None,
                   help="the query image, or several (they share the noise set, L_o and L_null; one run each); "
                        "required unless --list-classes")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="attribute every image file in DIR as one collection (a folder with collection.json and a "
                        "run per image; the app's History lists it); --label: one per image (sorted by name) or one for all")
    p.add_argument("--seeds", default=None, metavar="SEEDS",
                   help="generate then attribute: one query per class given with --label and seed (e.g. 0-15, "
                        "0,3,7 or 0-3,8), all in one collection")
    p.add_argument("--sampler-steps", type=int, default=50, help="DDIM steps of the images --seeds generates (default 50)")
    p.add_argument("--label", type=int, nargs="+", default=None,
                   help="the query's class (class-conditional models; see --list-classes); with several --image, "
                        "one per image or one for all; with --seeds, each class × each seed")
    p.add_argument("--prompt", nargs="+", default=None,
                   help="the query's caption (text-conditional models; an image made by `mucs generate` keeps its own); "
                        "with several --image, one per image or one for all")
    p.add_argument("--list-classes", action="store_true",
                   help="print the class index and name of every class (a text model: its most frequent training "
                        "captions), then exit")
    p.add_argument("--lora", default=None,
                   help="a LoRA adapter on --model (a folder with pytorch_lora_weights.safetensors, or the file): by "
                        "default unlearning updates only the adapter (see --unlearn-params)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="score a network that does not look trained on --data (its loss near L_null): research only")
    p.add_argument("--paper-settings", action="store_true",
                   help="start from the paper's defaults, ignoring the model folder's mucs_settings.json")
    p.add_argument("--fast", action="store_true",
                   help="start from the fast profile: the recommended settings with half the unlearning batch at "
                        "twice the lr and screened scoring (docs/benchmarks.md: how far its top-k moves)")
    p.add_argument("--train-lr", type=float, default=None,
                   help="the model's training learning rate, when its folder has no mucs_train.json (or to override it)")
    p.add_argument("--image-column", default=None, help="Hugging Face dataset: image column (default: the first Image feature)")
    p.add_argument("--label-column", default=None, help="Hugging Face dataset: label column (default: a ClassLabel feature)")
    p.add_argument("--caption-column", default=None,
                   help="captions of a Hugging Face dataset or an image folder's metadata.jsonl/.csv (default: a column "
                        "named text, caption or prompt)")
    p.add_argument("--cache-dir", default=None,
                   help="where L_o and L_null caches are written (default $MUCS_CACHE_DIR, else ~/.cache/mucs)")
    p.add_argument("--out", default=None,
                   help="write the run into this folder (new, empty, or an earlier run's: its run files replaced, "
                        "files you added kept; any other folder only with --force); with several "
                        "--image, one run per image in subfolders named after them; with --images or --seeds, the "
                        "collection's folder (new, empty, or an earlier collection's); default: a new run "
                        "(or collection) in the runs folder")
    p.add_argument("--runs", default=None,
                   help="runs folder the new run is saved in (default: $MUCS_RUNS_DIR, runs/ in a checkout, else "
                        "~/.local/share/mucs/runs); the app lists the same folder")
    p.add_argument("--force", action="store_true", help=FORCE_HELP % "run")
    p.add_argument("--method", default="mucs", metavar="NAME",
                   help="attribution method: mucs (default), dtrak, trak, abu, pixel_nn, feature_nn, a MUCS ablation or an "
                        "ensemble a+b; the run records it (docs/methods-compared.md)")
    p.add_argument("--method-options", default=None, metavar="JSON",
                   help="options of dtrak/trak (timesteps, dim, lam, seed, proj_type, block, batch) or abu (lr, steps, "
                        "batch, accum, loss_timesteps, fisher_epochs, weights, seed), as JSON or a JSON file; "
                        "default: the papers' values")
    add_cli_options(p)   # one option per mucs.Settings field, plus --settings JSON
    p.set_defaults(fn=cmd_attribute)

    try:  # the counterfactual evaluation lives in its own module
        from .evaluation.cli import add_parser as add_evaluate_parser
    except ImportError as e:   # still a command: running it is one error line naming what is missing
        add_evaluate_parser = None   # type: ignore[assignment]
        _add_unavailable_evaluate(sub, e)
    if add_evaluate_parser is not None:
        add_evaluate_parser(sub)
        ev = sub.choices.get("evaluate")
        if ev is not None and "--force" not in ev._option_string_actions:
            ev.add_argument("--force", action="store_true",
                            help="replace an existing --out even when it is not an evaluate results JSON")
            ev.set_defaults(fn=_guard_evaluate_out(ev.get_default("fn")))
    from .explorer.report_command import add_parser as add_report_parser   # python -m mucs report RUN_DIR --out report.html
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


def setup_logging(verbose: int = 0):
    """Send the library's log (logger "mucs") to stderr: warnings only by default, info with
    --verbose, debug with -vv. Returns a function that undoes it (main calls it on the way out, so
    a caller of main() in the same process keeps its own logging setup)."""
    logger = logging.getLogger("mucs")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "warning: %(message)s"))
    handler.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.WARNING)
    old_level = logger.level
    logger.addHandler(handler)
    if verbose and (logger.level == logging.NOTSET or logger.level > handler.level):
        logger.setLevel(handler.level)

    def undo():
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return undo


def _add_unavailable_evaluate(sub, error: ImportError) -> None:
    """`evaluate` when its module cannot be imported: it takes any arguments and exits 2 with an error
    line naming the missing module, rather than disappearing from the CLI."""
    missing = error.name or "a module it needs"

    def unavailable(a):
        raise MucsError(f"the evaluate command is unavailable: importing it failed on {missing} ({error}); "
                        "install the project's requirements (pip install -r requirements.txt)")
    ev = sub.add_parser("evaluate", help=f"(unavailable: {missing} failed to import)", add_help=False,
                        prefix_chars="+")          # no options: every argument is taken as is
    ev.add_argument("args", nargs="*")
    ev.set_defaults(fn=unavailable)


def main(argv=None):
    a = build_parser().parse_args(argv)
    undo_logging = setup_logging(a.verbose)
    try:
        _check_numbers(a)
        a.fn(a)
    except MucsError as e:
        return _error(str(e))
    except OSError as e:   # a disk filling, a file system refusing a write: its words, in one line
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        return _error(f"{e.strerror or e}{where}", verbose=a.verbose)
    except Exception as e:   # a bug: one line still (-v shows the traceback), not a wall of text
        return _error(f"unexpected {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''} "
                      "(please report it; -v shows the traceback)", verbose=a.verbose, status=1)
    finally:
        undo_logging()
    return 0


def _error(text: str, verbose: int = 0, status: int = 2) -> int:
    """Print one `error:` line on a line of its own (after any progress bar); the traceback with -v."""
    from .progress import close_open_bars
    close_open_bars()
    if verbose:
        import traceback
        traceback.print_exc()
    print(f"error: {text}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
