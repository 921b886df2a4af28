"""`mucs train`: train a small pixel-space UNet2DModel on a training set (the embedded default's recipe)."""
from mucs.cli.common import FORCE_HELP, check_device
from mucs.errors import MucsError


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a diffusers UNet2DModel (class-conditional when the data has labels)",
                       description="Train a small pixel-space UNet2DModel from scratch on a training set, with an "
                                   "EMA of its weights; the folder written (model_index.json, unet/, scheduler/, "
                                   "mucs_train.json) is what `mucs attribute --model` and the app load. Every "
                                   "default is shown in brackets.")
    p.add_argument("--data", required=True,
                   help="the training set: an .npz (images, labels), an image folder or a Hugging Face dataset")
    p.add_argument("--out", required=True, help="the model folder to write (new, empty, or a model train wrote)")
    p.add_argument("--steps", type=int, default=2000, help="optimiser steps [2000]")
    p.add_argument("--batch-size", type=int, default=64, help="training images per step [64]")
    p.add_argument("--lr", type=float, default=2e-4,
                   help="AdamW learning rate [0.0002]; recorded in mucs_train.json, unlearning's lr is a fraction of it")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights, batches and noise [0]")
    p.add_argument("--ema-decay", type=float, default=0.999, help="decay of the weights' exponential moving average [0.999]")
    p.add_argument("--channels", default="32,64,64", help="block_out_channels, comma separated [32,64,64]")
    p.add_argument("--layers-per-block", type=int, default=1, help="ResNet layers per UNet block [1]")
    p.add_argument("--no-attention", action="store_true", help="no attention blocks (default: attention in the lowest block)")
    p.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction", "sample"],
                   help="what the network predicts [epsilon]")
    p.add_argument("--beta-schedule", default="squaredcos_cap_v2", help="the DDPM noise schedule [squaredcos_cap_v2]")
    p.add_argument("--timesteps", type=int, default=1000, help="diffusion timesteps of the scheduler [1000]")
    p.add_argument("--save-every", type=int, default=0, help="also save the EMA weights every N steps [0: only at the end]")
    p.add_argument("--size", type=int, default=None, help="check that the data has this resolution [no check]")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:1 [the first GPU, else cpu]")
    p.add_argument("--force", action="store_true", help=FORCE_HELP % "model")
    p.set_defaults(fn=cmd_train)


def cmd_train(a):
    from mucs.cache import check_out_dir, default_cache_dir
    from mucs.sources.data import load_dataset
    from mucs.progress import TextBar
    from mucs.sources.train import TrainOptions, train
    check_device(a.device)
    try:
        channels = tuple(int(c) for c in a.channels.split(","))
    except ValueError:
        raise MucsError(f"--channels must be comma-separated integers such as 32,64,64, got {a.channels!r}") from None
    opts = TrainOptions(steps=a.steps, batch_size=a.batch_size, lr=a.lr, seed=a.seed, ema_decay=a.ema_decay,
                        channels=channels, layers_per_block=a.layers_per_block,
                        attention=not a.no_attention, prediction_type=a.prediction_type,
                        beta_schedule=a.beta_schedule, num_train_timesteps=a.timesteps, save_every=a.save_every)
    opts.validate()
    if a.size is not None and a.size < 1:
        raise MucsError(f"--size must be ≥ 1, got {a.size}")
    check_out_dir(a.out, "model", force=a.force, protect=[a.data], inside=[default_cache_dir()])
    data = load_dataset(a.data)
    if a.size and a.size != data.size:
        raise MucsError(f"--size {a.size} does not match the dataset's {data.size}x{data.size} images")
    from mucs.sources.models import pick_device
    bar = TextBar()
    rec = train(data, a.out, opts, device=pick_device(a.device), progress=bar, force=a.force)
    bar.close()
    print(f"saved {a.out}: {rec['parameters']} parameters, {a.steps} steps, final loss {rec['final_loss']:.4f}, "
          f"{rec['train_seconds']:.0f} s")
