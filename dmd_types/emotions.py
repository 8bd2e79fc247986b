"""The seven emotions, and how each corpus's labels map into them: the one table of the project.

    from dmd_types import EMOTIONS, emotion_of

    EMOTIONS                          # ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
    emotion_of("ravdess", "02")       # "neutral": RAVDESS calm
    emotion_of("emodb", "L")          # "neutral": EmoDB boredom (see below)
    emotion_of("meld", "joy")         # "happy"

The order of `EMOTIONS` is the order of every emotion vector: a model's logits, an estimate's
probabilities, a confusion matrix's rows and columns.

| corpus  | its label -> ours |
|---------|-------------------|
| RAVDESS | 01 neutral, 02 calm -> neutral; 03 happy; 04 sad; 05 angry; 06 fearful; 07 disgust ->   |
|         | disgusted; 08 surprised                                                                 |
| EmoDB   | N neutral, L boredom -> neutral; F happiness -> happy; T sadness -> sad; W anger (Wut) ->  |
|         | angry; A fear (Angst) -> fearful; E disgust (Ekel) -> disgusted                          |
| MELD    | neutral; joy -> happy; sadness -> sad; anger -> angry; fear -> fearful; disgust ->         |
|         | disgusted; surprise -> surprised                                                          |
| FER2013 | angry, disgust, fear, happy, sad, surprise, neutral (the face expert's output order) |
| IEMOCAP | MulT's four: neutral, happy, sad, angry |

Calm and boredom have no class of their own among the seven. Calm is RAVDESS's second neutral (the
actors read the same sentences with low arousal and no valence). Boredom is EmoDB's low-arousal,
flat-prosody class; mapped to sad it would teach that a flat voice is sadness, and sadness in EmoDB
is its own class, so it goes to neutral as well, like calm. Both keep their corpus label in the
converted label files (`corpus_label`), so a run that wants them out can drop them.
"""

from __future__ import annotations

from collections.abc import Mapping

EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")
EMOTION_INDEX: Mapping[str, int] = {name: k for k, name in enumerate(EMOTIONS)}

CORPUS_EMOTIONS: Mapping[str, Mapping[str, str]] = {
    "ravdess": {"01": "neutral", "02": "neutral", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
                "07": "disgusted", "08": "surprised"},
    "emodb": {"N": "neutral", "L": "neutral", "F": "happy", "T": "sad", "W": "angry", "A": "fearful",
              "E": "disgusted"},
    "meld": {"neutral": "neutral", "joy": "happy", "sadness": "sad", "anger": "angry", "fear": "fearful",
             "disgust": "disgusted", "surprise": "surprised"},
    "fer2013": {"angry": "angry", "disgust": "disgusted", "fear": "fearful", "happy": "happy", "sad": "sad",
                "surprise": "surprised", "neutral": "neutral"},
    "iemocap": {"neutral": "neutral", "happy": "happy", "sad": "sad", "angry": "angry"},
}

# The corpus's own names of its labels, for the label files and the docs.
CORPUS_LABEL_NAMES: Mapping[str, Mapping[str, str]] = {
    "ravdess": {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
                "07": "disgust", "08": "surprised"},
    "emodb": {"N": "neutral", "L": "boredom", "F": "happiness", "T": "sadness", "W": "anger", "A": "fear",
              "E": "disgust"},
}


def emotion_of(corpus: str, label: str) -> str:
    """One of `EMOTIONS` for `corpus`'s label `label`; ValueError naming both if there is none."""
    table = CORPUS_EMOTIONS.get(corpus.lower())
    if table is None:
        raise ValueError(f"unknown corpus {corpus!r}: expected one of {', '.join(sorted(CORPUS_EMOTIONS))}")
    key = label.strip()
    found = table.get(key, table.get(key.lower()))
    if found is None:
        raise ValueError(f"{corpus} label {label!r} has no emotion: expected one of {', '.join(table)}")
    return found


def emotion_index(name: str) -> int:
    """The position of emotion `name` in `EMOTIONS`; ValueError naming the seven if it is not one."""
    try:
        return EMOTION_INDEX[name.strip().lower()]
    except KeyError:
        raise ValueError(f"emotion {name!r} is not one of {', '.join(EMOTIONS)}") from None
