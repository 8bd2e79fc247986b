"""Import and export of the official DMD weights (github.com/mdswyz/DMD), by an explicit key map.

The official model holds one module per modality and per transformer (`proj1_l_low`, `trans_l_with_a`,
...); ours holds one definition over the modalities and stacks the transformers (see
`dmd_model.network.transformer`). `official_key_map` lists, for every official parameter, where it lives here.
`import_official` builds our model from an official state dict (for example the authors'
`mosi-aligned.pth`); `export_official` gives the official state dicts back, which is how
docs/FIDELITY.md runs the official code on our weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..config import MODALITIES, DMDConfig, ModelConfig
from ..network.dmd import CROSSMODAL, DMD, MEMORY, SELF_ATTENTION, SHORT

# official transformer name -> (our stack, member index)
TRANSFORMERS: dict[str, tuple[str, int]] = {}
for _g, (_t, _s) in enumerate(CROSSMODAL):
    TRANSFORMERS[f"trans_{SHORT[_t]}_with_{SHORT[_s]}"] = ("encoders", _g)
for _g, _m in enumerate(SELF_ATTENTION):
    TRANSFORMERS[f"self_attentions_c_{SHORT[_m]}"] = ("encoders", len(CROSSMODAL) + _g)
for _g, _m in enumerate(MEMORY):
    TRANSFORMERS[f"trans_{SHORT[_m]}_mem"] = ("memory", _g)

# per-layer parameters: official suffix -> our stacked parameter name
_LAYER_PARAMS = {
    "self_attn.in_proj_weight": "in_proj_weight",
    "self_attn.in_proj_bias": "in_proj_bias",
    "self_attn.out_proj.weight": "out_proj_weight",
    "self_attn.out_proj.bias": "out_proj_bias",
    "fc1.weight": "fc1_weight",
    "fc1.bias": "fc1_bias",
    "fc2.weight": "fc2_weight",
    "fc2.bias": "fc2_bias",
    "layer_norms.0.weight": "norm0_weight",
    "layer_norms.0.bias": "norm0_bias",
    "layer_norms.1.weight": "norm1_weight",
    "layer_norms.1.bias": "norm1_bias",
}
# official buffers of each transformer that carry no information
_IGNORED_SUFFIXES = ("version", "embed_positions._float_tensor")


@dataclass(frozen=True)
class KeyMapping:
    """One official tensor: where it lives in our model, and how it is reshaped."""

    official: str
    ours: str
    member: int | None = None  # row of a stacked transformer parameter
    squeeze_last: bool = False  # official 1x1 Conv1d weight (out, in, 1) <-> our Linear (out, in)


def official_key_map(model: DMD) -> list[KeyMapping]:
    """Every official DMD parameter and its place in `model` (text encoder included)."""
    maps: list[KeyMapping] = []
    for m in MODALITIES:
        k = SHORT[m]
        maps.append(KeyMapping(f"proj_{k}.weight", f"project.{m}.weight"))
        maps.append(KeyMapping(f"encoder_s_{k}.weight", f"private.{m}.weight", squeeze_last=True))
        maps.append(KeyMapping(f"decoder_{k}.weight", f"decoder.{m}.weight", squeeze_last=True))
        for p in ("weight", "bias"):
            maps.append(KeyMapping(f"proj_cosine_{k}.{p}", f"proj_cosine.{m}.{p}"))
            maps.append(KeyMapping(f"align_c_{k}.{p}", f"align_shared.{m}.{p}"))
            for official, ours in (("proj1", "proj1"), ("proj2", "proj2"), ("out_layer", "out")):
                maps.append(KeyMapping(f"{official}_{k}_low.{p}", f"homo_head.{m}.{ours}.{p}"))
                maps.append(KeyMapping(f"{official}_{k}_high.{p}", f"hetero_head.{m}.{ours}.{p}"))
            maps.append(KeyMapping(f"weight_{k}.{p}", f"gate.{m}.{p}"))
    maps.append(KeyMapping("encoder_c.weight", "shared.weight", squeeze_last=True))
    for p in ("weight", "bias"):
        maps.append(KeyMapping(f"weight_c.{p}", f"gate_shared.{p}"))
        for official, ours in (("proj1", "proj1"), ("proj2", "proj2"), ("out_layer", "out")):
            maps.append(KeyMapping(f"{official}_c.{p}", f"shared_head.{ours}.{p}"))
            maps.append(KeyMapping(f"{official}.{p}", f"fusion_head.{ours}.{p}"))
    for name, (stack, g) in TRANSFORMERS.items():
        n_layers = len(getattr(model, stack).layers)
        for n in range(n_layers):
            for official, ours in _LAYER_PARAMS.items():
                maps.append(KeyMapping(f"{name}.layers.{n}.{official}", f"{stack}.layers.{n}.{ours}", member=g))
        maps.append(KeyMapping(f"{name}.layer_norm.weight", f"{stack}.norm_weight", member=g))
        maps.append(KeyMapping(f"{name}.layer_norm.bias", f"{stack}.norm_bias", member=g))
    if model.text_encoder is not None:
        for key in model.text_encoder.model.state_dict():
            maps.append(KeyMapping(f"text_model.model.{key}", f"text_encoder.model.{key}"))
    return maps


class OfficialCheckpointError(ValueError):
    """An official state dict does not fit the configuration; the message says what to change."""


def _load_state(source: str | Path | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(source, Mapping):
        return _strip_data_parallel(source)
    path = Path(source)
    if not path.is_file():
        raise OfficialCheckpointError(f"official checkpoint {str(path)!r} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise OfficialCheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    return _strip_data_parallel(state)


def _strip_data_parallel(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """State dicts saved from nn.DataParallel carry a "module." prefix on every key."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def _model_config(config: ModelConfig | DMDConfig | str | Path) -> ModelConfig:
    if isinstance(config, DMDConfig):
        return config.model
    if isinstance(config, ModelConfig):
        return config
    return DMDConfig.from_yaml(config).model


def import_official(
    state_dict_or_path: str | Path | Mapping[str, Tensor],
    config: ModelConfig | DMDConfig | str | Path,
    *,
    homo_gd: Mapping[str, Tensor] | None = None,
    hetero_gd: Mapping[str, Tensor] | None = None,
) -> DMD:
    """Build our DMD from an official state dict (or a `.pth` file holding one).

    `config` is the model configuration the checkpoint was trained with (a ModelConfig, a DMDConfig
    or the path of a YAML file such as `configs/model/mosi_aligned.yaml`). The official checkpoints
    hold the network only; the GD-Units' weights (`homo_gd`, `hetero_gd`, the official
    `DistillationKernel` state dicts) are optional and otherwise freshly initialised; they only
    matter for training and for the edges shown live. The returned model is in eval mode and its
    forward returns the official output names with the official values.
    """
    cfg = _model_config(config)
    state = _load_state(state_dict_or_path)
    has_bert = any(k.startswith("text_model.") for k in state)
    if has_bert and not cfg.use_bert:
        raise OfficialCheckpointError(
            "the checkpoint holds a BERT text encoder (text_model.*) but the configuration has "
            "model.use_bert = false: set model.use_bert: true (text input is then MMSA text_bert ids)"
        )
    if cfg.use_bert and not has_bert:
        raise OfficialCheckpointError(
            "the configuration has model.use_bert = true but the checkpoint holds no text_model.* "
            "weights: set model.use_bert: false and feed 768-d text features"
        )
    if has_bert and cfg.bert_config is None:
        # the weights come from the checkpoint: build the encoder from its configuration only
        cfg = _with_bert_config_only(cfg)
    model = DMD(cfg)
    ours = model.state_dict()
    maps = official_key_map(model)
    expected = {m.official for m in maps}
    ignored = {k for k in state if k.endswith(_IGNORED_SUFFIXES) or k.endswith("position_ids")}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected - ignored)
    if missing or unexpected:
        raise OfficialCheckpointError(
            f"the checkpoint does not match the configuration: {len(missing)} missing key(s) "
            f"{missing[:5]}, {len(unexpected)} unexpected key(s) {unexpected[:5]}; check model.layers, "
            "model.use_bert and that this is a DMD network state dict (model[0] in the official trainer)"
        )
    new_state = {k: v.clone() for k, v in ours.items()}
    for m in maps:
        value = state[m.official]
        if m.squeeze_last:
            value = value.squeeze(-1)
        target = new_state[m.ours] if m.member is None else new_state[m.ours][m.member]
        if tuple(value.shape) != tuple(target.shape):
            raise OfficialCheckpointError(
                f"official {m.official} has shape {tuple(value.shape)} but the configuration expects "
                f"{tuple(target.shape)}: the checkpoint was trained with other model.feature_dims, "
                "model.seq_lens, model.d_model or model.conv_kernels; use its configuration "
                "(configs/model/mosi_aligned.yaml, mosei_aligned.yaml, ...)"
            )
        target.copy_(value.to(target.dtype))
    for unit, gd_state in (("homo_gd", homo_gd), ("hetero_gd", hetero_gd)):
        if gd_state is not None:
            for key, value in gd_state.items():
                if f"{unit}.{key}" not in new_state:
                    raise OfficialCheckpointError(f"{unit} state has an unknown key {key!r}")
                new_state[f"{unit}.{key}"].copy_(value)
    model.load_state_dict(new_state)
    return model.eval()


def _with_bert_config_only(cfg: ModelConfig) -> ModelConfig:
    """A copy of cfg whose BERT is built from its configuration (no download of weights that the
    checkpoint is about to overwrite). Falls back to the pretrained name when only that is known."""
    import dataclasses

    try:
        from transformers import BertConfig

        bert_config = BertConfig.from_pretrained(cfg.bert_model).to_dict()
    except Exception:  # noqa: BLE001 - reported to the caller
        return cfg
    return dataclasses.replace(cfg, bert_config=bert_config)


def export_official(model: DMD) -> dict[str, dict[str, Tensor]]:
    """The official state dicts of `model`: {"dmd": ..., "homo_gd": ..., "hetero_gd": ...}.

    "dmd" loads into the official `DMD(args)` with `load_state_dict` (strict); the GD dicts load
    into the official `DistillationKernel`s.
    """
    ours = model.state_dict()
    dmd: dict[str, Tensor] = {}
    for m in official_key_map(model):
        value = ours[m.ours] if m.member is None else ours[m.ours][m.member]
        if m.squeeze_last:
            value = value.unsqueeze(-1)
        dmd[m.official] = value.detach().clone()
    for name in TRANSFORMERS:
        dmd[f"{name}.version"] = torch.tensor([2.0])
        dmd[f"{name}.embed_positions._float_tensor"] = torch.zeros(1)
    gd = {
        unit: {k.removeprefix(f"{unit}."): v.detach().clone() for k, v in ours.items() if k.startswith(f"{unit}.")}
        for unit in ("homo_gd", "hetero_gd")
    }
    return {"dmd": dmd, **gd}
