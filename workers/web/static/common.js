// Shared by the session page and the dashboard: the token, API calls, drawing (sentiment and emotions).
"use strict";

const DMD = (() => {
  const params = new URLSearchParams(window.location.search);
  const token = params.get("token") || "";
  const MODALITIES = ["text", "audio", "visual"];
  const SHORT = { text: "T", audio: "A", visual: "V" };
  const COLOURS = { negative: "#d64545", neutral: "#8a8f98", positive: "#2f9e5b" };
  // dmd_types.EMOTIONS, in its order, and one colour each (the same as workers/view/timeline.py)
  const EMOTIONS = ["neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised"];
  const EMOTION_COLOURS = { neutral: "#9ca3af", happy: "#f2b705", sad: "#3b6fb6", angry: "#d64545",
    fearful: "#8a5cc2", disgusted: "#2e8b57", surprised: "#f08c2e" };

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, options = {}) {
    const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
    if (token) headers["Authorization"] = "Bearer " + token;
    const response = await fetch(path, Object.assign({}, options, { headers }));
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      throw new ApiError(response.status, (body && body.error) || `${path}: HTTP ${response.status}`);
    }
    return body;
  }

  function withToken(path) {
    return token ? `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : path;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }

  // position of a sentiment in [-3, 3] as a fraction of a bar
  function fraction(value) { return (Math.max(-3, Math.min(3, value)) + 3) / 6; }

  function fmt(value, digits = 2) {
    if (value === null || value === undefined || Number.isNaN(value)) return "-";
    return (value >= 0 ? "+" : "") + value.toFixed(digits);
  }

  // A canvas at the screen's pixel ratio, cleared: its context and its size in CSS pixels.
  function prepare(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    return { g, w, h };
  }

  // The time axis of a timeline: the last `spanSeconds` at most; a young session fills the width
  // from its first estimate.
  function timeAxis(estimates, spanSeconds) {
    const tFirst = estimates.length ? estimates[0].t_end : 0;
    const tEnd = estimates.length ? estimates[estimates.length - 1].t_end : 0;
    const span = Math.min(spanSeconds, Math.max(10, tEnd - tFirst + 2));
    const t0 = Math.max(0, Math.min(tFirst - 1, tEnd - span));
    return { t0, t1: t0 + Math.max(span, tEnd - t0 + 1) };
  }

  // The sentiment (dots) and its EMA (line) of a list of estimates against their window ends.
  function drawTimeline(canvas, estimates, spanSeconds = 60) {
    const { g, w, h } = prepare(canvas);
    const pad = { l: 28, r: 6, t: 6, b: 16 };
    const plotW = w - pad.l - pad.r, plotH = h - pad.t - pad.b;
    const { t0, t1 } = timeAxis(estimates, spanSeconds);
    const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * plotW;
    const y = (v) => pad.t + (1 - fraction(v)) * plotH;
    g.font = "10px system-ui, sans-serif";
    g.fillStyle = "#6b7280";
    g.strokeStyle = "#e5e7eb";
    g.lineWidth = 1;
    for (const v of [-3, -1.5, 0, 1.5, 3]) {
      g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(w - pad.r, y(v)); g.stroke();
      g.fillText((v > 0 ? "+" : "") + v, 2, y(v) + 3);
    }
    g.fillText(`${t0.toFixed(0)} s`, pad.l, h - 3);
    g.fillText(`${t1.toFixed(0)} s`, w - pad.r - 30, h - 3);
    const shown = estimates.filter((e) => e.t_end >= t0);
    g.strokeStyle = "#1f2937"; g.lineWidth = 2;
    g.beginPath();
    shown.forEach((e, i) => (i ? g.lineTo(x(e.t_end), y(e.smoothed)) : g.moveTo(x(e.t_end), y(e.smoothed))));
    g.stroke();
    for (const e of shown) {
      g.fillStyle = COLOURS[e.label] || "#000";
      g.beginPath(); g.arc(x(e.t_end), y(e.sentiment), 2.5, 0, 2 * Math.PI); g.fill();
    }
  }

  // The most probable of an estimate's smoothed emotions, {name, p}; null without emotions (a
  // checkpoint without an emotion head, or an estimate of schema 1).
  function topEmotion(estimate) {
    const emotions = estimate && estimate.emotions;
    if (!emotions || !estimate.emotion || typeof emotions[estimate.emotion] !== "number") return null;
    return { name: estimate.emotion, p: emotions[estimate.emotion] };
  }

  function percent(p) { return `${Math.round(p * 100)}%`; }

  // `happy 62%`, or "" without emotions.
  function emotionText(estimate) {
    const top = topEmotion(estimate);
    return top ? `${top.name} ${percent(top.p)}` : "";
  }

  // One bar per emotion for a set of probabilities (name -> p), under a title; "—" without them.
  function emotionBars(title, probabilities) {
    const box = el("div", { class: "emotion-bars" }, el("div", { class: "emotion-bars-title", text: title }));
    if (!probabilities) {
      box.append(el("div", { class: "muted", text: "—" }));
      return box;
    }
    for (const name of EMOTIONS) {
      const p = Math.max(0, Math.min(1, probabilities[name] || 0));
      const fill = el("span", { class: "emotion-fill" });
      fill.style.width = `${p * 100}%`;
      fill.style.background = EMOTION_COLOURS[name];
      box.append(el("div", { class: "emotion-row", "data-emotion": name, title: `${name} ${percent(p)}` },
        el("span", { class: "emotion-name", text: name }), el("span", { class: "emotion-track" }, fill),
        el("span", { class: "emotion-p", text: percent(p) })));
    }
    return box;
  }

  // What a modality was in a window: "used" (observed and read by the model), "present" (observed,
  // not read: a checkpoint trained without it), "absent" (not observed). Schema 1 had no `used`.
  function modalityState(result) {
    if (!result || !result.present) return "absent";
    const used = result.used === undefined ? true : result.used;
    return used ? "used" : "present";
  }

  const STATE_TEXT = {
    used: "observed, used by the model",
    present: "observed, not used by the model",
    absent: "not observed",
  };

  // The per-modality emotion bars of an estimate (text, voice, face), each with what the modality
  // was (used, only seen, absent), or null without emotions. The face's bars are the face expert's
  // when the model does not read the face.
  function modalityEmotionBars(estimate) {
    if (!topEmotion(estimate)) return null;
    const names = { text: "text", audio: "voice", visual: "face" };
    return el("div", { class: "modality-emotions" }, ...MODALITIES.map((m) => {
      const result = estimate.modalities[m] || {};
      const state = modalityState(result);
      const box = emotionBars(names[m], result.emotions);
      box.dataset.state = state;
      let note = STATE_TEXT[state];
      // the face's emotions are the face expert's when the model does not read the face, or has no
      // emotion head (then text and voice have none)
      const expert = state === "present" || !((estimate.modalities.text || {}).emotions || (estimate.modalities.audio || {}).emotions);
      if (m === "visual" && result.emotions && expert) note += "; emotions from the face expert";
      box.insertBefore(el("div", { class: "emotion-bars-state", text: note }), box.children[1]);
      return box;
    }));
  }

  // The smoothed emotions of a list of estimates stacked against their window ends (the time axis
  // of drawTimeline), each window's column summing to 1. Returns whether any estimate had emotions.
  function drawEmotionTimeline(canvas, estimates, spanSeconds = 60) {
    const { g, w, h } = prepare(canvas);
    const felt = estimates.filter((e) => e.emotions);
    if (!felt.length) return false;
    const pad = { l: 28, r: 6, t: 4, b: 4 };
    const plotW = w - pad.l - pad.r, plotH = h - pad.t - pad.b;
    const { t0, t1 } = timeAxis(estimates, spanSeconds);
    const shown = felt.filter((e) => e.t_end >= t0);
    const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * plotW;
    const y = (v) => pad.t + (1 - v) * plotH;
    let below = shown.map(() => 0);
    for (const name of EMOTIONS) {
      const above = shown.map((e, i) => below[i] + (e.emotions[name] || 0));
      g.fillStyle = EMOTION_COLOURS[name];
      g.beginPath();
      shown.forEach((e, i) => (i ? g.lineTo(x(e.t_end), y(above[i])) : g.moveTo(x(e.t_end), y(above[i]))));
      for (let i = shown.length - 1; i >= 0; i--) g.lineTo(x(shown[i].t_end), y(below[i]));
      g.closePath();
      g.fill();
      below = above;
    }
    g.font = "10px system-ui, sans-serif";
    g.fillStyle = "#6b7280";
    g.fillText("1", 2, y(1) + 8);
    g.fillText("0", 2, y(0));
    return true;
  }

  // A 3x3 edge matrix as a heat map: rows distil from, columns distil into.
  function heatmap(title, matrix) {
    const box = el("div", { class: "heatmap" }, el("div", { class: "heatmap-title", text: title }));
    const grid = el("div", { class: "heatmap-grid" });
    let max = 0;
    for (const row of matrix) for (const v of row) max = Math.max(max, Math.abs(v));
    grid.append(el("span", { class: "corner", text: "from\\to" }));
    for (const m of MODALITIES) grid.append(el("span", { class: "axis", text: SHORT[m] }));
    matrix.forEach((row, i) => {
      grid.append(el("span", { class: "axis", text: SHORT[MODALITIES[i]] }));
      row.forEach((v) => {
        const strength = max > 0 ? Math.abs(v) / max : 0;
        const cell = el("span", { class: "cell", text: v.toFixed(2), title: `${v}` });
        cell.style.background = `rgba(37, 99, 235, ${0.08 + 0.85 * strength})`;
        cell.style.color = strength > 0.55 ? "#fff" : "#111827";
        grid.append(cell);
      });
    });
    box.append(grid);
    return box;
  }

  // The words of overlapping windows, each once. A window cuts a word's span to its own edges, so
  // the same word comes back with other times: the same text whose spans touch is the same word;
  // a word said twice ("really really") has two spans apart.
  function wordsOf(estimates, limit = 40) {
    const words = [];
    for (const e of estimates) {
      for (const w of e.words || []) {
        const same = words.find((o) => o.word === w.word && o.start <= w.end + 0.01 && w.start <= o.end + 0.01);
        if (same) {
          same.start = Math.min(same.start, w.start);
          same.end = Math.max(same.end, w.end);
        } else {
          words.push({ word: w.word, start: w.start, end: w.end });
        }
      }
    }
    words.sort((a, b) => a.start - b.start);
    return words.slice(-limit).map((w) => w.word).join(" ");
  }

  return { token, api, ApiError, withToken, el, fraction, fmt, drawTimeline, heatmap, wordsOf, MODALITIES, SHORT, COLOURS,
    EMOTIONS, EMOTION_COLOURS, topEmotion, emotionText, emotionBars, modalityEmotionBars, drawEmotionTimeline,
    modalityState, STATE_TEXT };
})();
