"""The ASR room: a session's audio in, its words and watermark out (`dmd asr`).

- `engine`: the streaming engine shape (feed, take, finish), the watermark, word error rate
- `whisper`, `vosk`: the two recognisers; `factory`: choosing and loading one
- `worker`: `AsrSession` (one session, resumable) and `AsrWorker` (a fleet member on `dmd:sessions`)
- `models`: installing speech models (`dmd models`)
"""
