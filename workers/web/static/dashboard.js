// The dashboard: every session's estimates, from Server-Sent Events bridged from Redis. A session
// whose estimates have emotions (a checkpoint with an emotion head, or the face expert's for a face)
// also shows its top emotion, each modality's emotion bars and an emotion timeline; the modalities'
// table says what was observed (present) and what the model used (used).
//
// For automation: window.dmd.estimates holds every estimate received (history first, then live; no
// duplicates), window.dmd.sessions the sessions by id, window.dmd.state the connection state:
// connecting, live, reconnecting, unauthorized, closed.
"use strict";

(() => {
  const dmd = (window.dmd = { estimates: [], sessions: {}, state: "connecting", history: null, dropped: 0 });
  const $ = (id) => document.getElementById(id);
  const PER_SESSION = 600;
  const seen = new Set();
  const dirty = new Set();
  let scheduled = false;

  if (DMD.token) {
    $("session-link").href = DMD.withToken("/");
    $("empty-link").href = DMD.withToken("/");
  }

  function setState(state) {
    dmd.state = state;
    $("state").textContent = state;
    $("state").dataset.state = state;
  }

  function session(id) {
    if (!dmd.sessions[id]) dmd.sessions[id] = { session: id, state: "live", estimates: [], info: {} };
    return dmd.sessions[id];
  }

  function schedule(id) {
    dirty.add(id);
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => { scheduled = false; render(); });
  }

  function addEstimate(e) {
    const key = `${e.session}|${e.window}`;
    if (seen.has(key)) return;
    seen.add(key);
    dmd.estimates.push(e);
    const s = session(e.session);
    s.estimates.push(e);
    if (s.estimates.length > 1 && s.estimates[s.estimates.length - 2].window > e.window) {
      s.estimates.sort((a, b) => a.window - b.window);
    }
    if (s.estimates.length > PER_SESSION) s.estimates.splice(0, s.estimates.length - PER_SESSION);
    s.lastSeen = Date.now();
    schedule(e.session);
  }

  function addSession(event) {
    const s = session(event.session);
    if (event.state) s.state = event.state;  // from the snapshot
    if (event.event === "start") s.state = "live";
    if (event.event === "end") s.state = "ended";
    if (event.source) s.source = event.source;
    if (event.info && Object.keys(event.info).length) s.info = event.info;
    schedule(event.session);
  }

  function median(values) {
    const v = values.filter((x) => typeof x === "number").sort((a, b) => a - b);
    return v.length ? v[Math.floor(v.length / 2)] : null;
  }

  function card(id) {
    let node = document.getElementById(`session-${id}`);
    if (node) return node;
    node = DMD.el("article", { class: "session-card", id: `session-${id}`, "data-session": id });
    node.innerHTML = `
      <div class="card-head"><h2></h2><span class="badge"></span><span class="source muted"></span></div>
      <div class="card-now"><span class="now-label"></span><span class="now-emotion emotion-now"></span><span class="now-value"></span>
        <div class="bar"><span class="bar-zero"></span><span class="bar-marker"></span></div></div>
      <canvas class="timeline" width="520" height="120"></canvas>
      <canvas class="emotion-timeline" width="520" height="70" hidden></canvas>
      <div class="card-grid">
        <table class="modalities-table"><thead><tr><th>modality</th><th title="observed in the window">present</th><th title="read by the model">used</th><th>homo</th><th>hetero</th></tr></thead><tbody></tbody></table>
        <div class="heatmaps"></div>
      </div>
      <div class="card-emotions"></div>
      <div class="transcript"></div>
      <div class="latency muted"></div>`;
    node.querySelector("h2").textContent = id;
    $("sessions").prepend(node);
    return node;
  }

  function render() {
    for (const id of dirty) renderSession(id);
    dirty.clear();
    const ids = Object.keys(dmd.sessions);
    $("empty").hidden = ids.length > 0;
    const live = ids.filter((id) => dmd.sessions[id].state === "live").length;
    $("summary").textContent = `${ids.length} session(s), ${live} live; ${dmd.estimates.length} estimates`;
  }

  function renderSession(id) {
    const s = dmd.sessions[id];
    const node = card(id);
    node.dataset.state = s.state;
    node.querySelector(".badge").textContent = s.state;
    node.querySelector(".badge").dataset.state = s.state;
    node.querySelector(".source").textContent = s.source || "";
    const last = s.estimates[s.estimates.length - 1];
    if (!last) {
      node.querySelector(".now-label").textContent = "no estimate yet";
      return;
    }
    const colour = DMD.COLOURS[last.label];
    node.querySelector(".now-label").textContent = last.label;
    node.querySelector(".now-label").style.color = colour;
    node.querySelector(".now-value").textContent =
      `${DMD.fmt(last.sentiment)} (smoothed ${DMD.fmt(last.smoothed)}) at ${last.t_end.toFixed(1)} s, window ${last.window}`;
    const marker = node.querySelector(".bar-marker");
    marker.style.left = `${DMD.fraction(last.smoothed) * 100}%`;
    marker.style.background = colour;
    DMD.drawTimeline(node.querySelector(".timeline"), s.estimates, 60);
    const top = DMD.topEmotion(last);
    const emotion = node.querySelector(".now-emotion");
    emotion.textContent = DMD.emotionText(last);
    emotion.style.borderColor = top ? DMD.EMOTION_COLOURS[top.name] : "transparent";
    const emotionTimeline = node.querySelector(".emotion-timeline");
    emotionTimeline.hidden = !s.estimates.some((e) => e.emotions);
    if (!emotionTimeline.hidden) DMD.drawEmotionTimeline(emotionTimeline, s.estimates, 60);
    const bars = DMD.modalityEmotionBars(last);
    node.querySelector(".card-emotions").replaceChildren(...(bars ? [bars] : []));
    const body = node.querySelector(".modalities-table tbody");
    body.replaceChildren(...DMD.MODALITIES.map((m) => {
      const r = last.modalities[m];
      const state = DMD.modalityState(r);
      return DMD.el("tr", { class: state === "absent" ? "absent" : `present ${state}`, title: DMD.STATE_TEXT[state] },
        DMD.el("td", { text: m }), DMD.el("td", { text: state === "absent" ? "no" : "yes" }),
        DMD.el("td", { text: state === "used" ? "yes" : "no" }),
        DMD.el("td", { text: DMD.fmt(r.homo) }), DMD.el("td", { text: DMD.fmt(r.hetero) }));
    }));
    node.querySelector(".heatmaps").replaceChildren(
      DMD.heatmap("HomoGD edges", last.edges.homo), DMD.heatmap("HeteroGD edges", last.edges.hetero));
    const words = DMD.wordsOf(s.estimates, 60);
    node.querySelector(".transcript").textContent = words ? `“${words}”` : "(no words)";
    const recent = s.estimates.slice(-20);
    const parts = Object.entries(last.latency_ms).map(([k, v]) => `${k} ${Math.round(v)}`).join(", ");
    const end = median(recent.map((e) => e.latency_ms.window_end_to_publish));
    node.querySelector(".latency").textContent =
      `latency (ms): ${parts}` + (end !== null ? `; window end to estimate, median of the last ${recent.length}: ${Math.round(end)}` : "");
  }

  function handle(name, fn) {
    source.addEventListener(name, (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      fn(data);
    });
  }

  let source = null;
  async function connect() {
    try {
      await DMD.api("/sessions");  // EventSource hides the status of a refusal: ask first
    } catch (error) {
      if (error.status === 401) {
        setState("unauthorized");
        $("empty").textContent = "This server asks for a token: open the dashboard with ?token=... as dmd serve printed it.";
        return;
      }
    }
    source = new EventSource(DMD.withToken("/dashboard/events"));
    handle("sessions", (list) => list.forEach(addSession));
    handle("session", addSession);
    handle("estimate", addEstimate);
    handle("ready", (info) => { dmd.history = info.history; setState("live"); render(); });
    source.onerror = () => setState(source.readyState === EventSource.CLOSED ? "closed" : "reconnecting");
    source.onopen = () => { if (dmd.state !== "live") setState("connecting"); };
  }

  setInterval(() => {  // a live session without estimates for a while is shown as idle
    const now = Date.now();
    for (const s of Object.values(dmd.sessions)) {
      const idle = s.state === "live" && s.lastSeen && now - s.lastSeen > 10000;
      const node = document.getElementById(`session-${s.session}`);
      if (node) node.classList.toggle("idle", !!idle);
    }
  }, 2000);
  render();
  connect();
})();
