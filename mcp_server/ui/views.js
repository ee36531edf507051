/* Infrastructor views: rendering (table, sparkline, chart, diff), theme, and the MCP Apps bridge.
   No framework, no network, no eval, no inline handlers or style attributes: every value from a tool result
   reaches the page as text (textContent / SVG attributes), so a hostile hostname or file line stays inert. */
"use strict";
const InfraUI = (() => {
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    for (const child of children.flat()) node.append(child instanceof Node ? child : String(child));
    return node;
  }

  function fmt(value, digits = 1, unit = "") {
    if (value === null || value === undefined || Number.isNaN(value)) return "\u2013";
    const abs = Math.abs(value);
    const text = abs >= 1e9 ? (value / 1e9).toFixed(1) + "G" : abs >= 1e6 ? (value / 1e6).toFixed(1) + "M"
      : abs >= 1e4 ? (value / 1e3).toFixed(1) + "k" : value.toFixed(digits);
    return unit ? `${text} ${unit}`.replace(" %", "%") : text;
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "\u2013";
    const d = Math.floor(seconds / 86400), h = Math.floor((seconds % 86400) / 3600);
    return d ? `${d}d ${h}h` : `${h}h ${Math.floor((seconds % 3600) / 60)}m`;
  }

  // ---- theme: prefers-color-scheme by default; the host's theme and style variables when it sends them
  function applyTheme(context) {
    if (!context) return;
    if (context.theme === "light" || context.theme === "dark") {
      document.documentElement.setAttribute("data-theme", context.theme);
    }
    const vars = context.styles && context.styles.variables;
    if (vars && typeof vars === "object") {
      for (const [key, value] of Object.entries(vars)) {
        if (/^--[a-z0-9-]+$/.test(key) && typeof value === "string" && value.length < 200) {
          document.documentElement.style.setProperty(key, value);
        }
      }
    }
  }

  // ---- sparkline: a small inline SVG of values (nulls skipped)
  function sparkline(values, label, opts = {}) {
    const w = opts.width || 80, h = opts.height || 20, pad = 2;
    const shown = values.filter((v) => v !== null && v !== undefined);
    const node = svg("svg", { class: "spark", width: w, height: h, viewBox: `0 0 ${w} ${h}`, role: "img",
      "aria-label": shown.length ? `${label}: ${shown.length} points, last ${fmt(shown[shown.length - 1])}`
        : `${label}: no history` });
    if (shown.length < 2) return node;
    const lo = opts.min ?? Math.min(...shown), hi = opts.max ?? Math.max(...shown), span = hi - lo || 1;
    const step = (w - 2 * pad) / (values.length - 1);
    const coords = [];
    values.forEach((v, i) => {
      if (v === null || v === undefined) return;
      coords.push(`${(pad + i * step).toFixed(1)},${(h - pad - ((v - lo) / span) * (h - 2 * pad)).toFixed(1)}`);
    });
    node.append(svg("polyline", { class: "line" + (opts.alt ? " alt" : ""), points: coords.join(" ") }));
    return node;
  }

  // ---- line chart: avg line with a min..max band and one marker per point
  function chart(points, opts = {}) {
    const w = opts.width || 640, h = opts.height || 220, left = 44, right = 8, top = 8, bottom = 22;
    const node = svg("svg", { class: "chart", width: "100%", viewBox: `0 0 ${w} ${h}`, role: "img",
      "aria-label": opts.label || "chart" });
    if (!points.length) return node;
    const times = points.map((p) => Date.parse(p.t));
    const t0 = Math.min(...times), t1 = Math.max(...times), tspan = t1 - t0 || 1;
    let lo = Math.min(...points.map((p) => p.min)), hi = Math.max(...points.map((p) => p.max));
    if (opts.unit === "%") { lo = Math.min(lo, 0); hi = Math.max(hi, 1); }
    const vspan = hi - lo || 1;
    const x = (t) => left + ((t - t0) / tspan) * (w - left - right);
    const y = (v) => top + (1 - (v - lo) / vspan) * (h - top - bottom);
    node.append(svg("line", { class: "axis", x1: left, y1: h - bottom, x2: w - right, y2: h - bottom }));
    node.append(svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: h - bottom }));
    for (const v of [lo, (lo + hi) / 2, hi]) {
      node.append(svg("text", { x: left - 4, y: y(v) + 4, "text-anchor": "end" }, fmt(v)));
    }
    const label = (t) => new Date(t).toISOString().slice(5, 16).replace("T", " ");
    node.append(svg("text", { x: left, y: h - 6 }, label(t0)));
    node.append(svg("text", { x: w - right, y: h - 6, "text-anchor": "end" }, label(t1) + " UTC"));
    const upper = points.map((p, i) => `${x(times[i]).toFixed(1)},${y(p.max).toFixed(1)}`);
    const lower = points.map((p, i) => `${x(times[i]).toFixed(1)},${y(p.min).toFixed(1)}`).reverse();
    node.append(svg("polygon", { class: "band", points: upper.concat(lower).join(" ") }));
    node.append(svg("polyline", { class: "line",
      points: points.map((p, i) => `${x(times[i]).toFixed(1)},${y(p.avg).toFixed(1)}`).join(" ") }));
    const marks = svg("g", { class: "points" });
    points.forEach((p, i) => {
      marks.append(svg("circle", { class: "pt", cx: x(times[i]).toFixed(1), cy: y(p.avg).toFixed(1), r: 2.5 },
        svg("title", {}, `${label(times[i])}: avg ${fmt(p.avg)}, min ${fmt(p.min)}, max ${fmt(p.max)}`)));
    });
    node.append(marks);
    return node;
  }

  // ---- sortable table: columns {key, label, num, render(row) -> Node|string, value(row)}
  function table(columns, rows, opts = {}) {
    let sortKey = opts.sortKey || null, dir = opts.dir || "ascending";
    const tbody = el("tbody");
    const heads = columns.map((c) => {
      const th = el("th", { scope: "col", class: c.num ? "num" : null });
      if (c.sortable === false) th.append(c.label);
      else th.append(el("button", { type: "button" }, c.label));
      return th;
    });
    const compare = (a, b) => {
      if (!sortKey) return opts.order ? opts.order(a, b) : 0;
      const col = columns.find((c) => c.key === sortKey);
      const va = col.value ? col.value(a) : a[col.key], vb = col.value ? col.value(b) : b[col.key];
      const missing = (v) => v === null || v === undefined;
      if (missing(va) || missing(vb)) return missing(va) - missing(vb); // missing values last
      const r = typeof va === "number" ? va - vb : String(va).localeCompare(String(vb));
      return dir === "ascending" ? r : -r;
    };
    const render = () => {
      columns.forEach((c, i) => {
        if (c.key === sortKey) heads[i].setAttribute("aria-sort", dir);
        else heads[i].removeAttribute("aria-sort");
      });
      tbody.replaceChildren(...[...rows].sort(compare).map((row) => el("tr",
        { class: opts.rowClass ? opts.rowClass(row) : null },
        columns.map((c, i) => (i === 0 ? el("th", { scope: "row" }, c.render ? c.render(row) : row[c.key])
          : el("td", { class: c.num ? "num" : null }, c.render ? c.render(row) : fmt(row[c.key])))))));
    };
    columns.forEach((c, i) => {
      const button = heads[i].querySelector("button");
      if (!button) return;
      button.addEventListener("click", () => {
        dir = sortKey === c.key && dir === "ascending" ? "descending" : "ascending";
        sortKey = c.key;
        render();
      });
    });
    render();
    const node = el("div", { class: "scroll" }, el("table", { class: "data" },
      opts.caption ? el("caption", { class: "sr-only" }, opts.caption) : null,
      el("thead", {}, el("tr", {}, heads)), tbody));
    node.refresh = render;
    return node;
  }

  // ---- side-by-side diff of a unified diff: removed lines left, added right, paired within a change
  function parseDiff(text) {
    const rows = [];
    let oldNo = 0, newNo = 0, dels = [], adds = [];
    const flush = () => {
      for (let i = 0; i < Math.max(dels.length, adds.length); i++) rows.push({ kind: "change", old: dels[i], new: adds[i] });
      dels = []; adds = [];
    };
    for (const line of text.split("\n")) {
      if (line.startsWith("---") || line.startsWith("+++")) continue;
      const hunk = /^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@(.*)$/.exec(line);
      if (hunk) { flush(); oldNo = +hunk[1]; newNo = +hunk[2]; rows.push({ kind: "hunk", text: line }); continue; }
      if (line.startsWith("-")) dels.push({ no: oldNo++, text: line.slice(1) });
      else if (line.startsWith("+")) adds.push({ no: newNo++, text: line.slice(1) });
      else if (line.startsWith(" ")) { flush(); rows.push({ kind: "same", old: { no: oldNo++, text: line.slice(1) }, new: { no: newNo++, text: line.slice(1) } }); }
    }
    flush();
    return rows;
  }

  function diff(text, opts = {}) {
    const cells = (side, cls) => side ? [el("td", { class: "ln" }, side.no), el("td", { class: cls }, side.text)]
      : [el("td", { class: "ln" }), el("td")];
    const body = el("tbody", {}, parseDiff(text).map((r) => r.kind === "hunk"
      ? el("tr", { class: "hunk" }, el("td", { colspan: 4 }, r.text))
      : el("tr", { class: r.kind }, cells(r.old, r.kind === "change" ? "del" : "ctx"),
        cells(r.new, r.kind === "change" ? "add" : "ctx"))));
    return el("div", { class: "scroll" }, el("table", { class: "diff" },
      el("caption", { class: "sr-only" }, opts.caption || "Changes, old version left and new version right"),
      el("colgroup", {}, el("col", { class: "ln" }), el("col"), el("col", { class: "ln" }), el("col")),
      el("thead", { class: "sr-only" }, el("tr", {}, el("th", { scope: "col" }, "old line"),
        el("th", { scope: "col" }, opts.oldLabel || "old"), el("th", { scope: "col" }, "new line"),
        el("th", { scope: "col" }, opts.newLabel || "new"))), body));
  }

  function badge(text, kind) { return el("span", { class: `badge ${kind}` }, text); }

  // ---- MCP Apps bridge: JSON-RPC 2.0 over postMessage with the host (window.parent)
  function connect(name, handlers) {
    let nextId = 1;
    const pending = new Map();
    const send = (message) => window.parent.postMessage({ jsonrpc: "2.0", ...message }, "*");
    const request = (method, params) => new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve, reject });
      send({ id, method, params });
    });
    const notify = (method, params) => send({ method, params: params || {} });
    window.addEventListener("message", (event) => {
      if (event.source !== window.parent) return;
      const msg = event.data;
      if (!msg || msg.jsonrpc !== "2.0") return;
      if (msg.id !== undefined && !msg.method) {
        const waiting = pending.get(msg.id);
        if (!waiting) return;
        pending.delete(msg.id);
        if (msg.error) waiting.reject(new Error(msg.error.message || "host error"));
        else waiting.resolve(msg.result);
        return;
      }
      const params = msg.params || {};
      if (msg.method === "ui/notifications/tool-input" && handlers.input) handlers.input(params.arguments || {});
      else if (msg.method === "ui/notifications/tool-result" && handlers.result) handlers.result(params);
      else if (msg.method === "ui/notifications/tool-cancelled" && handlers.cancelled) handlers.cancelled(params);
      else if (msg.method === "ui/notifications/host-context-changed") applyTheme(params);
      else if (msg.method === "ui/resource-teardown" && msg.id !== undefined) send({ id: msg.id, result: {} });
      else if (msg.method === "ping" && msg.id !== undefined) send({ id: msg.id, result: {} });
    });
    const host = { capabilities: {}, request, notify };
    host.callTool = (tool, args) => request("tools/call", { name: tool, arguments: args });
    request("ui/initialize", {
      protocolVersion: "2026-01-26",
      appInfo: { name: `infrastructor-${name}`, version: "1" },
      appCapabilities: {},
    }).then((result) => {
      host.capabilities = (result && result.hostCapabilities) || {};
      applyTheme(result && result.hostContext);
      notify("ui/notifications/initialized");
      if (typeof ResizeObserver === "function") {
        let last = "";
        new ResizeObserver(() => {
          const box = document.body.getBoundingClientRect();
          const size = { width: Math.ceil(box.width), height: Math.ceil(box.height) };
          const key = `${size.width}x${size.height}`;
          if (key !== last) { last = key; notify("ui/notifications/size-changed", size); }
        }).observe(document.body);
      }
    }, (error) => console.warn("MCP Apps host did not initialize:", error.message));
    return host;
  }

  // A tool result's structured content, or its JSON text content (hosts may forward either).
  function structured(result) {
    if (result && result.structuredContent) return result.structuredContent;
    for (const block of (result && result.content) || []) {
      if (block.type === "text") { try { return JSON.parse(block.text); } catch { /* not JSON */ } }
    }
    return null;
  }

  function errorText(result) {
    const block = ((result && result.content) || []).find((b) => b.type === "text");
    return block ? block.text : "the tool failed";
  }

  return { el, svg, fmt, duration, applyTheme, sparkline, chart, table, parseDiff, diff, badge, connect,
    structured, errorText };
})();
