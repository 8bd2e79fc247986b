"""The Live DMD checkpoint: one file with everything needed to use and to trace a trained model.

A checkpoint holds the weights (network and both GD-Units, and the BERT text encoder when one is
fine-tuned), the full configuration, the feature profile the model expects, a description of the
data it was trained on, its metrics, which modalities it was trained with, and the code version.
It is a `torch.save` file of plain containers and tensors, so `torch.load(..., weights_only=True)`
reads it without running code from the file. `dmd info FILE` prints it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import MODALITIES, DMDConfig
from ..network.dmd import DMD

FORMAT = "live-dmd-checkpoint"
FORMAT_VERSION = 1

# The feature profile of the published MMSA pickles (COVAREP, FACET, BERT): what the official
# configurations expect. A live pipeline cannot compute it (see configs and dmd_model.features).
MMSA_PROFILE: dict[str, Any] = {
    "name": "mmsa",
    "text": "BERT-base token features (768) or MMSA text_bert token ids",
    "audio": "COVAREP (MOSI: 5 selected, MOSEI: 74)",
    "visual": "FACET (MOSI: 20, MOSEI: 35)",
    "live": False,
}


class CheckpointError(ValueError):
    """A file is not a Live DMD checkpoint, or does not fit what it is used for."""


@dataclass
class Checkpoint:
    """What a checkpoint file holds, as Python objects."""

    config: DMDConfig
    state_dict: dict[str, torch.Tensor]
    profile: dict[str, Any] = field(default_factory=lambda: dict(MMSA_PROFILE))
    modalities: tuple[str, ...] = MODALITIES
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    code_version: dict[str, Any] = field(default_factory=dict)
    precision: str = "float32"
    path: Path | None = None

    def build_model(self, device: str | torch.device = "cpu") -> DMD:
        """The model with these weights, in eval mode, in float32."""
        model = DMD(self.config.model)
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint weights do not fit its configuration: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}; was it written by another version of Live DMD?"
            )
        return model.to(device).eval()

    @property
    def sha256(self) -> str | None:
        if self.path is None or not self.path.is_file():
            return None
        return file_sha256(self.path)


def code_version() -> dict[str, Any]:
    """Package version and, when run from a git checkout, the commit and whether it had changes."""
    from ..version import __version__

    version: dict[str, Any] = {"live_dmd": __version__, "torch": str(torch.__version__)}
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                    text=True, timeout=5, check=True).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5, check=True).stdout.strip()
            version["git_commit"] = commit
            version["git_dirty"] = bool(dirty)
        except (OSError, subprocess.SubprocessError):
            pass
    return version


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    path: str | Path,
    model: DMD,
    config: DMDConfig,
    *,
    profile: dict[str, Any] | None = None,
    modalities: tuple[str, ...] | list[str] = MODALITIES,
    data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write a checkpoint. `half` stores floating-point weights in float16 (half the size; they
    are read back as float32), for checkpoints shipped in the repository."""
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise CheckpointError(f"unknown modalities {unknown}: use {list(MODALITIES)}")
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        state[k] = v.contiguous()
    config_dict = config.to_dict()
    if model.text_encoder is not None:
        # the weights are in the checkpoint: record BERT's configuration so that loading builds it
        # without downloading pretrained weights
        config_dict["model"]["bert_config"] = json.loads(model.text_encoder.model.config.to_json_string())
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config_dict,
        "state_dict": state,
        "profile": dict(profile or MMSA_PROFILE),
        "modalities": list(modalities),
        "data": data or {},
        "metrics": metrics or {},
        "training": {"saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     **(training or {})},
        "code_version": code_version(),
        "precision": "float16" if half else "float32",
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)  # atomic: an interrupted save never leaves half a checkpoint
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by `save_checkpoint`, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = ""
        if isinstance(payload, dict) and any(k.startswith(("proj_l.", "trans_l_with_a.")) for k in payload):
            hint = ": it looks like an official DMD state dict; convert it with `dmd import-official`"
        raise CheckpointError(f"{path} is not a Live DMD checkpoint{hint}")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format_version']}, newer than this Live DMD "
            f"({FORMAT_VERSION}): upgrade live-dmd"
        )
    return Checkpoint(
        config=DMDConfig.from_dict(payload["config"]),
        state_dict=payload["state_dict"],
        profile=payload.get("profile") or {},
        modalities=tuple(payload.get("modalities") or MODALITIES),
        data=payload.get("data") or {},
        metrics=payload.get("metrics") or {},
        training=payload.get("training") or {},
        code_version=payload.get("code_version") or {},
        precision=payload.get("precision", "float32"),
        path=path,
    )


def describe_checkpoint(ckpt: Checkpoint) -> dict[str, Any]:
    """A JSON-able summary for `dmd info`."""
    cfg = ckpt.config
    n_params = sum(v.numel() for k, v in ckpt.state_dict.items() if not k.startswith("text_encoder."))
    n_text = sum(v.numel() for k, v in ckpt.state_dict.items() if k.startswith("text_encoder."))
    size = ckpt.path.stat().st_size if ckpt.path is not None and ckpt.path.is_file() else None
    return {
        "file": str(ckpt.path) if ckpt.path else None,
        "bytes": size,
        "sha256": ckpt.sha256,
        "name": cfg.name,
        "precision": ckpt.precision,
        "parameters": n_params,
        "text_encoder_parameters": n_text,
        "modalities": list(ckpt.modalities),
        "profile": ckpt.profile,
        "model": {
            "feature_dims": dict(zip(MODALITIES, cfg.model.feature_dims)),
            "seq_lens": dict(zip(MODALITIES, cfg.model.seq_lens)),
            "d_model": cfg.model.d_model,
            "num_heads": cfg.model.num_heads,
            "layers": cfg.model.layers,
            "use_bert": cfg.model.use_bert,
        },
        "data": ckpt.data,
        "metrics": ckpt.metrics,
        "training": ckpt.training,
        "code_version": ckpt.code_version,
        "config": cfg.to_dict(),
    }
