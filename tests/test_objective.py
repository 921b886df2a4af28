"""The method's core rules, pinned exactly on tiny tensors: the unlearning objective's gradient, the stop
rule at its boundary, the skew's normalisation, and where L_null and L_u's noise come from. Each test
takes well under a second (the two with the tiny model a few seconds); tests/README.md lists which test
kills which mutation of the method."""
import math

import numpy as np
import pytest
import torch

from mucs import Settings, load_dataset, load_model
from mucs.method.unlearn import objective, should_stop, skew, unlearn

# three forget items (two below L_null = 1, one above) and three retain items, in float64 so that the
# gradient is compared to 1e-12
LOSSES = [0.5, 2.0, 0.9, 1.5, 3.0, 0.1]
IS_FORGET = [True, True, True, False, False, False]


def _grad(lam=0.3, null=1.0, **changes):
    losses = torch.tensor(LOSSES, dtype=torch.float64, requires_grad=True)
    L, L_f, L_r = objective(losses, torch.tensor(IS_FORGET), null, Settings(lam=lam, **changes))
    L.backward()
    return losses.grad.tolist(), float(L.detach()), float(L_f.detach()), float(L_r.detach())


def test_objective_gradient_retain_one_over_b_forget_minus_lambda_over_b_below_null_only():
    """∂L/∂ℓ = 1/B per retain item, −λ/B per forget item below L_null and 0 above it (the bound); the
    three values are L = L_r − λ·L_f with L_f = mean min(ℓ, L_null), L_r = mean ℓ."""
    B, lam = 3, 0.3
    grad, L, L_f, L_r = _grad(lam)
    assert grad == pytest.approx([-lam / B, 0.0, -lam / B, 1 / B, 1 / B, 1 / B], rel=1e-12, abs=1e-15)
    assert L_f == pytest.approx((0.5 + 1.0 + 0.9) / 3, rel=1e-12)          # 2.0 bounded to L_null = 1
    assert L_r == pytest.approx((1.5 + 3.0 + 0.1) / 3, rel=1e-12)
    assert L == pytest.approx(L_r - lam * L_f, rel=1e-12)
    # λ scales only the forget items' gradient
    grad2, *_ = _grad(lam=0.7)
    assert grad2 == pytest.approx([-0.7 / B, 0.0, -0.7 / B, 1 / B, 1 / B, 1 / B], rel=1e-12, abs=1e-15)
    # a lower L_null bounds more items: 0.9 and 2.0 give no gradient under L_null = 0.8
    grad3, _, L_f3, _ = _grad(null=0.8)
    assert grad3[:3] == pytest.approx([-lam / B, 0.0, 0.0], abs=1e-15)
    assert L_f3 == pytest.approx((0.5 + 0.8 + 0.8) / 3, rel=1e-12)


def test_objective_ablations_unbounded_and_without_retain_term():
    """bounded=False: plain ascent, −λ/B for every forget item; retain=False: L_r = 0 and no gradient
    for the retain items."""
    B, lam = 3, 0.3
    grad, _, L_f, _ = _grad(bounded=False)
    assert grad[:3] == pytest.approx([-lam / B] * 3, rel=1e-12)
    assert L_f == pytest.approx((0.5 + 2.0 + 0.9) / 3, rel=1e-12)
    grad, L, L_f, L_r = _grad(retain=False)
    assert grad[3:] == [0.0, 0.0, 0.0] and L_r == 0.0
    assert L == pytest.approx(-lam * L_f, rel=1e-12)


def test_objective_micro_batches_add_up_to_the_whole_batch():
    """With the step's B passed, chunks that straddle the forget/retain boundary give the whole batch's
    L, L_f, L_r and gradient; B defaults to the number of forget items; B = 0 is refused."""
    s = Settings(lam=0.3)
    mask = torch.tensor(IS_FORGET)
    whole = torch.tensor(LOSSES, dtype=torch.float64, requires_grad=True)
    W = objective(whole, mask, 1.0, s)
    W[0].backward()
    parts = torch.tensor(LOSSES, dtype=torch.float64, requires_grad=True)
    sums = [0.0, 0.0, 0.0]
    for sl in (slice(0, 2), slice(2, 5), slice(5, 6)):
        out = objective(parts[sl], mask[sl], 1.0, s, batch=3)
        out[0].backward()
        sums = [a + float(b) for a, b in zip(sums, out)]
    assert sums == pytest.approx([float(v) for v in W], rel=1e-12)
    assert parts.grad.tolist() == pytest.approx(whole.grad.tolist(), rel=1e-12, abs=1e-15)
    with pytest.raises(ValueError, match="B ≥ 1"):
        objective(parts[3:], mask[3:], 1.0, s)          # retain items only and no B given


def test_stop_rule_at_its_boundary():
    """Stop once L_f ≥ (1 − τ)·L_null: exactly at the threshold it stops, one float below it does not
    (here (1 − 0.25)·2 = 1.5 exactly)."""
    assert should_stop(1.5, 2.0, 0.25)
    assert not should_stop(math.nextafter(1.5, 0.0), 2.0, 0.25)
    assert should_stop(2.0, 2.0, 0.0) and not should_stop(math.nextafter(2.0, 0.0), 2.0, 0.0)


def test_unlearning_loop_checks_the_stop_rule_before_every_step(tiny_model_dir, tiny_npz, fast_settings):
    """In the loop: it stops at the first step whose L_f reaches (1 − τ)·L_null, before stepping on it
    (steps = that step's index) and converged; the run up to there is the uncapped run's. Unbounded, so
    that L_null enters only the stop rule and the two runs take the same steps."""
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    s = fast_settings.replace(max_steps=8, lr=2e-3, bounded=False)
    x = d.tensor([0])[0]
    ref = [c["loss_f"] for c in unlearn(m, d, x, 0, loss_null=1e6, s=s).curve]     # never stops: 9 entries
    assert len(ref) == 9
    # the first step whose L_f exceeds every earlier one (the ascent raises L_f: there is one)
    j = next(i for i in range(1, len(ref)) if ref[i] > max(ref[:i]))
    threshold = (max(ref[:j]) + ref[j]) / 2
    u = unlearn(m, d, x, 0, loss_null=threshold / (1 - s.tol), s=s)
    assert u.converged and u.steps == j and len(u.curve) == j + 1
    assert [c["loss_f"] for c in u.curve] == pytest.approx(ref[:j + 1], rel=1e-6)
    assert [c["step"] for c in u.curve] == list(range(j + 1))


def test_unlearning_loop_reports_the_bounded_forget_loss_and_the_retain_loss(tiny_model_dir, tiny_npz, fast_settings):
    """The loop's L_f is bounded by L_null (every forget item above it counts as L_null), its L_r is the
    retain batch's mean loss, and the ablations change exactly that: unbounded L_f, no retain batch."""
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    x = d.tensor([0])[0]
    tiny = 1e-6                                  # far below every item's loss: the bound binds for all
    u = unlearn(m, d, x, 0, loss_null=tiny, s=fast_settings)
    assert u.steps == 0 and u.curve[0]["loss_f"] == pytest.approx(tiny, rel=1e-6)
    assert u.curve[0]["loss_r"] > 100 * tiny
    capped = unlearn(m, d, x, 0, loss_null=tiny, s=fast_settings.replace(max_steps=0))
    assert capped.converged and capped.steps == 0     # at the cap the stop rule is checked first: converged
    plain = unlearn(m, d, x, 0, loss_null=tiny, s=fast_settings.replace(bounded=False, retain=False))
    assert plain.curve[0]["loss_f"] > 100 * tiny and plain.curve[0]["loss_r"] == 0.0


def test_skew_normalisation_by_the_sum_plus_1e_3():
    """score = mean_k (L_u − L_o) / (L_u + L_o + 1e-3): the 1e-3 matters only near zero loss, large
    losses give a scale-free score in (−1, 1), and it is a mean over k, not a sum."""
    assert skew(np.array([[1e-3]]), np.array([[0.0]]))[0] == pytest.approx(0.5, rel=1e-12)
    assert skew(np.array([[0.0]]), np.array([[1e-3]]))[0] == pytest.approx(-0.5, rel=1e-12)
    lo = np.array([[100.0, 300.0]])
    lu = np.array([[300.0, 100.0 + 300.0]])
    expected = 0.5 * (200 / (400 + 1e-3) + 100 / (700 + 1e-3))
    assert skew(lu, lo)[0] == pytest.approx(expected, rel=1e-12)
    assert skew(1e3 * lu, 1e3 * lo)[0] == pytest.approx(skew(lu, lo)[0], rel=1e-5)   # scale-free
    rng = np.random.default_rng(0)
    a, b = rng.exponential(size=(50, 8)), rng.exponential(size=(50, 8))
    s = skew(a, b)
    assert np.all(np.abs(s) < 1) and np.allclose(s, -skew(b, a), atol=1e-12)     # antisymmetric
    # a screened item's NaN levels are left out of its mean
    part = np.array([[3.0, np.nan]])
    assert skew(part, np.array([[1.0, 5.0]]))[0] == pytest.approx(2 / (4 + 1e-3), rel=1e-12)


def test_null_loss_is_the_untrained_architectures_not_the_trained_models(tiny_model_dir, tiny_npz, fast_settings):
    """L_null depends on the architecture and the seed, not on the trained weights, and lies well above
    the trained model's loss on the same batches."""
    from mucs.method.losses import null_loss, trained_loss
    d = load_dataset(tiny_npz)
    s = fast_settings.replace(null_batches=2)
    m = load_model(tiny_model_dir)
    null = null_loss(m, d, s)
    assert null > 2 * trained_loss(m, d, s, batches=2)
    with torch.no_grad():
        for p in m.unet.parameters():
            p.mul_(0.5)
    assert null_loss(m, d, s) == null                           # the trained weights play no part
    assert null_loss(m, d, s.replace(seed=1)) != null


def test_unlearned_losses_use_the_original_losses_noise_set(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    """Noise-consistent: L_u is computed on the very noise set of L_o (same levels, same ε); the
    fresh-noise ablation draws another one."""
    from mucs import Attributor
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    s = fast_settings.replace(max_steps=0, tol=0.0)
    a = Attributor(m, d, s, cache_dir=str(tmp_path))
    lo, _ = a.original_losses(s)
    rec, lu, _, _ = a.unlearned(d.tensor([0])[0], 0, 1.0, lo, s)
    assert rec.steps == 0 and np.array_equal(lu, lo)            # an unchanged model on the same noise
    _, fresh, _, _ = a.unlearned(d.tensor([0])[0], 0, 1.0, lo, s.replace(consistent_noise=False))
    assert not np.allclose(fresh, lo)
