"""Where a diffusers model's components live (any common layout, or a Hub id in the local cache)
and how each is loaded: with the class its config names, from safetensors only, and never with
missing or newly initialised weights."""
import contextlib
import json
import logging
import os
import re
from typing import Any, Optional

from ..errors import MucsError
from .families import REFUSED_DENOISERS, REFUSED_SCHEDULERS, SUPPORTED_DENOISERS, refusal

log = logging.getLogger("mucs")
PIPELINE_INDEX = "model_index.json"   # a diffusers pipeline folder (DDPMPipeline, StableDiffusionPipeline, ...)
LAYOUTS = ("a diffusers model folder: config.json + scheduler_config.json at the top (as google/ddpm-cifar10-32), "
           "unet/ (or transformer/) + scheduler/, or a pipeline folder with model_index.json; or a Hub id in the "
           "local Hugging Face cache")
DENOISER_KEYS = ("unet", "transformer")
ROLES = ("vae", "text_encoder", "tokenizer")      # optional components beside the denoiser and scheduler
FLOW_PIPELINES = ("StableDiffusion3", "Flux", "Sana", "Lumina", "AuraFlow", "CogView", "HiDream", "QwenImage")


def resolve_model_path(path: str) -> str:
    """A local folder as given, or the snapshot folder of a Hub id ("org/name") in the local Hugging
    Face cache. Never downloads: fetch a model first (`hf download org/name`); HF_HUB_OFFLINE is the
    user's choice and is left alone."""
    from ..defaults import check_default_present
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    check_default_present(path)
    if os.path.exists(path) or not _looks_like_repo_id(path):
        raise MucsError(f"model folder not found: {path}")
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(repo_id=path, local_files_only=True)
    except Exception as e:  # LocalEntryNotFoundError, HFValidationError, ...
        log.debug("Hub id %s not in the local cache: %s", path, e)
        raise MucsError(f"model not found: {path} is neither a folder nor a Hub id in the local Hugging Face cache "
                        f"(download it first, e.g. `hf download {path}`)") from e


def _looks_like_repo_id(path: str) -> bool:
    """"org/name" as the Hub spells ids (letters, digits, '-', '_', '.'), not a relative path."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", path) is not None and ".." not in path


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            body = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise MucsError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}") from e
    if not isinstance(body, dict):
        raise MucsError(f"{path} must hold a JSON object, got {type(body).__name__}")
    return body


def model_layout(path: str) -> dict:
    """{role: (subfolder or None for "at the top", class name or None)} for the roles denoiser and
    scheduler (always) and vae, text_encoder, tokenizer (when the folder has them). Reads
    model_index.json when there is one; refuses, before any weights are read, the families and
    pipelines MUCS cannot attribute."""
    index = os.path.join(path, PIPELINE_INDEX)
    found = {}
    if os.path.isfile(index):
        entries = _read_json(index)
        pipe = str(entries.get("_class_name") or "")
        if any(pipe.startswith(p) for p in FLOW_PIPELINES):
            raise MucsError(f"{pipe}: {REFUSED_SCHEDULERS['FlowMatchEulerDiscreteScheduler']}")
        comps = {k: v for k, v in entries.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2}
        if any(k.endswith("_2") or k.endswith("_3") for k, v in comps.items() if v[0] is not None):
            raise MucsError(f"{pipe or index} has several text encoders ({', '.join(k for k in comps if 'encoder' in k)}):"
                            " SDXL-style pipelines are not supported")
        den = [k for k, v in comps.items() if str(v[1]) in SUPPORTED_DENOISERS or str(v[1]) in REFUSED_DENOISERS]
        den = den or [k for k in comps if k in DENOISER_KEYS and comps[k][0] is not None]
        sch = [k for k, v in comps.items() if str(v[1]).endswith("Scheduler")] or [k for k in comps if k == "scheduler"]
        if not den or not sch:
            raise MucsError(f"{index} names no denoiser (UNet or transformer) and scheduler (components: "
                            f"{sorted(comps) or 'none'})")
        found = {"denoiser": den[0], "scheduler": sch[0]}
        found.update({r: r for r in ROLES if r in comps and comps[r][0] is not None})
        index_classes = {role: str(comps[key][1]) for role, key in found.items()}
    else:
        den = [k for k in DENOISER_KEYS if os.path.isfile(os.path.join(path, k, "config.json"))]
        found = {"denoiser": den[0] if den else "unet", "scheduler": "scheduler"}
        found.update({r: r for r in ROLES if os.path.isdir(os.path.join(path, r))})
        index_classes = {}
    layout = {}
    for role, sub in found.items():
        config_name = {"scheduler": "scheduler_config.json", "tokenizer": None}.get(role, "config.json")
        if config_name is None:
            layout[role] = (sub, index_classes.get(role))
            continue
        if os.path.isfile(os.path.join(path, sub, config_name)):
            where = sub
        elif role in ("denoiser", "scheduler") and os.path.isfile(os.path.join(path, config_name)):
            where = None   # root level (pipelines saved with their components at the top, too)
        else:
            if role in ("denoiser", "scheduler"):
                raise MucsError(f"{path} is not {LAYOUTS}: no {sub}/{config_name} nor {config_name}")
            raise MucsError(f"{path}: the {role} folder {sub}/ has no {config_name}")
        cfg = _read_json(os.path.join(path, where or "", config_name))
        archs = cfg.get("architectures")
        cls = cfg.get("_class_name") or (archs[0] if isinstance(archs, list) and archs else index_classes.get(role))
        layout[role] = (where, str(cls) if cls else None)
    _refuse_unsupported(path, layout)
    return layout


def _refuse_unsupported(path: str, layout: dict) -> None:
    den_cls, sch_cls = layout["denoiser"][1], layout["scheduler"][1]
    if den_cls is None:
        raise MucsError(f"{os.path.join(path, layout['denoiser'][0] or '', 'config.json')} names no _class_name: "
                        "cannot tell which network it is (and will not guess)")
    if den_cls not in SUPPORTED_DENOISERS:
        raise MucsError(refusal(den_cls))
    if sch_cls in REFUSED_SCHEDULERS:
        raise MucsError(f"{sch_cls}: {REFUSED_SCHEDULERS[sch_cls]}")
    text = den_cls in ("UNet2DConditionModel", "PixArtTransformer2DModel")
    if text and not ("text_encoder" in layout and "tokenizer" in layout):
        raise MucsError(f"{den_cls} is conditioned on text: the model folder needs the pipeline's text_encoder/ and "
                        "tokenizer/ (pass the whole pipeline folder, not only its denoiser)")


@contextlib.contextmanager
def _quiet_libraries():
    """diffusers and transformers log every missing key at WARNING; we check the load ourselves."""
    from diffusers.utils import logging as diffusers_logging
    transformers: Any
    levels = [diffusers_logging.get_verbosity()]
    diffusers_logging.set_verbosity_error()
    try:
        import transformers
        levels.append(transformers.logging.get_verbosity())
        transformers.logging.set_verbosity_error()
        bars = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        transformers = None
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(levels[0])
        if transformers is not None:
            transformers.logging.set_verbosity(levels[1])
            if bars:
                transformers.utils.logging.enable_progress_bar()


def load_component(root: str, sub: Optional[str], class_name: str, library: str = "diffusers"):
    """One network, with the class its config names, from safetensors only; refused when any weight
    is missing, of the wrong shape or newly initialised (a random network must never be scored)."""
    folder = os.path.join(root, sub or "")
    names = os.listdir(folder)
    if not any(f.endswith(".safetensors") for f in names):
        pickled = [f for f in names if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
        raise MucsError(f"no safetensors weights in {folder}"
                        + (f" (only {pickled[0]}: pickled weights can run code and are not loaded; convert them "
                           "with save_pretrained(..., safe_serialization=True))" if pickled else ""))
    lib = _library(library, class_name)
    found = getattr(lib, class_name, None)
    if not isinstance(found, type):
        raise MucsError(f"{folder}: unknown {library} class {class_name!r}")
    cls: Any = found
    with _quiet_libraries():
        if library == "diffusers":
            net, info = cls.from_pretrained(root, subfolder=sub, use_safetensors=True, output_loading_info=True,
                                            low_cpu_mem_usage=False)
        else:
            net, info = cls.from_pretrained(folder, use_safetensors=True, output_loading_info=True)
    bad = {k: list(v) for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if bad:
        what = "; ".join(f"{len(v)} {k.replace('_', ' ')} (e.g. {str(v[0])[:80]})" for k, v in bad.items())
        raise MucsError(f"{folder}: the weights do not fit {class_name} ({what}): refusing a partly random network")
    return net


def load_tokenizer(root: str, sub: str, class_name: Optional[str]):
    lib = _library("transformers", class_name)
    folder = os.path.join(root, sub)
    cls = getattr(lib, class_name, None) if class_name else None
    if cls is None:
        cls = lib.AutoTokenizer
    try:
        with _quiet_libraries():
            return cls.from_pretrained(folder)
    except Exception as e:
        raise MucsError(f"cannot load the tokenizer in {folder}: {type(e).__name__}: {str(e).splitlines()[0][:160]}") from e


def _library(library: str, class_name: Optional[str]):
    if library == "diffusers":
        import diffusers
        return diffusers
    try:
        import transformers
    except ImportError as e:
        raise MucsError(f"this model's {class_name or 'text encoder'} needs the `transformers` package: "
                        "pip install transformers") from e
    return transformers


def library_of(root: str, role: str, class_name: Optional[str]) -> str:
    """diffusers for the denoiser and VAE, transformers for text encoders and tokenizers."""
    index = os.path.join(root, PIPELINE_INDEX)
    if os.path.isfile(index):
        entry = _read_json(index).get(role)
        if isinstance(entry, list) and entry and entry[0] in ("diffusers", "transformers"):
            return entry[0]
    return "transformers" if role in ("text_encoder", "tokenizer") else "diffusers"
