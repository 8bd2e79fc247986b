"""The live profile as a checkpoint records it, and what the features package may import."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dmd_model.artefacts.checkpoint import MMSA_PROFILE
from dmd_model.features import (
    AUDIO_NAMES,
    LIVE_V1_BERT,
    PROFILE,
    VISUAL_NAMES,
    FeatureError,
    check_profile,
    get_profile,
)


def test_the_profile_names_its_sizes_and_extractors():
    d = PROFILE.describe()
    assert d["name"] == "live-v1" and d["live"] is True
    assert d["dims"] == {"text": 384, "audio": 25, "visual": 55} and PROFILE.feature_dims == (384, 25, 55)
    assert d["seq_len"] == 50 and len(d["audio"]["names"]) == len(AUDIO_NAMES) == 25
    assert d["visual"]["names"] == list(VISUAL_NAMES) and len(VISUAL_NAMES) == 55
    assert len(d["audio"]["mean"]) == len(d["audio"]["std"]) == 25 and min(d["audio"]["std"]) > 0
    assert "opensmile" in d["versions"] and "mediapipe" in d["versions"]
    json.dumps(d)  # a checkpoint stores it as plain data
    assert LIVE_V1_BERT.describe()["dims"]["text"] == 768


def test_a_checkpoint_profile_is_accepted_only_if_this_code_computes_it():
    assert check_profile(PROFILE.describe()) is PROFILE
    assert check_profile(json.loads(json.dumps(LIVE_V1_BERT.describe()))) is LIVE_V1_BERT
    with pytest.raises(FeatureError, match=r"trained on features 'mmsa', which the live pipeline cannot compute"):
        check_profile(MMSA_PROFILE)
    other = PROFILE.describe()
    other["audio"]["std"] = list(np.asarray(other["audio"]["std"]) * 2)
    with pytest.raises(FeatureError, match="standardises audio with another std"):
        check_profile(other)
    with pytest.raises(FeatureError, match="profile 'live-v9' is unknown"):
        get_profile("live-v9")


def test_standardisation_is_a_fixed_per_descriptor_transform():
    x = np.tile(np.asarray(PROFILE.audio_mean, np.float32), (3, 1))
    assert np.abs(PROFILE.standardise_audio(x)).max() < 1e-4
    x[:, 16] += PROFILE.audio_std[16]  # one standard deviation of F1 frequency (Hz)
    assert PROFILE.standardise_audio(x)[:, 16] == pytest.approx(1.0, abs=1e-4)


def test_the_features_package_imports_no_feature_library_and_never_stream_or_workers():
    code = (
        "import sys, dmd_model.features as f; f.PROFILE.describe(); "
        "print(sorted(m for m in ('opensmile','mediapipe','av','transformers','pocketsphinx','stream','workers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
