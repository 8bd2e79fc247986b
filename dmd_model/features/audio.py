"""Acoustic frames: openSMILE eGeMAPSv02 low-level descriptors, 25 per frame at 100 Hz, on 16 kHz mono.

One `AudioFeatureStream` serves both paths. Live, the capture worker feeds it 100 ms chunks as
they arrive and takes the frames that are ready; offline, dataset extraction feeds a whole clip
and finishes. Either way the frames are the ones `opensmile.Smile(eGeMAPSv02, LowLevelDescriptors)
.process_signal` gives for the whole signal, to the last bit: the stream is not a re-run of
openSMILE on overlapping pieces but one openSMILE instance that runs in a background thread and
reads the audio from an external source as it is written, exactly as `process_signal` does with
all of it at once. (Re-running on pieces with context would not do: openSMILE's jitter and shimmer
carry state across more than a second of voiced speech, so pieces with 1 s of context still
differ from the whole-file result by up to 0.3.)

Two changes to openSMILE's stock eGeMAPSv02 configuration keep a stream of any length in constant
memory; neither changes a value: only the low-level-descriptor components are built (the
functionals over the whole input are not, so nothing is kept until the end), and the levels that
grow without bound in the stock configuration (the input wave, the levels before the functionals)
are ring buffers. (Twenty minutes of audio streamed through one instance: resident memory flat.)

Frame i of a stream that started at session time t0 is stamped t0 + i * 0.01 + 0.01: the centre
of its 20 ms analysis window (openSMILE's pitch and voice-quality descriptors look at 60 ms
starting at the same instant).

Other sample rates and channel counts go through libswresample (PyAV's `AudioResampler`, its
default filter), to signed 16-bit mono at 16 kHz, the same way `decode_media` converts a file's
sound: channels are down-mixed by libswresample's default matrix, and the resampler keeps its
state between chunks, so chunked and whole input resample to the same samples.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from dmd_types import Frames

from .errors import FeatureError, missing_package
from .profile import AUDIO_NAMES, SAMPLE_RATE, voiced_mask

FRAME_STEP = 0.01  # seconds between frames (100 Hz)
FRAME_OFFSET = 0.01  # a frame's stamp: the centre of its 20 ms window
_HOP = int(SAMPLE_RATE * FRAME_STEP)  # 160 samples
# Largest block written to openSMILE at once, and its input ring buffer (2 s): a block must fit.
_BLOCK = SAMPLE_RATE // 4
_RING = 2 * SAMPLE_RATE
_WRITE_TIMEOUT_S = 30.0
MIN_RATE, MAX_RATE = 8000, 384000


def _import_opensmile() -> Any:
    try:
        import opensmile
    except ImportError as e:
        raise missing_package("opensmile", "the audio features (openSMILE eGeMAPSv02)") from e
    return opensmile


def _import_av() -> Any:
    try:
        import av
    except ImportError as e:
        raise missing_package("av", "resampling audio and reading media files (PyAV)") from e
    return av


@functools.lru_cache(maxsize=1)
def _config_files() -> tuple[str, str, dict[str, str]]:
    """Write the streaming configuration once per process; returns (config, config root, options)."""
    opensmile = _import_opensmile()
    root = Path(opensmile.__file__).parent / "core" / "config"
    needed = [
        root / "gemaps/v01b/GeMAPSv01b_core.lld.conf.inc",
        root / "egemaps/v02/eGeMAPSv02_core.lld.conf.inc",
        root / "shared/standard_external_data_output_single.conf.inc",
        root / "shared/BufferModeRb.conf.inc",
        root / "shared/BufferModeRbLag.conf.inc",
    ]
    for path in needed:
        if not path.is_file():
            raise FeatureError(
                f"openSMILE {getattr(opensmile, '__version__', '?')} lacks {path}: the live profile is "
                "built on the configuration files of opensmile 2.x; pip install 'opensmile>=2.5,<3'"
            )
    folder = Path(tempfile.mkdtemp(prefix="live-dmd-opensmile-"))
    atexit.register(shutil.rmtree, folder, True)
    (folder / "ring.conf.inc").write_text(
        "writer.levelconf.growDyn = 0\nwriter.levelconf.isRb = 1\nwriter.levelconf.nT = 150\n"
    )
    (folder / "source.conf.inc").write_text(
        "[componentInstances:cComponentManager]\n"
        "instance[extsource].type=cExternalAudioSource\n"
        "[extsource:cExternalAudioSource]\n"
        "writer.dmLevel=wave\n"
        "writer.levelconf.growDyn=0\n"
        "writer.levelconf.isRb=1\n"
        f"writer.levelconf.nT={_RING}\n"
        f"sampleRate={SAMPLE_RATE}\nnBits=16\nchannels=1\n"
    )
    # The stock eGeMAPSv02.conf without its functionals: source, the two LLD parts, the
    # concatenation of the 25 LLDs (level "lld"), and the external sink.
    (folder / "egemaps_lld_stream.conf").write_text(
        "[componentInstances:cComponentManager]\n"
        "instance[dataMemory].type=cDataMemory\n"
        "printLevelStats=0\n"
        f"\\{{{folder / 'source.conf.inc'}}}\n"
        f"\\{{{needed[0]}}}\n"
        f"\\{{{needed[1]}}}\n"
        "[componentInstances:cComponentManager]\n"
        "instance[lldconcat].type=cVectorConcat\n"
        "[lldconcat:cVectorConcat]\n"
        "reader.dmLevel = egemapsv02_lldsetE_smo;egemapsv02_lldsetF_smo\n"
        "writer.dmLevel = lld\n"
        "includeSingleElementFields = 1\n"
        f"\\{{{needed[2]}}}\n"
    )
    options = {
        "sinkLevel": "lld",
        "bufferModeRbConf": str(needed[3]),
        "bufferModeRbLagConf": str(needed[4]),
        "bufferModeConf": str(folder / "ring.conf.inc"),
    }
    return str(folder / "egemaps_lld_stream.conf"), str(root), options


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Samples as int16: int16 passes through; floats in [-1, 1] are scaled by 32768 and truncated,
    as openSMILE's Python wrapper does (clipped first, where it would wrap around)."""
    samples = np.asarray(samples)
    if samples.dtype == np.int16:
        return samples
    if samples.dtype.kind == "f":
        return np.clip(samples * 32768.0, -32768, 32767).astype(np.int16)
    raise FeatureError(
        f"audio samples have dtype {samples.dtype}: give int16 PCM or floats in [-1, 1]"
    )


def _check_rate(sample_rate: int) -> int:
    if int(sample_rate) != sample_rate or not MIN_RATE <= sample_rate <= MAX_RATE:
        raise FeatureError(
            f"audio sample rate {sample_rate} Hz is not usable: give the rate the samples were recorded "
            f"at, an integer from {MIN_RATE} to {MAX_RATE} Hz (speech is best at 16000 or more)"
        )
    return int(sample_rate)


class Resampler:
    """Any rate and channel count to 16 kHz int16 mono, chunk by chunk (libswresample via PyAV).

    `feed` returns the samples ready so far, `finish` the filter's tail. With 16 kHz mono input it
    is a plain int16 conversion (`to_pcm16`).
    """

    def __init__(self, sample_rate: int, channels: int = 1) -> None:
        self.sample_rate = _check_rate(sample_rate)
        if channels < 1:
            raise FeatureError(f"audio has {channels} channels: give at least one")
        self.channels = int(channels)
        self.passthrough = self.sample_rate == SAMPLE_RATE and self.channels == 1
        self._resampler = None
        self._pts = 0

    def _frame(self, samples: np.ndarray) -> Any:
        av = _import_av()
        if samples.dtype == np.int16:
            fmt, data = "s16", samples
        else:
            fmt, data = "flt", samples.astype(np.float32)
        layout = {1: "mono", 2: "stereo"}.get(self.channels, f"{self.channels}c")
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data.reshape(1, -1)), format=fmt, layout=layout)
        frame.sample_rate = self.sample_rate
        frame.time_base = Fraction(1, self.sample_rate)
        frame.pts = self._pts
        self._pts += samples.shape[0]
        return frame

    def _out(self, frames: list) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1) for f in frames]
        return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples)
        if samples.ndim == 1:
            samples = samples[:, None]
        if samples.ndim != 2 or samples.shape[1] != self.channels:
            raise FeatureError(
                f"audio chunk has shape {samples.shape}, expected (samples,) or (samples, {self.channels}) "
                f"for {self.channels} channel(s): open the stream with the chunk's channel count"
            )
        if samples.dtype != np.int16 and samples.dtype.kind != "f":
            raise FeatureError(f"audio samples have dtype {samples.dtype}: give int16 PCM or floats in [-1, 1]")
        if self.passthrough:
            return to_pcm16(samples[:, 0])
        if samples.shape[0] == 0:
            return np.zeros(0, np.int16)
        if self._resampler is None:
            av = _import_av()
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        return self._out(self._resampler.resample(self._frame(samples)))

    def finish(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.int16)
        out = self._out(self._resampler.resample(None))
        self._resampler = None
        return out


class _Collector:
    """What the openSMILE sink callback writes into (it must not reference the stream itself, so
    that an abandoned stream can still be collected and its thread stopped)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[np.ndarray] = []
        self.error: BaseException | None = None

    def __call__(self, data: np.ndarray, meta: Any) -> None:
        with self.lock:
            self.rows.append(np.array(data, dtype=np.float32).reshape(-1, data.shape[-1]))

    def drain(self) -> np.ndarray:
        with self.lock:
            rows, self.rows = self.rows, []
        if not rows:
            return np.zeros((0, len(AUDIO_NAMES)), np.float32)
        return np.concatenate(rows)


def _run(smile: Any, collector: _Collector) -> None:
    try:
        smile.run()
    except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread by feed / finish
        collector.error = e


def _stop(smile: Any, thread: threading.Thread) -> None:
    """Abort and free an openSMILE instance (also when its stream was abandoned)."""
    if thread.is_alive():
        # End of input finishes a waiting run() in every state; abort() only works once it runs.
        for stop in (lambda: smile.external_audio_source_set_eoi("extsource"), smile.abort):
            try:
                stop()
            except Exception:  # noqa: BLE001 - reported to the caller
                continue
            thread.join(timeout=5.0)
            if not thread.is_alive():
                break
    if not thread.is_alive():
        smile.free()


class AudioFeatureStream:
    """eGeMAPSv02 LLDs of one continuous audio stream: feed chunks, take frames, finish.

        stream = AudioFeatureStream(sample_rate=48000, channels=2, t0=session_time_of_first_sample)
        for chunk in chunks:                 # (samples,) or (samples, channels), int16 or float
            stream.feed(chunk)
            publish(stream.take())           # Frames: times, (n, 25) values, voiced flags
        publish(stream.finish())

    Chunks must follow each other without gaps (fill a gap with zeros, or start a new stream
    with its own t0). `take` never waits: openSMILE works in its own thread, and a frame is ready
    once its thread has caught up and about 0.1 s of later audio has arrived (the 60 ms pitch
    window and the smoothing look ahead), so a take right after a feed may return little.
    `finish` flushes everything; the frames of all takes and the finish are exactly those of
    `extract_audio` on the whole signal. `feed` blocks only when openSMILE is 2 s behind.
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE, channels: int = 1, t0: float = 0.0) -> None:
        self.sample_rate = _check_rate(sample_rate)
        self.t0 = float(t0)
        self._resampler = Resampler(self.sample_rate, channels)
        self._collector = _Collector()
        self._smile: Any = None
        self._thread: threading.Thread | None = None
        self._finalizer: Any = None
        self._frames_out = 0
        self._samples_in = 0  # at 16 kHz
        self._finished = False

    @property
    def channels(self) -> int:
        return self._resampler.channels

    @property
    def duration(self) -> float:
        """Seconds of (16 kHz) audio fed so far."""
        return self._samples_in / SAMPLE_RATE

    def start(self) -> None:
        """Start openSMILE now rather than at the first `feed` (the first stream of a process takes
        about 0.3 s to load it): a live source calls this before its clock starts. Idempotent."""
        if self._smile is None and not self._finished:
            self._start()

    def set_t0(self, t0: float) -> None:
        """The session time of the first sample, for a stream made before its first chunk was known;
        only before the first `feed`."""
        if self._samples_in or self._frames_out:
            raise FeatureError(f"t0 = {t0!r} set after audio was fed: set it before the first feed")
        self.t0 = float(t0)

    def _start(self) -> None:
        import weakref

        from opensmile.core.lib import OpenSMILE

        config, _, options = _config_files()
        smile = OpenSMILE()
        smile.initialize(config, options)
        names = [smile.external_sink_get_element_name("extsink", i)
                 for i in range(smile.external_sink_get_num_elements("extsink"))]
        if tuple(names) != AUDIO_NAMES:
            smile.free()
            raise FeatureError(
                f"this openSMILE gives the descriptors {names}, not the 25 eGeMAPSv02 LLDs of the live "
                "profile: install the opensmile version in the project's requirements"
            )
        smile.external_sink_set_callback_ex("extsink", self._collector)
        thread = threading.Thread(target=_run, args=(smile, self._collector), daemon=True, name="opensmile")
        thread.start()
        self._smile, self._thread = smile, thread
        self._finalizer = weakref.finalize(self, _stop, smile, thread)

    def _raise_if_failed(self) -> None:
        if self._collector.error is not None:
            raise FeatureError(f"openSMILE stopped: {self._collector.error}") from self._collector.error

    def _write(self, pcm: np.ndarray) -> None:
        if pcm.size == 0:
            return
        if self._smile is None:
            self._start()
        self._samples_in += pcm.size
        for i in range(0, pcm.size, _BLOCK):
            block = pcm[i : i + _BLOCK].tobytes()
            waited = 0.0
            # openSMILE refuses a block while its ring buffer is full: wait for it to catch up.
            while not self._smile.external_audio_source_write_data("extsource", block):
                self._raise_if_failed()
                if not self._thread.is_alive() or waited > _WRITE_TIMEOUT_S:
                    raise FeatureError(
                        f"openSMILE took no audio for {waited:.0f} s: its thread has stopped; start a new stream"
                    )
                time.sleep(0.002)
                waited += 0.002

    def feed(self, samples: np.ndarray, sample_rate: int | None = None) -> None:
        """Add the next chunk. `sample_rate`, when given, must be the rate the stream was opened with."""
        if self._finished:
            raise FeatureError("this audio stream has finished: start a new AudioFeatureStream")
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise FeatureError(
                f"audio chunk has {sample_rate} Hz, expected {self.sample_rate} (the rate this stream was "
                f"opened with): open the stream with AudioFeatureStream(sample_rate={sample_rate}), or resample"
            )
        self._raise_if_failed()
        self._write(self._resampler.feed(samples))

    def _frames(self, values: np.ndarray) -> Frames:
        idx = self._frames_out + np.arange(values.shape[0])
        self._frames_out += values.shape[0]
        return Frames(self.t0 + idx * FRAME_STEP + FRAME_OFFSET, values, voiced_mask(values))

    def take(self) -> Frames:
        """The frames computed since the last take (possibly none)."""
        self._raise_if_failed()
        return self._frames(self._collector.drain())

    def finish(self) -> Frames:
        """End of input: the remaining frames. The stream cannot be fed afterwards."""
        if self._finished:
            return Frames.empty(len(AUDIO_NAMES))
        self._write(self._resampler.finish())
        self._finished = True
        if self._smile is not None:
            self._smile.external_audio_source_set_eoi("extsource")
            self._thread.join()
            self._finalizer()  # frees openSMILE
            self._raise_if_failed()
        return self._frames(self._collector.drain())

    def close(self) -> None:
        """Stop without flushing (an abandoned stream is stopped the same way when collected)."""
        self._finished = True
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> AudioFeatureStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def extract_audio(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, t0: float = 0.0) -> Frames:
    """The eGeMAPSv02 LLD frames of a whole signal at once (the offline path of `AudioFeatureStream`).

    `samples` is (n,) or (n, channels), int16 PCM or floats in [-1, 1].
    """
    samples = np.asarray(samples)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    stream = AudioFeatureStream(sample_rate, channels, t0)
    stream.feed(samples)
    return Frames.concat([stream.take(), stream.finish()], dim=len(AUDIO_NAMES))


def f0_hz(frames: Frames) -> np.ndarray:
    """F0 in Hz per frame (0 where unvoiced), from eGeMAPS' semitones above 27.5 Hz."""
    st = frames.values[:, AUDIO_NAMES.index("F0semitoneFrom27.5Hz_sma3nz")].astype(np.float64)
    return np.where(st > 0, 27.5 * 2.0 ** (st / 12.0), 0.0)
