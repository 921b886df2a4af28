"""The method, step by step (see docs/method.md): `noise` (step 0, the consistent noise set, and
the training-time noise), `losses` (steps 1, 2 and 4: L_o, L_null, L_u), `unlearn` (step 3:
mirrored, bounded unlearning, and step 5's skew), `attribute` (the `Attributor`: every step end to
end with its caches), `distributed` (the loss matrix sharded over torch.distributed ranks),
`baselines` / `neighbours` (the ablations and nearest-neighbour baselines behind one interface)
and `overlap` (how top-k sets overlap). Depends only on `mucs.sources` and the shared modules."""
