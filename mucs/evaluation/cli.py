"""`python -m mucs evaluate`: the counterfactual evaluation from the command line."""
import os
import sys

from ..method import baselines
from ..errors import MucsError
from .config import DEFAULT_METHODS, PRESETS, preset


def add_parser(sub):
    p = sub.add_parser("evaluate", help="counterfactual evaluation of MUCS and baselines (resumable)",
                       description="Train model A, attribute generated targets with each method, retrain without "
                                   "each method's top-k union and measure how much every item changes compared "
                                   "with random removal. Retrains and attributions run as Ray tasks (a local Ray "
                                   "instance by default, --address for a running cluster) or in this process "
                                   "(--engine serial). Re-running with the same work folder resumes.")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="evaluation scale (default: small)")
    p.add_argument("--data", default=None, help="training set .npz or folder (default: the embedded Fashion-MNIST 1k)")
    p.add_argument("--work", default=None, help="work folder (default: benchmarks/work/counterfactual-<preset>); "
                                                "on a cluster, a folder every node sees at the same path")
    p.add_argument("--out", default=None, help="results JSON (default: the work folder's results.json); an existing "
                                               "file is replaced only with --force")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated methods: " + ", ".join(baselines.method_names()) + ", or ensembles a+b")
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--targets", type=int, default=None)
    p.add_argument("--controls", type=int, default=None)
    p.add_argument("--target-block", type=int, default=None,
                   help="targets per removal block (one retrain per block; 0: one block). E.g. --targets 40 "
                        "--target-block 20 replicates the 20-target protocol on 20 more targets")
    p.add_argument("--retrain-seeds", default=None,
                   help="comma-separated extra training seeds (replicates): each trains its own model A and "
                        "retrains every removal; an item's similarity is its mean over the seeds. E.g. 1,2")
    p.add_argument("--k-frac", type=float, default=None, help="top-k per target as a fraction of N")
    p.add_argument("--random-repeats", type=int, default=None)
    p.add_argument("--noises", type=int, default=None, help="MUCS K")
    p.add_argument("--max-steps", type=int, default=None, help="MUCS unlearning step cap")
    p.add_argument("--lr-factor", type=float, default=None, help="MUCS unlearning lr = training lr ÷ this")
    p.add_argument("--target-seed", type=int, default=None,
                   help="seed of target 0 (target i: this + i; default 1000). Held-out reporting: seeds never used "
                        "for a choice, e.g. 3000")
    p.add_argument("--control-seed", type=int, default=None, help="seed of control 0 (default 2000; held out: e.g. 4000)")
    p.add_argument("--method-options", default=None, metavar="JSON",
                   help='options of dtrak, trak and abu by method, e.g. \'{"abu": {"accum": 625}, "dtrak": {"dim": 4096}}\' '
                        "(over the preset's; the results JSON records every method's resolved settings)")
    p.add_argument("--protocol", default="counterfactual", choices=["counterfactual", "exemplars"],
                   help="counterfactual (default): remove, retrain, measure; exemplars: fine-tune model A on exemplars "
                        "of a held-out class and rank them among the training images (no retraining; "
                        "benchmarks/exemplars.md)")
    p.add_argument("--exemplar-design", default="removed-class", choices=["removed-class", "known-class"],
                   help="--protocol exemplars: removed-class (the first design: the base model never saw the "
                        "exemplars' class, so the label alone ranks them first) or known-class (fair: model A knows "
                        "the class; λ of D-TRAK/TRAK chosen on development generations)")
    p.add_argument("--exemplar-class", type=int, default=None,
                   help="--protocol exemplars: the class of the exemplars (default 8, bags)")
    p.add_argument("--lambda-grid", default=None, metavar="L1,L2,...",
                   help="--protocol exemplars: D-TRAK/TRAK λ values tried on the development generations "
                        "(default for known-class: 1e1,…,1e7; removed-class: none, the options' λ)")
    p.add_argument("--control-design", default=None, choices=["shared", "disjoint"],
                   help="shared: controls in the targets' classes; disjoint: controls only in classes no target uses")
    p.add_argument("--engine", default="auto", choices=["auto", "ray", "serial"],
                   help="where retrains and attributions run: ray (tasks on a local Ray instance or --address), "
                        "serial (one after the other in this process); auto (default): ray when installed")
    p.add_argument("--address", default=None,
                   help="join a running Ray cluster (e.g. auto, ray://head:10001, head:6379) instead of starting one")
    p.add_argument("--workers", type=int, default=None,
                   help="local Ray instance: at most this many tasks at once (CPUs = workers × threads; "
                        "default: every CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per task (Ray: the CPUs each task declares, default 1; serial: this process)")
    p.add_argument("--gpus-per-task", type=float, default=1.0,
                   help="with --device cuda on Ray: the GPUs each task declares (default 1: one task per GPU)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when present, else CPU, as every "
                                                  "other command; with --address the workers' device, default cpu)")
    p.add_argument("--cached-only", action="store_true",
                   help="compute nothing: report the methods whose retrains are already in the work folder")
    p.add_argument("--target-auc", type=float, default=None,
                   help="also print whether MUCS's target-SSIM AUC reaches this value (e.g. a target value)")
    p.set_defaults(fn=cmd_evaluate)


def cmd_evaluate(a):
    import torch

    from ..defaults import DEFAULT_DATA
    from ..sources.models import pick_device
    from . import Evaluation
    from .engine import SerialEngine, make_engine
    from .report import check_out, ci_table, cost_table, markdown_table, overlap_table, paired_table, target_auc, verdict
    from ..cache import check_writable_dir
    from ..checks import check_device
    check_device(a.device)      # every option before anything is trained or a work folder is made
    retrain_seeds = None
    if a.retrain_seeds is not None:
        try:
            retrain_seeds = tuple(int(x) for x in a.retrain_seeds.split(",") if x.strip())
        except ValueError:
            raise MucsError(f"--retrain-seeds takes comma-separated integers, got {a.retrain_seeds!r}") from None
    import json
    method_options = None
    if a.method_options:
        try:
            method_options = json.loads(a.method_options)
        except ValueError as e:
            raise MucsError(f"--method-options must be JSON: {e}") from None
        if not isinstance(method_options, dict) or not all(isinstance(v, dict) for v in method_options.values()):
            raise MucsError('--method-options must map a method to its options, e.g. {"abu": {"accum": 625}}')
        base = PRESETS[a.preset].get("method_options", {})
        method_options = {m: dict(base.get(m, {}), **method_options.get(m, {})) for m in set(base) | set(method_options)}
    if a.protocol == "exemplars":
        from .exemplars import cmd_exemplars
        return cmd_exemplars(a, method_options)
    cfg = preset(a.preset, retrain_seeds=retrain_seeds, target_seed=a.target_seed, control_seed=a.control_seed,
                 method_options=method_options, data=a.data or DEFAULT_DATA, n_train=a.n_train, train_steps=a.train_steps,
                 targets=a.targets, controls=a.controls, target_block=a.target_block, k_frac=a.k_frac,
                 random_repeats=a.random_repeats,
                 noises=a.noises, max_steps=a.max_steps, lr_factor=a.lr_factor,
                 control_design=a.control_design).validate()
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        baselines.components(m)
    if a.threads is not None and a.threads < 1:
        raise MucsError("--threads must be ≥ 1")
    goal = target_auc(a.target_auc)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    work = a.work or os.path.join(root, "benchmarks", "work", f"counterfactual-{a.preset}")
    out = a.out or os.path.join(work, "results.json")
    check_writable_dir(work, "--work" if a.work else "the work folder")
    check_out(out, work, a.force)
    # on a cluster the device is the workers' (this machine may have none); locally it is checked here
    device = (a.device or "cpu") if a.address else str(pick_device(a.device))
    ev = Evaluation(cfg, work, device=device, cached_only=a.cached_only, threads=a.threads)
    engine = SerialEngine() if a.cached_only else make_engine(a.engine, a.address, a.workers, a.threads, device,
                                                              a.gpus_per_task)
    if engine.name == "serial" and a.threads:
        torch.set_num_threads(a.threads)
    ev.engine = engine
    try:
        result = ev.run(methods, out_json=out)
    finally:
        engine.close()
    print(markdown_table(result), ci_table(result), paired_table(result), cost_table(result), overlap_table(result),
          sep="\n\n")
    if goal is not None:
        print(verdict(result, goal))
    print(f"computed this run: {ev.computed}; wrote {out}")
    sys.stdout.flush()
