"""Does an unlearning step with B = 100 (100 forget + 100 retain items) fit a 24 GB GPU for a
35M-parameter CIFAR-10 DDPM UNet, and which micro-batch (`unlearn_chunk`) makes it fit?

Measured, not guessed: the UNet is built from the DDPM CIFAR-10 configuration (diffusers'
UNet2DModel, random weights: memory does not depend on their values), and one forward+backward at
two small batch sizes records every tensor autograd saves for the backward pass (unique storages,
counted once). The per-item slope times the items of one micro-batch, plus the weights of the
original and the unlearned copy, their gradients and AdamW's two moments, gives the step's memory.
Autograd's saved tensors are what scales with the batch; the backward's transient buffers add to
it, so a margin is kept (MARGIN). Runs on the CPU in about a minute.
Usage: python benchmarks/unlearn_memory.py [--out benchmarks/results/unlearn_memory.json]
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mucs.cache import atomic_write  # noqa: E402

GPU_BYTES = 24 * 1024 ** 3
MARGIN = 1.5      # transient backward buffers, allocator fragmentation, CUDA context
# google/ddpm-cifar10-32's UNet (Ho et al. 2020's CIFAR-10 model): 35.7M parameters
DDPM_CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                    block_out_channels=(128, 256, 256, 256),
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def saved_bytes(unet, batch: int) -> int:
    """Bytes autograd keeps for the backward of one forward at `batch` (unique storages)."""
    seen = {}

    def pack(t):
        try:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            seen[key] = t.untyped_storage().nbytes()
        except RuntimeError:
            pass
        return t
    x = torch.randn(batch, 3, 32, 32)
    t = torch.randint(0, 1000, (batch,))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = unet(x, t).sample
    out.pow(2).mean().backward()
    return sum(seen.values())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from diffusers import UNet2DModel
    torch.manual_seed(0)
    unet = UNet2DModel(**DDPM_CIFAR10)
    P = sum(p.numel() for p in unet.parameters())
    b1, b2 = 2, 6
    t0 = time.perf_counter()
    s1, s2 = saved_bytes(unet, b1), saved_bytes(unet, b2)
    per_item = (s2 - s1) / (b2 - b1)
    fixed = s1 - per_item * b1
    # the original model (frozen, for L_o), the unlearned copy, its gradients and AdamW's two moments: fp32
    weights = P * 4 * (2 + 1 + 2)
    print(f"DDPM CIFAR-10 UNet: {P / 1e6:.1f}M parameters; saved activations {s1 / 2**20:.0f} MiB at batch {b1}, "
          f"{s2 / 2**20:.0f} MiB at batch {b2}: {per_item / 2**20:.1f} MiB per item "
          f"(measured in {time.perf_counter() - t0:.0f} s on the CPU)")
    print(f"weights + unlearned copy + gradients + AdamW moments: {weights / 2**30:.2f} GiB; margin x{MARGIN}")
    rows = []
    for chunk in (200, 128, 64, 32, 16):
        need = (weights + fixed + per_item * chunk) * MARGIN
        rows.append(dict(unlearn_chunk=chunk, estimated_bytes=need, fits_24gb=bool(need <= GPU_BYTES)))
        print(f"B = 100 (200 items per step), micro-batch {chunk:3d}: ~{need / 2**30:5.1f} GiB "
              f"-> {'fits' if need <= GPU_BYTES else 'does NOT fit'} a 24 GB card")
    # what the attribution's memory check (mucs.checks.request_memory) estimates for the same step
    from types import SimpleNamespace
    from mucs.checks import request_memory
    from mucs.settings import Settings
    model = SimpleNamespace(unet=unet, channels=3, size=32, device=torch.device("cuda"))
    checks = {}
    for chunk in (0, 32):
        est = request_memory(model, 50_000, Settings(noises=16, unlearn_chunk=chunk))
        checks[str(chunk)] = est["device"].get("unlearning batch")
        if checks[str(chunk)]:
            print(f"mucs.checks.request_memory, unlearning batch with unlearn_chunk={chunk}: "
                  f"~{checks[str(chunk)] / 2**30:.1f} GiB")
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in DDPM_CIFAR10.items()}
    out = dict(date=time.strftime("%Y-%m-%d"), parameters=P, request_memory_unlearning_bytes=checks, config=config,
               saved_bytes={str(b1): s1, str(b2): s2}, per_item_bytes=per_item, weights_bytes=weights,
               margin=MARGIN, rows=rows, torch=torch.__version__)
    if a.out:
        atomic_write(a.out, json.dumps(out, indent=1, allow_nan=False).encode())
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
