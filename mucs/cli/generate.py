"""`mucs generate`: sample one image (a class, or a prompt with guidance); the same seed gives the same image."""
from mucs.cli.common import add_model_args, check_device
from mucs.errors import MucsError


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="sample one image; the same seed gives the same image")
    add_model_args(p, data=False)
    p.add_argument("--label", type=int, default=None, help="the class (class-conditional models)")
    p.add_argument("--prompt", default=None, help="the caption to sample from (text-conditional models)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale, 1..50 (default: the model's recorded one, else its pipeline's)")
    p.add_argument("--negative-prompt", default="", help="the unconditional branch of guidance (default: empty)")
    p.add_argument("--lora", default=None, help="a LoRA adapter for the model (folder or .safetensors)")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps, 1..1000")
    p.add_argument("--out", required=True, help="a new .png file, or one that generate wrote before")
    p.add_argument("--force", action="store_true", help="replace an existing --out even when generate did not write it")
    p.set_defaults(fn=cmd_generate)


def cmd_generate(a):
    from mucs.cache import check_out_file
    from mucs.sources.generate import (check_guidance, check_steps, default_guidance, generate, is_generated_png,
                                       save_generated_png)
    from mucs.sources.models import load_model
    from mucs.progress import TextBar
    check_device(a.device)
    check_steps(a.steps)
    if not a.out.lower().endswith(".png"):
        raise MucsError("--out must be a .png file")
    # an existing --out is replaced only when it is a PNG that generate wrote (or with --force)
    check_out_file(a.out, force=a.force, ours=is_generated_png, protect=[a.model, a.lora])
    if a.guidance_scale is not None:
        check_guidance(a.guidance_scale)
    model = load_model(a.model, a.device, lora=a.lora)
    label, prompt = model.check_label(a.label), model.check_prompt(a.prompt)
    check_steps(a.steps, model.scheduler.config.num_train_timesteps)
    guidance = default_guidance(model) if a.guidance_scale is None else a.guidance_scale
    bar = TextBar()
    img = generate(model, [label], [a.seed], steps=a.steps, progress=bar,
                   prompts=None if prompt is None else [prompt], guidance_scale=guidance,
                   negative_prompt=a.negative_prompt)[0]
    bar.close()
    info = dict(label=label, seed=a.seed, steps=a.steps)
    if prompt is not None:
        info.update(prompt=prompt, guidance_scale=guidance, negative_prompt=a.negative_prompt)
    save_generated_png(img, a.out, info)
    print(f"wrote {a.out} (" + ", ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in info.items()) + ")")
