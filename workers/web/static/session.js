// The session page: camera and microphone to `dmd serve` over WebRTC, estimates back over a data channel.
//
// Beside the sentiment: the most probable emotion, each modality's emotion bars (the face's from the
// face expert when the model does not read the face) and the emotion timeline; nothing for a
// checkpoint without an emotion head in a window without a face. The modality chips say what was
// observed (present) and what the model used (used).
//
// For automation: window.dmd.estimates holds every estimate received (the objects of the estimate
// contract), window.dmd.state the connection state: starting, asking (for the camera), connecting,
// live, disconnected (may come back), ended, refused (camera or microphone refused), no-device,
// insecure (needs https), unauthorized (token), error.
"use strict";

(() => {
  const dmd = (window.dmd = { estimates: [], ages: [], state: "starting", session: null, error: null, messages: [] });
  const $ = (id) => document.getElementById(id);
  let pc = null, channel = null, stream = null, drawPending = false;

  if (DMD.token) $("dashboard-link").href = DMD.withToken("/dashboard");

  function setState(state, detail = "") {
    dmd.state = state;
    const badge = $("state");
    badge.textContent = state;
    badge.dataset.state = state;
    if (detail) $("details").textContent = detail;
  }

  function problem(state, title, text, steps) {
    setState(state, text);
    $("stage").hidden = true;
    $("problem").hidden = false;
    $("problem-title").textContent = title;
    $("problem-text").textContent = text;
    $("problem-steps").hidden = !steps;
    document.body.classList.add("has-problem");
  }

  function show(estimate, age) {
    const colour = DMD.COLOURS[estimate.label];
    $("bar-marker").style.left = `${DMD.fraction(estimate.smoothed) * 100}%`;
    $("bar-marker").style.background = colour;
    $("label").textContent = estimate.label;
    $("label").style.color = colour;
    $("value").textContent = `${DMD.fmt(estimate.sentiment)} (smoothed ${DMD.fmt(estimate.smoothed)})`;
    const top = DMD.topEmotion(estimate);
    $("emotion").textContent = DMD.emotionText(estimate);
    $("emotion").style.borderColor = top ? DMD.EMOTION_COLOURS[top.name] : "transparent";
    $("emotions").hidden = !top;
    const bars = DMD.modalityEmotionBars(estimate);
    $("modality-emotions").replaceChildren(...(bars ? [bars] : []));
    for (const node of $("modalities").children) {
      const state = DMD.modalityState(estimate.modalities[node.dataset.m]);
      node.classList.toggle("present", state !== "absent");
      node.classList.toggle("used", state === "used");
      node.title = `${node.dataset.what}: ${DMD.STATE_TEXT[state]}`;
      if (node.dataset.label === undefined) node.dataset.label = node.textContent;
      node.textContent = state === "present" ? `${node.dataset.label} · not used` : node.dataset.label;
    }
    const words = DMD.wordsOf(dmd.estimates.slice(-8), 12);
    $("words").textContent = words || "";
    const latency = age !== null && age !== undefined ? `, ${Math.round(age)} ms after the window's end` : "";
    $("details").textContent = `window ${estimate.window} (${estimate.t_start.toFixed(1)}-${estimate.t_end.toFixed(1)} s)` +
      `${latency}; ${dmd.estimates.length} estimates`;
    if (!drawPending) {
      drawPending = true;
      requestAnimationFrame(() => { drawPending = false; draw(); });
    }
  }

  function draw() {
    DMD.drawTimeline($("timeline"), dmd.estimates, 30);
    if (!$("emotions").hidden) DMD.drawEmotionTimeline($("emotion-timeline"), dmd.estimates, 30);
  }

  function onMessage(event) {
    let message;
    try { message = JSON.parse(event.data); } catch (e) { return; }
    if (message.type === "estimate") {
      dmd.estimates.push(message.estimate);
      dmd.ages.push(message.age_ms);
      show(message.estimate, message.age_ms);
    } else if (message.type === "session") {
      dmd.session = message.session;
      $("session-name").textContent = `session ${message.session}`;
    } else if (message.type === "ended") {
      dmd.messages.push(message);
      setState("ended", `the session ended: ${message.reason}`);
    }
  }

  function iceGatheringComplete(connection, timeoutMs = 5000) {
    // aiortc takes no trickled candidates: the offer must carry them all
    if (connection.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { connection.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (connection.iceGatheringState === "complete") done(); };
      connection.addEventListener("icegatheringstatechange", check);
      setTimeout(done, timeoutMs);
    });
  }

  async function media() {
    const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 15, max: 30 } };
    const audio = { channelCount: 1, echoCancellation: true, noiseSuppression: true };
    try {
      return await navigator.mediaDevices.getUserMedia({ video, audio });
    } catch (error) {
      if (error.name !== "NotFoundError" && error.name !== "OverconstrainedError") throw error;
      // one of the two is missing: go on with the other
      for (const constraints of [{ video }, { audio }]) {
        try { return await navigator.mediaDevices.getUserMedia(constraints); } catch (e) { /* next */ }
      }
      throw error;
    }
  }

  async function start() {
    $("problem").hidden = true;
    $("stage").hidden = false;
    document.body.classList.remove("has-problem");
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      problem("insecure", "This page needs a secure connection",
        "Browsers give the camera only to pages served over https or from localhost. Start dmd serve with " +
        "--cert and --key, or open it on this machine as http://localhost.", false);
      return;
    }
    let config;
    try {
      config = await DMD.api("/config");
    } catch (error) {
      if (error.status === 401) {
        problem("unauthorized", "A token is needed",
          "This server asks for a token: open the address with ?token=... as dmd serve printed it.", false);
      } else {
        problem("error", "The server cannot be reached", String(error.message || error), false);
      }
      return;
    }
    setState("asking", "asking for the camera and microphone");
    try {
      stream = await media();
    } catch (error) {
      dmd.error = `${error.name}: ${error.message}`;
      if (error.name === "NotAllowedError" || error.name === "SecurityError" || error.name === "PermissionDeniedError") {
        problem("refused", "Camera and microphone access was refused",
          "Live DMD needs your camera and microphone to estimate emotion. Nothing is recorded: the video " +
          "becomes face measurements on the server and is dropped.", true);
      } else if (error.name === "NotFoundError") {
        problem("no-device", "No camera or microphone was found",
          "Connect a camera or a microphone (or free one that another program holds), then try again.", false);
      } else {
        problem("error", "The camera could not be started", dmd.error, false);
      }
      return;
    }
    $("local").srcObject = stream;
    setState("connecting", "connecting to the server");
    pc = new RTCPeerConnection({ iceServers: config.iceServers || [] });
    channel = pc.createDataChannel("estimates");
    channel.onmessage = onMessage;
    for (const track of stream.getTracks()) pc.addTrack(track, stream);
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "connected") setState("live", "live: estimates arrive every half second once the first window is full");
      else if (pc.connectionState === "failed") setState("error", "the connection failed (ICE): check the server's ICE servers");
      else if (pc.connectionState === "disconnected") setState("disconnected", "the connection is interrupted; waiting for it to come back");
      else if (pc.connectionState === "closed" && dmd.state !== "ended") setState("ended", "the connection closed");
    });
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringComplete(pc);
      const params = new URLSearchParams(window.location.search);
      const offer = { sdp: pc.localDescription.sdp, type: pc.localDescription.type };
      if (params.get("session")) offer.session = params.get("session");
      const answer = await DMD.api("/offer", { method: "POST", body: JSON.stringify(offer) });
      dmd.session = answer.session;
      $("session-name").textContent = `session ${answer.session}`;
      await pc.setRemoteDescription({ sdp: answer.sdp, type: answer.type });
    } catch (error) {
      dmd.error = String(error.message || error);
      setState("error", `the server refused the session: ${dmd.error}`);
      stop(false);
    }
  }

  function stop(sayBye = true) {
    if (sayBye && channel && channel.readyState === "open") {
      try { channel.send(JSON.stringify({ type: "bye" })); } catch (e) { /* closing anyway */ }
    }
    if (pc) pc.close();
    if (stream) for (const track of stream.getTracks()) track.stop();
    pc = null; channel = null; stream = null;
    if (dmd.state === "live" || dmd.state === "connecting") setState("ended", "stopped");
  }

  $("stop").addEventListener("click", () => stop());
  $("retry").addEventListener("click", () => start());
  window.addEventListener("pagehide", () => stop());
  window.addEventListener("resize", draw);
  DMD.drawTimeline($("timeline"), [], 30);
  start();
})();
