"""Dataset preparation: labelled clips or transcripts -> an MMSA-format pickle in the live feature
profile (`dmd extract`), through the same alignment that serves live windows (see `extract`)."""

from .cache import EXTRACT_VERSION, CachedTextEncoder, default_cache_dir
from .extract import ExtractReport, extract, metadata_path
from .labels import ClipSpec, ExtractError, dataset_labels, read_labels, select_clips, word_windows
from .samples import NOMINAL_WORD_S, Extractor, Failure, Sample, nominal_words, text_window

__all__ = [
    "EXTRACT_VERSION",
    "NOMINAL_WORD_S",
    "CachedTextEncoder",
    "ClipSpec",
    "ExtractError",
    "ExtractReport",
    "Extractor",
    "Failure",
    "Sample",
    "dataset_labels",
    "default_cache_dir",
    "extract",
    "metadata_path",
    "nominal_words",
    "read_labels",
    "select_clips",
    "text_window",
    "word_windows",
]
