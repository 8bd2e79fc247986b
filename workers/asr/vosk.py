"""Vosk (Kaldi) ASR: a configured model folder, words with times, partial results, a watermark.

A `KaldiRecognizer` with `SetWords(True)` decodes as audio comes and ends an utterance at a pause
(Kaldi's endpoint rules: about 0.5 s of silence after speech, 5 s with nothing said, 20 s at
most). Only final results are committed; the partial result (with word times, `SetPartialWords`)
is for display (`partial`).

Watermark: at a final result, the end of the audio fed (the utterance is closed; the next words
come from later audio). Between finals it is held where sound starts again after the last final
(a loudness gate, `LoudnessGate`) and at the first partial word; while all is quiet since the last
final it follows the audio (less 0.3 s), so windows in silence need not wait for Kaldi's endpoint
(up to 5 s of silence). The partial result alone cannot say this: it lags the audio by up to two
seconds.

Models: `--vosk-model` names a folder (`vosk-model-small-en-us-0.15` as unpacked from
alphacephei.com, or any Vosk model) or the name of one installed by `dmd models install` (see
`workers.models`). Loaded models are shared by the sessions of a process.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from dmd_types import Word

from .engine import Engine, LoudnessGate
from .models import find_model, models_dir

VOSK_MODEL_ENV = "DMD_VOSK_MODEL"


class VoskModelError(RuntimeError):
    """A Vosk model cannot be found or loaded; the message says what to do."""


def is_vosk_model(path: Path) -> bool:
    """Whether `path` looks like a Vosk model folder (an acoustic model and a graph or a conf)."""
    path = Path(path)
    return path.is_dir() and ((path / "am" / "final.mdl").is_file() or (path / "final.mdl").is_file())


def resolve_vosk_model(name_or_path: str | os.PathLike[str]) -> Path:
    """The folder of a Vosk model given as a path or as the name of an installed model."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        if not is_vosk_model(path):
            raise VoskModelError(f"{path} is not a Vosk model: expected am/final.mdl (or final.mdl) inside; give the "
                                 f"folder that a Vosk model zip unpacks to")
        return path
    installed = find_model(text)
    if installed is not None and is_vosk_model(installed):
        return installed
    raise VoskModelError(f"Vosk model {text!r} not found: it is neither a folder nor a model installed in "
                         f"{models_dir()}. Install one with `dmd models install vosk-model-small-en-us-0.15` "
                         f"(needs internet), or give the folder of an unpacked Vosk model")


def configured_vosk_model(arg: str | None = None) -> Path | None:
    """The Vosk model configured by `--vosk-model` or $DMD_VOSK_MODEL, resolved; None if neither is set."""
    value = arg or os.environ.get(VOSK_MODEL_ENV)
    return resolve_vosk_model(value) if value else None


@functools.lru_cache(maxsize=4)
def load_vosk_model(path: str) -> Any:
    """A loaded `vosk.Model`, shared by every session of the process."""
    try:
        import vosk
    except ImportError:
        raise VoskModelError("the Vosk engine needs the vosk package: pip install vosk") from None
    vosk.SetLogLevel(-1)
    try:
        return vosk.Model(str(path))
    except Exception as exc:  # vosk raises a bare Exception("Failed to create a model")
        raise VoskModelError(f"Vosk could not load the model in {path}: {exc}. Check that the folder is a complete "
                             f"Vosk model (am/, conf/, graph/)") from exc


class VoskEngine(Engine):
    """Vosk's KaldiRecognizer as an engine. `model` is a path (loaded once per process) or a loaded
    `vosk.Model`."""

    name = "vosk"

    def __init__(self, model: str | os.PathLike[str] | Any, *, fill_gap_s: float = 1.0) -> None:
        super().__init__(fill_gap_s=fill_gap_s)
        if isinstance(model, (str, os.PathLike)):
            model = load_vosk_model(str(resolve_vosk_model(model)))
        self.model = model
        self._recognizer: Any = None
        self._partial: list[dict[str, Any]] = []
        self._partial_text = ""
        self._finals: list[Word] = []
        self._final_end = 0.0
        self._gate = LoudnessGate(0.0)

    def _new_recognizer(self) -> Any:
        import vosk

        recognizer = vosk.KaldiRecognizer(self.model, 16000)
        recognizer.SetWords(True)
        recognizer.SetPartialWords(True)
        return recognizer

    def _feed(self, pcm: np.ndarray) -> None:
        if self._recognizer is None or not self.samples:
            self._recognizer = self._new_recognizer()
            self._final_end = self.origin or 0.0
            self._gate = LoudnessGate(self._final_end)
        self._gate.feed(pcm)
        if self._recognizer.AcceptWaveform(pcm.tobytes()):
            self._final(json.loads(self._recognizer.Result()), self.audio_end + len(pcm) / 16000)
        else:
            partial = json.loads(self._recognizer.PartialResult())
            self._partial = partial.get("partial_result") or []
            self._partial_text = partial.get("partial", "")

    def _final(self, result: dict[str, Any], end: float) -> None:
        origin = self.origin or 0.0
        for w in result.get("result") or ():
            self._finals.append(Word(w["word"], origin + float(w["start"]), origin + float(w["end"]),
                                          float(w.get("conf", 1.0))))
        self._partial, self._partial_text = [], ""
        self._final_end = end
        self._gate.forget_before(end - 1.0)
        self._stats.passes += 1

    @property
    def partial(self) -> str:
        return self._partial_text

    def _take(self) -> tuple[list[Word], float]:
        words, self._finals = self._finals, []
        end = self.audio_end
        candidate = end - 0.3  # Kaldi may be starting a word in the last frames
        onset = self._gate.onset_after(self._final_end)
        if onset is not None:
            candidate = min(candidate, onset - 0.2)
        if self._partial:
            candidate = min(candidate, (self.origin or 0.0) + float(self._partial[0]["start"]) - 0.2)
        return words, max(self._final_end, candidate)

    def _finish(self) -> tuple[list[Word], float]:
        if self._recognizer is not None:
            self._final(json.loads(self._recognizer.FinalResult()), self.audio_end)
            self._recognizer = None
        words, self._finals = self._finals, []
        return words, self.audio_end
