"""The method's pieces: noise set, loss matrices, bound, stop rule, freezing, skew."""
import numpy as np
import pytest
import torch

from mucs import Attributor, QueryImage, Settings, load_dataset, load_model
from mucs.losses import loss_matrix
from mucs.models import alphas_cumprod, per_item_loss
from mucs.noise import karras_sigmas, make_noise_set, scheduler_sigmas
from mucs.unlearn import forget_loss, should_stop, skew, top_k, unlearn


def test_noise_set_karras_high_noise_fraction(tiny_model_dir):
    m = load_model(tiny_model_dir)
    ac = m.scheduler.alphas_cumprod
    ns = make_noise_set(ac, (1, 8, 8), K=10, fraction=0.7, seed=3)
    assert ns.eps.shape == (10, 1, 8, 8) and ns.timesteps.shape == (10,)
    sig = scheduler_sigmas(ac)
    full = karras_sigmas(round(10 / 0.7), float(sig.min()), float(sig.max()))
    assert np.allclose(ns.sigmas.numpy(), full[:10], rtol=1e-5)         # the first K of round(K/f)
    assert ns.sigmas[0] == pytest.approx(float(sig.max()), rel=1e-5)   # starts at σ_max
    assert ns.sigmas[-1] > full[-1]                                    # the low-noise tail is never used
    assert torch.all(ns.timesteps[:-1] >= ns.timesteps[1:])             # highest noise first
    # each σ maps to the discrete timestep nearest in log σ
    for s, t in zip(ns.sigmas.double(), ns.timesteps):
        assert int(t) == int((sig.log() - s.log()).abs().argmin())
    again = make_noise_set(ac, (1, 8, 8), K=10, fraction=0.7, seed=3)
    assert torch.equal(again.eps, ns.eps) and torch.equal(again.timesteps, ns.timesteps)
    other = make_noise_set(ac, (1, 8, 8), K=10, fraction=0.7, seed=4)
    assert not torch.equal(other.eps, ns.eps)


def test_loss_matrix_uses_the_same_noise_for_every_item(tiny_model_dir, tiny_npz):
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    ns = make_noise_set(m.scheduler.alphas_cumprod, (1, 8, 8), K=5, seed=0)
    L = loss_matrix(m.unet, m, d, ns, batch_size=7)   # chunks that split items across batches
    assert L.shape == (len(d), 5)
    ac = alphas_cumprod(m)
    with torch.no_grad():
        for i in (0, 13, 31):
            for k in (0, 4):
                ref = per_item_loss(m.unet, ac, m.prediction_type, d.tensor([i]), d.label_tensor([i]),
                                    ns.timesteps[k:k + 1], ns.eps[k:k + 1])
                assert L[i, k] == pytest.approx(float(ref), rel=1e-4, abs=1e-6)


def test_consistent_noise_gives_zero_skew_for_an_unchanged_model(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    """With a step cap of 0 the 'unlearned' model is the original: consistent noise must give
    exactly zero skew; fresh noise (the ablation) does not."""
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    a = Attributor(m, d, fast_settings.replace(max_steps=0, tol=0.0), cache_dir=str(tmp_path))
    q = QueryImage(d.tensor([0])[0], [])
    r = a.attribute(q, 0)
    assert r.steps == 0 and not r.converged
    assert np.abs(r.scores).max() < 1e-6
    r2 = a.attribute(q, 0, settings=a.settings.replace(consistent_noise=False))
    assert np.abs(r2.scores).max() > 1e-3


def test_bound_gives_no_gradient_above_null():
    losses = torch.tensor([0.5, 2.0, 3.0], requires_grad=True)
    forget_loss(losses, loss_null=1.0).backward()
    assert losses.grad.tolist() == pytest.approx([1 / 3, 0.0, 0.0])
    losses.grad = None
    forget_loss(losses, loss_null=1.0, bounded=False).backward()   # plain ascent: gradient everywhere
    assert losses.grad.tolist() == pytest.approx([1 / 3] * 3)
    assert float(forget_loss(torch.tensor([0.5, 2.0]), 1.0)) == pytest.approx(0.75)


def test_stop_rule():
    assert should_stop(0.95, 1.0, 0.05) and should_stop(1.2, 1.0, 0.05)
    assert not should_stop(0.9499, 1.0, 0.05)


def test_unlearning_stops_before_the_step_when_forgotten(tiny_model_dir, tiny_npz, fast_settings):
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    x = d.tensor([0])[0]
    u = unlearn(m, d, x, 0, loss_null=1e-6, s=fast_settings)   # already "as bad as null"
    assert u.steps == 0 and u.converged and len(u.curve) == 1
    before = {n: p.clone() for n, p in m.unet.named_parameters()}
    u = unlearn(m, d, x, 0, loss_null=1e6, s=fast_settings.replace(max_steps=3))
    assert u.steps == 3 and not u.converged and len(u.curve) == 4
    assert not u.unet.training                                   # kept in eval mode on purpose
    for n, p in u.unet.named_parameters():
        if "bias" in n:
            assert torch.equal(p, before[n]), n                  # frozen
    assert any(not torch.equal(p, before[n]) for n, p in u.unet.named_parameters() if "bias" not in n)
    for n, p in m.unet.named_parameters():                       # the original is untouched
        assert torch.equal(p, before[n])
    assert u.lr == pytest.approx(2e-3 / 10)                      # training lr ÷ lr factor


def test_skew_and_top_k():
    lo = np.array([[1.0, 1.0], [1.0, 2.0], [2.0, 2.0]])
    lu = np.array([[1.0, 1.0], [3.0, 2.0], [1.0, 2.0]])
    s = skew(lu, lo)
    assert s == pytest.approx([0.0, 0.5 * (2 / (4 + 1e-3)), 0.5 * (-1 / (3 + 1e-3))])
    assert skew(lu, lo, normalised=False) == pytest.approx([0.0, 1.0, -0.5])
    assert top_k(np.array([0.1, 0.5, 0.5, -1.0]), 3).tolist() == [1, 2, 0]


def test_attribution_is_deterministic(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    s = fast_settings.replace(max_steps=5)
    q = QueryImage(d.tensor([3])[0], [])
    r1 = Attributor(m, d, s, cache_dir=str(tmp_path / "a")).attribute(q, 3)
    r2 = Attributor(m, d, s, cache_dir=str(tmp_path / "b")).attribute(q, 3)
    assert r1.scores.shape == (len(d),) and r1.top.shape == (s.top_k,)
    assert np.array_equal(r1.scores, r2.scores) and np.array_equal(r1.top, r2.top)
    r3 = Attributor(m, d, s.replace(seed=1), cache_dir=str(tmp_path / "a")).attribute(q, 3)
    assert not np.array_equal(r1.scores, r3.scores)


def test_training_image_attributes_to_itself(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    """The sanity check: each of 6 training images, used as the query with its own label, must rank
    itself in the top 3 of 32 for at least 5 of the 6 (it is rank 1 for all of them when this was written)."""
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    a = Attributor(m, d, fast_settings, cache_dir=str(tmp_path))
    ranks = []
    for i in (0, 5, 10, 17, 22, 31):
        r = a.attribute(QueryImage(d.tensor([i])[0], []), int(d.labels[i]))
        ranks.append(int(np.where(np.argsort(-r.scores, kind="stable") == i)[0][0]))
    assert sum(rk < 3 for rk in ranks) >= 5, ranks
