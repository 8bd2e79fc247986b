"""The pipeline settings: a value from the environment reaches its field, a bad one is refused with a
message naming the key and what to give instead."""

from __future__ import annotations

import pytest

from workers.settings import SettingsError, load_settings


def test_the_environment_sets_the_estimates_history_and_the_face_rate() -> None:
    settings = load_settings(environ={"DMD_INFERENCE_ESTIMATES_HISTORY": "120", "DMD_CAPTURE_VIDEO_FPS": "15"})
    assert settings.inference.estimates_history == 120 and settings.capture.video_fps == 15
    defaults = load_settings(environ={})
    assert defaults.inference.estimates_history == 7200 and defaults.capture.video_fps == 5


def test_an_empty_estimates_history_is_refused_naming_the_key() -> None:
    with pytest.raises(SettingsError, match=r"inference\.estimates_history = 0: keep at least 1"):
        load_settings(environ={"DMD_INFERENCE_ESTIMATES_HISTORY": "0"})
