"""How strong must the known-class exemplar fine-tune be? Fine-tune model A on the exemplars once
(AdamW at a constant lr, so the state after s steps of a long run is the s-step fine-tune) and, at
each checkpoint, generate the DEVELOPMENT generations (seeds dev_seed + j, never reported) and
measure whether they resemble the exemplars more than the class's other training items
(exemplar_checks.resemblance). The rule: the fewest checkpoint steps at which at least 80 % of the
development generations are nearer an exemplar than any other training item of the class by BOTH
SSIM and pixel MSE; that became KNOWN_CLASS["finetune_steps"] (500 at lr 5e-4, 2026-12-07). The
rule first written used SSIM alone and would have picked 50 steps, where 70 % of the development
generations were still nearer another bag by MSE; judged too weak, it was tightened after seeing
the grid (benchmarks/exemplars.md says so). Only the steps were varied (lr 5e-4, batch 32).
Usage: python benchmarks/exemplars_finetune_dev.py --work benchmarks/work/heldout [--steps 100,200,300,500,800]
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mucs.defaults import DEFAULT_DATA  # noqa: E402
from mucs.evaluation import exemplars as ex  # noqa: E402
from mucs.evaluation.config import preset  # noqa: E402
from mucs.evaluation.exemplar_checks import resemblance  # noqa: E402
from mucs.evaluation.plan import make_job  # noqa: E402
from mucs.sources.data import load_dataset  # noqa: E402
from mucs.sources.generate import generate  # noqa: E402
from mucs.sources.models import load_model  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--preset", default="full")
    p.add_argument("--steps", default="100,200,300,500,800")
    p.add_argument("--lr", type=float, default=None)
    a = p.parse_args()
    checkpoints = sorted(int(x) for x in a.steps.split(","))
    over = dict(finetune_steps=checkpoints[-1]) | ({} if a.lr is None else dict(finetune_lr=a.lr))
    ec = ex.config_for("known-class", **over)
    job = make_job(preset(a.preset, data=DEFAULT_DATA).validate(), a.work, threads=1)
    cand_path, removed, E = ex.candidates(job, ec)
    cand = load_dataset(cand_path)
    base = ex.base_model(job, ec, removed)
    c, seeds = ec.held_out_class, [ec.dev_seed + j for j in range(ec.dev_generations)]
    exemplars, others = cand.images[-E:], cand.images[ex.others_of(cand, E, c)]
    print(f"model A {base['path']}; {len(cand)} candidates, E = {E}, {len(others)} other items of class {c}; "
          f"lr {ec.finetune_lr}, batch {ec.finetune_batch}; development seeds {seeds[0]}–{seeds[-1]}", flush=True)

    def report(step, model):
        model.unet.eval()
        imgs = generate(model, [c] * len(seeds), seeds, job.cfg.sample_steps)
        model.unet.train()
        r = resemblance(imgs, exemplars, others)
        print(f"[{time.strftime('%H:%M:%S')}] steps {step:4d}: SSIM nearest exemplar {r['ssim']['nearest_exemplar_mean']:.3f}"
              f" vs nearest other {r['ssim']['nearest_other_mean']:.3f}, share nearer an exemplar "
              f"{r['ssim']['share_nearer_exemplar']:.2f} (MSE: {r['mse']['nearest_exemplar_mean']:.4f} vs "
              f"{r['mse']['nearest_other_mean']:.4f}, share {r['mse']['share_nearer_exemplar']:.2f})", flush=True)
    report(0, load_model(base["path"], "cpu"))
    with tempfile.TemporaryDirectory() as tmp:    # the checkpoints are what counts; the long run is not kept
        ex.finetune(base["path"], cand, E, ec, os.path.join(tmp, "ft"),
                    on_step=lambda s, m: report(s, m) if s in checkpoints else None)


if __name__ == "__main__":
    main()
