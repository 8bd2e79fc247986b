"""Live DMD's model package: DMD (Li, Wang, Cui, CVPR 2023), its training and evaluation on the
MMSA data, checkpoints, and the import of official DMD weights.

    from dmd_model import DMD, DMDConfig, import_official
    cfg = DMDConfig.from_yaml("configs/model/mosi_aligned.yaml")
    model = import_official("mosi-aligned.pth", cfg)
    out = model(text, audio, visual)        # official output names: out["output_logit"], ...
"""

from __future__ import annotations

from .artefacts.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .artefacts.official import export_official, import_official
from .config import MODALITIES, ConfigError, DMDConfig, ModelConfig
from .network.dmd import DMD
from .version import __version__

__all__ = [
    "DMD",
    "MODALITIES",
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "DMDConfig",
    "ModelConfig",
    "__version__",
    "export_official",
    "import_official",
    "load_checkpoint",
    "save_checkpoint",
]
