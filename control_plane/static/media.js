// msm web page, media section: polls /api/media and draws groups, bridges and app connections.
// Every element is built with DOM calls and every value from the API goes in as text (textContent,
// attribute values), never as markup: URNs, app and bridge names are user input.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const POLL_MS = Math.min(10000, Math.max(200, Number(params.get("interval")) || 1000));
  const FETCH_TIMEOUT_MS = 8000;
  let polls = 0;
  // Frames per second between two listings, timed by the server's listed_at_ms (the control plane shares
  // one listing for a second, so several polls may show the same one): key -> {frames, t} of the last
  // listing, and the rates computed when a new one came. Keys not in a listing are dropped, so both maps
  // hold at most one answer's rows.
  let samples = new Map();
  let rates = new Map();
  let nextSamples = null;   // non-null while drawing a new listing
  let nextRates = null;
  let now = 0;
  function rate(key, frames) {
    if (nextSamples === null) return rates.get(key) || "–";
    const value = num(frames);
    const before = samples.get(key);
    const shown = before && now > before.t && value >= before.frames
      ? ((value - before.frames) * 1000 / (now - before.t)).toFixed(1) : "–";
    nextSamples.set(key, { frames: value, t: now });
    nextRates.set(key, shown);
    return shown;
  }
  const num = (v) => Number(v ?? 0) || 0;   // proto3 JSON gives 64-bit integers as strings
  const str = (v) => (v === undefined || v === null ? "" : String(v));
  const fmtInt = (v) => Math.round(num(v)).toLocaleString("en-US");
  function fmtBytes(v) {
    const b = num(v);
    if (b >= 1e9) return `${(b / 1e9).toFixed(2)} GB`;
    if (b >= 1e6) return `${(b / 1e6).toFixed(1)} MB`;
    if (b >= 1e3) return `${(b / 1e3).toFixed(0)} kB`;
    return `${b} B`;
  }
  const fmtUs = (has, us) => (has ? (num(us) >= 1000 ? `${(num(us) / 1000).toFixed(2)} ms` : `${num(us).toFixed(0)} µs`) : "–");
  // {reason: count} -> "reason 3, other 1" ("" for none)
  function reasons(map) {
    return Object.entries(map || {}).filter(([, n]) => num(n) > 0).sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([k, n]) => `${k} ${fmtInt(n)}`).join(", ");
  }
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const total = (map) => Object.values(map || {}).reduce((acc, n) => acc + num(n), 0);

  function h(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, str(v));
    for (const c of children) if (c !== null && c !== undefined) e.append(typeof c === "object" ? c : str(c));
    return e;
  }
  const cell = (value, attrs = {}) => h("td", attrs, value);
  function table(cls, headers, rows) {
    return h("table", { class: `mtable ${cls}` },
      h("thead", {}, h("tr", {}, ...headers.map((x) => h("th", {}, x)))), h("tbody", {}, ...rows));
  }

  // -- groups ----------------------------------------------------------------------------------------
  // URN -> {placement, nodes: [{node, group, connections}]}: the placement from the control plane,
  // the counters from each node that has the group (local-only groups have no placement).
  function byUrn(data) {
    const groups = new Map();
    const entry = (urn) => {
      if (!groups.has(urn)) groups.set(urn, { urn, placement: null, nodes: [] });
      return groups.get(urn);
    };
    for (const p of data.groups || []) entry(str(p.urn)).placement = p;
    for (const n of data.nodes || []) {
      const stats = n.stats || {};
      const queues = new Map((stats.connections || []).map((c) => [`memif:${str(c.connection)}`, c]));
      for (const g of stats.groups || []) entry(str(g.urn)).nodes.push({ node: str(n.node), group: g, queues });
    }
    return [...groups.values()].sort((a, b) => (a.urn < b.urn ? -1 : a.urn > b.urn ? 1 : 0));
  }

  function linkState(placement, peer) {
    const r = ((placement && placement.receivers) || []).find((x) => str(x.node) === peer);
    if (!r) return "";
    return r.linked ? "linked" : `not linked: ${str(r.error) || "pending"}`;
  }

  function groupRows(entry) {
    const rows = [];
    for (const { node, group, queues } of entry.nodes.sort((a, b) => (a.node < b.node ? -1 : 1))) {
      rows.push(h("tr", { class: "mnode", "data-node": node, "data-frames": num(group.frames_in) },
        cell(node, { class: "strong" }), cell(group.sender ? `in from ${str(group.sender)}` : "no sender", { class: "muted" }),
        cell(fmtInt(group.frames_in)), cell(rate(`g\u0000${node}\u0000${entry.urn}`, group.frames_in)),
        cell(fmtBytes(group.bytes_in)),
        cell(reasons(group.incomplete) ? `incomplete: ${reasons(group.incomplete)}` : "", { class: "bad" }),
        cell(""), cell(""), cell(""), cell("")));
      for (const r of group.receivers || []) {
        const name = str(r.name);
        const queue = queues.get(name);
        rows.push(h("tr", { class: "mreceiver", "data-node": node, "data-receiver": name, "data-frames": num(r.frames) },
          cell(""), cell(`→ ${name}`), cell(fmtInt(r.frames)), cell(rate(`r\u0000${node}\u0000${entry.urn}\u0000${name}`, r.frames)),
          cell(fmtBytes(r.bytes)),
          cell(reasons(r.drops), { class: total(r.drops) ? "bad" : "" }), cell(queue ? fmtInt(queue.queue_depth) : ""),
          cell(fmtUs(r.has_latency, r.latency_p50_us)), cell(fmtUs(r.has_latency, r.latency_p99_us)), cell("")));
      }
      for (const l of group.links || []) {
        const peer = str(l.peer_node);
        const state = l.outgoing ? linkState(entry.placement, peer) : "linked";
        rows.push(h("tr", { class: "mlink", "data-node": node, "data-peer": peer, "data-outgoing": String(!!l.outgoing) },
          cell(""), cell(l.outgoing ? `⇒ node ${peer}` : `⇐ node ${peer}`), cell(fmtInt(l.frames)),
          cell(rate(`l\u0000${node}\u0000${entry.urn}\u0000${peer}\u0000${!!l.outgoing}`, l.frames)), cell(fmtBytes(l.bytes)),
          cell(""), cell(l.outgoing ? fmtInt(l.in_flight) : ""), cell(""), cell(""),
          cell(`${str(l.provider)} · ${state}`, { class: state === "linked" ? "ok" : "bad" })));
      }
    }
    return rows;
  }

  function drawGroup(entry) {
    const p = entry.placement;
    const sender = p && p.sender_node ? `${str(p.sender_member)} on node ${str(p.sender_node)}` : "none placed";
    const receivers = ((p && p.receivers) || []).map((r) => {
      const how = str(r.node) === str(p.sender_node) ? "local" : `${str(r.provider) || "?"}, ${r.linked ? "linked" : `not linked${r.error ? `: ${str(r.error)}` : ""}`}`;
      return `${str(r.node)} (${fmtInt(r.members)} · ${how})`;
    }).join("; ");
    const head = h("div", { class: "mgroup-head" },
      h("h3", { "data-role": "urn" }, entry.urn),
      h("span", { class: "meta" }, "sender ", h("b", { "data-role": "sender" }, sender)),
      h("span", { class: "meta" }, "receiving nodes ", h("b", { "data-role": "receivers" }, receivers || (p ? "none" : "not placed (local)"))));
    const rows = groupRows(entry);
    const body = rows.length
      ? table("groups", ["node", "member / link", "frames", "frames/s", "bytes", "dropped / incomplete", "queue", "latency p50", "p99", "fabric"], rows)
      : h("p", { class: "muted" }, "no node reports counters for this group");
    return h("div", { class: "mgroup", "data-urn": entry.urn }, head, body);
  }

  // -- bridges, connections, nodes -----------------------------------------------------------------------
  function drawBridges(nodes) {
    const rows = [];
    for (const n of nodes) {
      for (const b of (n.stats && n.stats.bridges) || []) {
        const egress = b.direction === "egress";
        const dropped = { ...(b.dropped || {}) };
        rows.push(h("tr", { "data-bridge": str(b.name), "data-node": str(n.node), "data-pacing-class": str(b.pacing_class) },
          cell(str(n.node)), cell(str(b.name), { class: "strong" }), cell(str(b.direction)), cell(str(b.group)), cell(str(b.address)),
          cell(fmtInt(b.frames)), cell(rate(`b\u0000${str(n.node)}\u0000${str(b.name)}`, b.frames)), cell(fmtBytes(b.bytes)), cell(fmtInt(b.packets)), cell(egress ? "" : fmtInt(b.lost_packets)),
          cell(egress ? "" : reasons(b.incomplete)), cell(reasons(dropped)), cell(fmtInt(b.queue_depth)),
          cell(egress ? `${str(b.pacing)}: ${str(b.pacing_class)}` : "", { "data-role": "pacing" }),
          cell(egress ? fmtInt(b.late_packets) : "")));
      }
    }
    if (!rows.length) return null;
    return h("div", { class: "mblock" }, h("h3", {}, "ST 2110 bridges"),
      table("bridges", ["node", "bridge", "dir", "group", "address", "frames", "frames/s", "bytes", "packets", "lost pkts", "incomplete",
        "dropped", "queue", "pacing: measured class", "late pkts"], rows));
  }

  function drawConnections(nodes) {
    const rows = [];
    for (const n of nodes) {
      for (const c of (n.stats && n.stats.connections) || []) {
        rows.push(h("tr", { "data-connection": str(c.connection), "data-node": str(n.node) },
          cell(str(n.node)), cell(str(c.connection), { class: "strong" }), cell(str(c.app) || "–"),
          cell(c.direction === "tx" ? "app sends" : c.direction === "rx" ? "app receives" : str(c.direction)),
          cell(str(c.target)), cell(`${num(c.pid)} / ${num(c.uid)}`), cell(fmtInt(c.frames)),
          cell(rate(`c\u0000${str(n.node)}\u0000${str(c.connection)}`, c.frames)), cell(fmtBytes(c.bytes)),
          cell(reasons(c.drops), { class: total(c.drops) ? "bad" : "" }), cell(fmtInt(c.queue_depth)),
          cell(fmtUs(c.has_latency, c.latency_p50_us)), cell(fmtUs(c.has_latency, c.latency_p99_us)),
          cell(c.attached ? "attached" : "waiting", { class: c.attached ? "ok" : "muted" })));
      }
    }
    if (!rows.length) return null;
    return h("div", { class: "mblock" }, h("h3", {}, "app connections"),
      table("connections", ["node", "connection", "app", "direction", "group / target", "pid / uid", "frames", "frames/s", "bytes",
        "dropped", "queue", "latency p50", "p99", "memif"], rows));
  }

  function drawNodes(nodes) {
    const items = nodes.map((n) => {
      const stats = n.stats || {};
      const providers = (stats.endpoints || []).map((e) => str(e.provider)).join(", ") || "no fabric";
      const dropped = reasons(stats.dropped);
      const what = n.error ? `no answer: ${str(n.error)}`
        : `${providers} · ${plural((stats.groups || []).length, "group")} · ${plural(num(stats.apps), "app")}${dropped ? ` · dropped ${dropped}` : ""}`
          + (num(stats.left_out) ? ` · ${fmtInt(stats.left_out)} rows left out` : "");
      return h("li", { "data-node": str(n.node), class: n.error ? "bad" : "" }, h("b", {}, str(n.node)), ` ${what}`);
    });
    return items.length ? h("ul", { class: "mnodes" }, ...items) : null;
  }

  function render(data) {
    const listed = num(data.listed_at_ms) || Date.now();
    if (listed !== now) {
      now = listed;
      nextSamples = new Map();
      nextRates = new Map();
    }
    const nodes = (data.nodes || []).slice().sort((a, b) => (str(a.node) < str(b.node) ? -1 : 1));
    const groups = byUrn(data);
    const section = document.getElementById("media");
    const any = groups.length || nodes.some((n) => ((n.stats && n.stats.bridges) || []).length || ((n.stats && n.stats.connections) || []).length);
    section.hidden = !any;
    document.body.dataset.media = any ? "1" : "0";   // the "no streams" box makes room for the groups
    document.getElementById("media-body").replaceChildren(
      ...[drawNodes(nodes), ...groups.map(drawGroup), drawBridges(nodes), drawConnections(nodes)].filter(Boolean));
    if (nextSamples !== null) {
      samples = nextSamples;
      rates = nextRates;
      nextSamples = nextRates = null;
    }
  }

  async function poll() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    const status = document.getElementById("media-status");
    try {
      const response = await fetch("/api/media", { cache: "no-store", signal: controller.signal });
      let body = null;
      try { body = await response.json(); } catch (_) { body = null; }
      if (!response.ok) throw new Error((body && body.error) || `HTTP ${response.status}`);
      render(body);
      polls += 1;
      document.getElementById("media").dataset.polls = String(polls);
      status.textContent = "";
      document.getElementById("media-body").classList.remove("stale");
    } catch (err) {
      status.textContent = `cannot list media groups: ${err.name === "AbortError" ? "timed out" : err.message}`;
      document.getElementById("media-body").classList.add("stale");
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
