"""The streaming protocol of Live DMD: what goes through Redis, and how.

- `keys`: key names (`dmd:{sid}:audio`, ..., `dmd:windows`, `dmd:dead`) and session ids
- `messages`, `codec`: the messages on the streams, msgpack with numpy arrays, validation
- `window`: the session clock, windows, `WindowPlanner`, watermarks
- `estimate`: the public estimate (JSON, schema 2), its validation, the EMA
- `connection`: Redis URLs, clients, backoff
- `session`: a session's streams (ids in session time, reading a span back, retention)
- `lifecycle`: a session's start and end events, and an ASR worker's hold on a session
- `consumer`: consumer groups (acks after publishing, claims, dead letters, reconnecting)
- `publish`: publishing estimates once per window, with the EMA kept in Redis

This package imports redis, numpy and msgpack only: never `dmd_model` or `workers`.
"""
