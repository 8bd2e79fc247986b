"""The DMD network (Li, Wang, Cui, CVPR 2023), read top to bottom like the paper's Figure 2.

    text, audio, visual
      -> temporal 1-D convolution per modality                      (origin_*)
      -> decoupling: shared encoder (irrelevant space, c_*) and private encoders (exclusive, s_*)
         decoders rebuild each modality from [s, c] (recon_*); re-encoding gives s_*_r
      -> HomoGD branch: per-modality homogeneous heads on c_*        (logits_*_homo, repr_*_homo)
         self-attention transformers on c_*, fused                   (logits_c)
      -> HeteroGD branch: crossmodal transformers on s_*, memory transformers
         per-modality heterogeneous heads                            (logits_*_hetero, repr_*_hetero)
      -> gated fusion of both branches                               (output_logit)

With `model.emotion_classes` = E > 0 every head also gives E emotion logits from the same residual
output (`emotion_{l,a,v}_homo`, `emotion_{l,a,v}_hetero`, `emotion_c`, `emotion_logit`), and the GD-Units
read [sentiment, emotions] as each modality's logits. With E = 0 (the official setting) the model,
its parameters and its outputs are exactly the single-task ones.

The forward pass returns a dict with the official output names and shapes (see `OUTPUT_SHAPES`), so
code written against the official `dmd.py` reads ours unchanged; with `distill=True` it also returns
the two GD-Units' edges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import GD_ORDER, MODALITIES, ConfigError, ModelConfig
from ..kernels.dropout import dropout
from .graph_distill import GraphDistillation, edge_matrix
from .transformer import EncoderStack

SHORT = {"text": "l", "audio": "a", "visual": "v"}  # official suffixes

# Crossmodal members of the d-wide encoder stack, in official order: (target, source). The three
# self-attention encoders on the irrelevant features follow them.
CROSSMODAL: tuple[tuple[str, str], ...] = (
    ("text", "audio"), ("text", "visual"),
    ("audio", "text"), ("audio", "visual"),
    ("visual", "text"), ("visual", "audio"),
)
SELF_ATTENTION: tuple[str, ...] = ("text", "visual", "audio")
MEMORY: tuple[str, ...] = ("text", "audio", "visual")


class ResidualHead(nn.Module):
    """x -> proj2(dropout(relu(proj1(x)))) + x -> out: the official prediction head.

    `proj1` may narrow (the homogeneous heads squeeze d*L features to d) and `proj2` widens back.
    Returns (logit, hidden, residual output). With `emotions` > 0, `emotion(h)` maps the residual
    output to that many emotion logits (a second task on the same features).
    """

    def __init__(self, dim: int, hidden: int, dropout: float, out_dim: int = 1, emotions: int = 0) -> None:
        super().__init__()
        self.proj1 = nn.Linear(dim, hidden)
        self.proj2 = nn.Linear(hidden, dim)
        self.out = nn.Linear(dim, out_dim)
        self.emotion = nn.Linear(dim, emotions) if emotions else None
        self.dropout = dropout

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hidden = F.relu(self.proj1(x))
        h = self.proj2(dropout(hidden, self.dropout, self.training)) + x
        return self.out(h), hidden, h


class TextEncoder(nn.Module):
    """BERT over MMSA `text_bert` input (B, 3, L): token ids, attention mask, segment ids."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        try:
            from transformers import BertConfig, BertModel
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError("model.use_bert needs the transformers package: pip install 'live-dmd[bert]'") from exc
        if cfg.bert_config is not None:
            self.model = BertModel(BertConfig(**cfg.bert_config))
        else:
            self.model = BertModel.from_pretrained(cfg.bert_model)
        hidden = self.model.config.hidden_size
        if hidden != cfg.feature_dims[0]:
            raise ConfigError(
                f"model.feature_dims text = {cfg.feature_dims[0]} but {cfg.bert_model} gives {hidden}-d "
                f"features: set model.feature_dims text to {hidden}"
            )
        self.finetune = cfg.bert_finetune

    def forward(self, text: Tensor) -> Tensor:
        ids, mask, segments = text[:, 0].long(), text[:, 1].float(), text[:, 2].long()
        with torch.set_grad_enabled(self.finetune and torch.is_grad_enabled()):
            return self.model(input_ids=ids, attention_mask=mask, token_type_ids=segments).last_hidden_state


class DMD(nn.Module):
    """Decoupled Multimodal Distilling: the network and its two GD-Units.

    The GD-Units (`homo_gd`, `hetero_gd`) are part of the model: training uses their losses and the
    live pipeline shows their edges. Call `model(text, audio, visual)`; see `forward`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.d_model
        lens = dict(zip(MODALITIES, cfg.conv_lens))
        self.conv_lens = lens
        self.text_encoder = TextEncoder(cfg) if cfg.use_bert else None

        # 1. temporal convolutions (official proj_l, proj_a, proj_v)
        self.project = nn.ModuleDict({
            m: nn.Conv1d(dim, d, kernel_size=k, bias=False)
            for m, dim, k in zip(MODALITIES, cfg.feature_dims, cfg.conv_kernels)
        })
        # 2. decoupling: private (exclusive) encoders, one shared (irrelevant) encoder, decoders.
        # These are 1x1 convolutions in the official code; here they are their linear maps.
        self.private = nn.ModuleDict({m: nn.Linear(d, d, bias=False) for m in MODALITIES})  # encoder_s_*
        self.shared = nn.Linear(d, d, bias=False)  # encoder_c
        self.decoder = nn.ModuleDict({m: nn.Linear(2 * d, d, bias=False) for m in MODALITIES})
        self.proj_cosine = nn.ModuleDict({m: nn.Linear(d * lens[m], d) for m in MODALITIES})
        self.align_shared = nn.ModuleDict({m: nn.Linear(d * lens[m], d) for m in MODALITIES})  # align_c_*

        # 3. homogeneous branch: heads on the flattened irrelevant features, self-attention, fusion
        E = cfg.emotion_classes
        self.homo_head = nn.ModuleDict(
            {m: ResidualHead(d * lens[m], d, cfg.output_dropout, emotions=E) for m in MODALITIES})  # *_low
        # 4. transformers: six crossmodal + three self-attention (d wide), three memory (2d wide)
        p_text = cfg.attn_dropout[0]
        p_attn = dict(zip(MODALITIES, cfg.attn_dropout))
        self.encoders = EncoderStack(
            members=len(CROSSMODAL) + len(SELF_ATTENTION), dim=d, num_heads=cfg.num_heads, layers=cfg.layers,
            attn_dropout=[p_attn[src] for _, src in CROSSMODAL] + [p_attn[m] for m in SELF_ATTENTION],
            relu_dropout=cfg.relu_dropout, res_dropout=cfg.res_dropout, embed_dropout=cfg.embed_dropout,
            causal=cfg.attn_mask,
        )
        self.memory = EncoderStack(
            members=len(MEMORY), dim=2 * d, num_heads=cfg.num_heads, layers=max(cfg.layers, cfg.memory_layers),
            attn_dropout=[p_text] * len(MEMORY), relu_dropout=cfg.relu_dropout, res_dropout=cfg.res_dropout,
            embed_dropout=cfg.embed_dropout, causal=cfg.attn_mask,
        )
        self.shared_head = ResidualHead(3 * d, 3 * d, cfg.output_dropout, emotions=E)  # proj1_c, proj2_c, out_layer_c
        # 5. heterogeneous heads (official *_high)
        self.hetero_head = nn.ModuleDict(
            {m: ResidualHead(2 * d, 2 * d, cfg.output_dropout, emotions=E) for m in MODALITIES})
        # 6. gated fusion (official weight_l, weight_v, weight_a, weight_c, proj1, proj2, out_layer)
        self.gate = nn.ModuleDict({m: nn.Linear(2 * d, 2 * d) for m in MODALITIES})
        self.gate_shared = nn.Linear(3 * d, 3 * d)
        self.fusion_head = ResidualHead(9 * d, 9 * d, cfg.output_dropout, emotions=E)
        # 7. graph distillation units
        self.homo_gd = GraphDistillation(cfg.homo_gd, logit_dim=1 + E, repr_dim=d)
        self.hetero_gd = GraphDistillation(cfg.hetero_gd, logit_dim=1 + E, repr_dim=2 * d)

    # ------------------------------------------------------------------------------------
    def check_inputs(self, text: Tensor, audio: Tensor, visual: Tensor) -> None:
        """Shapes against the configuration, with the field to change in the message."""
        cfg = self.cfg
        expected = {
            "text": (3, cfg.seq_lens[0]) if cfg.use_bert else (cfg.seq_lens[0], cfg.feature_dims[0]),
            "audio": (cfg.seq_lens[1], cfg.feature_dims[1]),
            "visual": (cfg.seq_lens[2], cfg.feature_dims[2]),
        }
        batch = text.shape[0]
        for name, x in zip(MODALITIES, (text, audio, visual)):
            if x.dim() != 3 or tuple(x.shape[1:]) != expected[name] or x.shape[0] != batch:
                want = (batch, *expected[name])
                raise ValueError(
                    f"{name} input has shape {tuple(x.shape)}, expected {want}: the model was configured "
                    "with model.seq_lens / model.feature_dims for other data; use the configuration the "
                    "data was made for"
                )

    def forward(self, text: Tensor, audio: Tensor, visual: Tensor, distill: bool = False,
                check: bool = True) -> dict[str, Tensor]:
        """Run DMD on a batch. text (B, L_t, D_t) features, or (B, 3, L_t) token ids when BERT is
        used; audio (B, L_a, D_a); visual (B, L_v, D_v).

        Returns the official outputs (`output_logit` (B, 1) is the sentiment); with `distill` also
        `edges_homo`, `edges_hetero` (6, B) and `edges_homo_matrix`, `edges_hetero_matrix`
        (B, 3, 3) indexed [teacher, student] in (text, audio, visual) order.
        """
        if check:
            self.check_inputs(text, audio, visual)
        cfg, training = self.cfg, self.training
        if self.text_encoder is not None:
            text = self.text_encoder(text)
        text = dropout(text, cfg.text_dropout, training)
        batch = text.shape[0]

        # 1. temporal convolution, then channels last: (B, L, d)
        origin = {}
        for m, x in zip(MODALITIES, (text, audio, visual)):
            origin[m] = self.project[m](x.transpose(1, 2)).transpose(1, 2) if cfg.projects(m) else x

        # 2. decoupling
        s = {m: self.private[m](origin[m]) for m in MODALITIES}
        c = {m: self.shared(origin[m]) for m in MODALITIES}
        # official align_c_* flattens (B, d, L) channel-major; the other flat heads read (B, L, d)
        c_sim = {m: self.align_shared[m](c[m].transpose(1, 2).reshape(batch, -1)) for m in MODALITIES}
        recon = {m: self.decoder[m](torch.cat([s[m], c[m]], dim=-1)) for m in MODALITIES}
        s_r = {m: self.private[m](recon[m]) for m in MODALITIES}
        proj_s = {m: self.proj_cosine[m](s[m].reshape(batch, -1)) for m in MODALITIES}

        # 3. homogeneous heads on the irrelevant features
        homo = {m: self.homo_head[m](c[m].reshape(batch, -1)) for m in MODALITIES}

        # 4. transformers
        outs = self.encoders(
            [s[t] for t, _ in CROSSMODAL] + [c[m] for m in SELF_ATTENTION],
            [s[src] for _, src in CROSSMODAL] + [None] * len(SELF_ATTENTION),
            last_only=[False] * len(CROSSMODAL) + [True] * len(SELF_ATTENTION),  # only c_att[-1] is read
        )
        cross = dict(zip(CROSSMODAL, outs[: len(CROSSMODAL)]))
        c_att = dict(zip(SELF_ATTENTION, outs[len(CROSSMODAL):]))
        c_fusion = torch.cat([c_att[m][:, -1] for m in ("text", "visual", "audio")], dim=1)
        logits_c, _, h_c = self.shared_head(c_fusion)

        mem_in = [torch.cat([cross[(t, src)] for tt, src in CROSSMODAL if tt == t], dim=-1) for t in MEMORY]
        mem_out = self.memory(mem_in, [None] * len(MEMORY), last_only=True)
        last_h = {m: out[:, -1] for m, out in zip(MEMORY, mem_out)}
        hetero = {m: self.hetero_head[m](last_h[m]) for m in MODALITIES}

        # 5. gated fusion
        gates = [torch.sigmoid(self.gate[m](last_h[m])) for m in ("text", "visual", "audio")]
        fused = torch.cat([*gates, torch.sigmoid(self.gate_shared(c_fusion))], dim=1)
        output, _, h_out = self.fusion_head(fused)

        res: dict[str, Tensor] = {}
        for m in MODALITIES:
            k = SHORT[m]
            res[f"logits_{k}_homo"] = homo[m][0]
            # The official code applies an in-place ReLU to repr_*_homo after returning it into
            # the dict, so the representation it distills is relu(proj1(x)); we return that value
            # (computed out of place). See docs/FIDELITY.md.
            res[f"repr_{k}_homo"] = homo[m][1]
            res[f"origin_{k}"] = origin[m].transpose(1, 2)
            res[f"s_{k}"] = s[m].permute(1, 0, 2)
            res[f"proj_s_{k}"] = proj_s[m]
            res[f"c_{k}"] = c[m].permute(1, 0, 2)
            res[f"s_{k}_r"] = s_r[m].transpose(1, 2)
            res[f"recon_{k}"] = recon[m].transpose(1, 2)
            res[f"c_{k}_sim"] = c_sim[m]
            res[f"logits_{k}_hetero"] = hetero[m][0]
            res[f"repr_{k}_hetero"] = hetero[m][2]
            res[f"last_h_{k}"] = last_h[m]
        res["logits_c"] = logits_c
        res["output_logit"] = output
        if self.cfg.emotion_classes:
            for m in MODALITIES:
                k = SHORT[m]
                res[f"emotion_{k}_homo"] = self.homo_head[m].emotion(homo[m][2])
                res[f"emotion_{k}_hetero"] = self.hetero_head[m].emotion(hetero[m][2])
            res["emotion_c"] = self.shared_head.emotion(h_c)
            res["emotion_logit"] = self.fusion_head.emotion(h_out)
        if distill:
            res.update(self.graph_edges(res))
        return res

    # ------------------------------------------------------------------------------------
    @staticmethod
    def gd_inputs(out: dict[str, Tensor], branch: str) -> tuple[Tensor, Tensor]:
        """Stack logits and representations of a branch ("homo" or "hetero") in GD order; with
        emotion heads a modality's logits are [sentiment, emotions]."""
        keys = [SHORT[m] for m in GD_ORDER]
        if f"emotion_{keys[0]}_{branch}" in out:
            logits = torch.stack([torch.cat([out[f"logits_{k}_{branch}"], out[f"emotion_{k}_{branch}"]], -1)
                                  for k in keys])
        else:
            logits = torch.stack([out[f"logits_{k}_{branch}"] for k in keys])
        reprs = torch.stack([out[f"repr_{k}_{branch}"] for k in keys])
        return logits, reprs

    def graph_edges(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        res = {}
        for branch, unit in (("homo", self.homo_gd), ("hetero", self.hetero_gd)):
            edges, raw = unit(*self.gd_inputs(out, branch))
            res[f"edges_{branch}"] = edges
            res[f"edges_{branch}_raw"] = raw
            res[f"edges_{branch}_matrix"] = edge_matrix(edges)
        return res

    def num_parameters(self, include_text_encoder: bool = False) -> int:
        return sum(p.numel() for n, p in self.named_parameters()
                   if include_text_encoder or not n.startswith("text_encoder."))

