"""Training, checkpoints, evaluation and the model commands of the `dmd` CLI, on a synthetic
MMSA-format pickle written by the fixtures (small model, CPU, seconds)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dmd_model.artefacts.checkpoint import CheckpointError, describe_checkpoint, load_checkpoint, save_checkpoint
from dmd_model.config import DMDConfig
from dmd_model.network.dmd import DMD
from dmd_model.training.data import load_mmsa, make_loaders
from dmd_model.training.synthetic import write_synthetic_mmsa
from dmd_model.training.train import Trainer, evaluate_checkpoint, set_seed, summarise, train
from workers.cli import main as dmd

SMALL = {
    "name": "small",
    "model": {
        "feature_dims": [16, 5, 6], "seq_lens": [12, 12, 12], "d_model": 8, "num_heads": 2, "layers": 1,
        "conv_kernels": [3, 3, 3], "attn_dropout": [0.1, 0.1, 0.0], "embed_dropout": 0.1,
        "output_dropout": 0.1, "text_dropout": 0.1,
    },
    "train": {"batch_size": 8, "learning_rate": 3e-3, "update_epochs": 1, "max_epochs": 2, "early_stop": 5,
              "seeds": [7]},
}


@pytest.fixture(scope="module")
def small_cfg() -> DMDConfig:
    return DMDConfig.from_dict(SMALL)


@pytest.fixture(scope="module")
def synthetic_pickle(tmp_path_factory, small_cfg):
    path = tmp_path_factory.mktemp("data") / "synthetic.pkl"
    m = small_cfg.model
    return write_synthetic_mmsa(path, n_train=48, n_valid=16, n_test=16, seq_lens=m.seq_lens,
                                feature_dims=m.feature_dims, seed=3)


@pytest.fixture(scope="module")
def splits(synthetic_pickle, small_cfg):
    return load_mmsa(synthetic_pickle, feature_dims=small_cfg.model.feature_dims, seq_lens=small_cfg.model.seq_lens)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_cfg, splits):
    out = tmp_path_factory.mktemp("run")
    return train(small_cfg, splits, out_dir=out, progress=False, data_info={"path": "synthetic"})


def test_synthetic_training_for_two_epochs_lowers_the_loss(trained):
    history = trained.runs[0].history
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    for h in history:
        assert math.isfinite(h["valid_Loss"])


def test_run_writes_history_curves_checkpoint_and_results_table(trained):
    out = trained.out_dir
    run_dir = out / "seed_7"
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "valid_Non0_acc_2" in json.loads(lines[0])
    assert (run_dir / "history.csv").read_text().startswith("epoch,")
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert (run_dir / "best.pt").is_file()
    csv_text = (out / "results.csv").read_text()
    assert csv_text.splitlines()[0].startswith("Model,Has0_acc_2")
    assert "small" in csv_text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][0]["seed"] == 7


def test_checkpoint_holds_config_profile_data_metrics_and_code_version(trained, small_cfg):
    ckpt = load_checkpoint(trained.runs[0].checkpoint)
    assert ckpt.config.to_dict()["model"] == small_cfg.to_dict()["model"]
    assert ckpt.modalities == ("text", "audio", "visual")
    assert ckpt.profile["name"] == "mmsa"
    assert ckpt.data["splits"]["train"]["n"] == 48
    assert set(ckpt.metrics) == {"valid", "test"}
    assert ckpt.training["best_epoch"] in (1, 2)
    assert ckpt.code_version["live_dmd"]
    assert any(k.startswith("homo_gd.") for k in ckpt.state_dict)
    assert any(k.startswith("hetero_gd.") for k in ckpt.state_dict)
    info = describe_checkpoint(ckpt)
    assert info["parameters"] > 0 and len(info["sha256"]) == 64


def test_evaluating_the_checkpoint_reproduces_its_test_metrics(trained, synthetic_pickle):
    ckpt = load_checkpoint(trained.runs[0].checkpoint)
    again = evaluate_checkpoint(trained.runs[0].checkpoint, synthetic_pickle, split="test", progress=False)
    for key, value in ckpt.metrics["test"].items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        assert again[key] == pytest.approx(value, abs=1e-6), key


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path, small_cfg):
    torch.manual_seed(0)
    model = DMD(small_cfg.model).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, small_cfg)
    again = load_checkpoint(path).build_model()
    x = (torch.randn(3, 12, 16), torch.randn(3, 12, 5), torch.randn(3, 12, 6))
    with torch.no_grad():
        a, b = model(*x, distill=True), again(*x, distill=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_half_precision_checkpoint_is_smaller_and_close(tmp_path, small_cfg):
    torch.manual_seed(0)
    model = DMD(small_cfg.model).eval()
    full = save_checkpoint(tmp_path / "full.pt", model, small_cfg)
    half = save_checkpoint(tmp_path / "half.pt", model, small_cfg, half=True)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    ckpt = load_checkpoint(half)
    assert ckpt.precision == "float16"
    x = (torch.randn(2, 12, 16), torch.randn(2, 12, 5), torch.randn(2, 12, 6))
    with torch.no_grad():
        a = model(*x)["output_logit"]
        b = ckpt.build_model()(*x)["output_logit"]
    assert torch.allclose(a, b, atol=1e-2)


def test_loading_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path):
    official = tmp_path / "official.pth"
    torch.save({"proj_l.weight": torch.zeros(2, 2, 1)}, official)
    with pytest.raises(CheckpointError, match="import-official"):
        load_checkpoint(official)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(junk)


def test_gradient_accumulation_steps_once_per_group_and_drops_the_remainder(small_cfg, splits):
    cfg = DMDConfig.from_dict({**SMALL, "train": {**SMALL["train"], "update_epochs": 2, "batch_size": 8}})
    set_seed(0)
    model = DMD(cfg.model)
    loaders = make_loaders({"train": splits["train"]}, batch_size=8, seed=0)  # 48 samples: 6 batches
    trainer = Trainer(cfg, device="cpu", progress=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    trainer._train_epoch(model, loaders["train"], optimizer, epoch=1)
    steps = {int(s["step"]) for s in optimizer.state.values()}
    assert steps == {3}
    cfg.train.update_epochs = 4  # 6 batches: one full group of 4, the last 2 are dropped
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    trainer._train_epoch(model, loaders["train"], optimizer, epoch=1)
    assert {int(s["step"]) for s in optimizer.state.values()} == {1}


def test_early_stopping_ends_training_after_patience_epochs_without_improvement(splits):
    cfg = DMDConfig.from_dict({**SMALL, "train": {**SMALL["train"], "learning_rate": 1e-12, "max_epochs": 10,
                                                 "early_stop": 2}})
    summary = train(cfg, splits, progress=False)
    run = summary.runs[0]
    assert run.best_epoch == 1
    assert run.epochs == 3


def test_same_seed_gives_the_same_training_run(splits):
    cfg = DMDConfig.from_dict({**SMALL, "train": {**SMALL["train"], "max_epochs": 1}})
    a = train(cfg, splits, progress=False).runs[0].history[0]
    b = train(cfg, splits, progress=False).runs[0].history[0]
    assert a["train_loss"] == b["train_loss"]
    assert a["valid_Loss"] == b["valid_Loss"]


def test_summary_reports_mean_and_population_std_over_seeds(splits):
    cfg = DMDConfig.from_dict({**SMALL, "train": {**SMALL["train"], "max_epochs": 1}})
    summary = train(cfg, splits, seeds=[1, 2], progress=False)
    maes = [r.test["MAE"] for r in summary.runs]
    assert summary.table["MAE"]["mean"] == pytest.approx(sum(maes) / 2)
    assert summary.table["MAE"]["std"] == pytest.approx(abs(maes[0] - maes[1]) / 2)
    assert summarise([]) == {}


def test_bf16_autocast_training_runs_on_cpu(splits):
    cfg = DMDConfig.from_dict({**SMALL, "train": {**SMALL["train"], "max_epochs": 1, "precision": "bf16"}})
    run = train(cfg, splits, progress=False).runs[0]
    assert math.isfinite(run.history[0]["train_loss"])


def test_cli_trains_evaluates_and_describes_a_checkpoint(tmp_path, capsys, synthetic_pickle):
    cfg_path = tmp_path / "small.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "run"
    assert dmd(["train", "--config", str(cfg_path), "--data", str(synthetic_pickle), "--out", str(out),
                "--epochs", "1", "--seeds", "5", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    ckpt = result["checkpoints"][0]
    assert dmd(["eval", ckpt, "--data", str(synthetic_pickle), "--quiet"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["metrics"]["MAE"] == pytest.approx(result["test_mean_std"]["MAE"]["mean"], abs=1e-6)
    assert dmd(["info", ckpt]) == 0
    text = capsys.readouterr().out
    assert "modalities  text, audio, visual" in text and "small" in text


def test_cli_reports_a_missing_data_file_with_the_fix(tmp_path, capsys):
    assert dmd(["train", "--config", "mosi_aligned", "--data", str(tmp_path / "nope.pkl")]) == 2
    assert "--synthetic" in capsys.readouterr().err


TINY_BERT = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "max_position_embeddings": 64}


def test_bert_text_encoder_is_fine_tuned_and_its_checkpoint_loads_offline(tmp_path):
    raw = {**SMALL, "model": {**SMALL["model"], "feature_dims": [32, 5, 6], "use_bert": True,
                              "bert_config": TINY_BERT},
           "train": {**SMALL["train"], "max_epochs": 1}}
    cfg = DMDConfig.from_dict(raw)
    data = write_synthetic_mmsa(tmp_path / "bert.pkl", n_train=32, n_valid=8, n_test=8, seq_lens=(12, 12, 12),
                                feature_dims=(32, 5, 6), with_bert=True, seed=1)
    splits = load_mmsa(data, use_bert=True, feature_dims=cfg.model.feature_dims, seq_lens=cfg.model.seq_lens)
    assert splits["train"].text.shape[1:] == (3, 12)
    set_seed(0)
    model = DMD(cfg.model)
    before = model.text_encoder.model.embeddings.word_embeddings.weight.detach().clone()
    trainer = Trainer(cfg, device="cpu", progress=False)
    loaders = make_loaders(splits, batch_size=8, seed=0)
    result = trainer.fit(model, loaders, seed=0, out_dir=tmp_path / "run")
    after = model.text_encoder.model.embeddings.word_embeddings.weight.detach()
    assert not torch.equal(before, after)  # fine-tuned, not frozen
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.config.model.bert_config["hidden_size"] == 32
    rebuilt = ckpt.build_model()
    x = next(iter(loaders["test"]))
    with torch.no_grad():
        a = model.eval()(x["text"], x["audio"], x["vision"])["output_logit"]
        b = rebuilt(x["text"], x["audio"], x["vision"])["output_logit"]
    assert torch.allclose(a, b, atol=1e-6)


def test_a_two_task_model_trains_on_mixed_labels_and_modalities_and_reports_both_tasks(tmp_path, small_cfg):
    m = small_cfg.model
    path = write_synthetic_mmsa(tmp_path / "mixed.pkl", n_train=48, n_valid=16, n_test=24, seq_lens=m.seq_lens,
                                feature_dims=m.feature_dims, seed=5, emotions=True)
    splits = load_mmsa(path, feature_dims=m.feature_dims, seq_lens=m.seq_lens)
    assert splits["train"].emotions is not None and splits["train"].present is not None
    labels, emotions = splits["train"].labels, splits["train"].emotions
    assert any(map(math.isnan, labels)) and (emotions < 0).any() and not splits["train"].present[:, 2].all()
    cfg = DMDConfig.from_dict({**SMALL, "model": {**SMALL["model"], "emotion_classes": 7}})
    summary = train(cfg, splits, out_dir=tmp_path / "run", progress=False)
    run = summary.runs[0]
    emotion = run.test["emotion"]
    assert emotion["n"] == int((splits["test"].emotions >= 0).sum())
    assert len(emotion["confusion"]) == 7 and sum(map(sum, emotion["confusion"])) == emotion["n"]
    assert 0.0 <= emotion["uar"] <= 1.0 and "Non0_acc_2" in run.test
    assert all(math.isfinite(r["train_loss"]) for r in run.history)
    assert "emotion_uar" in summary.table
    model = load_checkpoint(run.checkpoint).build_model("cpu")
    assert model.cfg.emotion_classes == 7
    # shipped as the default checkpoint will be: fp16, its emotion test figures recorded
    released = tmp_path / "released.pt"
    assert dmd(["release", str(run.checkpoint), "--out", str(released), "--eval", f"mixed={path}", "--quiet"]) == 0
    recorded = load_checkpoint(released).metrics["test_mixed"]["emotion"]
    assert recorded["n"] == emotion["n"] and abs(recorded["uar"] - emotion["uar"]) <= 0.05
