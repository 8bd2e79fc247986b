"""Message schemas and codecs: round trips, and a reason naming the field for each malformed entry."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from dmd_types import Frames, PcmChunk, Word
from stream.codec import MessageError, pack, unpack
from stream.messages import (
    ACOUSTIC,
    FACE,
    SCHEMA,
    AsrWords,
    WindowNotice,
    concat_audio,
    decode,
    from_fields,
    to_fields,
)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.int16).reshape(3, 4),
    RNG.standard_normal((5, 25)).astype(np.float32),
    RNG.standard_normal(7),
    np.array([True, False, True]),
    np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    np.zeros((0, 55), np.float32),
    np.array(3.5, dtype=np.float16),
    np.arange(6, dtype=">i4"),  # big-endian goes out little-endian, same values
    np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
])
def test_arrays_round_trip_with_dtype_and_shape(arr: np.ndarray) -> None:
    back = unpack(pack({"a": arr, "n": 1, "s": "x"}))
    assert back["n"] == 1 and back["s"] == "x"
    assert back["a"].shape == arr.shape
    assert back["a"].dtype == arr.dtype.newbyteorder("<")
    np.testing.assert_array_equal(back["a"], arr)


def test_object_arrays_are_refused() -> None:
    with pytest.raises(MessageError, match="dtype object"):
        pack({"a": np.array([{}, None], dtype=object)})


def test_array_with_wrong_byte_count_is_rejected() -> None:
    body = msgpack.packb(["<f4", [2, 3], b"\0" * 20], use_bin_type=True)
    data = msgpack.packb({"a": msgpack.ExtType(1, body)}, use_bin_type=True)
    with pytest.raises(MessageError, match="needs 24 bytes, got 20"):
        unpack(data)


def test_garbage_is_not_msgpack() -> None:
    with pytest.raises(MessageError, match="not valid msgpack"):
        unpack(b"\xc1\xc1\xc1")


def audio(t0: float = 1.0, n: int = 1600) -> PcmChunk:
    return PcmChunk(t0=t0, pcm=RNG.integers(-3000, 3000, n).astype(np.int16))


def afeat(t0: float = 1.0, n: int = 10) -> Frames:
    return Frames(t0 + np.arange(n) / 100, RNG.standard_normal((n, 25)).astype(np.float32), np.arange(n) % 2 == 0)


def vfeat(t0: float = 1.0, n: int = 3) -> Frames:
    """Face frames: 55 tracker values, then the face expert's 7 probabilities (zeros: not run, as without a face)."""
    values = np.zeros((n, 62), np.float32)
    values[:, :55] = RNG.random((n, 55))
    values[0, 55:] = RNG.dirichlet(np.ones(7))
    return Frames(t0 + np.arange(n) / 30, values, np.array([True, False, True][:n]))


def kind_of(value):
    """The stream a test value goes to: frames by their width, anything else by its class."""
    if isinstance(value, Frames):
        return ACOUSTIC if value.dim == 25 else FACE
    return None


def words() -> AsrWords:
    return AsrWords(words=(Word("i", 1.0, 1.1, 0.9), Word("like", 1.2, 1.5, 0.8), Word("this", 1.5, 1.9, 1.0)),
                    watermark=2.0)


def test_each_message_round_trips_through_stream_fields() -> None:
    a = decode(to_fields(audio()))
    assert isinstance(a, PcmChunk) and a.samples == 1600 and a.t_end == pytest.approx(1.1)
    f = decode(to_fields(afeat(), ACOUSTIC))
    assert isinstance(f, Frames) and f.values.shape == (10, 25) and f.times[-1] == pytest.approx(1.09)
    assert f.present.tolist() == [True, False] * 5
    v = decode(to_fields(vfeat(), FACE))
    assert isinstance(v, Frames) and v.present.tolist() == [True, False, True]
    w = decode(words().to_fields())
    assert w == words() and w.t_end == 2.0
    n = WindowNotice("alice", 6, 0.0, 3.0, 1.7e9)
    assert decode(n.to_fields()) == n


def test_face_frames_carry_the_face_expert_after_the_55_and_older_55_wide_ones_read_with_zeros() -> None:
    frames = vfeat()
    back = decode(to_fields(frames, FACE))
    np.testing.assert_array_equal(back.values, frames.values)
    assert back.values.shape == (3, 62) and back.values[0, 55:].sum() == pytest.approx(1.0, abs=1e-6)
    older = fields_with(frames, features=frames.values[:, :55].copy())  # a capture from before the expert
    read = decode(older)
    assert read.values.shape == (3, 62) and not read.values[:, 55:].any()
    np.testing.assert_array_equal(read.values[:, :55], frames.values[:, :55])


def test_message_type_is_checked_against_the_expected_one() -> None:
    with pytest.raises(MessageError, match="holds a 'afeat' message, expected 'vfeat'") as err:
        from_fields(to_fields(afeat(), ACOUSTIC), FACE)
    assert err.value.field == "type"


def test_decoding_keeps_exact_values() -> None:
    chunk = audio()
    back = decode(to_fields(chunk))
    np.testing.assert_array_equal(back.pcm, chunk.pcm)
    frames = afeat()
    np.testing.assert_array_equal(decode(to_fields(frames, ACOUSTIC)).values, frames.values)


def fields_with(message, **changes) -> dict[bytes, bytes]:
    """The message's stream fields with some body fields replaced (a producer that got it wrong)."""
    body = unpack(to_fields(message, kind_of(message))["m"])
    body.update(changes)
    for k, v in list(body.items()):
        if v is ...:
            del body[k]
    return {b"v": str(SCHEMA).encode(), b"m": pack(body)}


@pytest.mark.parametrize(("fields", "field", "words_in_reason"), [
    (fields_with(audio(), sample_rate=44100), "audio.sample_rate", "44100 Hz, expected 16000"),
    (fields_with(audio(), pcm=np.zeros(1600, np.float32)), "audio.pcm", "expected int16"),
    (fields_with(audio(), pcm=np.zeros((800, 2), np.int16)), "audio.pcm", "2 channels, expected mono"),
    (fields_with(audio(), samples=1000), "audio.samples", "says 1000 samples but the PCM holds 1600"),
    (fields_with(audio(), t0=-1.0), "audio.t0", "below 0"),
    (fields_with(audio(), t0=float("nan")), "audio.t0", "not finite"),
    (fields_with(audio(), t0="soon"), "audio.t0", "not a number"),
    (fields_with(audio(), samples=...), "samples", "no field 'samples'"),
    (fields_with(afeat(), features=np.zeros((10, 24), np.float32)), "afeat.features", "expected (10, 25)"),
    (fields_with(afeat(), features=np.zeros((10, 25))), "afeat.features", "expected float32"),
    (fields_with(afeat(), features=np.full((10, 25), np.inf, np.float32)), "afeat.features", "non-finite"),
    (fields_with(afeat(), t=np.array([1.0, 0.5] + [2.0] * 8)), "afeat.t", "goes backwards at frame 1"),
    (fields_with(afeat(), t=np.zeros((10, 1))), "afeat.t", "expected (n,)"),
    (fields_with(vfeat(), face=np.ones(3, np.int8)), "vfeat.face", "expected bool (3,)"),
    (fields_with(vfeat(), features=np.zeros((3, 52), np.float32)), "vfeat.features", "expected (3, 62)"),
    (fields_with(words(), watermark=1.7), "words.end", "after the watermark 1.7"),
    (fields_with(words(), words=[{"word": "", "start": 0, "end": 1, "confidence": 1}]), "words.word", "non-empty"),
    (fields_with(words(), words=[{"word": "a", "start": 1.0, "end": 0.5, "confidence": 1}]), "words.end",
     "before it starts"),
    (fields_with(words(), words=[{"word": "a", "start": 0, "end": 1, "confidence": 1.5}]), "words.confidence",
     "above 1.0"),
    (fields_with(words(), words=[{"word": "a", "start": 0, "end": 1}]), "words.confidence", "no 'confidence'"),
    (fields_with(words(), words=[{"word": "b", "start": 1.0, "end": 1.1, "confidence": 1},
                                 {"word": "a", "start": 0.5, "end": 0.6, "confidence": 1}]), "words.start",
     "time order"),
    (fields_with(WindowNotice("alice", 6, 0.0, 3.0, 1.7e9), session="a b"), "window.session", "contains ' '"),
    (fields_with(WindowNotice("alice", 6, 0.0, 3.0, 1.7e9), window=-1), "window.window", "below 0"),
    (fields_with(WindowNotice("alice", 6, 0.0, 3.0, 1.7e9), window=True), "window.window", "not an integer"),
    (fields_with(WindowNotice("alice", 6, 0.0, 3.0, 1.7e9), t_end=0.0), "window.t_end", "not after t_start"),
])
def test_malformed_entry_is_rejected_with_a_reason_naming_the_field(fields, field, words_in_reason) -> None:
    with pytest.raises(MessageError) as err:
        decode(fields)
    assert err.value.field == field
    assert field in err.value.reason and words_in_reason in err.value.reason


@pytest.mark.parametrize(("fields", "words_in_reason"), [
    ({b"m": b"x"}, "expected 'v' (schema version) and 'm'"),
    ({b"v": b"2", b"m": pack({"type": "audio"})}, "schema version 2 is newer than this reader (1)"),
    ({b"v": b"one", b"m": pack({"type": "audio"})}, "'one' is not an integer"),
    ({b"v": b"1", b"m": b"\xc1"}, "not valid msgpack"),
    ({b"v": b"1", b"m": pack([1, 2])}, "expected a map"),
    ({b"v": b"1", b"m": pack({"type": "smell"})}, "unknown message type 'smell'"),
])
def test_malformed_envelope_is_rejected_with_a_reason(fields, words_in_reason) -> None:
    with pytest.raises(MessageError) as err:
        decode(fields)
    assert words_in_reason in err.value.reason


def test_producer_learns_of_a_bad_value_when_building_the_message() -> None:
    with pytest.raises(MessageError, match=r"words.end: word 'x' ends at 1.0, before it starts \(2.0\)"):
        AsrWords((Word("x", 2.0, 1.0),), watermark=3.0)


def test_a_pcm_chunk_is_checked_when_it_is_sent_and_when_it_is_read() -> None:
    with pytest.raises(MessageError, match=r"audio.pcm: has shape \(10, 2\): 2 channels, expected mono"):
        to_fields(PcmChunk(0.0, np.zeros((10, 2), np.int16)))
    body = {"type": "audio", "t0": 0.0, "samples": 10, "sample_rate": 48000, "pcm": np.zeros(10, np.int16)}
    with pytest.raises(MessageError, match=r"audio chunk has 48000 Hz, expected 16000: resample"):
        decode({b"v": b"1", b"m": pack(body)}, PcmChunk)


def test_frames_are_cut_to_a_span_across_messages() -> None:
    parts = [afeat(0.0, 100), afeat(1.0, 100), afeat(2.0, 100)]
    out = Frames.concat(parts).between(0.5, 2.5)
    assert out.values.shape == (200, 25)
    assert out.times[0] == pytest.approx(0.5) and out.times[-1] == pytest.approx(2.49)
    face = Frames.concat([vfeat(0.0), vfeat(0.1)]).between(0.05, 1.0)
    assert face.present.shape == face.times.shape == (4,)
    assert Frames.concat([], dim=25).between(0, 1).values.shape == (0, 25)


def test_frames_go_to_the_stream_their_kind_names() -> None:
    with pytest.raises(TypeError, match=r"give the kind, ACOUSTIC \(afeat\)"):
        to_fields(afeat())
    with pytest.raises(MessageError, match=r"afeat\.voiced: is int8"):
        decode(fields_with(afeat(), voiced=np.ones(10, np.int8)))


def test_audio_is_cut_to_a_span_across_chunks() -> None:
    chunks = [audio(0.1 * i, 1600) for i in range(10)]
    t0, pcm = concat_audio(chunks, 0.25, 0.75)
    assert t0 == pytest.approx(0.25)
    assert len(pcm) == 8000
    np.testing.assert_array_equal(pcm[:800], chunks[2].pcm[800:])
