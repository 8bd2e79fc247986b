"""Whisper's CPU per session (issue 16): batching the passes of several sessions, the no-speech
probability, and the engine's settings. Prints JSON; never asserts a time.

The speech: a programme per session of the demo clip's audio (five LibriVox utterances), RAVDESS
sentences and the CMU-MOSI clips from ../shared/data (the demo clip alone when that folder is
absent), 0.7 s of silence after each; each session starts at another utterance, so the passes of a
batch differ as live sessions' do. Runs alternate between the modes; medians over the repeats.

batching: each session's programme is streamed once through a `WhisperEngine` (its defaults, a pass
per second of audio, unpaced), and each pass's audio and prompt recorded. Then round r runs pass r
of every session, in one of these modes:

- `single`: as the ASR worker runs them: S threads at once, each its own pass (mel, encode,
  generate, align), the model shared with `num_workers=S` and one thread a pass;
- `batched`: S threads make the mels, then one batch: one `encode` of the mels padded to the longest,
  one `generate` with the prompts cut to the shortest (CTranslate2 wants <|startoftranscript|> at the
  same place in every prompt of a batch), one `align`;
- `bucketed`: as batched, but passes with and without a prompt apart, and windows within 2 s of the
  shortest (the rest in further batches), so that padding and cut prompts change less.

Per S and mode: CPU seconds per second of audio per session (the process's CPU time, times the
passes per second of audio), CPU per pass, the wall time of a round (a pass's latency when the
passes of all sessions fall due together), and the hypotheses against the single ones (passes word
for word the same; word edit rate). `stages` splits the CPU of a pass into encode / generate /
align, alone against in one batch (one thread, one round after another).

no-speech: what Whisper's no-speech probability costs. On the recorded passes of two programmes
(from the first utterance and from the middle one), `generate` with the probability on every pass
(as the engine asks for it) against without it, plus a one-token decode for it only where the log
probability is under -1 (the only passes where the engine's no-speech test can drop a hypothesis):
CPU per pass, and whether the tokens and the drops are the same.

cuts: the whole engine, unpaced, on the same two programmes, with each variant of its settings: CPU
per second of audio, passes per second of audio and the audio a pass hears, word error rate against
the transcripts, how long after a word's end it is committed (audio seconds: its delay to the words
stream), and the share of a window's words committed by the window's end + 0.25 s (`asr.grace_s`:
what the inference worker finds when it reads the window).

    python bench/whisper_batch.py batching [--sessions 1 2 4] [--repeats 3] [--seconds 40]
    python bench/whisper_batch.py no-speech [--repeats 3]
    python bench/whisper_batch.py cuts [--variants today step_1.5 ...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dmd_model.features.media import read_audio
from dmd_types import normalise_text
from workers.asr.engine import word_error_rate
from workers.asr.whisper import _APPEND, _PREPEND, WhisperEngine, _compression_ratio, load_whisper_model

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
DEMO = ROOT / "workers" / "assets" / "demo.mp4"
DEMO_UTTERANCES = ("0880", "0890", "0930", "0870", "0920")  # scripts/make_demo_clip.py's order
RAVDESS = {"01": "kids are talking by the door", "02": "dogs are sitting by the door"}
GAP_S = 0.7
CHUNK = 1600  # 0.1 s, the capture's chunk


@dataclass
class Utterance:
    name: str
    pcm: np.ndarray
    reference: list[str] | None  # normalised words, None when unknown


def utterances(ravdess: int) -> list[Utterance]:
    """The demo clip, then (when ../shared/data is here) RAVDESS sentences and the CMU-MOSI clips."""
    librivox = {}
    if (DATA / "speech" / "transcription").is_file():
        for line in (DATA / "speech" / "transcription").read_text().splitlines():
            m = re.match(r"<s> (.*) </s> \(.*-(\d+)\)", line.strip())
            if m:
                librivox[m.group(2)] = m.group(1)
    demo_ref = (normalise_text(" ".join(librivox[u] for u in DEMO_UTTERANCES))
                if all(u in librivox for u in DEMO_UTTERANCES) else None)
    out = [Utterance("demo", read_audio(DEMO)[0], demo_ref)]
    actors = sorted((DATA / "emotion_speech" / "ravdess").glob("Actor_*"))
    for k, actor in enumerate(actors[:ravdess]):
        files = sorted(actor.glob("*.flac"))
        f = files[(7 * k) % len(files)]  # another emotion and sentence for each actor
        out.append(Utterance(f.stem, read_audio(f)[0], normalise_text(RAVDESS[f.stem.split("-")[4]])))
    manifest = DATA / "clips" / "mosi" / "manifest.csv"
    if manifest.is_file():
        with manifest.open() as f:
            for row in csv.DictReader(f):
                out.append(Utterance(row["id"], read_audio(manifest.parent / row["file"])[0],
                                     normalise_text(row["text"])))
    return out


def programme(parts: list[Utterance], first: int, seconds: float | None) -> tuple[np.ndarray, list]:
    """The utterances from `first` on (wrapping round), with GAP_S of silence after each: the PCM and
    each utterance's (start, end, reference)."""
    gap = np.zeros(int(GAP_S * 16000), np.int16)
    pcm, spans, t = [], [], 0.0
    for k in range(len(parts)):
        u = parts[(first + k) % len(parts)]
        pcm += [u.pcm, gap]
        spans.append((t, t + len(u.pcm) / 16000, u.reference))
        t += (len(u.pcm) + len(gap)) / 16000
    audio = np.concatenate(pcm)
    if seconds:
        audio = audio[:int(seconds * 16000)]
        spans = [s for s in spans if s[1] <= len(audio) / 16000]
    return audio, spans


def errors(words: list, spans: list) -> tuple[float, int]:
    """Word errors against the references (words outside every utterance are insertions; words after
    the last whole utterance of a cut programme are left out), and the number of reference words."""
    errs, total = 0.0, 0
    limit = max((b for _, b, _ in spans), default=0.0) + GAP_S
    words = [w for w in words if (w.start + w.end) / 2 <= limit]
    inside = set()
    for a, b, ref in spans:
        said = [i for i, w in enumerate(words) if a - 0.3 <= (w.start + w.end) / 2 <= b + 0.3]
        inside.update(said)
        if ref is not None:
            errs += word_error_rate(ref, [words[i].text for i in said]) * len(ref)
            total += len(ref)
    return errs + (len(words) - len(inside)), total


# --- batching ----------------------------------------------------------------------------------------

TODAY = {"step_s": 1.0, "trim_sentence_s": 6.0, "max_buffer_s": 15.0, "prompt_words": 32}  # the defaults


class _Recording(WhisperEngine):
    """An engine that keeps each pass's audio and prompt, and its words."""

    def __init__(self, model: object) -> None:
        super().__init__(model, max_cpu=None, **TODAY)
        self.calls: list[tuple[np.ndarray, str, object]] = []

    def _transcribe_fit(self, audio: np.ndarray, prompt: str) -> object:
        words = super()._transcribe_fit(audio, prompt)
        self.calls.append((audio.copy(), prompt, words))
        return words


def record_passes(model: object, pcm: np.ndarray) -> list[tuple[np.ndarray, str, object]]:
    engine = _Recording(model)
    for k in range(0, len(pcm), CHUNK):
        engine.feed(pcm[k:k + CHUNK], k / 16000)
        engine.take()
    engine.finish()
    return engine.calls


@dataclass
class Prepared:
    features: np.ndarray  # the buffer's log-mel
    window: int  # mel frames for the encoder: the buffer and a second more, in whole seconds
    previous: list[int]  # the prompt's tokens
    budget: int  # a hypothesis with this many tokens is a repetition loop

    @property
    def frames(self) -> int:
        return int(self.features.shape[-1])


class Passes:
    """The engine's pass (`WhisperEngine._transcribe_fit`, encoder window "fit"), step for step, for
    one pass or a batch of passes; `cpu` adds up the CPU time of each stage."""

    def __init__(self, model: object) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.model = model
        self.tok = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
        self.suppress = list(get_suppressed_tokens(self.tok, [-1]))
        self.cpu = {"encode": 0.0, "generate": 0.0, "align": 0.0}

    def prepare(self, audio: np.ndarray, prompt: str) -> Prepared | None:
        features = self.model.feature_extractor(audio)
        frames = features.shape[-1] - 1
        if frames < 10:
            return None
        window = min(3000, int(np.ceil((frames + 100) / 100) * 100))
        previous = self.tok.encode(" " + prompt.strip())[-(self.model.max_length // 2 - 1):] if prompt.strip() else []
        return Prepared(features[:, :frames], window, previous, int(6 * len(audio) / 16000) + 8)

    def run(self, batch: list[Prepared]) -> list[object]:
        """One batch: the mels padded to the longest window, the prompts cut to the shortest."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import merge_punctuations

        model, tok = self.model, self.tok
        t = time.process_time()
        encoded = model.encode(np.stack([pad_or_trim(p.features, max(q.window for q in batch)) for p in batch]))
        t = self._count("encode", t)
        keep = min(len(p.previous) for p in batch)
        sequence = [*tok.sot_sequence, tok.no_timestamps]
        heads = [[tok.sot_prev, *p.previous[len(p.previous) - keep:], *sequence] if keep else sequence for p in batch]
        results = model.model.generate(encoded, heads, beam_size=1, return_scores=True, return_no_speech_prob=True,
                                       max_length=min(model.max_length, max(len(h) + p.budget
                                                                            for h, p in zip(heads, batch))),
                                       suppress_blank=True, suppress_tokens=self.suppress)
        t = self._count("generate", t)
        out: list[object] = []
        texts: dict[int, list[int]] = {}
        for i, (p, result) in enumerate(zip(batch, results)):
            tokens = [x for x in result.sequences_ids[0] if x < tok.eot]
            loop = len(tokens) >= p.budget or _compression_ratio(tok.decode(tokens)) > 2.4
            if loop or (result.no_speech_prob > 0.6 and result.scores[0] < -1.0):  # as the engine drops them
                out.append(None)
            else:
                out.append([])
                if tokens:
                    texts[i] = tokens
        if texts:
            rows = list(texts)
            if len(rows) < len(batch):
                import ctranslate2

                encoded = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.asarray(encoded)[rows]))
            alignments = model.find_alignment(tok, [texts[i] for i in rows], encoded, [batch[i].frames for i in rows])
            for i, alignment in zip(rows, alignments):
                merge_punctuations(alignment, _PREPEND, _APPEND)
                out[i] = [(w["word"], float(w["start"]), float(w["end"]), float(w["probability"]))
                          for w in alignment if w["word"]]
        self._count("align", t)
        return out

    def _count(self, stage: str, t: float) -> float:
        now = time.process_time()
        self.cpu[stage] += now - t
        return now


def buckets(batch: list[Prepared], max_pad: int = 200) -> list[list[int]]:
    """Passes with and without a prompt apart; windows within `max_pad` mel frames of the shortest."""
    order = sorted(range(len(batch)), key=lambda i: (bool(batch[i].previous), batch[i].window))
    out: list[list[int]] = []
    for i in order:
        first = batch[out[-1][0]] if out else None
        if first and bool(first.previous) == bool(batch[i].previous) and batch[i].window - first.window <= max_pad:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def replay(sessions: int, mode: str, recorded: list[list], passes_per_audio_s: float) -> dict:
    model = load_whisper_model(None, cpu_threads=1, num_workers=sessions)
    runner = Passes(model)
    rounds = min(len(r) for r in recorded)
    hypotheses: list[list] = []
    walls: list[float] = []
    batches = 0
    load = os.getloadavg()

    def alone(call: tuple) -> object:
        prepared = runner.prepare(call[0], call[1])
        return runner.run([prepared])[0] if prepared else []

    with ThreadPoolExecutor(sessions) as pool:
        cpu0 = time.process_time()
        for r in range(rounds):
            calls = [recorded[i][r] for i in range(sessions)]
            start = time.perf_counter()
            if mode == "single":
                out = list(pool.map(alone, calls))
            else:
                prepared = list(pool.map(lambda call: runner.prepare(call[0], call[1]), calls))
                out = [[] for _ in calls]
                ready = [i for i, p in enumerate(prepared) if p is not None]
                groups = [ready] if mode == "batched" else [[ready[j] for j in g]
                                                           for g in buckets([prepared[i] for i in ready])]
                for group in groups:
                    batches += 1
                    for i, words in zip(group, runner.run([prepared[i] for i in group])):
                        out[i] = words
            walls.append(time.perf_counter() - start)
            hypotheses.append(out)
        cpu = time.process_time() - cpu0
    per_pass = cpu / (rounds * sessions)
    return {"sessions": sessions, "mode": mode, "loadavg_before": [round(x, 2) for x in load], "rounds": rounds,
            "cpu_per_audio_s_per_session": round(per_pass * passes_per_audio_s, 4),
            "cpu_per_pass_ms": round(1000 * per_pass, 1),
            "round_ms": {"p50": pct(walls, 0.5), "p95": pct(walls, 0.95)},
            "batches_per_round": round(batches / rounds, 2) if mode != "single" else None,
            "hypotheses": hypotheses}


def stages(sessions: int, recorded: list[list]) -> dict:
    """CPU per pass by stage: each pass alone, then the same passes in one batch (one thread)."""
    model = load_whisper_model(None, cpu_threads=1, num_workers=sessions)
    alone, together = Passes(model), Passes(model)
    n = 0
    for r in range(min(len(x) for x in recorded)):
        prepared = [alone.prepare(x[r][0], x[r][1]) for x in recorded]
        if any(p is None for p in prepared):
            continue
        n += len(prepared)
        for p in prepared:
            alone.run([p])
        together.run(prepared)
    return {mode: {k: round(1000 * v / max(1, n), 1) for k, v in p.cpu.items()}
            for mode, p in (("alone_ms", alone), ("batched_ms", together))}


def bench_batching(args: argparse.Namespace, parts: list[Utterance]) -> dict:
    model = load_whisper_model(None, cpu_threads=1, num_workers=max(args.sessions))
    firsts = sorted({i * len(parts) // s for s in args.sessions for i in range(s)})
    programmes = {f: programme(parts, f, args.seconds) for f in firsts}
    recorded = {f: record_passes(model, programmes[f][0]) for f in firsts}
    modes = ("single", "batched", "bucketed")
    runs, split = [], {}
    for sessions in args.sessions:
        mine = [i * len(parts) // sessions for i in range(sessions)]
        rate = float(np.mean([len(recorded[f]) / (len(programmes[f][0]) / 16000) for f in mine]))
        split[sessions] = []
        for _ in range(args.repeats):
            for mode in modes:
                run = replay(sessions, mode, [recorded[f] for f in mine], rate)
                print(json.dumps({k: v for k, v in run.items() if k != "hypotheses"}), file=sys.stderr, flush=True)
                runs.append(run)
            split[sessions].append(stages(sessions, [recorded[f] for f in mine]))
    # the replay's single passes are the engine's own: the same words, pass for pass
    check = [run["hypotheses"][r][i] == recorded[f][r][2] for run in runs if run["mode"] == "single"
             for i, f in enumerate(i * len(parts) // run["sessions"] for i in range(run["sessions"]))
             for r in range(run["rounds"])]
    table = []
    for sessions in args.sessions:
        mine = [r for r in runs if r["sessions"] == sessions]
        row: dict = {"sessions": sessions, "passes_per_session": mine[0]["rounds"]}
        single = next(r for r in mine if r["mode"] == "single")["hypotheses"]
        for mode in modes:
            rs = [r for r in mine if r["mode"] == mode]
            row[mode] = {"cpu_per_audio_s_per_session": median([r["cpu_per_audio_s_per_session"] for r in rs]),
                         "cpu_per_pass_ms": median([r["cpu_per_pass_ms"] for r in rs]),
                         "round_p50_ms": median([r["round_ms"]["p50"] for r in rs]),
                         "round_p95_ms": median([r["round_ms"]["p95"] for r in rs]),
                         "each_cpu_per_pass_ms": [r["cpu_per_pass_ms"] for r in rs]}
            if mode != "single":
                row[mode]["batches_per_round"] = rs[0]["batches_per_round"]
                row[mode]["hypotheses_against_single"] = compare(single, rs[0]["hypotheses"])
                row[mode]["cpu_saved"] = round(1 - row[mode]["cpu_per_pass_ms"] / row["single"]["cpu_per_pass_ms"], 3)
        row["stages"] = {m: {k: median([s[m][k] for s in split[sessions]]) for k in split[sessions][0][m]}
                         for m in split[sessions][0]}
        table.append(row)
    return {"bench": "whisper_batch batching", "repeats": args.repeats, "seconds": args.seconds,
            "single_matches_engine": f"{sum(check)} of {len(check)} passes", "table": table}


def compare(single: list[list], other: list[list]) -> dict:
    """Passes whose words are the same word for word, and the word edit rate, against `single`."""
    same = total = 0
    errs, words = 0.0, 0
    for a_round, b_round in zip(single, other):
        for a, b in zip(a_round, b_round):
            total += 1
            same += [w[0] for w in a or []] == [w[0] for w in b or []]
            ref, hyp = normalise_text(" ".join(w[0] for w in a or [])), normalise_text(" ".join(w[0] for w in b or []))
            errs += word_error_rate(ref, hyp) * len(ref) if ref else len(hyp)
            words += len(ref)
    return {"passes": total, "same": same, "word_edit_rate": round(errs / max(1, words), 4)}


# --- the no-speech probability ------------------------------------------------------------------

def bench_no_speech(args: argparse.Namespace, parts: list[Utterance]) -> dict:
    """`generate` with Whisper's no-speech probability on every pass against without it, plus a
    one-token decode for it where the log probability is under -1."""
    model = load_whisper_model(None, cpu_threads=1, num_workers=1)
    runner = Passes(model)
    calls = [c for f in (0, len(parts) // 2) for c in record_passes(model, programme(parts, f, args.seconds)[0])]
    prepared = [(p, model.encode(np.expand_dims(pad(p), 0))) for p in (runner.prepare(a, b) for a, b, _ in calls) if p]
    tok = runner.tok
    sequence = [*tok.sot_sequence, tok.no_timestamps]
    options = {"beam_size": 1, "return_scores": True, "suppress_blank": True, "suppress_tokens": runner.suppress}
    before, after, low, same = [], [], 0, 0
    for _ in range(args.repeats):
        t_before = t_after = 0.0
        for i, (p, encoded) in enumerate(prepared):
            head = [tok.sot_prev, *p.previous, *sequence] if p.previous else sequence
            limit = min(model.max_length, len(head) + p.budget)
            for first in ((True, False) if i % 2 else (False, True)):  # either one first, in turn
                t = time.process_time()
                if first:
                    full = model.model.generate(encoded, [head], max_length=limit, return_no_speech_prob=True,
                                                **options)[0]
                    t_before += time.process_time() - t
                    continue
                plain = model.model.generate(encoded, [head], max_length=limit, **options)[0]
                no_speech = None
                if plain.scores[0] < -1.0:
                    no_speech = model.model.generate(encoded, [head], max_length=len(head) + 1,
                                                     return_no_speech_prob=True, **options)[0].no_speech_prob
                t_after += time.process_time() - t
            if len(before) == 0:
                low += no_speech is not None
                same += (plain.sequences_ids == full.sequences_ids
                         and (full.no_speech_prob > 0.6 and full.scores[0] < -1.0)
                         == (no_speech is not None and no_speech > 0.6))
        before.append(1000 * t_before / len(prepared))
        after.append(1000 * t_after / len(prepared))
    return {"bench": "whisper_batch no-speech", "passes": len(prepared), "repeats": args.repeats,
            "generate_ms_per_pass": {"before": median(before), "after": median(after),
                                     "each_before": [round(x, 1) for x in before],
                                     "each_after": [round(x, 1) for x in after]},
            "passes_with_log_probability_under_minus_1": low,
            "same_tokens_and_same_drop": f"{same} of {len(prepared)}"}


def pad(p: Prepared) -> np.ndarray:
    from faster_whisper.audio import pad_or_trim

    return pad_or_trim(p.features, p.window)


# --- cuts --------------------------------------------------------------------------------------------

VARIANTS = {
    "today": TODAY,
    "step_1.25": {"step_s": 1.25},
    "step_1.5": {"step_s": 1.5},
    "step_2": {"step_s": 2.0},
    "prompt_16": {"prompt_words": 16},
    "trim_4": {"trim_sentence_s": 4.0},
    "trim_5": {"trim_sentence_s": 5.0},
    "max_10": {"max_buffer_s": 10.0},
    "trim_3_max_8": {"trim_sentence_s": 3.0, "max_buffer_s": 8.0},
}
GRACE_S = 0.25  # asr.grace_s: how long after a window's end the inference worker waits for its words


class _Counting(WhisperEngine):
    """An engine that adds up the audio its passes hear."""

    heard = 0.0

    def _transcribe_fit(self, audio: np.ndarray, prompt: str) -> object:
        self.heard += len(audio) / 16000
        return super()._transcribe_fit(audio, prompt)


def stream_words(engine: WhisperEngine, pcm: np.ndarray) -> tuple[list, list[float]]:
    """The words of `pcm` fed in 0.1 s chunks, and the audio time at which each was committed."""
    words, committed = [], []
    for k in range(0, len(pcm), CHUNK):
        engine.feed(pcm[k:k + CHUNK], k / 16000)
        got, _ = engine.take()
        words += got
        committed += [min(len(pcm), k + CHUNK) / 16000] * len(got)
    got, _ = engine.finish()
    return words + got, committed + [len(pcm) / 16000] * len(got)


def in_time(words: list, committed: list[float], end: float, length: float = 3.0, hop: float = 0.5) -> tuple[int, int]:
    """Over the windows of `length` every `hop` up to `end`: the words a window overlaps, and those of
    them committed by its end plus GRACE_S (what the inference worker finds when it reads it)."""
    found = ready = 0
    for k in range(int(length / hop), int(end / hop) + 1):
        t_end = k * hop
        mine = [c for w, c in zip(words, committed) if w.end > t_end - length and w.start < t_end]
        found += len(mine)
        ready += sum(c <= t_end + GRACE_S for c in mine)
    return ready, found


def bench_cuts(args: argparse.Namespace, parts: list[Utterance]) -> dict:
    model = load_whisper_model(None, cpu_threads=1, num_workers=1)
    programmes = [programme(parts, f, args.seconds) for f in (0, len(parts) // 2)]
    audio_s = sum(len(p[0]) for p in programmes) / 16000
    runs: dict[str, list[dict]] = {v: [] for v in args.variants}
    for _ in range(args.repeats):
        for name in args.variants:
            options = {**TODAY, **VARIANTS[name]}
            load = os.getloadavg()
            engines = [_Counting(model, max_cpu=None, **options) for _ in programmes]
            cpu0 = time.process_time()
            found = [stream_words(e, pcm) for e, (pcm, _) in zip(engines, programmes)]
            cpu = time.process_time() - cpu0
            errs, total = zip(*(errors(words, spans) for (words, _), (_, spans) in zip(found, programmes)))
            delays = [c - w.end for words, committed in found for w, c in zip(words, committed)]
            ready, window_words = map(sum, zip(*(in_time(w, c, len(pcm) / 16000)
                                                 for (w, c), (pcm, _) in zip(found, programmes))))
            passes = sum(e.stats()["passes"] for e in engines)
            run = {"variant": name, "loadavg_before": [round(x, 2) for x in load],
                   "cpu_per_audio_s": round(cpu / audio_s, 4), "passes_per_audio_s": round(passes / audio_s, 3),
                   "audio_s_per_pass": round(sum(e.heard for e in engines) / max(1, passes), 2),
                   "wer": round(sum(errs) / max(1, sum(total)), 4), "words": sum(len(w) for w, _ in found),
                   "word_delay_s": {"p50": round(float(np.median(delays)), 2),
                                    "p95": round(float(np.percentile(delays, 95)), 2)} if delays else None,
                   "window_words_in_time": round(ready / max(1, window_words), 3),
                   "text": [[w.text for w in words] for words, _ in found]}
            print(json.dumps({k: v for k, v in run.items() if k != "text"}), file=sys.stderr, flush=True)
            runs[name].append(run)
    table = []
    base = runs.get("today", [None])[0]
    for name, rs in runs.items():
        row = {"variant": name, "options": VARIANTS[name],
               "cpu_per_audio_s": median([r["cpu_per_audio_s"] for r in rs]),
               "each_cpu": [r["cpu_per_audio_s"] for r in rs],
               **{k: rs[0][k] for k in ("passes_per_audio_s", "audio_s_per_pass", "wer", "words", "word_delay_s",
                                        "window_words_in_time")}}
        if base is not None:
            pairs = list(zip(base["text"], rs[0]["text"]))
            row["words_against_today"] = round(sum(word_error_rate(a, b) * len(a) for a, b in pairs)
                                               / max(1, sum(len(a) for a, _ in pairs)), 4)
        table.append(row)
    if base is not None:
        for row in table:
            row["cpu_saved"] = round(1 - row["cpu_per_audio_s"] / table[0]["cpu_per_audio_s"], 3)
    return {"bench": "whisper_batch cuts", "repeats": args.repeats, "audio_s": round(audio_s, 1), "table": table}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1)


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return round(float(np.median(values)), 4) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", choices=("batching", "no-speech", "cuts"))
    ap.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4], help="batching: S (default 1 2 4)")
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of each mode (default 3)")
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
                    help="cuts: the engine's settings to try ('today' first: the others are compared with it)")
    ap.add_argument("--ravdess", type=int, default=6, help="RAVDESS sentences in the programme (default 6)")
    ap.add_argument("--seconds", type=float, default=None, help="cut each programme to this long")
    args = ap.parse_args()
    from hostinfo import cpu_model

    parts = utterances(args.ravdess)
    result = {"batching": bench_batching, "no-speech": bench_no_speech, "cuts": bench_cuts}[args.bench](args, parts)
    print(json.dumps({**result, "utterances": [p.name for p in parts],
                      "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")},
                      "loadavg_after": [round(x, 2) for x in os.getloadavg()]}, indent=1))


if __name__ == "__main__":
    main()
