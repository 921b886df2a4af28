"""The Explorer's queries (a mixin of mucs.explorer.state.Explorer): an image generated from a seed, an
upload or a training image, with its class or prompt, as the model sees it."""
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

from ..checks import SEED_MAX, check_int
from ..errors import MucsError
from ..sources.data import QueryImage, load_query_image, to_model_range
from ..sources.generate import generate


@dataclass
class Query:
    """The current query: pixels as the model sees them, its class or prompt, and where it came from."""
    image: np.ndarray            # (H, W, C) uint8
    label: Optional[int]
    meta: dict = field(default_factory=dict)   # kind (generated/upload/training), seed, steps, index, file, conversions
    prompt: Optional[str] = None   # text-conditional models: the caption it was made with (or typed for an upload)

    def to_query_image(self) -> QueryImage:
        return QueryImage(x=to_model_range(self.image), conversions=list(self.meta.get("conversions", [])),
                          prompt=self.prompt)


class QueryOps:
    """Making queries; uses the Explorer's model, data and class names."""
    # the Explorer's attributes these methods use (declared for the type checker)
    model: Any
    data: Any
    text: Any

    # --- queries ------------------------------------------------------------------------------------
    def generate(self, label: Union[int, str, None], seed: int, count: int = 1, steps: int = 50,
                 progress=None, cancel=None, prompt: Optional[str] = None, guidance_scale: Union[float, str, None] = None,
                 negative_prompt: str = "") -> list:
        """`count` queries from consecutive seeds with the deterministic sampler (a text model's from
        `prompt`, with classifier-free guidance)."""
        from ..sources.generate import check_guidance, default_guidance
        if self.model.num_classes is None:
            label = None
        elif label is None or label == "":
            raise MucsError("choose a class: this model is class-conditional")
        lab = self.model.check_label(None if label is None else int(label))
        prompt = self.model.check_prompt(prompt if self.text else None)
        guidance = default_guidance(self.model) if guidance_scale in (None, "") else check_guidance(guidance_scale)
        count = check_int(count, "the number of images (1..16 at a time)", 1, 16)
        steps = check_int(steps, "sampler steps", 1, 1000)
        seed = check_int(seed, "the seed", 0, SEED_MAX - count)
        seeds = [seed + i for i in range(count)]
        imgs = generate(self.model, [lab] * count, seeds, steps, progress=progress, cancel=cancel,
                        prompts=None if prompt is None else [prompt] * count, guidance_scale=guidance,
                        negative_prompt=negative_prompt or "")
        extra = dict(prompt=prompt, guidance_scale=guidance, negative_prompt=negative_prompt or "") if self.text else {}
        return [Query(image=im, label=lab, meta=dict(kind="generated", seed=s, sampler_steps=steps, conversions=[],
                                                       **extra), prompt=prompt)
                for im, s in zip(imgs, seeds)]

    def upload(self, path: str) -> Query:
        """Read an uploaded file (any size/mode) as the model sees it; the class is left to the user."""
        if not path:
            raise MucsError("no file uploaded")
        q = load_query_image(path, self.model.channels, self.model.size, self.data.background())
        return Query(image=q.uint8, label=None,
                     meta=dict(kind="upload", file=os.path.basename(str(path)), conversions=list(q.conversions)))

    def training_item(self, index) -> Query:
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise MucsError(f"training index must be an integer, got {index!r}") from None
        if not 0 <= i < len(self.data):
            raise MucsError(f"training index {i} out of range 0..{len(self.data) - 1}")
        label = None if self.data.labels is None or self.model.num_classes is None else int(self.data.labels[i])
        prompt = self.data.caption(i) if self.text else None
        return Query(image=self.data.images[i], label=label, meta=dict(kind="training", index=i, conversions=[]),
                     prompt=prompt)

    def with_prompt(self, q: Optional[Query], prompt) -> Optional[Query]:
        """The query with a new prompt typed by the user (blank: none); checked when attributed."""
        if q is None or not self.text:
            return q
        p = prompt.strip() if isinstance(prompt, str) else ""
        return Query(q.image, q.label, q.meta, p or None)

    def with_label(self, q: Query, label, prompt: Optional[str] = None) -> Query:
        """The query with the class (or, for a text model, the prompt) chosen by the user, checked
        against the model; a text query keeps its own prompt when none is given."""
        if q is None:
            raise MucsError("no query yet: generate, upload or pick a training image first")
        if self.text:
            p = prompt if isinstance(prompt, str) and prompt.strip() else q.prompt
            if not p:
                raise MucsError("type the query's prompt: this model is text-conditional (the caption the image "
                                "was made with, or the one you want to ask about)")
            return Query(q.image, None, q.meta, self.model.check_prompt(p))
        if self.model.num_classes is None:
            return Query(q.image, None, q.meta)
        if label is None or label == "":
            raise MucsError("choose the query's class: this model is class-conditional")
        return Query(q.image, self.model.check_label(int(label)), q.meta)
