// The agent's live page: /status on load and again after events (throttled), the event
// timeline from /events then /events/stream. Plain JS, no framework, nothing from elsewhere.
//
// The token: EventSource cannot send headers, and a token in a URL ends up in logs and
// history. A cookie would need a login route and CSRF care on an API whose other clients
// (Prometheus, curl) use the header anyway. So the token is asked once, kept in this tab's
// sessionStorage, sent as "Authorization: Bearer" with fetch(), and the event stream is read
// with fetch() and a ReadableStream, its frames parsed here.
"use strict";

(function () {
  const TOKEN_KEY = "elastiscope.token";
  const STATUS_MIN_INTERVAL_MS = 500; // at most two /status reads a second, whatever the events
  const TIMELINE_MAX = 500;           // events kept on the page
  const RETRY_MS = [1000, 2000, 5000, 10000];

  const $ = (id) => document.getElementById(id);
  const page = {
    token: sessionStorage.getItem(TOKEN_KEY),
    clockOffset: 0,       // the agent's clock minus this browser's, seconds
    status: null,
    lastSeq: 0,
    statusTimer: null,
    statusBusy: false,
    statusAgain: false,
    lastStatusAt: 0,
    stream: null,         // AbortController of the open stream
    retries: 0,
    stalls: new Map(),    // seq -> stalled event, for its stacks
  };

  class Unauthorized extends Error {}

  // ---- requests -------------------------------------------------------------------------

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (page.token) h.Authorization = "Bearer " + page.token;
    return h;
  }

  async function getJSON(path) {
    const response = await fetch(path, { headers: headers({ Accept: "application/json" }), cache: "no-store" });
    if (response.status === 401) throw new Unauthorized();
    if (!response.ok) throw new Error(path + ": HTTP " + response.status);
    return response.json();
  }

  // ---- small helpers ----------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const STATE_CLASS = {
    HEALTHY: "ok", SUCCEEDED: "ok", INIT: "info", UNKNOWN: "info", STOPPED: "warn",
    UNHEALTHY: "bad", FAILED: "bad", TERMINATED: "warn",
  };

  function badge(text, cls) {
    return el("span", { class: "badge " + (cls || STATE_CLASS[text] || "info"), text: text });
  }

  function seconds(value) {
    if (value === null || value === undefined) return "-";
    if (value < 1) return (value * 1000).toFixed(0) + " ms";
    if (value < 120) return value.toFixed(1) + " s";
    if (value < 7200) return (value / 60).toFixed(1) + " min";
    return (value / 3600).toFixed(1) + " h";
  }

  function bytes(value) {
    if (value === null || value === undefined) return "-";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return value.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function clock(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }

  const agentNow = () => Date.now() / 1000 + page.clockOffset;

  function setConnection(text, cls) {
    const node = $("connection");
    node.textContent = text;
    node.className = "badge " + cls;
  }

  // ---- the token --------------------------------------------------------------------------

  function askForToken(wrong) {
    stopStream();
    $("login").hidden = false;
    $("content").hidden = true;
    $("login-error").textContent = wrong ? "That token was not accepted." : "";
    setConnection("token needed", "warn");
    $("token").focus();
  }

  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    page.token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem(TOKEN_KEY, page.token);
    start();
  });

  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    page.token = null;
    askForToken(false);
  });

  // ---- status -----------------------------------------------------------------------------

  function refreshStatus() {
    // Throttled: a burst of events costs one read now and at most one more after the interval.
    if (page.statusBusy) { page.statusAgain = true; return; }
    const wait = page.lastStatusAt + STATUS_MIN_INTERVAL_MS - Date.now();
    if (wait > 0) {
      if (!page.statusTimer) page.statusTimer = setTimeout(() => { page.statusTimer = null; refreshStatus(); }, wait);
      return;
    }
    page.statusBusy = true;
    page.lastStatusAt = Date.now();
    getJSON("status").then(renderStatus).catch(onError).finally(() => {
      page.statusBusy = false;
      if (page.statusAgain) { page.statusAgain = false; refreshStatus(); }
    });
  }

  function renderStatus(status) {
    page.status = status;
    if (typeof status.time === "number") page.clockOffset = status.time - Date.now() / 1000;
    const host = status.hostname || location.host;
    $("node").textContent = host + (status.group_rank !== null && status.group_rank !== undefined
      ? " · node " + status.group_rank : "");
    document.title = "Elastiscope · " + status.state + " · " + (status.run_id || host);
    $("run-id").textContent = status.run_id || "-";
    $("state").replaceChildren(badge(status.state), " worker group");
    $("attempt").textContent = String((status.restarts_used || 0) + 1);
    const left = status.remaining_restarts;
    $("restarts").textContent = (status.restarts_used || 0) + " used, " +
      (left === null || left === undefined ? "?" : left) + " left of " + (status.max_restarts ?? "?");
    $("goodput").textContent = status.goodput_ratio === null || status.goodput_ratio === undefined
      ? "no progress reported yet" : (100 * status.goodput_ratio).toFixed(1) + " %";
    $("nodes").textContent = (status.group_world_size ?? "?") + " node(s), " + (status.world_size ?? "?") + " worker(s)";
    $("event-log").replaceChildren(status.event_log ? el("code", { text: status.event_log }) : "off");
    renderWorkers(status.workers || []);
    renderPeers(status.peers || []);
  }

  function progressAge(w) {
    const p = w.progress;
    if (!p || !p.reporting || !p.last_step_time) return null;
    return Math.max(0, agentNow() - p.last_step_time);
  }

  function marks(w) {
    const out = [];
    if (w.stalled) out.push(badge("stalled", "bad"));
    if (w.straggler) out.push(badge("straggler", "warn"));
    if (w.progress && !w.progress.reporting && w.state === "HEALTHY") out.push(el("span", { class: "muted", text: "not reporting" }));
    return out.length ? out : [el("span", { class: "muted", text: "none" })];
  }

  function renderWorkers(workers) {
    const body = $("workers").tBodies[0];
    if (!workers.length) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 11, class: "muted", text: "no workers yet" })));
      return;
    }
    const rows = workers.map((w) => {
      const rank = w.global_rank === null || w.global_rank < 0 ? "-" : w.global_rank;
      const p = w.progress || {};
      const steps = p.steps === null || p.steps === undefined ? "-"
        : String(p.steps) + (p.global_step !== null && p.global_step !== undefined ? " (global " + p.global_step + ")" : "");
      const age = progressAge(w);
      return el("tr", { "data-rank": rank, class: w.stalled ? "is-stalled" : null },
        el("th", { scope: "row", text: rank + " (local " + w.local_rank + ")" }),
        el("td", {}, badge(w.state)),
        el("td", { class: "num", text: w.pid ?? "-" }),
        el("td", { class: "num", text: steps }),
        el("td", { class: "num", text: seconds(p.last_step_duration) }),
        el("td", { class: "num age", "data-last": p.last_step_time || "", text: age === null ? "-" : seconds(age) + " ago" }),
        el("td", {}, ...marks(w)),
        el("td", { class: "num", text: w.cpu_seconds === null || w.cpu_seconds === undefined ? "-" : w.cpu_seconds.toFixed(1) + " s" }),
        el("td", { class: "num", text: bytes(w.rss_bytes) }),
        el("td", { class: "num", text: w.exit_code ?? "-" }),
        el("td", {}, w.state === "HEALTHY" ? el("button", {
          type: "button", class: "stack-button", "aria-label": "Show the stack of rank " + rank,
          onclick: () => showLiveStacks(rank), text: "Stack",
        }) : el("span", { class: "muted", text: "-" })));
    });
    // Each cell names its column, for the phone layout where rows become cards.
    const labels = Array.from($("workers").tHead.rows[0].cells, (c) => c.textContent);
    for (const row of rows) Array.from(row.cells).forEach((cell, i) => cell.setAttribute("data-label", labels[i]));
    body.replaceChildren(...rows);
  }

  function renderPeers(peers) {
    // The addresses come from the rendezvous store, which any job member can write: only
    // http(s) addresses become links (the CSP would refuse a javascript: one anyway).
    const linkable = (url) => /^https?:\/\//.test(String(url));
    $("peers-panel").hidden = !peers.length;
    $("peers").replaceChildren(...peers.map((p) => el("li", {},
      linkable(p.url) ? el("a", { href: p.url + "/", rel: "noopener", text: (p.hostname || p.url) })
                      : String(p.hostname || p.url),
      " node " + p.group_rank + " · " + p.url)));
  }

  // Ages move between reads without asking the agent again.
  setInterval(() => {
    for (const cell of document.querySelectorAll("td.age")) {
      const last = parseFloat(cell.dataset.last);
      if (last) cell.textContent = seconds(Math.max(0, agentNow() - last)) + " ago";
    }
  }, 1000);

  // ---- stacks -----------------------------------------------------------------------------

  function showStacks(summary, ranks, focusRank) {
    const panel = $("stacks");
    $("stacks-summary").textContent = summary || "";
    const order = ranks.slice().sort((a, b) => (a.rank === focusRank ? -1 : b.rank === focusRank ? 1 : a.rank - b.rank));
    $("stacks-body").replaceChildren(...order.map((r) => el("div", { class: "rank-stack", "data-rank": r.rank },
      el("h3", {}, "Rank " + r.rank + " ", badge(r.where || "unknown", r.suspect ? "bad" : "info"),
        r.suspect ? " suspect" : "", r.code ? " at " : "", r.code ? el("code", { text: r.code }) : ""),
      r.detail ? el("p", { text: r.detail }) : null,
      el("pre", { text: r.stack || r.note || "no stack read" }))));
    panel.hidden = false;
    panel.focus();
  }

  async function showLiveStacks(rank) {
    $("stacks-summary").textContent = "reading the stacks…";
    $("stacks").hidden = false;
    try {
      const dump = await getJSON("stacks");
      const suspects = new Set(dump.suspects || []);
      showStacks("read now: " + (dump.summary || "") + " (" + Math.round(dump.capture_ms) + " ms)",
        (dump.ranks || []).map((r) => Object.assign({}, r, { suspect: suspects.has(r.rank) })), rank);
    } catch (e) {
      if (e instanceof Unauthorized) return askForToken(true);
      $("stacks-summary").textContent = "stacks unavailable: " + e.message;
    }
  }

  function showStallStacks(event) {
    const md = event.metadata;
    const parse = (text) => { try { return JSON.parse(text || "{}"); } catch (e) { return {}; } };
    const ranks = parse(md.ranks), stacks = parse(md.stacks);
    const suspects = new Set(parse(md.suspect_ranks || "[]"));
    const list = Object.keys(Object.assign({}, ranks, stacks)).map((k) => Object.assign(
      { rank: Number(k), suspect: suspects.has(Number(k)), stack: stacks[k] }, ranks[k] || {}));
    showStacks("kept when the stall was found: " + (md.summary || ""), list, md.suspect_rank);
  }

  $("stacks-close").addEventListener("click", () => { $("stacks").hidden = true; });

  // ---- the timeline -------------------------------------------------------------------------

  function describe(e) {
    const md = e.metadata || {};
    const rank = md.global_rank !== undefined && md.global_rank !== null ? "rank " + md.global_rank : "";
    switch (e.name) {
      case "elastiscope.worker.failed":
        return ["FAILED", "bad", rank + " failed (exit " + md.exit_code + (md.signal ? ", " + md.signal : "") + "): " +
          (md.error_message || "no message") + (md.root_cause === false ? " (collateral of rank " + md.root_cause_rank + ")" : "")];
      case "elastiscope.agent.restart":
        return ["RESTART", "warn", "restarting the workers (" + md.reason + "), " + md.remaining_restarts + " restart(s) left" +
          (md.root_cause_rank !== undefined && md.root_cause_rank !== null ? "; root cause rank " + md.root_cause_rank + ": " + md.root_cause_error : "")];
      case "elastiscope.agent.state_change":
        return [md.state, STATE_CLASS[md.state], "worker group " + md.previous_state + " → " + md.state];
      case "elastiscope.agent.run_start":
        return ["START", "info", "run started: " + (md.program || md.entry_point || "") + ", " + md.local_world_size + " worker(s) here"];
      case "elastiscope.agent.run_end":
        return [md.state, STATE_CLASS[md.state] || (md.state === "SUCCEEDED" ? "ok" : "bad"), "run ended: " + md.state +
          (md.goodput_ratio !== null && md.goodput_ratio !== undefined ? ", goodput " + (100 * md.goodput_ratio).toFixed(1) + " %" : "")];
      case "elastiscope.rendezvous.complete":
        return ["RENDEZVOUS", "info", "rendezvous complete: " + md.group_world_size + " node(s), " + md.world_size + " worker(s), restart count " + md.restart_count];
      case "elastiscope.worker.stalled":
        return ["STALLED", "bad", "stall: suspect rank " + md.suspect_rank + " (" + (md.suspect_where || "?") + (md.suspect_code ? " at " + md.suspect_code : "") + "), action " + md.action + ". " + (md.summary || "")];
      case "elastiscope.worker.stall_ended":
        return ["RESUMED", "ok", "stalled ranks progress again after " + seconds(md.stalled_seconds)];
      case "elastiscope.worker.straggler":
        return ["STRAGGLER", "warn", rank + " is a straggler: forward " + Number(md.ratio).toFixed(2) + "× its peers' median"];
      case "elastiscope.worker.straggler_recovered":
        return ["RECOVERED", "ok", rank + " is no longer a straggler"];
      case "elastiscope.agent.attempt_goodput":
        return ["ATTEMPT", "info", "attempt " + md.attempt + " ended by " + md.ended_by + ": " + md.steps + " step(s)" +
          (md.goodput_ratio !== null && md.goodput_ratio !== undefined ? ", goodput " + (100 * md.goodput_ratio).toFixed(1) + " %" : "")];
      case "elastiscope.agent.first_step":
        return ["FIRST STEP", "info", "first step of attempt " + md.attempt];
      case "elastiscope.endpoint.started":
        return ["ENDPOINT", "info", "endpoint at " + md.url];
      default: {
        const torch = /^torchelastic\.worker\.status\.(\w+)$/.exec(e.name);
        if (torch) return [torch[1], STATE_CLASS[torch[1]] || "info", (rank || "agent") + " " + torch[1].toLowerCase() +
          (md.raw_error ? ": " + String(md.raw_error).slice(0, 300) : "")];
        return [e.name.split(".").pop().toUpperCase(), "info", e.name + (rank ? " " + rank : "")];
      }
    }
  }

  // torch's rendezvous steps as bridged (but not the round's completion): hidden unless asked.
  const isDetail = (e) => e.name.startsWith("elastiscope.rendezvous.") && e.name !== "elastiscope.rendezvous.complete";

  $("all-events").addEventListener("change", (e) => { $("timeline").classList.toggle("brief", !e.target.checked); });

  function addEvent(e) {
    if (e.seq <= page.lastSeq) return; // a reconnect never repeats one
    page.lastSeq = e.seq;
    const [label, cls, text] = describe(e);
    const item = el("li", { "data-name": e.name, "data-seq": e.seq, class: isDetail(e) ? "detail-event" : null },
      el("time", { datetime: new Date(e.timestamp).toISOString(), text: clock(e.timestamp) }),
      badge(label, cls), " ", el("span", { class: "text", text: text }));
    if (e.name === "elastiscope.worker.stalled") {
      item.append(" ", el("button", { type: "button", class: "stall-stacks",
        onclick: () => showStallStacks(e), text: "Show stacks" }));
    }
    const list = $("timeline");
    list.prepend(item);
    while (list.children.length > TIMELINE_MAX) list.lastElementChild.remove();
  }

  async function loadHistory() {
    // On a reconnect, only what was missed (up to the newest 1000); on opening, the newest 200.
    const query = page.lastSeq ? "events?since=" + page.lastSeq + "&limit=1000" : "events?limit=200";
    let pageOfEvents = await getJSON(query);
    if (pageOfEvents.last_seq < page.lastSeq) {
      // Numbers went back: another agent process answers at this address now (a new run).
      page.lastSeq = 0;
      $("timeline").prepend(el("li", { class: "muted", text: "— a new agent process answers here; its events follow —" }));
      pageOfEvents = await getJSON("events?limit=200");
    }
    for (const e of pageOfEvents.events) addEvent(e);
    page.lastSeq = Math.max(page.lastSeq, pageOfEvents.last_seq);
  }

  // ---- the event stream (fetch + ReadableStream, so the token goes in a header) -----------

  function parseFrame(frame) {
    let data = "";
    for (const line of frame.split("\n")) {
      if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
    }
    return data ? JSON.parse(data) : null; // comment lines (keep-alives) carry no data
  }

  function stopStream() {
    if (page.stream) { page.stream.abort(); page.stream = null; }
  }

  async function openStream() {
    stopStream();
    const controller = new AbortController();
    page.stream = controller;
    try {
      const response = await fetch("events/stream?since=" + page.lastSeq,
        { headers: headers({ Accept: "text/event-stream" }), cache: "no-store", signal: controller.signal });
      if (response.status === 401) throw new Unauthorized();
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      setConnection("live", "ok");
      page.retries = 0;
      refreshStatus(); // whatever happened between the history and the stream
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const event = parseFrame(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
          if (event) { addEvent(event); refreshStatus(); }
        }
      }
      throw new Error("stream closed");
    } catch (e) {
      if (controller.signal.aborted) return;
      if (e instanceof Unauthorized) return askForToken(true);
      const wait = RETRY_MS[Math.min(page.retries, RETRY_MS.length - 1)];
      page.retries += 1;
      setConnection("agent unreachable, retrying in " + wait / 1000 + " s", "bad");
      setTimeout(() => { if (page.stream === controller) reconnect(); }, wait);
    }
  }

  async function reconnect() {
    try {
      await loadHistory(); // the events missed while away, then the stream from there
      openStream();
    } catch (e) {
      onError(e);
      const wait = RETRY_MS[Math.min(page.retries++, RETRY_MS.length - 1)];
      setTimeout(reconnect, wait);
    }
  }

  function onError(e) {
    if (e instanceof Unauthorized) return askForToken(page.token !== null);
    setConnection("agent unreachable", "bad");
  }

  async function start() {
    $("login").hidden = true;
    $("content").hidden = false;
    $("forget").hidden = !page.token;
    try {
      // Both at once; the stream then starts after the newest event the history held.
      const [status] = await Promise.all([getJSON("status"), loadHistory()]);
      renderStatus(status);
      page.lastStatusAt = Date.now();
      openStream();
    } catch (e) {
      if (e instanceof Unauthorized) return askForToken(page.token !== null);
      onError(e);
      setTimeout(start, RETRY_MS[Math.min(page.retries++, RETRY_MS.length - 1)]);
    }
  }

  start();
})();
