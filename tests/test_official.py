"""Import and export of the official DMD weights (github.com/mdswyz/DMD): round trips, the official key
names and shapes, errors that name the key and the field, and the BERT text encoder."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

import configs
from dmd_model.artefacts.official import OfficialCheckpointError, export_official, import_official
from dmd_model.config import ConfigError, DMDConfig, ModelConfig
from dmd_model.network.dmd import DMD

SMALL = ModelConfig(
    feature_dims=(16, 5, 7), seq_lens=(8, 8, 8), d_model=12, num_heads=3, layers=1, conv_kernels=(3, 3, 3),
)
TINY_BERT = {
    "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    "intermediate_size": 64, "max_position_embeddings": 64,
}
WITH_BERT = dataclasses.replace(SMALL, feature_dims=(32, 5, 7), use_bert=True, bert_config=TINY_BERT)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is faster, and immune to spinning OpenMP workers on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(cfg: ModelConfig, seed: int = 0) -> DMD:
    torch.manual_seed(seed)
    return DMD(cfg).eval()


def make_inputs(cfg: ModelConfig, batch: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    lt, la, lv = cfg.seq_lens
    if cfg.use_bert:
        ids = torch.randint(1, 100, (batch, lt), generator=g)
        mask = torch.ones(batch, lt, dtype=torch.long)
        mask[0, lt - 3:] = 0  # a padded sentence
        text = torch.stack([ids * mask, mask, torch.zeros_like(ids)], dim=1).float()  # MMSA text_bert (B, 3, L)
    else:
        text = torch.randn(batch, lt, cfg.feature_dims[0], generator=g)
    return (text, torch.randn(batch, la, cfg.feature_dims[1], generator=g),
            torch.randn(batch, lv, cfg.feature_dims[2], generator=g))


def assert_same_outputs(a: DMD, b: DMD, cfg: ModelConfig) -> None:
    inputs = make_inputs(cfg)
    with torch.no_grad():
        out_a, out_b = a(*inputs, distill=True), b(*inputs, distill=True)
    assert set(out_a) == set(out_b)
    for name in out_a:
        assert torch.equal(out_a[name], out_b[name]), name


def official_names(cfg: ModelConfig) -> set[str]:
    """Every key of the official `DMD(args).state_dict()`, written out from the official dmd.py and
    transformer.py (MulT's TransformerEncoder with its `version` and positional buffers)."""
    names: set[str] = set()
    linear = ["proj1_c", "proj2_c", "out_layer_c", "weight_c", "proj1", "proj2", "out_layer"]
    convs = ["encoder_c"]
    transformers = {}
    for k in ("l", "v", "a"):
        linear += [f"proj_cosine_{k}", f"align_c_{k}", f"weight_{k}"]
        linear += [f"{p}_{k}_{level}" for p in ("proj1", "proj2", "out_layer") for level in ("low", "high")]
        convs += [f"proj_{k}", f"encoder_s_{k}", f"decoder_{k}"]
        transformers[f"self_attentions_c_{k}"] = cfg.layers
        transformers[f"trans_{k}_mem"] = max(cfg.layers, 3)
    for t, s in (("l", "a"), ("l", "v"), ("a", "l"), ("a", "v"), ("v", "l"), ("v", "a")):
        transformers[f"trans_{t}_with_{s}"] = cfg.layers
    names |= {f"{m}.{p}" for m in linear for p in ("weight", "bias")}
    names |= {f"{m}.weight" for m in convs}  # bias=False
    layer_params = [
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
        "layer_norms.0.weight", "layer_norms.0.bias", "layer_norms.1.weight", "layer_norms.1.bias",
    ]
    for name, layers in transformers.items():
        names |= {f"{name}.version", f"{name}.embed_positions._float_tensor",
                  f"{name}.layer_norm.weight", f"{name}.layer_norm.bias"}
        names |= {f"{name}.layers.{n}.{p}" for n in range(layers) for p in layer_params}
    return names


# -- round trips --------------------------------------------------------------------------------------
def test_export_then_import_gives_identical_outputs():
    model = make_model(SMALL)
    exported = export_official(model)
    again = import_official(exported["dmd"], SMALL, homo_gd=exported["homo_gd"], hetero_gd=exported["hetero_gd"])
    assert not again.training  # ready for inference
    assert_same_outputs(model, again, SMALL)


def test_import_then_export_gives_back_the_same_tensors():
    exported = export_official(make_model(SMALL, seed=3))
    again = export_official(import_official(exported["dmd"], SMALL))
    assert set(again["dmd"]) == set(exported["dmd"])
    for key, value in exported["dmd"].items():
        assert torch.equal(again["dmd"][key], value), key


def test_import_without_gd_weights_gives_the_same_network_outputs():
    model = make_model(SMALL)
    again = import_official(export_official(model)["dmd"], SMALL)
    inputs = make_inputs(SMALL)
    with torch.no_grad():
        a, b = model(*inputs), again(*inputs)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_import_accepts_a_yaml_configuration_path(tmp_path):
    model = make_model(SMALL)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump({"model": DMDConfig(model=SMALL).to_dict()["model"]}))
    again = import_official(export_official(model)["dmd"], path)
    assert again.cfg == SMALL
    with torch.no_grad():
        assert torch.equal(model(*make_inputs(SMALL))["output_logit"], again(*make_inputs(SMALL))["output_logit"])


def test_a_pth_file_path_loads(tmp_path):
    model = make_model(SMALL)
    path = tmp_path / "mosi-aligned.pth"
    torch.save(export_official(model)["dmd"], path)
    assert_same_outputs(model, import_official(path, SMALL, hetero_gd=export_official(model)["hetero_gd"],
                                               homo_gd=export_official(model)["homo_gd"]), SMALL)


def test_a_pth_file_holding_a_state_dict_entry_loads(tmp_path):
    model = make_model(SMALL)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": export_official(model)["dmd"]}, path)
    again = import_official(path, SMALL)
    with torch.no_grad():
        inputs = make_inputs(SMALL)
        assert torch.equal(model(*inputs)["output_logit"], again(*inputs)["output_logit"])


def test_a_pth_file_with_data_parallel_module_prefixes_loads(tmp_path):
    model = make_model(SMALL)
    path = tmp_path / "parallel.pth"
    torch.save({f"module.{k}": v for k, v in export_official(model)["dmd"].items()}, path)
    again = import_official(path, SMALL)
    with torch.no_grad():
        inputs = make_inputs(SMALL)
        assert torch.equal(model(*inputs)["output_logit"], again(*inputs)["output_logit"])


def test_a_state_dict_with_data_parallel_module_prefixes_loads():
    model = make_model(SMALL)
    state = {f"module.{k}": v for k, v in export_official(model)["dmd"].items()}
    again = import_official(state, SMALL)
    with torch.no_grad():
        inputs = make_inputs(SMALL)
        assert torch.equal(model(*inputs)["output_logit"], again(*inputs)["output_logit"])


def test_a_state_dict_without_the_transformer_buffers_loads():
    model = make_model(SMALL)
    state = {k: v for k, v in export_official(model)["dmd"].items()
             if not k.endswith(("version", "embed_positions._float_tensor"))}
    import_official(state, SMALL)


# -- official names and shapes ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mosi_export():
    cfg = DMDConfig.from_yaml(configs.path("mosi_aligned"), ["model.use_bert=false"]).model
    return cfg, export_official(make_model(cfg))


def test_export_keys_are_exactly_the_official_names(mosi_export):
    cfg, exported = mosi_export
    assert set(exported["dmd"]) == official_names(cfg)
    assert set(exported) == {"dmd", "homo_gd", "hetero_gd"}


def test_export_has_the_official_shapes(mosi_export):
    cfg, exported = mosi_export
    state = exported["dmd"]
    d = cfg.d_model  # 50
    assert state["proj_l.weight"].shape == (d, 768, 5)
    assert state["proj_a.weight"].shape == (d, 5, 5)
    assert state["encoder_s_l.weight"].shape == (d, d, 1)
    assert state["encoder_c.weight"].shape == (d, d, 1)
    assert state["decoder_v.weight"].shape == (d, 2 * d, 1)
    assert state["proj_cosine_l.weight"].shape == (d, d * 46)
    assert state["proj1_a_low.weight"].shape == (d, d * 46)
    assert state["proj2_a_low.weight"].shape == (d * 46, d)
    assert state["trans_l_with_a.layers.0.self_attn.in_proj_weight"].shape == (3 * d, d)
    assert state["trans_l_with_a.layers.0.self_attn.in_proj_bias"].shape == (3 * d,)
    assert state["self_attentions_c_v.layer_norm.weight"].shape == (d,)
    assert state["trans_a_mem.layers.3.fc1.weight"].shape == (4 * 2 * d, 2 * d)
    assert state["proj1_l_high.weight"].shape == (2 * d, 2 * d)
    assert state["weight_c.bias"].shape == (3 * d,)
    assert state["out_layer.weight"].shape == (1, 9 * d)
    assert torch.equal(state["trans_l_mem.version"], torch.tensor([2.0]))
    assert state["trans_l_mem.embed_positions._float_tensor"].numel() == 1


def test_export_holds_the_official_parameter_count(mosi_export):
    _, exported = mosi_export
    buffers = ("version", "embed_positions._float_tensor")
    assert sum(v.numel() for k, v in exported["dmd"].items() if not k.endswith(buffers)) == 4_743_658


def test_export_gives_the_gd_units_official_kernel_state_dicts(mosi_export):
    cfg, exported = mosi_export
    for unit, gd in (("homo_gd", cfg.homo_gd), ("hetero_gd", cfg.hetero_gd)):
        state = exported[unit]
        assert set(state) == {f"{m}.{p}" for m in ("W_logit", "W_repr", "W_edge") for p in ("weight", "bias")}
        assert state["W_edge.weight"].shape == (1, 4 * gd.gd_size)
    assert exported["homo_gd"]["W_repr.weight"].shape == (cfg.homo_gd.gd_size, cfg.d_model)
    assert exported["hetero_gd"]["W_repr.weight"].shape == (cfg.hetero_gd.gd_size, 2 * cfg.d_model)


def test_exported_tensors_are_copies():
    model = make_model(SMALL)
    state = export_official(model)["dmd"]
    state["out_layer.weight"].zero_()
    assert model.fusion_head.out.weight.abs().sum() > 0


# -- errors ------------------------------------------------------------------------------------------------------
def test_checkpoint_errors_are_value_errors():
    assert issubclass(OfficialCheckpointError, ValueError)


def test_a_tensor_of_the_wrong_shape_names_the_key_and_the_configuration_fields():
    state = export_official(make_model(SMALL))["dmd"]
    state["proj_a.weight"] = torch.zeros(12, 6, 3)
    with pytest.raises(
        OfficialCheckpointError,
        match=r"official proj_a.weight has shape \(12, 6, 3\) but the configuration expects \(12, 5, 3\): "
        r".*model.feature_dims",
    ):
        import_official(state, SMALL)


def test_a_checkpoint_for_other_sequence_lengths_names_the_key_and_model_seq_lens():
    state = export_official(make_model(SMALL))["dmd"]
    longer = dataclasses.replace(SMALL, seq_lens=(10, 8, 8))
    with pytest.raises(OfficialCheckpointError, match=r"official proj_cosine_l.weight has shape .*model.seq_lens"):
        import_official(state, longer)


def test_a_missing_key_is_named():
    state = export_official(make_model(SMALL))["dmd"]
    del state["out_layer.weight"]
    with pytest.raises(OfficialCheckpointError, match=r"1 missing key\(s\) \['out_layer.weight'\], 0 unexpected"):
        import_official(state, SMALL)


def test_an_unexpected_key_is_named():
    state = export_official(make_model(SMALL))["dmd"]
    state["classifier.weight"] = torch.zeros(1)
    with pytest.raises(OfficialCheckpointError, match=r"0 missing key\(s\) \[\], 1 unexpected key\(s\) \['classifier"):
        import_official(state, SMALL)


def test_a_checkpoint_with_fewer_layers_points_at_model_layers():
    state = export_official(make_model(SMALL))["dmd"]
    with pytest.raises(OfficialCheckpointError, match=r"108 missing key\(s\) .*layers.1.*check model.layers"):
        import_official(state, dataclasses.replace(SMALL, layers=2))


def test_a_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(OfficialCheckpointError, match=r"official checkpoint '.*absent.pth' not found"):
        import_official(tmp_path / "absent.pth", SMALL)


def test_a_gd_state_with_an_unknown_key_is_named():
    exported = export_official(make_model(SMALL))
    with pytest.raises(OfficialCheckpointError, match=r"hetero_gd state has an unknown key 'W_other.weight'"):
        import_official(exported["dmd"], SMALL, hetero_gd={"W_other.weight": torch.zeros(1)})


# -- BERT text encoder ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_model() -> DMD:
    return make_model(WITH_BERT)


def test_bert_forward_takes_token_ids_mask_and_segments(bert_model):
    text, audio, visual = make_inputs(WITH_BERT, batch=3)
    assert text.shape == (3, 3, 8)
    with torch.no_grad():
        out = bert_model(text, audio, visual, distill=True)
    d, lt = WITH_BERT.d_model, WITH_BERT.conv_lens[0]
    assert out["origin_l"].shape == (3, d, lt)
    assert out["output_logit"].shape == (3, 1)
    assert torch.isfinite(out["output_logit"]).all()


def test_bert_input_of_the_wrong_shape_says_what_was_expected(bert_model):
    _, audio, visual = make_inputs(WITH_BERT, batch=2)
    with pytest.raises(ValueError, match=r"text input has shape \(2, 8, 32\), expected \(2, 3, 8\)"):
        bert_model(torch.randn(2, 8, 32), audio, visual)


def test_bert_checkpoint_round_trip_with_the_text_model_keys(bert_model):
    exported = export_official(bert_model)
    state = exported["dmd"]
    for key in ("text_model.model.embeddings.word_embeddings.weight",
                "text_model.model.encoder.layer.0.attention.self.query.weight"):
        assert key in state
    assert state["text_model.model.embeddings.word_embeddings.weight"].shape == (100, 32)
    assert set(state) - {k for k in state if k.startswith("text_model.model.")} == official_names(WITH_BERT)
    again = import_official(state, WITH_BERT, homo_gd=exported["homo_gd"], hetero_gd=exported["hetero_gd"])
    assert_same_outputs(bert_model, again, WITH_BERT)


def test_bert_checkpoint_with_a_saved_position_ids_buffer_loads(bert_model):
    # checkpoints saved with older transformers carry embeddings.position_ids
    state = export_official(bert_model)["dmd"]
    state["text_model.model.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    import_official(state, WITH_BERT)


def test_a_bert_checkpoint_into_a_configuration_without_bert_says_to_set_use_bert(bert_model):
    state = export_official(bert_model)["dmd"]
    no_bert = dataclasses.replace(WITH_BERT, use_bert=False, bert_config=None)
    with pytest.raises(OfficialCheckpointError, match=r"holds a BERT text encoder .*model.use_bert = false: set"):
        import_official(state, no_bert)


def test_a_checkpoint_without_bert_into_a_bert_configuration_says_to_unset_use_bert():
    state = export_official(make_model(SMALL))["dmd"]
    with pytest.raises(OfficialCheckpointError, match=r"model.use_bert = true but the checkpoint holds no text_model"):
        import_official(state, dataclasses.replace(SMALL, use_bert=True, bert_config=TINY_BERT))


def test_a_bert_wider_than_the_text_features_names_the_field_to_set():
    with pytest.raises(ConfigError, match=r"model.feature_dims text = 16 but .* gives 32-d features: set model"):
        DMD(dataclasses.replace(SMALL, use_bert=True, bert_config=TINY_BERT))


def test_a_frozen_bert_gets_no_gradient():
    model = make_model(dataclasses.replace(WITH_BERT, bert_finetune=False)).train()
    model(*make_inputs(WITH_BERT))["output_logit"].sum().backward()
    assert all(p.grad is None for p in model.text_encoder.parameters())
    assert model.project["text"].weight.grad is not None
