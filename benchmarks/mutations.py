"""Mutation check of the method's core rules: each mutation is applied to a copy of `mucs/`, the fast
targeted tests run on the copy, and the script prints which tests kill it (tests/README.md keeps the table).

    nice -n 19 python3 benchmarks/mutations.py [--only NAME ...] [--jobs N] [--list]

Two stages per mutation, to stay cheap on a shared machine: first the pure tests (tiny tensors, no
model; every failing one is listed), then, only when none of those fails, the tests on the tiny model
(`-x`: the first failing one is listed). The tiny model is trained once, by the unmutated baseline run,
and reused by the mutants (no mutation touches training). Exit status 1 when a mutation survives or the
baseline fails.
"""
import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNLEARN, ATTRIBUTE, LOSSES = "mucs/method/unlearn.py", "mucs/method/attribute.py", "mucs/method/losses.py"

# (name, file, text in the file (exactly once), replacement)
MUTATIONS = [
    ("skew sign flipped", UNLEARN, "    diff = lu - lo\n", "    diff = lo - lu\n"),
    ("skew normalised by L_o only", UNLEARN, "diff / (lu + lo + 1e-3)", "diff / (lo + 1e-3)"),
    ("skew normalised by the row's sum over k", UNLEARN, "diff / (lu + lo + 1e-3)",
     "diff / ((lu + lo).sum(1, keepdims=True) + 1e-3)"),
    ("skew summed over k, not averaged", UNLEARN, "        return diff.mean(1)\n", "        return diff.sum(1)\n"),
    ("bound min(ℓ, L_null) dropped", UNLEARN, "return losses.clamp(max=loss_null) if bounded else losses",
     "return losses"),
    ("bound dropped in the loop (L_null = ∞ passed)", UNLEARN,
     "objective(losses, is_f[sl], loss_null, s, batch=B)", "objective(losses, is_f[sl], float('inf'), s, batch=B)"),
    ("λ ignored", UNLEARN, "L = (sum_r - s.lam * sum_f) / B", "L = (sum_r - sum_f) / B"),
    ("forget term's sign flipped (descent on the query)", UNLEARN, "L = (sum_r - s.lam * sum_f) / B",
     "L = (sum_r + s.lam * sum_f) / B"),
    ("retain term dropped", UNLEARN, "sum_r = losses[~is_forget].sum() if s.retain else losses.new_zeros(())",
     "sum_r = losses.new_zeros(())"),
    ("retain batch never drawn in the loop", UNLEARN, "        if s.retain:\n", "        if False:\n"),
    ("fresh noise instead of consistent for L_u", ATTRIBUTE,
     "self.noise_set(s, 0 if s.consistent_noise else 1_000_003)", "self.noise_set(s, 1_000_003)"),
    ("L_null from the trained model", LOSSES, "model.fresh_copy(s.seed)", "model.unet"),
    ("stop rule off by one (> instead of ≥)", UNLEARN, "return loss_f >= (1 - tol) * loss_null",
     "return loss_f > (1 - tol) * loss_null"),
    ("step cap off by one (≤ instead of <)", UNLEARN, "may_step = step < s.max_steps", "may_step = step <= s.max_steps"),
    ("step cap checked before the stop rule", UNLEARN,
     "        if should_stop(lf, loss_null, s.tol):\n            converged = True     # (a micro-batched step's gradients "
     "were computed and are dropped)\n            break\n        if not may_step:\n            break\n",
     "        if not may_step:\n            break\n        if should_stop(lf, loss_null, s.tol):\n            converged = True\n"
     "            break\n"),
]

PURE = ["tests/test_objective.py::" + t for t in (
    "test_objective_gradient_retain_one_over_b_forget_minus_lambda_over_b_below_null_only",
    "test_objective_ablations_unbounded_and_without_retain_term",
    "test_objective_micro_batches_add_up_to_the_whole_batch",
    "test_stop_rule_at_its_boundary",
    "test_skew_normalisation_by_the_sum_plus_1e_3")] + ["tests/test_method.py::" + t for t in (
    "test_bound_gives_no_gradient_above_null", "test_stop_rule", "test_skew_and_top_k")]
ON_MODEL = ["tests/test_objective.py::" + t for t in (
    "test_unlearning_loop_checks_the_stop_rule_before_every_step",
    "test_unlearning_loop_reports_the_bounded_forget_loss_and_the_retain_loss",
    "test_null_loss_is_the_untrained_architectures_not_the_trained_models",
    "test_unlearned_losses_use_the_original_losses_noise_set")] + ["tests/test_method.py::" + t for t in (
    "test_unlearning_stops_before_the_step_when_forgotten",
    "test_consistent_noise_gives_zero_skew_for_an_unchanged_model",
    "test_micro_batched_unlearning_takes_the_same_steps",
    "test_training_image_attributes_to_itself")]

# the copied conftest trains the tiny model once (baseline) into this folder and reuses it afterwards
CONFTEST_FROM = '    out = str(tmp_path_factory.mktemp("models") / "tiny")\n'
CONFTEST_TO = ('    out = os.environ["MUCS_MUTATION_MODEL"]\n'
               '    if os.path.isdir(os.path.join(out, "unet")):      # written atomically, with the rest\n'
               '        return out\n')


def copy_tree(dst: str) -> None:
    """mucs/ and tests/ copied (the tests' conftest reusing one tiny model), assets/ linked."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(os.path.join(ROOT, "mucs"), os.path.join(dst, "mucs"), ignore=ignore)
    shutil.copytree(os.path.join(ROOT, "tests"), os.path.join(dst, "tests"), ignore=ignore)
    os.symlink(os.path.join(ROOT, "assets"), os.path.join(dst, "assets"))
    conftest = os.path.join(dst, "tests", "conftest.py")
    text = open(conftest).read()
    assert text.count(CONFTEST_FROM) == 1, "tests/conftest.py's tiny_model_dir changed: update benchmarks/mutations.py"
    open(conftest, "w").write(text.replace(CONFTEST_FROM, CONFTEST_TO))


def mutate(dst: str, path: str, old: str, new: str) -> None:
    full = os.path.join(dst, path)
    text = open(full).read()
    if text.count(old) != 1:
        raise SystemExit(f"mutation target not found exactly once in {path}: {old!r} (the code changed: update the list)")
    open(full, "w").write(text.replace(old, new))


def run_tests(dst: str, model_dir: str, tests: list, first_only: bool) -> tuple:
    """(failed test ids, seconds) of one pytest run on the copy."""
    env = dict(os.environ, PYTHONPATH=dst, MUCS_MUTATION_MODEL=model_dir)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *(["-x"] if first_only else []), *tests]
    t0 = time.time()
    out = subprocess.run(cmd, cwd=dst, env=env, capture_output=True, text=True)
    failed = [m.group(2) for m in re.finditer(r"^(FAILED|ERROR) (\S+)", out.stdout, re.M)]
    if out.returncode not in (0, 1) and not failed:     # 2-5: interrupted, internal or usage error, no tests
        failed = [f"pytest exit {out.returncode}: {out.stdout.strip().splitlines()[-1:] or out.stderr[-200:]}"]
    if failed and "baseline" in dst:
        print(out.stdout[-3000:])                         # why the unmutated code fails
    return [f.split("::", 1)[-1] for f in failed], time.time() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", help="run only the mutations whose name contains one of these")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--jobs", type=int, default=1, help="mutants tested at once (default 1)")
    a = p.parse_args()
    if a.list:
        print("\n".join(m[0] for m in MUTATIONS))
        return 0
    os.nice(19)
    chosen = [m for m in MUTATIONS if not a.only or any(o in m[0] for o in a.only)]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "mucs", "tests"], cwd=ROOT, capture_output=True, text=True).stdout
    print(f"# mutations of the method, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {rev}"
          f"{' + uncommitted changes' if dirty.strip() else ''}, {os.cpu_count()} CPUs (nice 19)")
    work = tempfile.mkdtemp(prefix="mucs-mutations-")
    model_dir = os.path.join(work, "tiny-model")
    try:
        base = os.path.join(work, "baseline")
        copy_tree(base)
        failed, secs = run_tests(base, model_dir, PURE + ON_MODEL, first_only=False)
        print(f"baseline (no mutation): {'FAILED ' + ', '.join(failed) if failed else 'all pass'} ({secs:.0f} s)")
        if failed:
            return 1

        def one(i: int) -> tuple:
            name, path, old, new = chosen[i]
            dst = os.path.join(work, f"m{i}")
            copy_tree(dst)
            mutate(dst, path, old, new)
            killers, secs = run_tests(dst, model_dir, PURE, first_only=False)
            stage = "pure"
            if not killers:
                killers, secs2 = run_tests(dst, model_dir, ON_MODEL, first_only=True)
                secs, stage = secs + secs2, "tiny model, first failure"
            shutil.rmtree(dst, ignore_errors=True)
            verdict = ("killed by " + ", ".join(killers) + f" [{stage}]") if killers else "SURVIVED"
            print(f"{name} ({path}): {verdict} ({secs:.0f} s)", flush=True)
            return name, killers
        with ThreadPoolExecutor(max(1, a.jobs)) as pool:       # each job is its own pytest process
            results = list(pool.map(one, range(len(chosen))))
        survivors = sum(not killers for _, killers in results)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{len(chosen) - survivors} of {len(chosen)} mutations killed")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
