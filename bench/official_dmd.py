"""Run the official DMD code (github.com/mdswyz/DMD) beside ours, from a checkout outside this repository.

Nothing of the official code is copied here: this module puts a checkout on `sys.path`, imports its
classes and calls them. It builds the official network and both `DistillationKernel`s as the official
`run.py` does, from one of our configurations, and composes the official loss terms as the official
trainer (`trains/singleTask/DMD.py`, `do_train`) does, calling the official loss classes.

Two things make the official code run on a current PyTorch without a GPU:
- `pynvml` (imported by the official `trains/utils/functions.py` for GPU selection) is stubbed;
- on a CPU run `.cuda()` becomes a no-op: the official code calls it on its modules and on the tensors
  it creates (`gd_prior`, the cosine targets). On a CUDA run it is left as it is.
And one call of the trainer has to be reproduced: `nn.CosineEmbeddingLoss()(s, c, tensor([-1]))` on the
3-D (L, B, d) features, which PyTorch >= 1.13 rejects. `cosine_embedding_loss_torch19` computes what
PyTorch 1.9, the authors' version, computed for it (see `official_loss_terms`).

    official = build_official(cfg.model, official_path("/path/to/DMD"))
    official.load_exported(export_official(our_model))
    out = official.forward(text, audio, visual)
    terms = official.loss_terms(out, labels)
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ENV_VAR = "DMD_OFFICIAL"
OFFICIAL_URL = "https://github.com/mdswyz/DMD"

# Sequence lengths the official DMD hard-codes per dataset (`trains/singleTask/model/dmd.py`), in our
# modality order (text, audio, visual). The official names them len_l, len_v, len_a.
OFFICIAL_LENGTHS: dict[tuple[str, bool], tuple[int, int, int]] = {
    ("mosi", True): (50, 50, 50),
    ("mosi", False): (50, 375, 500),
    ("mosei", True): (50, 50, 50),
    ("mosei", False): (50, 500, 500),
}
OFFICIAL_MEMORY_LAYERS = 3  # the official `get_network(..., layers=3)` for the memory transformers
# official output order inside the GD units and of the per-modality terms
_GD_KEYS = ("l", "v", "a")


class OfficialCodeError(RuntimeError):
    """The official checkout is missing, incomplete, or cannot express the requested configuration."""


def add_official_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--official", default=os.environ.get(ENV_VAR),
        help=f"path of a checkout of {OFFICIAL_URL} (outside this repository); default: ${ENV_VAR}",
    )


def official_path(path: str | Path | None) -> Path:
    """The checkout to use: `path`, else $DMD_OFFICIAL; a clear error when neither is a DMD checkout."""
    if not path:
        path = os.environ.get(ENV_VAR)
    if not path:
        raise OfficialCodeError(
            f"no official DMD checkout given: fetch {OFFICIAL_URL} (git clone, outside this repository) "
            f"and pass --official /path/to/DMD or set {ENV_VAR}"
        )
    root = Path(path).expanduser().resolve()
    marker = root / "trains" / "singleTask" / "model" / "dmd.py"
    if not marker.is_file():
        raise OfficialCodeError(
            f"{str(root)!r} is not a checkout of {OFFICIAL_URL} (no trains/singleTask/model/dmd.py): "
            "fetch it with git clone and pass its folder with --official"
        )
    return root


@dataclass(frozen=True)
class OfficialCode:
    """The official classes this module calls."""

    root: Path
    DMD: type  # trains.singleTask.model.dmd.DMD
    HomoKernel: type  # trains.singleTask.distillnets.get_distillation_kernel_homo.DistillationKernel
    HeteroKernel: type  # trains.singleTask.distillnets.get_distillation_kernel.DistillationKernel
    MSE: type  # trains.singleTask.DMD.MSE
    HingeLoss: type  # trains.singleTask.HingeLoss.HingeLoss
    softmax: Any  # trains.singleTask.misc.softmax (numpy)


_LOADED: dict[str, Any] = {}


def load_official_code(root: str | Path | None, device: str | torch.device = "cpu") -> OfficialCode:
    """Import the official modules from a checkout. Once per process: the `.cuda()` patch is global."""
    root = official_path(root)
    on_cuda = torch.device(device).type == "cuda"
    if _LOADED:
        if _LOADED["root"] != root or _LOADED["cuda"] != on_cuda:
            raise OfficialCodeError(
                f"the official code is already loaded from {_LOADED['root']} (cuda={_LOADED['cuda']}); "
                "use one checkout and one device per process"
            )
        return _LOADED["code"]
    # GPU selection in the official utils imports pynvml; nothing here calls it
    sys.modules.setdefault("pynvml", types.ModuleType("pynvml"))
    if not on_cuda:
        # the official code moves modules and new tensors with .cuda(); on a CPU run they stay put
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
        nn.Module.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from trains.singleTask.distillnets import get_distillation_kernel as hetero_kernel
        from trains.singleTask.distillnets import get_distillation_kernel_homo as homo_kernel
        from trains.singleTask.DMD import MSE
        from trains.singleTask.HingeLoss import HingeLoss
        from trains.singleTask.misc import softmax
        from trains.singleTask.model import dmd as dmd_module
    except ImportError as exc:
        raise OfficialCodeError(
            f"could not import the official DMD code from {root}: {exc}. It needs numpy, scikit-learn "
            "and tqdm besides torch (pip install scikit-learn tqdm)"
        ) from exc
    code = OfficialCode(root=root, DMD=dmd_module.DMD, HomoKernel=homo_kernel.DistillationKernel,
                        HeteroKernel=hetero_kernel.DistillationKernel, MSE=MSE, HingeLoss=HingeLoss,
                        softmax=softmax)
    _LOADED.update(root=root, cuda=on_cuda, code=code)
    return code


def official_args(cfg: Any) -> types.SimpleNamespace:
    """The official `args` for one of our ModelConfigs (or a DMDConfig: its `.model`).

    The official model hard-codes its sequence lengths per dataset and alignment; the dataset name and
    `need_data_aligned` are chosen so that they equal `cfg.seq_lens` (aligned 50/50/50 is the same
    model for MOSI and MOSEI). When a DMDConfig names its dataset, that one is preferred.
    """
    preferred = getattr(getattr(cfg, "data", None), "dataset", None)
    model = getattr(cfg, "model", cfg)
    if model.use_bert:
        raise OfficialCodeError(
            "model.use_bert is true: the comparison runs with 768-d text features; set model.use_bert: false"
        )
    lens = tuple(model.seq_lens)
    matches = [key for key, value in OFFICIAL_LENGTHS.items() if value == lens]
    if not matches:
        known = ", ".join(f"{n} {'aligned' if a else 'unaligned'} {list(v)}" for (n, a), v in OFFICIAL_LENGTHS.items())
        raise OfficialCodeError(
            f"model.seq_lens = {list(lens)} (text, audio, visual): the official model only knows {known}; "
            "use one of these lengths"
        )
    matches.sort(key=lambda key: key[0] != preferred)
    dataset, aligned = matches[0]
    if max(model.layers, model.memory_layers) != max(model.layers, OFFICIAL_MEMORY_LAYERS):
        raise OfficialCodeError(
            f"model.memory_layers = {model.memory_layers}: the official memory transformers get "
            f"max(nlevels, {OFFICIAL_MEMORY_LAYERS}) layers; use memory_layers: {OFFICIAL_MEMORY_LAYERS}"
        )
    p_text, p_audio, p_visual = model.attn_dropout
    return types.SimpleNamespace(
        dataset_name=dataset, need_data_aligned=aligned, use_bert=False, use_finetune=False,
        feature_dims=list(model.feature_dims),  # official order l, a, v = ours text, audio, visual
        dst_feature_dim_nheads=[model.d_model, model.num_heads],
        nlevels=model.layers,
        conv1d_kernel_size_l=model.conv_kernels[0],
        conv1d_kernel_size_a=model.conv_kernels[1],
        conv1d_kernel_size_v=model.conv_kernels[2],
        attn_dropout=p_text, attn_dropout_a=p_audio, attn_dropout_v=p_visual,
        relu_dropout=model.relu_dropout, res_dropout=model.res_dropout, embed_dropout=model.embed_dropout,
        output_dropout=model.output_dropout, text_dropout=model.text_dropout,
        attn_mask=model.attn_mask,
    )


def _kernel(kind: type, gd: Any, hidden_size: int, softmax: Any, args: types.SimpleNamespace,
            repr_loss: str, name: str) -> nn.Module:
    if gd.repr_loss != repr_loss:
        raise OfficialCodeError(
            f"model.{name}.repr_loss = {gd.repr_loss!r}: the official {name} kernel uses {repr_loss!r}"
        )
    return kind(
        n_classes=1, hidden_size=hidden_size, gd_size=gd.gd_size, to_idx=[0, 1, 2], from_idx=[0, 1, 2],
        gd_prior=softmax(list(gd.prior), gd.prior_temperature), gd_reg=gd.regularizer,
        w_losses=[gd.w_logit, gd.w_repr], metric=gd.metric, alpha=gd.alpha, hyp_params=args,
    )


def cosine_embedding_loss_torch19(x: Tensor, y: Tensor) -> Tensor:
    """`nn.CosineEmbeddingLoss()(x, y, tensor([-1]))` as PyTorch 1.9 computed it for inputs of any rank.

    PyTorch 1.9's `at::native::cosine_embedding_loss` summed over dim 1 (for (L, B, d) inputs, the
    batch axis), added 1e-12 to each squared norm, took max(0, cos) for target -1 and averaged every
    remaining element. PyTorch >= 1.13 checks the ranks and rejects 3-D inputs.
    """
    dot = (x * y).sum(1)
    denom = (((x * x).sum(1) + 1e-12) * ((y * y).sum(1) + 1e-12)).sqrt()
    return (dot / denom).clamp_min(0).mean()


@dataclass
class OfficialDMD:
    """The official network and its two graph distillation kernels, as the official trainer holds them
    (`model = [model_dmd, model_distill_homo, model_distill_hetero]`)."""

    code: OfficialCode
    args: types.SimpleNamespace
    net: nn.Module
    homo: nn.Module
    hetero: nn.Module

    def modules(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        return self.net, self.homo, self.hetero

    def parameters(self) -> Iterator[nn.Parameter]:
        """In the official trainer's order: network, HomoGD kernel, HeteroGD kernel."""
        for module in self.modules():
            yield from module.parameters()

    def train(self, mode: bool = True) -> OfficialDMD:
        for module in self.modules():
            module.train(mode)
        return self

    def eval(self) -> OfficialDMD:
        return self.train(False)

    def to(self, *args: Any, **kwargs: Any) -> OfficialDMD:
        """Move or cast the modules. `gd_prior` is a plain float32 attribute of the official kernels,
        not a buffer, so it keeps its dtype (and its device: `.cuda()` placed it at construction)."""
        for module in self.modules():
            module.to(*args, **kwargs)
        return self

    def load_exported(self, exported: dict[str, dict[str, Tensor]]) -> None:
        """Load `dmd_model.artefacts.official.export_official(model)`: strict for all three modules."""
        self.net.load_state_dict(exported["dmd"])
        self.homo.load_state_dict(exported["homo_gd"])
        self.hetero.load_state_dict(exported["hetero_gd"])

    def forward(self, text: Tensor, audio: Tensor, visual: Tensor) -> dict[str, Tensor]:
        """The official forward, `model[0](text, audio, vision, is_distill=True)` as the trainer calls it."""
        return self.net(text, audio, visual, is_distill=True)

    def gd_inputs(self, out: dict[str, Tensor], branch: str) -> tuple[Tensor, Tensor]:
        """The trainer's stacks for a GD kernel: logits and representations in l, v, a order."""
        logits = torch.stack([out[f"logits_{k}_{branch}"] for k in _GD_KEYS])
        reprs = torch.stack([out[f"repr_{k}_{branch}"] for k in _GD_KEYS])
        return logits, reprs

    def edges(self, out: dict[str, Tensor]) -> dict[str, Tensor]:
        """Both kernels' forward: edges (6, B) after the softmax and the official `edges_origin` (6, 1)."""
        res = {}
        for branch, kernel in (("homo", self.homo), ("hetero", self.hetero)):
            edges, origin = kernel(*self.gd_inputs(out, branch))
            res[f"edges_{branch}"] = edges
            res[f"edges_{branch}_origin"] = origin
        return res

    def loss_terms(self, out: dict[str, Tensor], labels: Tensor,
                   orthogonality_axis: str = "batch") -> dict[str, Tensor]:
        """Every loss term and the total, composed as the official `do_train` composes them.

        Term names follow `dmd_model.training.losses.dmd_loss`. orthogonality_axis "batch" is the official
        3-D CosineEmbeddingLoss call as PyTorch 1.9 computed it; "feature" feeds the official
        `nn.CosineEmbeddingLoss` the features reshaped to (L * B, d), one cosine per step and sample.
        """
        if orthogonality_axis not in ("batch", "feature"):
            raise ValueError(f"orthogonality_axis = {orthogonality_axis!r}: use batch or feature")
        labels = labels.reshape(-1, 1).to(out["output_logit"].dtype)
        criterion, mse, sim_loss, cosine = nn.L1Loss(), self.code.MSE(), self.code.HingeLoss(), nn.CosineEmbeddingLoss()
        t: dict[str, Tensor] = {}
        t["task_fused"] = criterion(out["output_logit"], labels)
        for k in _GD_KEYS:
            t[f"task_{k}_homo"] = criterion(out[f"logits_{k}_homo"], labels)
        for k in _GD_KEYS:
            t[f"task_{k}_hetero"] = criterion(out[f"logits_{k}_hetero"], labels)
        t["task_c"] = criterion(out["logits_c"], labels)
        for k in _GD_KEYS:
            t[f"recon_{k}"] = mse(out[f"recon_{k}"], out[f"origin_{k}"])
        for k in _GD_KEYS:
            t[f"cycle_{k}"] = mse(out[f"s_{k}"].permute(1, 2, 0), out[f"s_{k}_r"])
        for k in _GD_KEYS:
            s, c = out[f"s_{k}"], out[f"c_{k}"]
            if orthogonality_axis == "batch":
                t[f"ort_{k}"] = cosine_embedding_loss_torch19(s, c)
            else:
                target = torch.tensor([-1], device=s.device)
                t[f"ort_{k}"] = cosine(s.reshape(-1, s.shape[-1]), c.reshape(-1, c.shape[-1]), target)
        # the trainer's loop appends c_l, c_v, c_a of each sample in turn, each with the sample's label
        feats = torch.stack([out["c_l_sim"], out["c_v_sim"], out["c_a_sim"]], dim=1).flatten(0, 1)
        ids = labels.repeat_interleave(3, dim=0)
        t["margin"] = sim_loss(ids, feats)
        for branch, kernel in (("homo", self.homo), ("hetero", self.hetero)):
            logits, reprs = self.gd_inputs(out, branch)
            edges, _ = kernel(logits, reprs)
            reg, logit, rep = kernel.distillation_loss(logits, reprs, edges)
            t[f"{branch}_gd_reg"], t[f"{branch}_gd_logit"], t[f"{branch}_gd_repr"] = reg, logit, rep
        task = sum(t[name] for name in list(t) if name.startswith("task_"))
        recon = t["recon_l"] + t["recon_v"] + t["recon_a"]
        cycle = t["cycle_l"] + t["cycle_v"] + t["cycle_a"]
        ort = t["ort_l"] + t["ort_v"] + t["ort_a"]
        # the trainer's weights; HomoGD's representation loss is computed but not added
        homo = 0.05 * (t["homo_gd_logit"] + t["homo_gd_reg"])
        hetero = 0.05 * (t["hetero_gd_logit"] + t["hetero_gd_repr"] + t["hetero_gd_reg"])
        t["total"] = task + homo + hetero + (cycle + recon + (t["margin"] + ort) * 0.1) * 0.1
        return t


def build_official(cfg: Any, root: str | Path | None, device: str | torch.device = "cpu") -> OfficialDMD:
    """The official DMD and both DistillationKernels for one of our configurations (ModelConfig or
    DMDConfig), built as the official run.py builds them, on `device`, in float32.

    The kernels take their settings from `model.homo_gd` / `model.hetero_gd`, whose defaults are the
    official run.py values: HomoGD gd_size 64, prior softmax([0, 0, 1, 0, 1, 0], 0.25); HeteroGD
    gd_size 32, prior softmax([0, 0, 1, 0, 1, 1], 0.25); both gd_reg 10, w_losses [1, 10], metric
    "l1", alpha 1/8. The prior goes through the official (numpy) softmax.
    """
    code = load_official_code(root, device)
    args = official_args(cfg)
    model = getattr(cfg, "model", cfg)
    d = model.d_model
    net = code.DMD(args)
    homo = _kernel(code.HomoKernel, model.homo_gd, d, code.softmax, args, "metric", "homo_gd")
    hetero = _kernel(code.HeteroKernel, model.hetero_gd, 2 * d, code.softmax, args, "cosine", "hetero_gd")
    return OfficialDMD(code=code, args=args, net=net, homo=homo, hetero=hetero).to(device)
