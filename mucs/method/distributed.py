"""Several devices for one attribution: the N × K loss matrices (L_o, L_u) split over the ranks of a
`torch.distributed` process group, each rank scoring its shard of training items, gathered on every
rank. Start with torchrun, e.g. `torchrun --nproc_per_node=4 -m mucs attribute ...`; every rank runs
the same unlearning (and then takes rank 0's weights, so all ranks score the very same model).
"""
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Group:
    rank: int
    world: int

    @staticmethod
    def current() -> Optional["Group"]:
        """The running process group when there is one with more than one rank, else None."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return Group(dist.get_rank(), dist.get_world_size())
        return None

    def shard(self, rows: np.ndarray) -> np.ndarray:
        """This rank's contiguous block of `rows` (blocks differ in size by at most one)."""
        return np.array_split(np.asarray(rows), self.world)[self.rank]

    def gather_rows(self, part: np.ndarray, n_rows: int) -> np.ndarray:
        """Concatenate every rank's (n_r, K) block in rank order, on every rank."""
        sizes = [len(b) for b in np.array_split(np.arange(n_rows), self.world)]
        width = part.shape[1]
        dev = _comm_device()
        buf = torch.zeros((max(sizes), width), dtype=torch.float32, device=dev)
        buf[:len(part)] = torch.as_tensor(part, dtype=torch.float32, device=dev)
        out = [torch.empty_like(buf) for _ in range(self.world)]
        dist.all_gather(out, buf)
        return np.concatenate([o[:n].cpu().numpy() for o, n in zip(out, sizes)], 0)

    def broadcast_module(self, module: torch.nn.Module, src: int = 0) -> None:
        """Every parameter and buffer of `module` set to rank `src`'s values."""
        dev = _comm_device()
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                b = t.detach().to(dev).contiguous()
                dist.broadcast(b, src)
                t.copy_(b.to(t.device))


def _comm_device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo moves CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_from_env() -> Optional[Group]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1): NCCL with one
    GPU per local rank when CUDA is there, gloo on the CPU. Returns None for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return Group.current()


def device_for_rank() -> Optional[str]:
    """cuda:LOCAL_RANK under torchrun on a CUDA machine, else None (the usual choice)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return None
