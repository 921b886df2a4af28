"""MUCS Explorer: training-data attribution for diffusion models by mirrored unlearning and
noise-consistent skew (Serrà et al., 2026)."""
__version__ = "0.1.0"

from .errors import Cancelled, MucsError  # noqa: E402
from .settings import Settings  # noqa: E402
from .progress import ProgressEvent, TextBar  # noqa: E402
from .sources.models import DiffusionModel, load_model, pick_device  # noqa: E402
from .sources.data import TrainingSet, QueryImage, load_dataset, load_query_image  # noqa: E402
from .method.noise import NoiseSet, make_noise_set  # noqa: E402
from .method.attribute import Attribution, Attributor  # noqa: E402

__all__ = ["Attribution", "Attributor", "Cancelled", "DiffusionModel", "MucsError", "NoiseSet", "ProgressEvent",
           "QueryImage", "Settings", "TextBar", "TrainingSet", "load_dataset", "load_model", "load_query_image",
           "make_noise_set", "pick_device"]
