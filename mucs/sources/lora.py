"""A LoRA adapter on a model's denoiser (and text encoder), in the formats diffusers' `load_lora_weights`
reads (peft, diffusers, kohya): loaded through diffusers' own converters, and refused unless every
adapter weight found a place."""
import logging
import os

from ..errors import MucsError

log = logging.getLogger("mucs")
ADAPTER = "mucs"                      # the adapter's name inside the networks
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def load_lora(model, path: str) -> dict:
    """Load the adapter at `path` (a folder holding pytorch_lora_weights.safetensors, or a
    .safetensors file) into `model`; returns {"path", "parameters", "keys", "train_config"}."""
    try:
        import peft  # noqa: F401  (diffusers' LoRA loading needs it)
    except ImportError as e:
        raise MucsError("LoRA adapters need the `peft` package: pip install peft") from e
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from .layouts import _quiet_libraries
    path = os.fspath(path)
    if os.path.isdir(path):
        folder, weight = path, WEIGHT_NAME
        if not os.path.isfile(os.path.join(folder, weight)):
            found = [f for f in sorted(os.listdir(folder)) if f.endswith(".safetensors")]
            if len(found) != 1:
                raise MucsError(f"--lora {path}: no {WEIGHT_NAME} (and {len(found)} other .safetensors files)")
            weight = found[0]
    elif os.path.isfile(path) and path.endswith(".safetensors"):
        folder, weight = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    else:
        raise MucsError(f"--lora {path}: not a folder with {WEIGHT_NAME} nor a .safetensors file "
                        "(pickled adapters are not loaded)")
    try:
        with _quiet_libraries():
            state, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(folder, weight_name=weight,
                                                                           use_safetensors=True)
    except Exception as e:
        raise MucsError(f"--lora {path}: cannot read the adapter: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from e
    prefix = "unet" if type(model.unet).__name__ == "UNet2DConditionModel" else "transformer"
    ours = [k for k in state if k.startswith(prefix + ".")]
    text = [k for k in state if k.startswith("text_encoder.")]
    other = [k for k in state if k not in ours and k not in text]
    if not ours or other:
        raise MucsError(f"--lora {path}: {len(ours)} weights for the {prefix} and {len(other)} for other parts "
                        f"(e.g. {(other or ['-'])[0][:60]}): not an adapter of this model")
    if text and model.text_encoder is None:
        raise MucsError(f"--lora {path} changes a text encoder, and this model has none")
    before = _lora_tensors(model.unet)
    try:
        with _quiet_libraries():
            model.unet.load_lora_adapter({k: v for k, v in state.items() if k in ours}, prefix=prefix,
                                         network_alphas=alphas, adapter_name=ADAPTER)
            if text:
                StableDiffusionLoraLoaderMixin.load_lora_into_text_encoder(
                    {k: v for k, v in state.items() if k in text}, alphas, model.text_encoder, prefix="text_encoder",
                    adapter_name=ADAPTER)
    except Exception as e:
        raise MucsError(f"--lora {path}: the adapter does not fit this model: {type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]}") from e
    added = _lora_tensors(model.unet) - before
    if added != len(ours):   # every adapter weight must have found a layer of this denoiser
        raise MucsError(f"--lora {path}: {len(ours)} adapter weights for the {prefix}, {added} loaded: "
                        "not an adapter of this model")
    model.unet.eval()
    params = sum(p.numel() for n, p in model.unet.named_parameters() if "lora_" in n)
    record = os.path.join(folder, "mucs_train.json")
    train_config = {}
    if os.path.isfile(record):
        from ..checks import read_json_object
        train_config = read_json_object(record)
    log.info("LoRA adapter %s: %d weights, %d parameters%s", path, len(ours), params,
             " (and the text encoder's)" if text else "")
    model._fingerprint = None
    return dict(path=os.path.abspath(path), parameters=int(params), keys=len(ours) + len(text),
                text_encoder=bool(text), train_config=train_config)


def _lora_tensors(net) -> int:
    return sum(1 for n, _ in net.named_parameters() if "lora_" in n)
