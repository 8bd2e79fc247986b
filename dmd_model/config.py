"""Configuration of the DMD network, its graph distillation units and its training.

One dataclass per concern, built from YAML and validated once (`DMDConfig.from_yaml`). Field names
follow the paper and the official `config/config.json`; where the official name is opaque the
official name is given in the comment (for example `d_model` is `dst_feature_dim_nheads[0]`).

Modalities are always named "text", "audio", "visual", and triples are given in that order, which
is the order of the official `feature_dims` (l, a, v).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MODALITIES: tuple[str, str, str] = ("text", "audio", "visual")
# Order of the modalities inside the graph distillation units, as in the official trainer
# (`logits_homo = stack([l, v, a])`): the priors below are given in this order.
GD_ORDER: tuple[str, str, str] = ("text", "visual", "audio")


class ConfigError(ValueError):
    """A configuration value is missing or out of range; the message names it and the fix."""


def _triple(name: str, value: Any, kind: type) -> tuple:
    if isinstance(value, dict):
        try:
            value = [value[m] for m in MODALITIES]
        except KeyError as exc:
            raise ConfigError(f"{name} must give text, audio and visual; {exc.args[0]!r} is missing") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * 3
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ConfigError(f"{name} = {value!r}: expected three values (text, audio, visual)")
    try:
        return tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} = {value!r}: expected three {kind.__name__} values") from None


@dataclass
class GraphDistillConfig:
    """One graph distillation unit (HomoGD or HeteroGD), as built in the official `run.py`."""

    gd_size: int = 64  # hidden size of the edge network
    prior: tuple[float, ...] = (0, 0, 1, 0, 1, 0)  # edge prior logits, softmaxed at `prior_temperature`
    prior_temperature: float = 0.25
    regularizer: float = 10.0  # `gd_reg`: weight of (mean edge - prior)^2
    w_logit: float = 1.0  # `w_losses[0]`
    w_repr: float = 10.0  # `w_losses[1]`
    metric: str = "l1"  # distance between logits (and representations where repr_loss is "metric")
    # Representation distillation: "metric" (HomoGD: the metric above) or "cosine" (HeteroGD:
    # CosineEmbeddingLoss with target -1, the official `min_cosine`)
    repr_loss: str = "metric"
    alpha: float = 1 / 8  # edge softmax temperature: softmax(alpha * e)

    def validate(self, name: str) -> None:
        if len(self.prior) != 6:
            raise ConfigError(f"{name}.prior has {len(self.prior)} values, expected 6 (one per directed edge)")
        if self.repr_loss not in ("metric", "cosine"):
            raise ConfigError(f"{name}.repr_loss = {self.repr_loss!r}: use metric or cosine")
        if self.metric not in ("l1", "l2", "cosine"):
            raise ConfigError(f"{name}.metric = {self.metric!r}: use l1, l2 or cosine")
        if self.gd_size <= 0 or self.prior_temperature <= 0 or self.alpha <= 0:
            raise ConfigError(f"{name}: gd_size, prior_temperature and alpha must be positive")


@dataclass
class ModelConfig:
    """The DMD network (official `trains/singleTask/model/dmd.py`)."""

    feature_dims: tuple[int, int, int] = (768, 5, 20)  # input feature size per modality
    seq_lens: tuple[int, int, int] = (50, 50, 50)  # input sequence length per modality
    d_model: int = 50  # `dst_feature_dim_nheads[0]`
    num_heads: int = 10  # `dst_feature_dim_nheads[1]`
    layers: int = 4  # `nlevels`
    # The official memory transformers ask for 3 layers but get max(nlevels, 3).
    memory_layers: int = 3
    conv_kernels: tuple[int, int, int] = (5, 5, 5)  # `conv1d_kernel_size_{l,a,v}`
    # attention dropout of the transformers that attend to (take keys from) text, audio, visual
    # (`attn_dropout`, `attn_dropout_a`, `attn_dropout_v`); the memory transformers use text's
    # (official `get_network`: L<-A uses attn_dropout_a, L<-V attn_dropout_v, ...)
    attn_dropout: tuple[float, float, float] = (0.3, 0.2, 0.0)
    relu_dropout: float = 0.0
    res_dropout: float = 0.0
    embed_dropout: float = 0.2
    output_dropout: float = 0.5
    text_dropout: float = 0.5
    attn_mask: bool = True  # causal mask in every transformer
    # Text: pre-extracted features (feature_dims[0] wide), or token ids fine-tuned through BERT.
    use_bert: bool = False
    bert_model: str = "bert-base-uncased"  # a Hugging Face name or a local folder
    bert_finetune: bool = True
    # A BertConfig as a mapping: BERT is then built from it, without downloading pretrained weights
    # (they come from a checkpoint, or stay random in tests). Checkpoints store it.
    bert_config: dict | None = None
    homo_gd: GraphDistillConfig = field(default_factory=GraphDistillConfig)
    hetero_gd: GraphDistillConfig = field(
        default_factory=lambda: GraphDistillConfig(gd_size=32, prior=(0, 0, 1, 0, 1, 1), repr_loss="cosine")
    )
    # Emotion logits beside the sentiment in every head (0: none, the official single-task model;
    # 7: dmd_types.EMOTIONS). Each head's emotion layer reads the same residual output as its
    # sentiment layer; the GD-Units then see [sentiment, emotions] as each modality's logits.
    emotion_classes: int = 0

    def projects(self, modality: str) -> bool:
        """Whether a modality goes through the temporal convolution: the official model skips it
        when the input is already `d_model` wide."""
        return self.feature_dims[MODALITIES.index(modality)] != self.d_model

    @property
    def conv_lens(self) -> tuple[int, int, int]:
        """Sequence length after the temporal convolution (no padding)."""
        return tuple(  # type: ignore[return-value]
            n - k + 1 if self.projects(m) else n
            for m, n, k in zip(MODALITIES, self.seq_lens, self.conv_kernels)
        )

    def validate(self) -> None:
        for name in ("feature_dims", "seq_lens", "conv_kernels"):
            values = getattr(self, name)
            if any(v <= 0 for v in values):
                raise ConfigError(f"model.{name} = {list(values)}: every value must be positive")
        for m, n, k in zip(MODALITIES, self.seq_lens, self.conv_kernels):
            if k > n:
                raise ConfigError(
                    f"model.conv_kernels: {m} kernel {k} is longer than its sequence ({n} steps); "
                    f"use a kernel of at most {n}"
                )
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"model.d_model = {self.d_model} is not divisible by num_heads = {self.num_heads}: "
                "pick heads that divide it"
            )
        for name in ("relu_dropout", "res_dropout", "embed_dropout", "output_dropout", "text_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"model.{name} = {p}: a dropout probability must be in [0, 1)")
        if any(not 0.0 <= p < 1.0 for p in self.attn_dropout):
            raise ConfigError(f"model.attn_dropout = {list(self.attn_dropout)}: each must be in [0, 1)")
        if self.layers < 1 or self.memory_layers < 1:
            raise ConfigError("model.layers and model.memory_layers must be at least 1")
        if self.emotion_classes < 0 or self.emotion_classes == 1:
            raise ConfigError(f"model.emotion_classes = {self.emotion_classes}: use 0 (sentiment only) or the "
                              "number of emotions (7 for the project's seven, 4 for IEMOCAP's)")
        self.homo_gd.validate("model.homo_gd")
        self.hetero_gd.validate("model.hetero_gd")


@dataclass
class LossConfig:
    """Weights of the official loss composition (official `DMD.do_train`)."""

    gd_weight: float = 0.05  # both GD units
    homo_repr_in_loss: bool = False  # the official trainer drops HomoGD's representation loss
    decoupling_weight: float = 0.1  # (cycle + reconstruction + 0.1 * (margin + orthogonality))
    margin_ort_weight: float = 0.1
    margin_scale: float = 0.15  # margin = 0.15 * |label_i - label_j|
    # How the orthogonality (cosine) loss reads the (L, B, d) features. "batch": as PyTorch 1.9 (the
    # authors' version) computed the official 3-D CosineEmbeddingLoss call, cosine along dim 1, the
    # batch axis. "feature": one cosine per time step and sample, along the features.
    orthogonality_axis: str = "batch"
    # With model.emotion_classes > 0 (training/multitask.py): the weight of the emotion terms
    # (cross-entropy of the fused output and every head) beside the sentiment ones.
    emotion_weight: float = 1.0

    def validate(self) -> None:
        if self.orthogonality_axis not in ("batch", "feature"):
            raise ConfigError(
                f"loss.orthogonality_axis = {self.orthogonality_axis!r}: use 'batch' (official) or 'feature'"
            )


@dataclass
class TrainConfig:
    """The official trainer's settings, plus what a researcher needs around it."""

    batch_size: int = 16
    learning_rate: float = 1e-4
    # The official config lists weight_decay (0.005 MOSI, 0.001 MOSEI) but its trainer never passes
    # it to Adam; 0.0 reproduces it.
    weight_decay: float = 0.0
    grad_clip: float = 0.6  # clip gradients by value; -1 disables
    update_epochs: int = 10  # the official name for gradient accumulation over this many batches
    patience: int = 5  # ReduceLROnPlateau on the validation loss, factor 0.5
    early_stop: int = 10  # epochs without a better validation loss
    max_epochs: int = 200
    seeds: tuple[int, ...] = (1111, 1112, 1113, 1114, 1115)
    deterministic: bool = False
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = "fp32"  # fp32 or bf16 (autocast)
    num_workers: int = 0
    eval_batch_size: int = 64
    # Mixed corpora drawn by weight (`dmd train --data A B@W`): draws per epoch (0: as many as there
    # are training samples). Fewer draws make an epoch, and so validation and early stopping, come
    # more often on large mixtures.
    epoch_samples: int = 0

    def validate(self) -> None:
        if self.epoch_samples < 0:
            raise ConfigError(f"train.epoch_samples = {self.epoch_samples}: use 0 (every sample) or a positive count")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise ConfigError(f"train.batch_size = {self.batch_size}: must be at least 1")
        if self.update_epochs < 1:
            raise ConfigError(f"train.update_epochs = {self.update_epochs}: must be at least 1")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"train.precision = {self.precision!r}: use fp32 or bf16")
        if self.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate = {self.learning_rate}: must be positive")


@dataclass
class DataConfig:
    """Where the training data is and how to read it."""

    dataset: str = "mosi"  # mosi, mosei, or any name (metrics are MMSA's regression metrics)
    path: str = ""  # an MMSA-format pickle (aligned_50.pkl / unaligned_50.pkl)
    aligned: bool = True

    def validate(self) -> None:
        pass


@dataclass
class DMDConfig:
    """Everything a run needs: model, losses, training and data."""

    name: str = "dmd"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> DMDConfig:
        self.model.validate()
        self.loss.validate()
        self.train.validate()
        self.data.validate()
        return self

    # -- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DMDConfig:
        raw = dict(raw or {})
        unknown = set(raw) - {"name", "model", "loss", "train", "data"}
        if unknown:
            raise ConfigError(f"unknown configuration section(s) {sorted(unknown)}: use model, loss, train, data")
        model_raw = dict(raw.get("model") or {})
        # a partial GD section keeps that unit's own defaults (HeteroGD's differ from HomoGD's)
        defaults = ModelConfig()
        gds = {k: _build(GraphDistillConfig, {**dataclasses.asdict(getattr(defaults, k)), **(model_raw.pop(k) or {})},
                         f"model.{k}")
               for k in ("homo_gd", "hetero_gd") if k in model_raw}
        model = _build(ModelConfig, model_raw, "model")
        for k, v in gds.items():
            setattr(model, k, v)
        cfg = cls(
            name=str(raw.get("name", "dmd")),
            model=model,
            loss=_build(LossConfig, raw.get("loss") or {}, "loss"),
            train=_build(TrainConfig, raw.get("train") or {}, "train"),
            data=_build(DataConfig, raw.get("data") or {}, "data"),
        )
        return cfg.validate()

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> DMDConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"configuration file {str(path)!r} not found: give a path to a YAML file "
                              "(the official settings are in configs/model/)")
        raw = yaml.safe_load(path.read_text()) or {}
        for item in overrides or []:
            apply_override(raw, item)
        return cls.from_dict(raw)


_TRIPLES = {
    "feature_dims": int, "seq_lens": int, "conv_kernels": int, "attn_dropout": float,
}


def _build(kind: type, raw: dict[str, Any], section: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"section {section!r} must be a mapping, got {raw!r}")
    names = {f.name: f for f in dataclasses.fields(kind)}
    unknown = set(raw) - set(names)
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in {section}: known keys are {sorted(names)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _TRIPLES:
            value = _triple(f"{section}.{key}", value, _TRIPLES[key])
        elif key in ("prior", "seeds"):
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        values[key] = value
    try:
        obj = kind(**values)
    except TypeError as exc:
        raise ConfigError(f"{section}: {exc}") from None
    # coerce scalar types so that YAML's "1e-4" string or an int where a float is meant still works
    for f in dataclasses.fields(kind):
        v = getattr(obj, f.name)
        if f.type in ("float", float) and isinstance(v, (int, str)) and not isinstance(v, bool):
            try:
                setattr(obj, f.name, float(v))
            except ValueError:
                raise ConfigError(f"{section}.{f.name} = {v!r}: expected a number") from None
        elif f.type in ("int", int) and isinstance(v, (float, str)) and not isinstance(v, bool):
            try:
                setattr(obj, f.name, int(v))
            except ValueError:
                raise ConfigError(f"{section}.{f.name} = {v!r}: expected an integer") from None
    return obj


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply a `section.key=value` override (value parsed as YAML) to a raw configuration."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.batch_size=32")
    dotted, value = item.split("=", 1)
    keys = dotted.strip().split(".")
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {k!r} is not a section")
    node[keys[-1]] = yaml.safe_load(value)
