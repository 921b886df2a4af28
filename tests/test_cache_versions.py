"""The loss definition is pinned to its cache version: every number that goes into a keyed cache
(L_o, L_null, L_u, unlearning) is computed here on a fixed tiny case and compared with the values
recorded for LOSS_VERSION. A change to the loss code that alters them fails until LOSS_VERSION is
bumped (so stale caches are never served) and the new values are recorded below."""
import numpy as np
import torch

from mucs.method.attribute import Attributor
from mucs.method.losses import LOSS_VERSION, loss_matrix, null_loss
from mucs.method.noise import make_noise_set
from mucs.method.unlearn import unlearn
from mucs.settings import Settings
from mucs.sources.data import TrainingSet
from mucs.sources.models import DiffusionModel

# LOSS_VERSION -> the fixed case's outputs (float32 on the CPU; compared at rtol 1e-4)
PINNED = {
    2: dict(loss_matrix=[[1.312077, 1.333862, 0.7811067],
                         [1.146738, 1.412311, 0.8742667],
                         [1.313038, 1.340001, 0.7469502],
                         [1.14627, 1.407979, 0.8936822],
                         [1.313343, 1.32936, 0.762533],
                         [1.145144, 1.407507, 0.8612113]],
            null_loss=1.079402,
            curve=[[1.076068, 1.25774], [1.051596, 1.07997], [1.019869, 1.246468]]),
}


def fixed_case():
    """A seeded 8×8 class-conditional UNet2DModel, 6 images in 2 classes, small settings."""
    from diffusers import DDPMScheduler, UNet2DModel
    torch.manual_seed(1234)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=2).eval()
    model = DiffusionModel(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=100,
                                                              beta_schedule="squaredcos_cap_v2"),
                           train_config={"lr": 1e-3})
    rng = np.random.default_rng(7)
    data = TrainingSet(images=rng.integers(0, 256, (6, 8, 8, 1)).astype(np.uint8), labels=np.array([0, 1] * 3),
                       source="pinned")
    s = Settings(noises=3, batch_size=4, null_batches=2, null_batch_size=4, max_steps=2, tol=0.0, top_k=3,
                 eval_batch_size=16)
    return model, data, s


def outputs():
    model, data, s = fixed_case()
    ns = make_noise_set(model.scheduler.alphas_cumprod, model.x0_shape, K=s.noises, seed=s.seed)
    lo = loss_matrix(model.unet, model, data, ns, 16)
    null = null_loss(model, data, s)
    u = unlearn(model, data, data.tensor([1])[0], 1, loss_null=null, s=s)
    return dict(loss_matrix=lo.round(7).tolist(), null_loss=round(float(null), 7),
                curve=[[round(float(c["loss_f"]), 7), round(float(c["loss_r"]), 7)] for c in u.curve])


def test_the_loss_outputs_are_those_recorded_for_this_loss_version():
    assert LOSS_VERSION in PINNED, f"LOSS_VERSION {LOSS_VERSION} has no recorded outputs: record them in PINNED"
    got, want = outputs(), PINNED[LOSS_VERSION]
    for k, v in want.items():
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(v), rtol=1e-4, atol=1e-7, err_msg=(
            f"{k} changed: the loss code now gives other numbers than LOSS_VERSION {LOSS_VERSION} recorded; "
            "bump LOSS_VERSION in mucs/method/losses.py (old caches must not be served) and record the new outputs"))


def test_every_loss_cache_key_carries_the_version(monkeypatch, tmp_path):
    import mucs.method.attribute as attribute
    model, data, s = fixed_case()
    a = Attributor(model, data, s, cache_dir=str(tmp_path))
    keys = (a._lo_key(s), a._null_key(s))
    monkeypatch.setattr(attribute, "LOSS_VERSION", LOSS_VERSION + 1)
    assert a._lo_key(s) != keys[0] and a._null_key(s) != keys[1]


if __name__ == "__main__":      # print the outputs to record for a new LOSS_VERSION
    import json
    print(json.dumps(outputs()))
