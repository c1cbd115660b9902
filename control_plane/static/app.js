// msm web page: polls /api/streams, keeps a short history per series, draws SVG.
// Plain JS, no libraries, no network besides this page's own origin.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  // ?interval=MS polls faster or slower (tests use it); clamped so a typo cannot hammer the proxies.
  const POLL_MS = Math.min(10000, Math.max(200, Number(params.get("interval")) || 1000));
  // The plots show the last 120 samples (2 minutes at the default interval): enough to see a
  // trend, small enough that a page left open all day stays a few hundred kB.
  const MAX_SAMPLES = 120;
  const WINDOW_MS = MAX_SAMPLES * POLL_MS;
  const FETCH_TIMEOUT_MS = 8000;
  const SVG_NS = "http://www.w3.org/2000/svg";
  const VIEWER_COLORS = ["#c792ea", "#7fdbca", "#ff9e64", "#82aaff", "#e6db74", "#f78c6c", "#a3be8c", "#ff79c6"];
  const METRICS = [
    { key: "bitrate", label: "bitrate", color: "var(--bitrate)", floor: 10000, fmt: fmtRate, axis: fmtRateShort },
    { key: "loss", label: "loss % (per interval)", color: "var(--loss)", floor: 1, fmt: (v) => `${fmtNum(v, 2)} %`, axis: (v) => `${fmtNum(v, v < 10 ? 1 : 0)}%` },
    { key: "jitter", label: "jitter ms", color: "var(--jitter)", floor: 1, fmt: (v) => `${fmtNum(v, 2)} ms`, axis: (v) => `${fmtNum(v, v < 10 ? 1 : 0)}` },
  ];

  // -- history -----------------------------------------------------------------------------------
  // key -> {t: [], bitrate: [], loss: [], jitter: [], prev: {...}}; values may be null (no data).
  const history = new Map();
  const viewerColors = new Map();   // session tag -> color, stable for the page's life
  let polls = 0;

  function series(key) {
    let s = history.get(key);
    if (!s) {
      s = { t: [], bitrate: [], loss: [], jitter: [], prev: null };
      history.set(key, s);
    }
    return s;
  }

  function push(s, t, values) {
    s.t.push(t);
    for (const m of METRICS) s[m.key].push(values[m.key] ?? null);
    if (s.t.length > MAX_SAMPLES) {
      s.t.shift();
      for (const m of METRICS) s[m.key].shift();
    }
  }

  // Series not updated for a whole window belong to streams or viewers that are gone.
  function prune(now, seenSessions) {
    for (const [key, s] of history) {
      if (!s.t.length || now - s.t[s.t.length - 1] > WINDOW_MS) history.delete(key);
    }
    for (const id of viewerColors.keys()) if (!seenSessions.has(id)) viewerColors.delete(id);
  }

  // Each viewer keeps its color while it stays; a new one takes the first color not in use.
  function colorOf(key) {
    if (!viewerColors.has(key)) {
      const used = new Set(viewerColors.values());
      const free = VIEWER_COLORS.find((c) => !used.has(c));
      viewerColors.set(key, free || VIEWER_COLORS[viewerColors.size % VIEWER_COLORS.length]);
    }
    return viewerColors.get(key);
  }

  const num = (v) => Number(v ?? 0) || 0;   // proto3 JSON gives 64-bit integers as strings
  // The source flow feeds each other node through one leg named relay@<node>: a hop, not a viewer.
  const isRelayLeg = (leg) => String((leg && leg.leg_id) || "").startsWith("relay@");
  // Viewers are known by their session tag (a short hash): session ids are never published.
  const viewerKey = (viewer) => String((viewer && (viewer.session_tag || viewer.session_id)) || "");
  const isRelaySession = (viewer) => viewerKey(viewer).startsWith("relay@");

  function record(data, now) {
    const seenSessions = new Set();
    for (const stream of data.streams || []) {
      for (const viewer of stream.viewers || []) seenSessions.add(viewerKey(viewer));
      const flowTrack = new Map();   // flow id -> track index, to place viewer legs
      for (const ts of stream.tracks || []) {
        const index = num(ts.track && ts.track.index);
        const flow = ts.flow || {};
        if (flow.flow_id) flowTrack.set(flow.flow_id, index);
        for (const relay of ts.relays || []) if (relay.flow_id) flowTrack.set(relay.flow_id, index);
        const s = series(`${stream.name}\u0000${index}\u0000ingress`);
        const expected = num(flow.packets_expected);
        const lost = num(flow.packets_lost);
        let loss = null;
        if (s.prev && expected >= s.prev.expected) {
          const dExpected = expected - s.prev.expected;
          if (dExpected > 0) loss = (100 * Math.max(0, lost - s.prev.lost)) / dExpected;
        } else if (expected > 0) {
          loss = (100 * Math.max(0, lost)) / expected;   // first sample, or the flow was re-created
        }
        s.prev = { expected, lost };
        push(s, now, { bitrate: num(flow.bitrate_bps), loss, jitter: num(flow.jitter_ms) });
      }
      for (const viewer of stream.viewers || []) {
        if (isRelaySession(viewer)) continue;
        for (const leg of viewer.legs || []) {
          if (isRelayLeg(leg)) continue;
          const index = flowTrack.has(leg.flow_id) ? flowTrack.get(leg.flow_id) : num(leg.labels && leg.labels.track);
          const s = series(`${stream.name}\u0000${index}\u0000v:${viewerKey(viewer)}`);
          const bytes = num(leg.bytes_sent);
          let bitrate = null;
          if (s.prev && bytes >= s.prev.bytes && now > s.prev.t) {
            bitrate = ((bytes - s.prev.bytes) * 8 * 1000) / (now - s.prev.t);
          }
          s.prev = { bytes, t: now };
          push(s, now, {
            bitrate,
            loss: leg.has_report ? 100 * num(leg.viewer_fraction_lost) : null,
            jitter: leg.has_report ? num(leg.viewer_jitter_ms) : null,
          });
        }
      }
    }
    prune(now, seenSessions);
  }

  // -- formatting ----------------------------------------------------------------------------------
  function fmtNum(v, digits) {
    return Number(v).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }
  function fmtInt(v) { return Math.round(num(v)).toLocaleString("en-US"); }
  function fmtRate(bps) {
    if (bps >= 1e6) return `${fmtNum(bps / 1e6, 2)} Mbit/s`;
    if (bps >= 1e3) return `${fmtNum(bps / 1e3, 0)} kbit/s`;
    return `${fmtNum(bps, 0)} bit/s`;
  }
  function fmtRateShort(bps) {
    if (bps >= 1e6) return `${fmtNum(bps / 1e6, bps >= 1e7 ? 0 : 1)}M`;
    if (bps >= 1e3) return `${fmtNum(bps / 1e3, 0)}k`;
    return fmtNum(bps, 0);
  }
  function pct(part, whole) { return whole > 0 ? (100 * Math.max(0, part)) / whole : 0; }
  function clip(text, max) { return text.length > max ? `${text.slice(0, max - 1)}…` : text; }
  function stateClass(state) {
    if (state === "playing") return "playing";
    if (["connecting", "described", "ready", "opening"].includes(state)) return "warn";
    if (["down", "failed"].includes(state)) return "bad";
    return "idle";
  }

  // -- DOM helpers ----------------------------------------------------------------------------------
  function h(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, v);
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  function svg(tag, attrs = {}, ...children) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) e.setAttribute(k, v);
    for (const c of children) if (c !== null && c !== undefined) e.append(c);
    return e;
  }
  function text(x, y, content, attrs = {}, full = null) {
    const t = svg("text", { x, y, ...attrs }, content);
    if (full && full !== content) t.append(svg("title", {}, full));
    return t;
  }

  // -- the stream graph -------------------------------------------------------------------------------
  const G = { width: 1280, pad: 14, line: 17, head: 40, gap: 14, rowGap: 22, trunk: 26,
              src: { x: 10, w: 250 }, proxy: { x: 420, w: 330 }, viewer: { x: 940, w: 330 } };

  function nodeHeight(lines) { return G.head + lines * G.line + 8; }

  // A node box: a small kind label, a title with an optional status badge, then lines of text.
  function drawNode({ x, y, w, kind, cls, title, titleFull, badge, badgeClass, lines, attrs }) {
    const g = svg("g", { class: `node ${cls}`, transform: `translate(${x},${y})`, ...attrs });
    g.append(svg("rect", { class: "box", width: w, height: nodeHeight(lines.length), rx: 8 }));
    g.append(text(12, 16, kind.toUpperCase(), { class: "kind" }));
    g.append(text(12, 33, title, { class: "title" }, titleFull));
    if (badge) {
      g.append(svg("circle", { cx: w - 14, cy: 13, r: 4.5, class: `st-${badgeClass}` }));
      g.append(text(w - 24, 17, badge, { class: `small st-${badgeClass}`, "text-anchor": "end", "data-role": "state" }));
    }
    lines.forEach((line, i) => {
      g.append(text(12, G.head + 12 + i * G.line, line.text, { class: `small ${line.cls || ""}`, ...(line.attrs || {}) }, line.full));
    });
    return g;
  }

  function edgePath(x1, y1, x2, y2) {
    const mx = (x1 + x2) / 2;
    return `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`;
  }

  function nodeName(flow) {
    // A relay flow's id ends in @<node>; FlowStats.node says it too, and wins.
    const id = String(flow.flow_id || "");
    return flow.node || (id.includes("@") ? id.slice(id.lastIndexOf("@") + 1) : "?");
  }

  // Who carries the stream: the source flow's node (one "proxy" box), then each node the source
  // relays to (one "relay" box per node, for every track relayed there), and the viewers each feeds.
  function topology(stream) {
    const tracks = (stream.tracks || []).map((ts) => ({ track: ts.track || {}, flow: ts.flow || {}, relays: ts.relays || [] }));
    const sourceNodes = [...new Set(tracks.map((t) => t.flow.node).filter(Boolean))];
    const flows = new Map();   // flow id -> {node, kind}, to place viewer legs
    const relays = new Map();  // node -> {node, tracks: [{track, flow}]}, in the order the API gives
    for (const t of tracks) {
      const kind = t.track.kind || `track ${num(t.track.index)}`;
      if (t.flow.flow_id) flows.set(t.flow.flow_id, { node: t.flow.node || "", kind, relay: false });
      for (const flow of t.relays) {
        const node = nodeName(flow);
        if (!relays.has(node)) relays.set(node, { node, tracks: [] });
        relays.get(node).tracks.push({ track: t.track, flow });
        if (flow.flow_id) flows.set(flow.flow_id, { node, kind, relay: true });
      }
    }
    const source = { node: sourceNodes.join(","), title: sourceNodes.join(", "), tracks, viewers: [] };
    const groups = [source, ...[...relays.values()].map((r) => ({ ...r, viewers: [] }))];
    const byNode = new Map(groups.slice(1).map((g) => [g.node, g]));
    for (const v of stream.viewers || []) {
      if (isRelaySession(v)) continue;
      const legs = (v.legs || []).filter((leg) => !isRelayLeg(leg));
      // The node of the flow holding the viewer's legs feeds it; unknown flows stay on the source node.
      const fed = legs.map((leg) => flows.get(leg.flow_id)).find((f) => f && f.relay);
      const group = (fed && byNode.get(fed.node)) || source;
      const own = legs.map((leg) => flows.get(leg.flow_id)).find(Boolean);
      group.viewers.push({ v, legs, node: group === source ? (own && own.node) || sourceNodes[0] || "" : group.node });
    }
    return { tracks, flows, groups, relayed: groups.length > 1 };
  }

  // Two lines per track: what it is, then its ingress at this node (bitrate, loss, jitter).
  function flowLines(tracks) {
    const lines = [];
    for (const t of tracks) {
      const f = t.flow;
      const loss = pct(num(f.packets_lost), num(f.packets_expected));
      lines.push({ text: `${num(t.track.index)} · ${t.track.kind || "?"} · ${t.track.encoding || ""}`, cls: "muted" });
      lines.push({
        text: `${fmtRate(num(f.bitrate_bps))} · loss ${fmtNum(loss, 2)}% (${fmtInt(f.packets_lost)}) · jitter ${fmtNum(num(f.jitter_ms), 2)} ms`,
        attrs: { "data-track": num(t.track.index), "data-loss": loss.toFixed(3), "data-jitter": num(f.jitter_ms).toFixed(3), "data-bitrate": Math.round(num(f.bitrate_bps)) },
      });
    }
    return lines;
  }

  function drawGraph(stream) {
    const { tracks, flows, groups, relayed } = topology(stream);
    const kindOf = (leg) => (flows.get(leg.flow_id) || {}).kind || "leg";

    const srcLines = [
      { text: clip(stream.upstream_url || "", 40), full: stream.upstream_url, attrs: { "data-role": "url" } },
      { text: `upstream opened ${num(stream.upstream_sessions_opened)}×`, cls: "muted" },
    ];
    const srcH = nodeHeight(srcLines.length);

    // One row per proxy node: its box in the middle column, the viewers it feeds to the right.
    const rows = groups.map((g, i) => {
      const lines = flowLines(g.tracks);
      if (!lines.length) lines.push({ text: "no flows yet", cls: "muted" });
      const boxes = g.viewers.map(({ v, legs, node }) => {
        const lines = [{ text: relayed ? `session ${viewerKey(v)} · node ${node}` : `session ${viewerKey(v)}`, cls: "muted" }];
        for (const leg of legs) {
          let report = "no receiver report yet";
          if (leg.has_report) {
            report = `loss ${fmtNum(100 * num(leg.viewer_fraction_lost), 2)}% · jitter ${fmtNum(num(leg.viewer_jitter_ms), 2)} ms`;
            if (leg.rtt_ms !== undefined) report += ` · rtt ${fmtNum(num(leg.rtt_ms), 1)} ms`;
          }
          lines.push({ text: `${kindOf(leg)}: ${report}`, attrs: { "data-leg": leg.leg_id } });
        }
        return { v, legs, node, lines, h: nodeHeight(lines.length) };
      });
      const boxH = nodeHeight(lines.length);
      const viewersH = boxes.reduce((acc, b) => acc + b.h, 0) + G.gap * Math.max(0, boxes.length - 1);
      // The first row also holds the source box, level with the proxy it feeds.
      const slot = i === 0 ? Math.max(srcH, boxH, viewersH, 70) : Math.max(boxH, viewersH);
      return { g, lines, boxes, boxH, viewersH, slot };
    });
    let top = G.pad;
    for (const row of rows) {
      row.mid = top + row.slot / 2;
      top += row.slot + G.rowGap;
    }
    const height = top - G.rowGap + G.pad;
    const mid = rows[0].mid;

    const svgEl = svg("svg", { class: "graph", viewBox: `0 0 ${G.width} ${height}`, "data-stream": stream.name,
                             role: "img", "aria-label": `stream graph of ${stream.name}` });
    const edges = svg("g", { class: "edges" });
    const nodes = svg("g", { class: "nodes" });
    svgEl.append(edges, nodes);

    const sc = stateClass(stream.upstream_state);
    nodes.append(drawNode({
      x: G.src.x, y: mid - srcH / 2, w: G.src.w, kind: "source", cls: "source",
      title: clip(stream.name, 28), badge: stream.upstream_state || "unknown", badgeClass: sc, lines: srcLines,
      attrs: { "data-node": "source", "data-state": stream.upstream_state },
    }));

    // source -> proxy, labelled with what each track carries in.
    const live = tracks.some((t) => num(t.flow.bitrate_bps) > 0);
    const e1 = svg("g", { class: `edge ${live ? "live" : ""}`, "data-edge": "source-proxy" });
    e1.append(svg("path", { d: edgePath(G.src.x + G.src.w, mid, G.proxy.x, mid) }));
    tracks.forEach((t, i) => {
      const y = mid - 8 - (tracks.length - 1 - i) * 14;
      e1.append(text((G.src.x + G.src.w + G.proxy.x) / 2, y,
        `${t.track.kind || "?"} ${fmtRate(num(t.flow.bitrate_bps))}`, { "text-anchor": "middle" }));
    });
    edges.append(e1);

    const relayEdges = [];
    rows.forEach((row, i) => {
      const relay = i > 0;
      const node = row.g.node;
      nodes.append(drawNode({
        x: G.proxy.x, y: row.mid - row.boxH / 2, w: G.proxy.w, kind: relay ? "relay proxy" : "rtp proxy",
        cls: relay ? "relay" : "proxy", title: `node ${(relay ? node : row.g.title) || "?"}`, titleFull: relay ? `node ${node}, fed by node ${groups[0].node || "?"}` : null,
        lines: row.lines, attrs: { "data-node": relay ? "relay" : "proxy", "data-proxy-node": node },
      }));
      if (relay) relayEdges.push(relayEdge(rows[0], row));
      drawViewers(edges, nodes, row, kindOf);
    });
    // The edges share the trunk: the farthest first, so each nearer one is drawn over it, and the
    // live ones over the idle ones, so the trunk is lit wherever it carries media.
    relayEdges.reverse().sort((a, b) => a.live - b.live);
    edges.prepend(...relayEdges.map((e) => e.g));
    if (!rows.some((row) => row.boxes.length)) {
      nodes.append(text(G.viewer.x + 12, mid + 4, "no viewers", { class: "muted", "data-role": "no-viewers" }));
    }
    return svgEl;
  }

  // proxy -> relay: down a trunk left of the proxy column, into the relay box, labelled with what
  // each relayed track brings in to that node.
  function relayEdge(from, row) {
    const x = G.proxy.x;
    const tx = x - G.trunk;
    const y1 = from.mid + Math.min(from.boxH / 2 - 12, 24);   // below the source edge arriving at mid
    const y2 = row.mid;
    const r = 8;
    const live = row.g.tracks.some((t) => num(t.flow.bitrate_bps) > 0);
    const e = svg("g", { class: `edge relay ${live ? "live" : ""}`, "data-edge": "proxy-relay", "data-proxy-node": row.g.node });
    e.append(svg("path", { d: `M${x},${y1} H${tx + r} Q${tx},${y1} ${tx},${y1 + r} V${y2 - r} Q${tx},${y2} ${tx + r},${y2} H${x - 1}` }));
    e.append(svg("path", { class: "arrow", d: `M${x - 8},${y2 - 4.5} L${x - 1},${y2} L${x - 8},${y2 + 4.5} Z` }));
    row.g.tracks.forEach((t, i) => {
      e.append(text(tx - 8, y2 + 4 + (i - (row.g.tracks.length - 1) / 2) * 14,
        `${t.track.kind || "?"} ${fmtRate(num(t.flow.bitrate_bps))}`, { "text-anchor": "end", "data-track": num(t.track.index) }));
    });
    return { g: e, live };
  }

  // proxy (or relay) -> each viewer it feeds, labelled with the packets sent on each leg.
  function drawViewers(edges, nodes, row, kindOf) {
    const mid = row.mid;
    let y = mid - row.viewersH / 2;
    for (const box of row.boxes) {
      const v = box.v;
      const vy = y + box.h / 2;
      const color = colorOf(viewerKey(v));
      const legs = box.legs;
      const on = v.playing && legs.some((l) => l.enabled);
      const e = svg("g", { class: `edge ${on ? "live" : "off"}`, "data-edge": "proxy-viewer", "data-viewer": viewerKey(v) });
      e.append(svg("path", { d: edgePath(G.proxy.x + G.proxy.w, mid, G.viewer.x, vy) }));
      // Labels sit on the side of the edge's end away from the curve: above it when the
      // viewer is above the proxy's middle (the curve arrives from below), below it otherwise.
      const below = vy > mid + 1;
      legs.forEach((leg, i) => {
        const ly = below ? vy + 16 + i * 14 : vy - 8 - (legs.length - 1 - i) * 14;
        e.append(text(G.viewer.x - 10, ly,
          `${kindOf(leg)} ${fmtInt(leg.packets_sent)} pkts`,
          { "text-anchor": "end", "data-role": "sent", "data-packets": num(leg.packets_sent) }));
      });
      edges.append(e);
      const node = drawNode({
        x: G.viewer.x, y, w: G.viewer.w, kind: "viewer", cls: `viewer ${v.playing ? "playing" : "paused"}`,
        title: clip(v.host || "viewer", 30), badge: v.playing ? "playing" : "paused",
        badgeClass: v.playing ? "playing" : "warn", lines: box.lines,
        attrs: { "data-viewer": viewerKey(v), "data-playing": String(!!v.playing), "data-fed-by": box.node },
      });
      node.append(svg("rect", { x: 0, y: 8, width: 3, height: box.h - 16, fill: color }));
      nodes.append(node);
      y += box.h + G.gap;
    }
  }

  // -- the time-series charts ---------------------------------------------------------------------------
  const C = { w: 400, h: 190, left: 48, right: 12, top: 30, bottom: 24 };

  function niceMax(v, floor) {
    const top = Math.max(v, floor);
    const p = 10 ** Math.floor(Math.log10(top));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= top) return m * p;
    return 10 * p;
  }

  function points(s, key, now, ymax) {
    const pw = C.w - C.left - C.right;
    const ph = C.h - C.top - C.bottom;
    const out = [];
    s.t.forEach((t, i) => {
      const v = s[key][i];
      if (v === null || v === undefined || !Number.isFinite(v)) return;
      const x = C.left + pw * (1 - (now - t) / WINDOW_MS);
      const y = C.top + ph * (1 - Math.min(v, ymax) / ymax);
      out.push(`${x.toFixed(1)},${y.toFixed(1)}`);
    });
    return out;
  }

  function drawChart(stream, index, metric, ingress, viewerSeries, now) {
    const values = [ingress, ...viewerSeries.map((v) => v.s)].flatMap((x) => (x ? x[metric.key] : []))
      .filter((v) => v !== null && Number.isFinite(v));
    const ymax = niceMax(values.length ? Math.max(...values) : 0, metric.floor);
    const pw = C.w - C.left - C.right;
    const ph = C.h - C.top - C.bottom;
    const svgEl = svg("svg", { class: "chart", viewBox: `0 0 ${C.w} ${C.h}`, "data-stream": stream,
                             "data-track": index, "data-metric": metric.key, "data-ymax": ymax });
    svgEl.append(text(10, 18, metric.label, { class: "title", style: `fill:${metric.color}` }));
    const last = ingress ? ingress[metric.key].filter((v) => v !== null).at(-1) : undefined;
    svgEl.append(text(C.w - C.right, 18, last === undefined ? "–" : metric.fmt(last),
      { class: "value", "text-anchor": "end", "data-role": "current" }));
    // grid and y labels
    for (const f of [0, 0.25, 0.5, 0.75, 1]) {
      const y = C.top + ph * (1 - f);
      svgEl.append(svg("line", { class: f === 0 ? "axis" : "grid", x1: C.left, x2: C.w - C.right, y1: y, y2: y }));
      if (f === 0 || f === 0.5 || f === 1) {
        svgEl.append(text(C.left - 6, y + 4, metric.axis(ymax * f), { class: "small muted", "text-anchor": "end" }));
      }
    }
    svgEl.append(svg("line", { class: "axis", x1: C.left, x2: C.left, y1: C.top, y2: C.top + ph }));
    // x labels: seconds ago
    const span = WINDOW_MS / 1000;
    for (const f of [0, 0.5, 1]) {
      const x = C.left + pw * f;
      const label = f === 1 ? "now" : `-${fmtNum(span * (1 - f), 0)} s`;
      svgEl.append(text(x, C.h - 6, label, { class: "small muted", "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle" }));
    }
    for (const v of viewerSeries) {
      const pts = points(v.s, metric.key, now, ymax);
      svgEl.append(svg("polyline", { class: "series viewer", points: pts.join(" "), stroke: v.color,
                                   "data-metric": metric.key, "data-viewer": v.id, "data-points": pts.length }));
    }
    if (ingress) {
      const pts = points(ingress, metric.key, now, ymax);
      svgEl.append(svg("polyline", { class: "series ingress", points: pts.join(" "), style: `stroke:${metric.color}`,
                                   "data-metric": metric.key, "data-series": "ingress", "data-points": pts.length }));
      if (!pts.length) svgEl.append(text(C.left + pw / 2, C.top + ph / 2, "no data yet", { class: "nodata", "text-anchor": "middle" }));
    }
    return svgEl;
  }

  function drawTrack(stream, ts, now) {
    const track = ts.track || {};
    const flow = ts.flow || {};
    const index = num(track.index);
    const ingress = history.get(`${stream.name}\u0000${index}\u0000ingress`);
    const viewerSeries = (stream.viewers || []).filter((v) => !isRelaySession(v))
      .map((v) => ({ id: viewerKey(v), host: v.host, color: colorOf(viewerKey(v)),
                     s: history.get(`${stream.name}\u0000${index}\u0000v:${viewerKey(v)}`) }))
      .filter((v) => v.s);
    const head = h("div", { class: "track-head" },
      h("h3", {}, `track ${index} · ${track.kind || "?"}`),
      h("span", { class: "meta" }, [
        track.encoding, track.clock_rate ? `${fmtNum(num(track.clock_rate) / 1000, 0)} kHz clock` : null,
        `${fmtInt(flow.packets_received)} packets in`, `ssrc ${num(flow.ssrc).toString(16).padStart(8, "0")}`,
        flow.node ? `proxy node ${flow.node}` : null,
        (ts.relays || []).length ? `relayed to ${(ts.relays || []).map(nodeName).join(", ")}` : null,
      ].filter(Boolean).join(" · ")));
    const charts = h("div", { class: "charts" },
      ...METRICS.map((m) => drawChart(stream.name, index, m, ingress, viewerSeries, now)));
    const legend = h("div", { class: "legend" },
      h("span", {}, h("span", { class: "swatch", style: "background: var(--text)" }), "ingress at the proxy"),
      ...viewerSeries.map((v) => h("span", { "data-viewer": v.id },
        h("span", { class: "swatch dashed", style: `color:${v.color}` }), `viewer ${v.host || ""} (${clip(v.id, 12)})`)));
    return h("div", { class: "track", "data-stream": stream.name, "data-track": index }, head, charts, legend);
  }

  function drawStream(stream, now) {
    const viewers = (stream.viewers || []).filter((v) => !isRelaySession(v));
    const playing = viewers.filter((v) => v.playing).length;
    const state = stream.upstream_state || "unknown";
    const head = h("div", { class: "stream-head" },
      h("h2", {}, stream.name),
      h("span", { class: `badge state-${state}`, "data-role": "state" }, state),
      h("span", { class: "meta" }, "upstream ", h("b", {}, stream.upstream_url || "?")),
      h("span", { class: "meta" }, "viewers ", h("b", { "data-role": "viewers" }, `${playing}/${viewers.length}`), " playing"));
    return h("section", { class: "stream", id: `stream-${stream.name}`, "data-stream": stream.name }, head,
      drawGraph(stream), ...(stream.tracks || []).map((ts) => drawTrack(stream, ts, now)));
  }

  // -- polling -----------------------------------------------------------------------------------------
  function setStatus(state, message) {
    const el = document.getElementById("status");
    el.dataset.state = state;
    document.getElementById("status-text").textContent = message;
    // On errors the last drawing stays up, dimmed, so it is not mistaken for live numbers.
    document.getElementById("streams").classList.toggle("stale", state === "error");
  }

  function render(data, now) {
    const streams = (data.streams || []).slice().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    document.getElementById("empty").hidden = streams.length > 0;
    document.getElementById("streams").replaceChildren(...streams.map((st) => drawStream(st, now)));
  }

  async function poll() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), FETCH_TIMEOUT_MS);
    try {
      const response = await fetch("/api/streams", { cache: "no-store", signal: controller.signal });
      let body = null;
      try { body = await response.json(); } catch (_) { body = null; }
      if (!response.ok) {
        throw new Error((body && body.error) || `HTTP ${response.status}`);
      }
      const now = Date.now();
      record(body, now);
      render(body, now);
      polls += 1;
      document.body.dataset.polls = String(polls);
      setStatus("ok", `live · updated ${new Date(now).toLocaleTimeString("en-GB")} · every ${POLL_MS % 1000 ? `${POLL_MS} ms` : `${POLL_MS / 1000} s`}`);
    } catch (err) {
      setStatus("error", `cannot list streams: ${err.name === "AbortError" ? "timed out" : err.message}`);
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
  }

  document.getElementById("window-text").textContent = `${fmtNum(WINDOW_MS / 1000, 0)} s`;
  poll();
})();
