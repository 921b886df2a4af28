"""`mucs attribute`: rank the training images for one or more query images (MUCS or another method),
each query a run folder; --images / --seeds make a collection instead (mucs/cli/collection.py)."""
import dataclasses
import json
import os
import sys

from mucs.cli.common import (FORCE_HELP, add_model_args, check_device, default_model, load_data, profile,
                             resolve_data, settings_in_force)
from mucs.errors import MucsError


def add_parser(sub) -> None:
    from mucs.settings import add_cli_options
    p = sub.add_parser("attribute", help="rank the training images by their MUCS skew for a query image")
    add_model_args(p)
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


def cmd_attribute(a):
    from mucs.settings import cli_overrides
    check_device(a.device)
    overrides = cli_overrides(a)        # unknown keys and wrong types: one error before anything is loaded
    if a.list_classes:
        return list_classes(a)
    if sum(bool(v) for v in (a.image, a.images, a.seeds)) > 1:
        raise MucsError("give one of --image FILE ..., --images DIR or --seeds (with --label): one kind of query per call")
    if a.images or a.seeds:
        from mucs.cli.collection import attribute_collection
        return attribute_collection(a, overrides)
    if not a.image:
        raise MucsError("--image is required (or --images DIR, --seeds 0-15, or --list-classes to see the model's classes)")
    if a.out and a.runs:
        raise MucsError("give --out DIR (this folder) or --runs DIR (a new run in that runs folder), not both")
    method_options(a)
    profile(a)
    images, labels, prompts = list(a.image), list(a.label or []), list(a.prompt or [])
    for flag, given in (("--label", labels), ("--prompt", prompts)):
        if len(given) > 1 and len(given) != len(images):
            raise MucsError(f"give one {flag} for every --image ({len(images)}), or a single one for all of them")
    labels = labels * len(images) if len(labels) == 1 else (labels or [None] * len(images))
    prompts = prompts * len(images) if len(prompts) == 1 else (prompts or [None] * len(images))
    outs, runs_root, cache_dir = _check_outputs(a, images)
    from mucs.method.distributed import device_for_rank
    from mucs.sources.data import load_query_image
    from mucs.sources.models import load_model
    model = load_model(a.model, a.device or device_for_rank(), train_lr=a.train_lr, lora=a.lora)
    labels = [model.check_label(lab) for lab in labels]
    prompts = [model.check_prompt(p if p is not None else _png_prompt(im, model)) for p, im in zip(prompts, images)]
    from mucs.method.baselines import check_supported
    check_supported(a.method, model)   # D-TRAK/TRAK/AbU: pixel UNet2DModel only, one line before any work
    data = load_data(a, model)
    # every query read before any work; transparency composited on the training set's background
    queries = [load_query_image(im, model.channels, model.size, data.background()) for im in images]
    s = settings_in_force(a, model, data, overrides)
    _attribute_queries(a, model, data, s, cache_dir, runs_root, list(zip(images, queries, labels, prompts, outs)))


def _check_outputs(a, images) -> tuple:
    """Before anything is loaded or computed: every --out must be new, empty or an earlier run (or
    --force), never one of this command's inputs; the cache and runs folders must be writable.
    Returns (each query's --out or None, the runs folder or "", the cache folder)."""
    from mucs.cache import check_out_dir, check_writable_dir
    from mucs.defaults import cache_dir_for, default_runs_dir
    cache_dir = a.cache_dir or cache_dir_for(a.model)
    runs_root = "" if a.out else os.path.abspath(a.runs or default_runs_dir())   # "": unused with --out
    outs = _query_outs(a.out, images)
    for out in outs if a.out else ():
        check_out_dir(out, "run", force=a.force, protect=[a.model, a.data, cache_dir, a.lora] + images,
                      exact=[default_runs_dir()])
    if not a.out:
        check_writable_dir(runs_root, "--runs" if a.runs else "the runs folder ($MUCS_RUNS_DIR)")
    check_writable_dir(cache_dir, "--cache-dir" if a.cache_dir else "the cache folder ($MUCS_CACHE_DIR)")
    return outs, runs_root, cache_dir


def _attribute_queries(a, model, data, s, cache_dir, runs_root, queries) -> None:
    """Attribute each (image, query, label, prompt, out) with one Attributor (the noise set, L_o and
    L_null computed or read once), or with --method's context; rank 0 writes the runs."""
    from mucs.method.attribute import Attributor
    from mucs.method.distributed import init_from_env
    from mucs.progress import TextBar
    from mucs.sources.models import class_names_for
    group = init_from_env()     # under torchrun: the loss matrices are split over the ranks
    lead = group is None or group.rank == 0
    attributor = Attributor(model, data, s, cache_dir=cache_dir, allow_untrained=a.allow_untrained)
    ctx = None
    if a.method != "mucs":   # another method, in the same run format (its query-independent part computed once)
        from mucs.method.baselines import Context
        ctx = Context(model, data, s, cache_dir=cache_dir, options={a.method: method_options(a)})
        ctx._attributor = attributor
    class_names = class_names_for(model, data)
    if ctx is None and lead:   # before a long run: which settings, how long
        print(f"{profile(a)} settings (K={s.noises}, B={s.batch_size}, step cap {s.max_steps}); per query "
              f"{attributor.estimate(s).text()}", file=sys.stderr)
    for n, (image, query, label, prompt, out) in enumerate(queries):
        if len(queries) > 1 and lead:
            print(f"query {n + 1}/{len(queries)}: {image}")
        bar = TextBar() if lead else None
        if ctx is not None:
            from mucs.method.baselines import attribution
            res = attribution(a.method, ctx, dataclasses.replace(query, prompt=prompt), label,
                              source=os.path.abspath(image), progress=bar)
        else:
            res = attributor.attribute(query, label, progress=bar, source=os.path.abspath(image), prompt=prompt)
        if bar is not None:
            bar.close()
        if lead:   # rank 0 writes the runs
            _write_cli_run(res, out, runs_root, a.force, image, model, data, class_names)


def method_options(a) -> dict:
    """--method and --method-options checked before anything is loaded (one error line)."""
    from mucs.method import baselines
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
        from mucs.method.dtrak import options_from
        options_from(opts)
    elif a.method == "abu":
        from mucs.method.abu import abu_options
        abu_options(opts)
    elif opts:
        raise MucsError(f"--method-options: the method {a.method!r} takes none (MUCS takes its settings flags)")
    return opts


def list_classes(a):
    """--list-classes: print `index: name` for every class of the model (names from the data when
    given, else from the model's mucs_train.json), then stop."""
    from mucs.sources.data import load_dataset
    from mucs.sources.models import class_names_for, load_model
    model = load_model(a.model, a.device or "cpu", train_lr=a.train_lr, lora=a.lora)
    data_path = a.data or (resolve_data(a) if os.path.abspath(a.model) == default_model() else None)
    data = load_dataset(data_path, image_column=a.image_column, label_column=a.label_column,
                        caption_column=a.caption_column) if data_path else None
    if model.conditioning == "text":
        from mucs.sources.captions import caption_preview
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


def _png_prompt(path, model):
    """A text model's query made by `mucs generate` keeps its prompt (the PNG's mucs chunk): used when
    no --prompt is given."""
    if model.conditioning != "text":
        return None
    from mucs.sources.generate import generated_info
    return (generated_info(path) or {}).get("prompt")


def _query_outs(out, images) -> list:
    """Where each query's run goes: --out itself for one image; for several, a subfolder of --out
    per image, named after it (with its position when two images share a name); None: the runs folder."""
    if not out:
        return [None] * len(images)
    if len(images) == 1:
        return [out]
    from mucs.cache import folder_kind
    if os.path.isdir(out) and folder_kind(out) == "run":
        raise MucsError(f"--out {out} is a run folder; with several --image give a folder for their runs")
    stems = [os.path.splitext(os.path.basename(im))[0] or "query" for im in images]
    return [os.path.join(out, st if stems.count(st) == 1 else f"{n + 1}-{st}") for n, st in enumerate(stems)]


def _write_cli_run(res, out, runs_root, force, image, model, data, class_names):
    """Write one query's run (into `out`, or a new run in `runs_root`) and print what it found."""
    for note in res.query["conversions"]:
        print(f"note: query {note}")
    from mucs.explorer.history import RunStore, write_run
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
    from mucs.explorer.diagnostics import warnings
    for w in warnings(res.scores, res.top, res.labels, res.query.get("label"), res.converged, res.steps) \
            if res.loss_null is not None else ():   # the tie and saturation warnings read MUCS's skew
        print(f"warning: {w}")
    print(f"wrote {out}/scores.csv and {out}/result.json")
    print(f"run saved: {out}  (the app lists it with: python app.py --runs {os.path.dirname(out)})")
