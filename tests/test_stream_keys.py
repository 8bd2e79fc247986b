"""Key names with the session as hash tag, and session id validation."""

from __future__ import annotations

import pytest

from stream.keys import DEAD, INFER_GROUP, WINDOWS, SessionKeys, estimate_channel, validate_session_id


def test_session_keys_share_one_hash_tag() -> None:
    keys = SessionKeys("alice-01")
    assert keys.audio == "dmd:{alice-01}:audio"
    assert keys.afeat == "dmd:{alice-01}:afeat"
    assert keys.vfeat == "dmd:{alice-01}:vfeat"
    assert keys.words == "dmd:{alice-01}:words"
    assert keys.estimates == "dmd:{alice-01}:estimates"
    assert keys.state == "dmd:{alice-01}:state"
    assert keys.published(12) == "dmd:{alice-01}:published:12"
    assert keys.channel == estimate_channel("alice-01") == "dmd:est:{alice-01}"
    assert keys.stream("vfeat") == keys.vfeat
    assert all("{alice-01}" in k for k in keys.all_keys())
    assert (WINDOWS, INFER_GROUP, DEAD) == ("dmd:windows", "infer", "dmd:dead")


@pytest.mark.parametrize("sid", ["a", "Session_1.2-x", "0" * 64])
def test_valid_session_ids_pass(sid: str) -> None:
    assert validate_session_id(sid) == sid


@pytest.mark.parametrize(("sid", "message"), [
    ("a{b}", r"session id 'a\{b\}' contains '\{\}': use only letters A-Z a-z, digits 0-9, '_', '-' and '.'"),
    ("a:b", "contains ':'"),
    ("bob smith", "contains ' '"),
    ("", "session id is empty"),
    ("x" * 65, "has 65 characters, at most 64"),
    (42, r"session id 42 is not a string \(int\)"),
])
def test_invalid_session_id_error_names_the_value_and_the_allowed_characters(sid, message) -> None:
    with pytest.raises(ValueError, match=message):
        SessionKeys(sid)


def test_unknown_session_stream_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown session stream 'video': use one of audio, afeat, vfeat, words"):
        SessionKeys("a").stream("video")
