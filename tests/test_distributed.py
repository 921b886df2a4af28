"""Several devices for one attribution: the loss matrices sharded over 2 gloo ranks on the CPU give
the same scores as one process (to float tolerance)."""
import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from mucs import Attributor, QueryImage, load_dataset, load_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank, world, port, model_dir, npz, settings, out):
    import torch.distributed as dist
    from mucs.method.distributed import Group
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m, d = load_model(model_dir), load_dataset(npz)
        g = Group.current()
        assert g is not None and g.world == world
        a = Attributor(m, d, settings, cache_dir=os.path.join(out, f"cache{rank}"))
        r = a.attribute(QueryImage(d.tensor([3])[0], []), int(d.labels[3]))
        np.save(os.path.join(out, f"scores{rank}.npy"), r.scores)
        np.save(os.path.join(out, f"shard{rank}.npy"), g.shard(np.arange(len(d))))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tiny_model_dir, tiny_npz, fast_settings, tmp_path):
    s = fast_settings.replace(max_steps=8, eval_batch_size=40)
    m, d = load_model(tiny_model_dir), load_dataset(tiny_npz)
    single = Attributor(m, d, s, cache_dir=str(tmp_path / "single")).attribute(
        QueryImage(d.tensor([3])[0], []), int(d.labels[3]))
    mp.start_processes(_rank, args=(2, _free_port(), tiny_model_dir, tiny_npz, s, str(tmp_path)), nprocs=2,
                       join=True, start_method="spawn")
    shards = [np.load(tmp_path / f"shard{r}.npy") for r in range(2)]
    assert len(shards[0]) and len(shards[1]) and np.array_equal(np.concatenate(shards), np.arange(len(d)))
    for r in range(2):
        got = np.load(tmp_path / f"scores{r}.npy")
        np.testing.assert_allclose(got, single.scores, rtol=1e-5, atol=1e-6)
