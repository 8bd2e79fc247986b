"""Training and evaluation of DMD, as the official trainer (`trains/singleTask/DMD.py`) does it:

- Adam over the network and both GD-Units; gradients clipped by value after every backward;
- gradient accumulation over `update_epochs` batches (the official name): the gradient is zeroed
  at the first batch of a group and the optimiser steps after the last one; a group left
  incomplete at the end of an epoch is dropped, as officially;
- ReduceLROnPlateau (factor 0.5, `patience`) on the validation loss, which is the mean over batches
  of the batch L1 loss of the fused output, rounded to 4 decimals (official `do_test`);
- the best epoch is the one with the lowest validation loss (improvement by at least 1e-6), and
  training stops `early_stop` epochs after it (or at `max_epochs`); the test split is evaluated
  once, with the best weights, never used for selection.

Around it: seeds and a deterministic mode, CPU or CUDA, bf16 autocast, a progress bar, per-epoch
metrics (JSONL and CSV), the best checkpoint, several seeds summarised as mean +- std (the layout of
MMSA's result file), and a plot of the training curves.

Deliberate differences: validation and test batches are not shuffled (the official loaders shuffle
them; only the validation loss's last, smaller batch is affected) and use the training batch size.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

from ..artefacts.checkpoint import MMSA_PROFILE, save_checkpoint
from ..config import DMDConfig
from ..network.dmd import DMD
from .data import IEMOCAP_EMOTIONS, MMSASplit, describe, make_loaders
from .losses import dmd_loss
from .metrics import METRIC_KEYS, emotion_metrics, format_metrics, regression_metrics
from .multitask import Targets, multitask_loss

log = logging.getLogger("dmd.train")


# -- environment -----------------------------------------------------------------------------
def resolve_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA when present, else the CPU; "cuda" without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA GPU is available: use --device cpu or auto")
    return device


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; with `deterministic`, ask torch for deterministic kernels
    (bitwise-repeatable runs on the same machine, somewhat slower)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def _batch_to(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, ...]:
    return (batch["text"].to(device, non_blocking=True), batch["audio"].to(device, non_blocking=True),
            batch["vision"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True).view(-1, 1))


def _targets_to(batch: dict[str, Any], label: torch.Tensor, device: torch.device) -> Targets:
    return Targets(sentiment=label.view(-1), emotion=batch["emotion"].to(device, non_blocking=True),
                   present=batch["present"].to(device, non_blocking=True))


def _sentiment_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """MMSA's metrics over the samples that have a sentiment (all of them in the official files)."""
    keep = ~np.isnan(true)
    if not keep.any():
        return {}
    return regression_metrics(pred[keep], true[keep])


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


# -- one run -----------------------------------------------------------------------------------
@dataclass
class RunResult:
    """One seed's outcome."""

    seed: int
    best_epoch: int
    epochs: int
    valid: dict[str, float]
    test: dict[str, float] | None
    checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class Trainer:
    """Trains one DMD on MMSA-format splits with the official procedure (module docstring)."""

    def __init__(self, cfg: DMDConfig, *, device: str | torch.device | None = None, progress: bool = True,
                 on_epoch: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(str(device or cfg.train.device))
        self.progress = progress
        self.on_epoch = on_epoch

    # evaluation ------------------------------------------------------------------------------
    @torch.inference_mode()
    def evaluate(self, model: DMD, loader: DataLoader, desc: str = "eval") -> dict[str, Any]:
        """MMSA metrics of the fused output, the validation "Loss" (official definition), and the
        predictions in dataset order."""
        model.eval()
        multitask = model.cfg.emotion_classes > 0
        preds, labels, batch_losses, emotion_logits, emotions = [], [], [], [], []
        for batch in _progress(loader, len(loader), desc, self.progress):
            text, audio, visual, label = _batch_to(batch, self.device)
            with _autocast(self.device, self.cfg.train.precision):
                out = model(text, audio, visual)
            pred = out["output_logit"].float()
            if multitask:
                # the selection loss of the two tasks: L1 of the sentiment where there is one, plus
                # cross-entropy of the emotion where there is one (each a mean over its samples)
                emotion = batch["emotion"].to(self.device)
                logits = out["emotion_logit"].float()
                has = ~torch.isnan(label.view(-1))
                loss = (pred.view(-1)[has] - label.view(-1)[has]).abs().mean() if bool(has.any()) else pred.sum() * 0
                if bool((emotion >= 0).any()):
                    loss = loss + torch.nn.functional.cross_entropy(logits[emotion >= 0], emotion[emotion >= 0])
                batch_losses.append(float(loss))
                emotion_logits.append(logits.cpu())
                emotions.append(emotion.cpu())
            else:
                batch_losses.append(float(torch.nn.functional.l1_loss(pred, label)))
            preds.append(pred.cpu())
            labels.append(label.cpu())
        pred = torch.cat(preds).view(-1).numpy()
        true = torch.cat(labels).view(-1).numpy()
        if not np.isfinite(pred).all():
            raise FloatingPointError(f"{int((~np.isfinite(pred)).sum())} non-finite predictions: training diverged")
        metrics: dict[str, Any] = regression_metrics(pred, true) if not multitask else _sentiment_metrics(pred, true)
        if multitask:
            metrics["emotion"] = emotion_metrics(torch.cat(emotion_logits).numpy(), torch.cat(emotions).numpy(),
                                                 model.cfg.emotion_classes)
            metrics["emotion_logits"] = torch.cat(emotion_logits).numpy()
        metrics["Loss"] = round(sum(batch_losses) / max(len(batch_losses), 1), 4)
        metrics["predictions"] = pred
        return metrics

    # training --------------------------------------------------------------------------------
    def _train_epoch(self, model: DMD, loader: DataLoader, optimizer: torch.optim.Optimizer,
                     epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        update_every = cfg.train.update_epochs
        left = update_every
        total, terms_sum, n_batches = 0.0, {}, 0
        preds, labels = [], []
        bar = _progress(loader, len(loader), f"epoch {epoch}", self.progress)
        for batch in bar:
            if left == update_every:
                optimizer.zero_grad(set_to_none=True)
            left -= 1
            text, audio, visual, label = _batch_to(batch, self.device)
            with _autocast(self.device, cfg.train.precision):
                out = model(text, audio, visual, distill=True)
                if cfg.model.emotion_classes:
                    terms = multitask_loss(model, out, _targets_to(batch, label, self.device), cfg.loss,
                                           cfg.loss.emotion_weight)
                else:
                    terms = dmd_loss(model, out, label, cfg.loss)
            loss = terms["total"]
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the training loss became {float(loss)} at epoch {epoch}, batch {n_batches}: lower "
                    "train.learning_rate or use train.precision fp32"
                )
            loss.backward()
            if cfg.train.grad_clip != -1.0:
                torch.nn.utils.clip_grad_value_(params, cfg.train.grad_clip, foreach=True)
            if left == 0:
                optimizer.step()
                left = update_every
            total += float(loss.detach())
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + float(v.detach())
            n_batches += 1
            preds.append(out["output_logit"].detach().float().cpu())
            labels.append(label.cpu())
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / n_batches:.4f}")
        pred = torch.cat(preds).view(-1).numpy()
        true = torch.cat(labels).view(-1).numpy()
        record = {"loss": total / max(n_batches, 1)}
        record.update({f"loss_{k}": v / max(n_batches, 1) for k, v in terms_sum.items() if k != "total"})
        record.update(_sentiment_metrics(pred, true))
        return record

    def fit(self, model: DMD, loaders: dict[str, DataLoader], *, seed: int, out_dir: Path | None = None,
            data_info: dict[str, Any] | None = None, profile: dict[str, Any] | None = None,
            modalities: tuple[str, ...] | None = None) -> RunResult:
        cfg = self.cfg
        started = time.time()
        model.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        fused = self.device.type in ("cpu", "cuda")
        optimizer = torch.optim.Adam(params, lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay,
                                     fused=fused)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5,
                                                               patience=cfg.train.patience)
        best_loss, best_epoch, best_state, best_valid = math.inf, 0, None, {}
        history: list[dict[str, Any]] = []
        history_path = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            history_path = out_dir / "history.jsonl"
            history_path.write_text("")
        epoch = 0
        while epoch < cfg.train.max_epochs:
            epoch += 1
            t0 = time.time()
            train_record = self._train_epoch(model, loaders["train"], optimizer, epoch)
            valid = _flat(self.evaluate(model, loaders["valid"], desc="valid"))
            scheduler.step(valid["Loss"])
            improved = valid["Loss"] <= best_loss - 1e-6
            if improved:
                best_loss, best_epoch, best_valid = valid["Loss"], epoch, valid
                best_state = copy.deepcopy(model.state_dict())
            record = {
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.time() - t0, 3),
                "best": improved,
                **{f"train_{k}": v for k, v in train_record.items()},
                **{f"valid_{k}": v for k, v in valid.items()},
            }
            history.append(record)
            if history_path is not None:
                with history_path.open("a") as f:
                    f.write(json.dumps(_jsonable(record)) + "\n")
            shown = {k: valid[k] for k in ("Loss", *METRIC_KEYS, *_EMOTION_KEYS) if valid.get(k) is not None}
            log.info("seed %d epoch %d train loss %.4f | valid %s%s", seed, epoch, train_record["loss"],
                     format_metrics(shown), " *" if improved else "")
            if self.on_epoch is not None:
                self.on_epoch(record)
            if epoch - best_epoch >= cfg.train.early_stop:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        test = None
        if "test" in loaders:
            test = self.evaluate(model, loaders["test"], desc="test")
            test.pop("predictions")
            test.pop("emotion_logits", None)
        checkpoint = None
        if out_dir is not None:
            _write_history_csv(out_dir / "history.csv", history)
            _plot_curves(out_dir / "curves.png", history, title=f"{cfg.name} seed {seed}")
            checkpoint = save_checkpoint(
                out_dir / "best.pt", model, cfg,
                profile=profile or MMSA_PROFILE,
                modalities=modalities or ("text", "audio", "visual"),
                data=data_info or {},
                metrics={"valid": _jsonable(best_valid), "test": _jsonable(test)},
                training={"seed": seed, "best_epoch": best_epoch, "epochs": epoch, "device": str(self.device),
                          "precision": cfg.train.precision, "seconds": round(time.time() - started, 1)},
            )
        return RunResult(seed=seed, best_epoch=best_epoch, epochs=epoch, valid=best_valid, test=test,
                         checkpoint=checkpoint, history=history, seconds=time.time() - started)


_EMOTION_KEYS = ("emotion_accuracy", "emotion_uar", "emotion_weighted_f1")


def _flat(metrics: dict[str, Any]) -> dict[str, Any]:
    """Validation metrics for the history: no predictions, the emotion figures as plain numbers."""
    metrics.pop("predictions", None)
    metrics.pop("emotion_logits", None)
    emotion = metrics.pop("emotion", None)
    if emotion:
        metrics.update({f"emotion_{k}": emotion[k] for k in ("accuracy", "uar", "weighted_f1")})
    return metrics


# -- several seeds -----------------------------------------------------------------------------
@dataclass
class TrainSummary:
    runs: list[RunResult]
    out_dir: Path | None
    table: dict[str, dict[str, float]]  # metric -> {"mean", "std"} over seeds (test split)


def train(cfg: DMDConfig, splits: dict[str, MMSASplit], *, out_dir: str | Path | None = None,
          seeds: list[int] | tuple[int, ...] | None = None, device: str | None = None, progress: bool = True,
          data_info: dict[str, Any] | None = None, profile: dict[str, Any] | None = None,
          modalities: tuple[str, ...] | None = None,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainSummary:
    """Train one model per seed; write each run's files and the mean +- std table over seeds."""
    seeds = list(seeds or cfg.train.seeds)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trainer = Trainer(cfg, device=device, progress=progress, on_epoch=on_epoch)
    info = {"splits": describe(splits), **(data_info or {})}
    runs = []
    for seed in seeds:
        set_seed(seed, cfg.train.deterministic)
        model = DMD(cfg.model)
        loaders = make_loaders(splits, cfg.train.batch_size, eval_batch_size=cfg.train.batch_size,
                               num_workers=cfg.train.num_workers, seed=seed, epoch_samples=cfg.train.epoch_samples)
        run_dir = out / f"seed_{seed}" if out is not None else None
        runs.append(trainer.fit(model, loaders, seed=seed, out_dir=run_dir, data_info=info, profile=profile,
                                modalities=modalities))
    table = summarise(runs)
    if out is not None:
        _write_results(out, cfg, runs, table)
    return TrainSummary(runs=runs, out_dir=out, table=table)


def summarise(runs: list[RunResult]) -> dict[str, dict[str, float]]:
    """Mean and (population, as MMSA's np.std) standard deviation of the test metrics over seeds."""
    table: dict[str, dict[str, float]] = {}
    tested = [r.test for r in runs if r.test]
    for key in (*METRIC_KEYS, "Loss"):
        values = [t[key] for t in tested if key in t]
        if values:
            table[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    for key in ("accuracy", "uar", "weighted_f1"):
        values = [t["emotion"][key] for t in tested if (t.get("emotion") or {}).get(key) is not None]
        if values:
            key = f"emotion_{key}"
            table[key] = {"mean": float(np.mean(values)), "std": float(np.std(values))}
    return table


def _test_value(test: dict[str, Any], key: str) -> float:
    if key.startswith("emotion_"):
        value = (test.get("emotion") or {}).get(key[len("emotion_"):])
    else:
        value = test.get(key)
    return float("nan") if value is None else float(value)


def _write_results(out: Path, cfg: DMDConfig, runs: list[RunResult], table: dict[str, dict[str, float]]) -> None:
    # MMSA's result file: one row per model, each metric as "(mean, std)" of value * 100, 2 decimals
    keys = [k for k in (*METRIC_KEYS, *_EMOTION_KEYS) if k in table]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Model", *keys])
        writer.writerow([cfg.name, *[f"({round(table[k]['mean'] * 100, 2)}, {round(table[k]['std'] * 100, 2)})"
                                     for k in keys]])
    lines = [f"# {cfg.name}: test metrics over {len(runs)} seed(s)", "",
             "| metric | mean | std |", "|---|---|---|"]
    for k in keys:
        scale = 100 if "acc" in k or "F1" in k else 1
        unit = " %" if scale == 100 else ""
        lines.append(f"| {k} | {table[k]['mean'] * scale:.2f}{unit} | {table[k]['std'] * scale:.2f} |")
    lines += ["", "| seed | best epoch | epochs | valid Loss | " + " | ".join(keys) + " |",
              "|---|---|---|---|" + "---|" * len(keys)]
    for r in runs:
        vals = " | ".join(f"{_test_value(r.test, k):.4f}" if r.test else "-" for k in keys)
        lines.append(f"| {r.seed} | {r.best_epoch} | {r.epochs} | {r.valid.get('Loss', float('nan')):.4f} | {vals} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    summary = {
        "name": cfg.name,
        "table": table,
        "runs": [{"seed": r.seed, "best_epoch": r.best_epoch, "epochs": r.epochs, "valid": r.valid, "test": r.test,
                  "checkpoint": str(r.checkpoint) if r.checkpoint else None, "seconds": round(r.seconds, 1)}
                 for r in runs],
    }
    (out / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))


def _write_history_csv(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    keys = list(dict.fromkeys(k for rec in history for k in rec))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for rec in history:
            writer.writerow(_jsonable(rec))


def _plot_curves(path: Path, history: list[dict[str, Any]], title: str) -> None:
    """Training curves (loss, validation MAE and Non0 Acc-2, or emotion UAR and accuracy for data
    without sentiment); skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no training-curve plot (pip install 'live-dmd[plot]')")
        return
    epochs = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["train_loss"] for r in history], label="train total loss")
    axes[0].set_title("training loss")
    panels = (("MAE", "MAE"), ("Non0_acc_2", "Non0 Acc-2")) if "valid_MAE" in history[0] else (
        ("emotion_uar", "emotion UAR"), ("emotion_accuracy", "emotion accuracy"))  # emotions only
    for ax, (key, name) in zip(axes[1:], panels):
        for split in ("train", "valid"):
            values = [r.get(f"{split}_{key}") for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [math.nan if v is None else v for v in values], label=split)
        ax.set_title(name)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    best = [r["epoch"] for r in history if r.get("best")]
    if best:
        for ax in axes[1:]:
            ax.axvline(best[-1], color="grey", linestyle=":", linewidth=1)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else obj
    return obj


# -- evaluation of a checkpoint ------------------------------------------------------------------
def evaluate_checkpoint(checkpoint_path: str | Path, data_path: str | Path, *, split: str = "test",
                        device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Load a checkpoint and compute its metrics on a split of an MMSA-format pickle."""
    from ..artefacts.checkpoint import load_checkpoint
    from .data import load_mmsa

    ckpt = load_checkpoint(checkpoint_path)
    cfg = ckpt.config
    splits = load_mmsa(data_path, use_bert=cfg.model.use_bert, feature_dims=cfg.model.feature_dims,
                       seq_lens=cfg.model.seq_lens)
    if split not in splits:
        raise ValueError(f"split {split!r} not in {data_path}: it has {sorted(splits)}")
    trainer = Trainer(cfg, device=device, progress=progress)
    model = ckpt.build_model(trainer.device)
    loader = make_loaders({split: splits[split]}, cfg.train.batch_size, eval_batch_size=cfg.train.batch_size)[split]
    metrics = trainer.evaluate(model, loader, desc=split)
    metrics.pop("predictions")
    logits = metrics.pop("emotion_logits", None)
    if logits is not None and cfg.model.emotion_classes == len(IEMOCAP_EMOTIONS):
        truth = splits[split].emotions if splits[split].emotions is not None else np.full(len(logits), -1)
        metrics["emotion"]["per_emotion"] = per_emotion_binary(logits, truth, IEMOCAP_EMOTIONS)
    return metrics


def per_emotion_binary(logits: np.ndarray, truth: np.ndarray, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """MulT's IEMOCAP figures (`eval_iemocap`): for each emotion, is-it-this-one as a binary task,
    accuracy and weighted F1, from the four-way prediction (one against the rest) on the samples
    with an emotion."""
    from .metrics import weighted_f1

    keep = truth >= 0
    pred, true = np.asarray(logits)[keep].argmax(1), truth[keep]
    out = {}
    for k, name in enumerate(names):
        p, t = (pred == k).astype(int), (true == k).astype(int)
        out[name] = {"accuracy": round(float((p == t).mean()), 4) if t.size else None,
                     "weighted_f1": round(weighted_f1(t, p), 4) if t.size else None}
    return out
