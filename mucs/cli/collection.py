"""`mucs attribute --images DIR` / `--seeds`: one collection (a folder with collection.json and a run
folder per item; mucs/explorer/collection.py), the same the app's batch tab writes."""
import os
import sys
from typing import Optional

from mucs.cli.common import load_data, profile, settings_in_force
from mucs.errors import MucsError


def attribute_collection(a, overrides):
    """Check everything, build the items (class × seeds or prompts × seeds, generated first, or the
    images of a folder), then attribute them all with one Attributor."""
    from mucs.explorer import collection as coll
    from mucs.method.distributed import device_for_rank
    from mucs.sources.models import load_model
    profile(a)
    if a.out and a.runs:
        raise MucsError("give --out DIR (this folder) or --runs DIR (a new collection in that runs folder), not both")
    files = coll.images_in(a.images) if a.images else []
    seeds = coll.parse_seeds(a.seeds) if a.seeds else []
    labels = list(a.label or [])
    if files and len(labels) > 1 and len(labels) != len(files):
        raise MucsError(f"give one --label for every image in {a.images} ({len(files)}), or a single one for all")
    out, cache_dir = _check_outputs(a, files)
    model = load_model(a.model, a.device or device_for_rank(), train_lr=a.train_lr, lora=a.lora)
    prompts = [q for q in (model.check_prompt(p) for p in (a.prompt or [])) if q is not None]
    if model.conditioning == "text" and not prompts:
        raise MucsError("the model is text-conditional: give --prompt (with --seeds: the prompts to generate, each × "
                        "each seed; with --images: one for all images or one per image)")
    if files and len(prompts) > 1 and len(prompts) != len(files):
        raise MucsError(f"give one --prompt for every image in {a.images} ({len(files)}), or a single one for all")
    data = load_data(a, model)
    items, labs = _items(a, model, files, seeds, labels, prompts)
    s = settings_in_force(a, model, data, overrides)
    asked = (dict(kind="generated", labels=labs, seeds=seeds, sampler_steps=items[0].sampler_steps) if seeds
             else dict(kind="images", files=[it.record()["file"] for it in items], labels=labs))
    if prompts:
        asked["prompts"] = prompts
    _run(a, model, data, s, items, asked, out, cache_dir)


def _check_outputs(a, files) -> tuple:
    """The collection's folder (--out, or a new one in the runs folder) and the cache folder, both checked
    before anything is loaded: (out, cache_dir)."""
    from mucs.cache import check_out_dir, check_writable_dir
    from mucs.defaults import cache_dir_for, default_runs_dir
    from mucs.explorer import collection as coll
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
    return out, cache_dir


def _items(a, model, files, seeds, labels, prompts) -> tuple:
    """The collection's items and their checked labels; every image read before any work (a bad one is
    one error, nothing written)."""
    from mucs.explorer import collection as coll
    from mucs.sources.data import load_query_image
    if seeds:
        from mucs.sources.generate import check_steps
        steps = check_steps(a.sampler_steps, model.scheduler.config.num_train_timesteps)
        labs = [model.check_label(v) for v in (labels or [None])]
        items = coll.prompt_items(prompts, seeds, steps) if prompts else coll.generated_items(labs, seeds, steps)
        return items, labs
    labs = labels * len(files) if len(labels) == 1 else (labels or [None] * len(files))
    labs = [model.check_label(v) for v in labs]
    for f in files:
        load_query_image(f, model.channels, model.size)
    items = coll.image_items(files, labs)
    for it, p in zip(items, (prompts * len(files) if len(prompts) == 1 else prompts)):
        it.prompt = p
    return items, labs


def _run(a, model, data, s, items, asked, out, cache_dir) -> None:
    """Attribute every item with one Attributor (the noise set, L_o and L_null computed once), printing
    each item's progress; rank 0 writes the collection."""
    from mucs.explorer import collection as coll
    from mucs.method.attribute import Attributor
    from mucs.method.distributed import init_from_env
    from mucs.sources.models import class_names_for
    group = init_from_env()
    lead = group is None or group.rank == 0
    attributor = Attributor(model, data, s, cache_dir=cache_dir, allow_untrained=a.allow_untrained)
    attributor.check_memory(s)
    class_names = class_names_for(model, data)
    record = coll.new_record(os.path.basename(out), items, asked, s.to_dict(), model, data, class_names)
    if lead:
        coll.create_folder(out, record, force=a.force)
    progress = ItemProgress(len(items), s.max_steps) if lead else (lambda ev: None)
    record = coll.run_batch(attributor, items, s, out, record, class_names, progress, write=lead)
    if lead:
        _report(record, items, out)


class ItemProgress:
    """The batch's progress on stderr: a bar per item, then a line per finished item with the time left."""

    def __init__(self, count: int, max_steps: int):
        from mucs.progress import BatchProgress, TextBar
        self.overall = BatchProgress(count, max_steps=max_steps)
        self.bar: Optional[TextBar] = None

    def __call__(self, ev) -> None:
        from mucs.explorer import collection as coll
        from mucs.progress import TextBar, format_seconds
        if ev.event is not None:
            self.overall(ev.event)
            if self.bar is not None:
                self.bar(ev.event)
            return
        if ev.status == coll.RUNNING:
            self.overall.start_item()
            self.bar = TextBar()
            print(f"item {ev.index + 1}/{ev.count}: {ev.item.source}"
                  + (f", class {ev.item.label}" if ev.item.label is not None else "")
                  + (f", prompt “{ev.item.prompt}”" if ev.item.prompt else ""), file=sys.stderr)
            return
        if self.bar is not None:
            self.bar.close()
        self.overall.finish_item(ev.seconds, saved=ev.status == coll.DONE)
        o = self.overall()
        left = f", about {format_seconds(o.remaining)} left" if o.remaining and o.done < o.count else ""
        what = f"saved {ev.item.name} ({ev.item.seconds:.0f} s)" if ev.status == coll.DONE else \
            f"failed {ev.item.name}: {ev.item.error}"
        print(f"{what}; {o.done}/{o.count} done{left}", file=sys.stderr)


def _report(record, items, out) -> None:
    from mucs.explorer import collection as coll
    done = sum(it["status"] == coll.DONE for it in record["items"])
    st = record.get("stage_times") or {}
    print(f"collection: {done}/{len(items)} items attributed ({record['status']}) in {record['seconds']:.0f} s"
          + ("; shared stages: " + ", ".join(f"{k}={v:.1f}s" for k, v in st.items()) if st else ""))
    for it in record["items"]:
        if it["status"] == coll.FAILED:
            print(f"warning: {it['name']} failed: {it.get('error')}")
    print(f"collection saved: {out}  (report: mucs report {out}; the app lists it with: "
          f"python app.py --runs {os.path.dirname(out)})")
