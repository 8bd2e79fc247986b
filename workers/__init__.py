"""The processes of Live DMD, one room per kind, and the `dmd` command line.

- `capture/`: sources (file, webcam, microphone) -> a session's streams and window notices
- `asr/`: speech recognition (Whisper, Vosk) -> a session's words and watermark
- `infer/`: window notices -> estimates (DMD, batched across sessions)
- `web/`: `dmd serve`'s app: WebRTC peers (each a capture source), the estimates hub, the pages
- `view/`: `dmd watch`'s terminal view and the session timeline
- `cli/`: the only argument parser
- `wiring.py`: Redis (a URL or an embedded server), signals, the model, the recogniser, workers in
  one process; `pipeline.py`: `dmd run` / `dmd demo` and `dmd serve` with their workers;
  `settings.py`, `metrics.py`: what every room reads

The rooms do not import each other (the web room uses capture: a browser peer is a capture source);
nothing imports `cli/`. See docs/DESIGN.md.
"""
