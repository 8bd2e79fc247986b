"""The capture room: a source's video and sound in, a session's streams out (`dmd capture`).

- `sources`: what media comes from (a file, a webcam, a microphone, several at once) and `make_source`
- `worker`: `Capture`, which turns a source into a session's Redis streams and window notices
"""

from .sources import (
    CameraSource,
    FileSource,
    MergedSource,
    MicrophoneSource,
    Source,
    SourceError,
    make_source,
    media_time,
)
from .worker import Capture, CaptureStats

__all__ = ["CameraSource", "Capture", "CaptureStats", "FileSource", "MergedSource", "MicrophoneSource", "Source",
           "SourceError", "make_source", "media_time"]
