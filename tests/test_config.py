"""The DMD configuration: YAML round trips, the shipped configurations, overrides, and errors that
name the field and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

import configs
from dmd_model.config import ConfigError, DMDConfig, GraphDistillConfig, LossConfig, ModelConfig
from dmd_model.network.dmd import DMD

SHIPPED = sorted((configs.ROOT / "model").glob("*.yaml"))
# a randomly initialised one-layer BERT, 768 wide like bert-base: no download
TINY_BERT_768 = {
    "vocab_size": 100, "hidden_size": 768, "num_hidden_layers": 1, "num_attention_heads": 12,
    "intermediate_size": 64, "max_position_embeddings": 64,
}

SMALL = {
    "name": "small",
    "model": {
        "feature_dims": {"text": 16, "audio": 5, "visual": 7}, "seq_lens": [8, 10, 9], "d_model": 12,
        "num_heads": 3, "layers": 1, "conv_kernels": [3, 1, 2], "attn_dropout": [0.1, 0.2, 0.0],
        "homo_gd": {"gd_size": 16}, "hetero_gd": {"gd_size": 8, "prior": [0, 0, 1, 0, 1, 1], "repr_loss": "cosine"},
    },
    "loss": {"orthogonality_axis": "feature"},
    "train": {"batch_size": 4, "learning_rate": "3e-3", "seeds": [1, 2]},
    "data": {"dataset": "synthetic", "aligned": False},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models: one thread is faster, and immune to spinning OpenMP workers on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_yaml(tmp_path: Path, raw: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


# -- round trips ----------------------------------------------------------------------------
def test_to_dict_from_dict_round_trip_gives_the_same_configuration():
    cfg = DMDConfig.from_dict(SMALL)
    again = DMDConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_yaml_file_round_trip_gives_the_same_configuration(tmp_path):
    cfg = DMDConfig.from_dict(SMALL)
    path = write_yaml(tmp_path, cfg.to_dict())
    assert DMDConfig.from_yaml(path) == cfg


def test_to_dict_is_plain_yaml_with_lists_for_triples():
    raw = DMDConfig.from_dict(SMALL).to_dict()
    assert yaml.safe_load(yaml.safe_dump(raw)) == raw  # nothing YAML cannot write plainly
    assert raw["model"]["feature_dims"] == [16, 5, 7]
    assert raw["model"]["hetero_gd"]["gd_size"] == 8


def test_triples_accept_a_mapping_a_list_or_one_scalar_for_all():
    by_name = DMDConfig.from_dict({"model": {"conv_kernels": {"text": 3, "audio": 1, "visual": 2}}})
    assert by_name.model.conv_kernels == (3, 1, 2)
    as_list = DMDConfig.from_dict({"model": {"conv_kernels": [3, 1, 2]}})
    assert as_list.model.conv_kernels == (3, 1, 2)
    scalar = DMDConfig.from_dict({"model": {"conv_kernels": 3}})
    assert scalar.model.conv_kernels == (3, 3, 3)


def test_yaml_number_strings_are_coerced_to_the_field_type():
    cfg = DMDConfig.from_dict(SMALL)
    assert cfg.train.learning_rate == pytest.approx(3e-3)
    assert isinstance(cfg.train.learning_rate, float)


def test_nested_graph_distillation_sections_build_their_own_dataclass():
    cfg = DMDConfig.from_dict(SMALL)
    assert isinstance(cfg.model.hetero_gd, GraphDistillConfig)
    assert cfg.model.homo_gd.gd_size == 16
    assert cfg.model.hetero_gd.repr_loss == "cosine"


def test_defaults_are_the_official_mosi_settings():
    cfg = DMDConfig()
    assert cfg.validate() is cfg
    assert cfg.model.d_model == 50 and cfg.model.num_heads == 10 and cfg.model.layers == 4
    assert cfg.loss.orthogonality_axis == "batch"


# -- shipped configurations ------------------------------------------------------------------
def test_configs_path_finds_a_model_configuration_by_bare_name():
    assert configs.path("mosi_aligned") == configs.ROOT / "model" / "mosi_aligned.yaml"
    assert configs.path("model/mosi_aligned.yaml") == configs.path("mosi_aligned")
    with pytest.raises(FileNotFoundError, match=r"no shipped configuration 'mosi_typo'.*mosi_aligned.yaml"):
        configs.path("mosi_typo")


def test_the_official_model_configurations_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"mosi_aligned", "mosi_unaligned", "mosei_aligned", "mosei_unaligned"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_configuration_loads_and_builds_a_dmd_that_runs(path):
    cfg = DMDConfig.from_yaml(path)
    assert cfg.name == path.stem
    model_cfg = cfg.model
    if model_cfg.use_bert:
        # the shipped setting fine-tunes bert-base-uncased; a random 768-wide BERT avoids the download
        model_cfg = dataclasses.replace(model_cfg, bert_config=TINY_BERT_768)
    model = DMD(model_cfg).eval()
    lt, la, lv = model_cfg.seq_lens
    if model_cfg.use_bert:
        text = torch.stack([torch.randint(1, 100, (1, lt)), torch.ones(1, lt, dtype=torch.long),
                            torch.zeros(1, lt, dtype=torch.long)], dim=1)
    else:
        text = torch.randn(1, lt, model_cfg.feature_dims[0])
    audio = torch.randn(1, la, model_cfg.feature_dims[1])
    visual = torch.randn(1, lv, model_cfg.feature_dims[2])
    with torch.no_grad():
        out = model(text, audio, visual)
    assert out["output_logit"].shape == (1, 1)
    assert torch.isfinite(out["output_logit"]).all()


def test_mosi_unaligned_has_the_official_sequence_lengths():
    cfg = DMDConfig.from_yaml(configs.path("mosi_unaligned"))
    # official dmd.py: len_l, len_v, len_a = 50, 500, 375; ours are (text, audio, visual)
    assert cfg.model.seq_lens == (50, 375, 500)
    assert cfg.data.aligned is False


# -- overrides --------------------------------------------------------------------------------
def test_override_sets_a_field_and_parses_its_value_as_yaml():
    cfg = DMDConfig.from_yaml(configs.path("mosi_aligned"), ["train.batch_size=32"])
    assert cfg.train.batch_size == 32
    assert isinstance(cfg.train.batch_size, int)
    # the rest of the file is untouched
    assert cfg.model.d_model == 50 and cfg.train.learning_rate == pytest.approx(1e-4)


def test_overrides_reach_nested_sections_and_triples():
    cfg = DMDConfig.from_yaml(
        configs.path("mosi_aligned"),
        ["model.use_bert=false", "model.conv_kernels=[3, 1, 1]", "model.hetero_gd.gd_size=8", "loss.gd_weight=0.1"],
    )
    assert cfg.model.use_bert is False
    assert cfg.model.conv_kernels == (3, 1, 1)
    assert cfg.model.hetero_gd.gd_size == 8
    assert cfg.loss.gd_weight == pytest.approx(0.1)


def test_a_partial_hetero_gd_section_keeps_the_other_hetero_defaults():
    default = ModelConfig().hetero_gd
    cfg = DMDConfig.from_dict({"model": {"hetero_gd": {"gd_size": 8}}})
    assert cfg.model.hetero_gd == dataclasses.replace(default, gd_size=8)


def test_an_override_without_an_equals_sign_says_the_expected_form(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'train.batch_size' must look like section.key=value"):
        DMDConfig.from_yaml(configs.path("mosi_aligned"), ["train.batch_size"])


def test_an_override_of_an_unknown_field_is_rejected():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['batchsize'\] in train.*batch_size"):
        DMDConfig.from_yaml(configs.path("mosi_aligned"), ["train.batchsize=32"])


# -- errors that name the field and the fix ------------------------------------------------------
def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)


def test_unknown_key_names_the_key_its_section_and_the_known_keys():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['dmodel'\] in model: known keys are .*'d_model'"):
        DMDConfig.from_dict({"model": {"dmodel": 32}})


def test_unknown_section_names_it_and_lists_the_sections():
    with pytest.raises(ConfigError, match=r"unknown configuration section\(s\) \['optim'\]: use model, loss, train"):
        DMDConfig.from_dict({"optim": {"lr": 1}})


def test_d_model_not_divisible_by_heads_names_both_values_and_the_fix():
    with pytest.raises(ConfigError, match=r"model.d_model = 50 is not divisible by num_heads = 7: pick heads"):
        DMDConfig.from_dict({"model": {"d_model": 50, "num_heads": 7}})


def test_kernel_longer_than_the_sequence_names_the_modality_and_the_largest_kernel():
    with pytest.raises(
        ConfigError,
        match=r"model.conv_kernels: audio kernel 5 is longer than its sequence \(3 steps\); use a kernel of at most 3",
    ):
        DMDConfig.from_dict({"model": {"seq_lens": [8, 3, 8], "conv_kernels": 5}})


def test_bad_orthogonality_axis_names_the_value_and_the_choices():
    with pytest.raises(ConfigError, match=r"loss.orthogonality_axis = 'time': use 'batch' \(official\) or 'feature'"):
        DMDConfig.from_dict({"loss": {"orthogonality_axis": "time"}})
    with pytest.raises(ConfigError, match="orthogonality_axis"):
        LossConfig(orthogonality_axis="time").validate()


def test_missing_file_names_the_path_and_where_the_shipped_ones_are(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"configuration file '.*nope.yaml' not found.*configs/model/"):
        DMDConfig.from_yaml(missing)


def test_a_triple_with_a_missing_modality_names_it():
    with pytest.raises(ConfigError, match=r"model.feature_dims must give text, audio and visual; 'visual' is missing"):
        DMDConfig.from_dict({"model": {"feature_dims": {"text": 768, "audio": 5}}})


def test_a_triple_with_two_values_says_three_are_expected():
    with pytest.raises(ConfigError, match=r"model.seq_lens = \[50, 50\]: expected three values"):
        DMDConfig.from_dict({"model": {"seq_lens": [50, 50]}})


def test_a_dropout_outside_zero_one_names_the_field():
    with pytest.raises(ConfigError, match=r"model.output_dropout = 1.5: a dropout probability must be in \[0, 1\)"):
        DMDConfig.from_dict({"model": {"output_dropout": 1.5}})
    with pytest.raises(ConfigError, match=r"model.attn_dropout = \[0.1, 1.0, 0.0\]"):
        DMDConfig.from_dict({"model": {"attn_dropout": [0.1, 1.0, 0.0]}})


def test_a_graph_distillation_prior_needs_one_value_per_directed_edge():
    with pytest.raises(ConfigError, match=r"model.homo_gd.prior has 3 values, expected 6"):
        DMDConfig.from_dict({"model": {"homo_gd": {"prior": [0, 0, 1]}}})


def test_a_non_number_where_a_number_is_meant_names_the_field():
    with pytest.raises(ConfigError, match=r"train.learning_rate = 'fast': expected a number"):
        DMDConfig.from_dict({"train": {"learning_rate": "fast"}})


def test_bad_precision_names_the_choices():
    with pytest.raises(ConfigError, match=r"train.precision = 'fp16': use fp32 or bf16"):
        DMDConfig.from_dict({"train": {"precision": "fp16"}})


def test_building_a_dmd_validates_its_configuration():
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        DMD(ModelConfig(d_model=12, num_heads=5))
