/* The operator console: one page per hash (#fleet, #changes, #device/NAME, #audit, #alerts), all data from
   the REST API (/api/v1) with the session cookie; writes carry the CSRF token. Live updates come from the
   event stream (/api/v1/events). No framework; every value reaches the page as text (InfraUI.el). */
"use strict";
(() => {
  const { el, fmt, duration, sparkline, chart, table, diff, badge } = InfraUI;
  const live = document.getElementById("live");
  let session = { subject: null, scopes: [], csrf: "" };
  let current = null; // the page shown: {name, root, refresh(event)}

  const can = (scope) => session.scopes.includes(scope);
  const when = (iso) => (iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "\u2013");

  class ApiError extends Error {
    constructor(status, problem) { super(problem.detail || `HTTP ${status}`); this.status = status; this.problem = problem; }
  }

  async function api(path, { method = "GET", query, body } = {}) {
    const url = new URL(`/api/v1${path}`, location.origin);
    for (const [k, v] of Object.entries(query || {})) {
      if (v === undefined || v === null || v === "") continue;
      for (const each of Array.isArray(v) ? v : [v]) url.searchParams.append(k, String(each));
    }
    const headers = { Accept: "application/json" };
    if (method !== "GET") { headers["X-CSRF-Token"] = session.csrf; headers["Content-Type"] = "application/json"; }
    const response = await fetch(url, { method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body) });
    if (response.status === 401) { location.assign("/ui/signin"); throw new ApiError(401, { detail: "signed out" }); }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  const say = (text) => { live.textContent = text; };
  const count = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const failed = (error) => el("p", { class: "error", role: "alert" }, error.message || String(error));
  const heading = (text) => { document.title = `${text} \u00b7 Infrastructor console`; return el("h1", {}, text); };

  const COUNTING = 4; // the fleet's per-device count requests in flight at once
  // ---- Fleet --------------------------------------------------------------------------------------
  async function fleetPage(ctx) {
    const page = ctx.root;
    const status = el("p", { class: "muted" }, "Loading the fleet\u2026");
    page.replaceChildren(heading("Fleet"), status);
    const history = new Map();
    const spark = (row, metric, label) => {
      const values = (history.get(row.device) || {})[metric];
      return values ? sparkline(values, `${row.device} ${label}, last 24 h`, { min: 0, max: 100, alt: metric === "memory" }) : "";
    };
    // containers and failed services per device, fetched after the table shows (cached server-side)
    const counts = new Map(); // device -> {containers, failed_services: number | {why}}
    const count_of = (r, kind) => { const v = (counts.get(r.device) || {})[kind]; return typeof v === "number" ? v : null; };
    const countCell = (r, kind) => {
      const v = (counts.get(r.device) || {})[kind];
      if (v === undefined) return el("span", { class: "muted", title: "loading" }, "\u2026");
      return typeof v === "number" ? String(v) : el("span", { title: v.why }, "\u2013");
    };
    const columns = [
      { key: "device", label: "Device", render: (r) => el("a", { href: `#device/${encodeURIComponent(r.device)}` }, r.device) },
      { key: "ok", label: "Health", value: (r) => (r.ok ? 1 : 0),
        render: (r) => (r.ok ? badge("up", "up") : el("span", { title: r.error || "" }, badge(r.error_type || "down", "down"))) },
      { key: "cpu_percent", label: "CPU %", num: true },
      { key: "cpu_24h", label: "CPU 24 h", sortable: false, render: (r) => spark(r, "cpu", "CPU") },
      { key: "memory_used_percent", label: "Memory %", num: true },
      { key: "memory_24h", label: "Memory 24 h", sortable: false, render: (r) => spark(r, "memory", "memory") },
      { key: "fullest_use_percent", label: "Fullest disk", num: true,
        render: (r) => (r.fullest_mount ? `${fmt(r.fullest_use_percent)}% ${r.fullest_mount}` : "\u2013") },
      { key: "containers", label: "Containers", num: true, value: (r) => count_of(r, "containers"), render: (r) => countCell(r, "containers") },
      { key: "failed_services", label: "Failed services", num: true, value: (r) => count_of(r, "failed_services"), render: (r) => countCell(r, "failed_services") },
      { key: "load_1m", label: "Load 1m", num: true, render: (r) => fmt(r.load_1m, 2) },
      { key: "uptime_seconds", label: "Uptime", num: true, render: (r) => duration(r.uptime_seconds) },
      { key: "collected_at", label: "Last seen", render: (r) => when(r.collected_at) },
    ];
    const order = (a, b) => (a.ok - b.ok) || ((b.cpu_percent || 0) - (a.cpu_percent || 0)) || a.device.localeCompare(b.device);
    let grid = null, generation = 0;
    const stale = (mine) => mine !== generation || current !== ctx; // reloaded or left meanwhile
    async function countAll(devices, mine) {
      const jobs = [];
      for (const row of devices) {
        if (!row.ok) { counts.set(row.device, { containers: { why: "The device does not answer." }, failed_services: { why: "The device does not answer." } }); continue; }
        const path = `/devices/${encodeURIComponent(row.device)}`;
        jobs.push([row.device, "containers", () => api(`${path}/containers`, { query: { all: true, limit: 1 } })]);
        jobs.push([row.device, "failed_services", () => api(`${path}/services`, { query: { state: "failed", limit: 1 } })]);
      }
      grid.refresh();
      const worker = async () => { // at most COUNTING requests at a time
        for (let job = jobs.shift(); job && !stale(mine); job = jobs.shift()) {
          const [device, kind, fetchIt] = job;
          let value;
          try {
            const answer = await fetchIt();
            value = kind === "containers" ? answer.data.total : answer.data.failed_total;
          } catch (error) { value = { why: error.message || String(error) }; }
          if (stale(mine)) return;
          counts.set(device, { ...(counts.get(device) || {}), [kind]: value });
          grid.refresh();
        }
      };
      await Promise.all(Array.from({ length: COUNTING }, worker));
    }
    async function load() {
      const mine = ++generation;
      try {
        const data = await api("/fleet");
        if (stale(mine)) return;
        status.textContent = `${count(data.total, "device")}: ${data.ok} reachable, ${data.failed} failed.`;
        grid = table(columns, data.devices, { order, caption: "Devices, problems first", rowClass: (r) => (r.ok ? null : "problem") });
        page.replaceChildren(heading("Fleet"), status, grid);
        counts.clear();
        countAll(data.devices, mine);
        for (const row of data.devices.filter((r) => r.ok).slice(0, 25)) {
          if (stale(mine)) return;
          const entry = {};
          for (const [metric, name] of [["cpu", "cpu_percent"], ["memory", "memory_percent"]]) {
            try {
              const h = await api("/metrics/history", { query: { device: row.device, metric: name, since: "24h", bucket: "1h" } });
              entry[metric] = h.points.map((p) => p.avg);
            } catch (error) { /* no history: no sparkline */ }
          }
          history.set(row.device, entry);
          grid.refresh();
        }
      } catch (error) { page.replaceChildren(heading("Fleet"), failed(error)); }
    }
    ctx.refresh = (event) => { if (event.kind === "device_health") load(); };
    await load();
  }

  // ---- Changes ------------------------------------------------------------------------------------
  async function changesPage(ctx) {
    const page = ctx.root;
    const device = el("input", { id: "f-device", name: "device", autocomplete: "off" });
    const risk = el("select", { id: "f-risk", name: "min_risk" }, el("option", { value: "" }, "any"),
      ["low", "medium", "high"].map((r) => el("option", { value: r }, `${r} or higher`)));
    const since = el("select", { id: "f-since", name: "since" },
      ["", "1h", "24h", "7d", "30d"].map((o) => el("option", { value: o }, o ? `last ${o}` : "any time")));
    const form = el("form", { class: "filters", role: "search", "aria-label": "Filter changes" },
      el("div", {}, el("label", { for: "f-device" }, "Device"), device),
      el("div", {}, el("label", { for: "f-risk" }, "Risk"), risk),
      el("div", {}, el("label", { for: "f-since" }, "Time"), since),
      el("button", { type: "submit" }, "Filter"));
    const list = el("ol", { class: "changes", "aria-label": "Configuration changes, newest first" });
    const status = el("p", { class: "muted" }, "Loading changes\u2026");
    page.replaceChildren(heading("Changes"), form, status, list);
    async function load() {
      try {
        const data = await api("/config/changes", { query: { device: device.value.trim(), min_risk: risk.value, since: since.value, include_diff: true, limit: 50 } });
        status.textContent = `${count(data.total, "change")}${data.truncated ? " (newest 50 shown)" : ""}.`;
        list.replaceChildren(...data.changes.map((c) => {
          const shown = el("div", { class: "diffbox", hidden: true });
          const toggle = el("button", { type: "button", "aria-expanded": "false" }, "Show diff");
          toggle.addEventListener("click", () => {
            const open = toggle.getAttribute("aria-expanded") !== "true";
            toggle.setAttribute("aria-expanded", String(open));
            toggle.textContent = open ? "Hide diff" : "Show diff";
            if (open && !shown.firstChild) shown.append(c.diff ? diff(c.diff, { caption: `${c.device}:${c.path}` }) : el("p", { class: "muted" }, "No diff recorded."));
            shown.hidden = !open;
          });
          return el("li", { "data-change": c.id },
            el("div", { class: "head" }, badge(`${c.risk} risk`, c.risk), el("strong", {}, c.device), el("code", {}, c.path),
              el("span", { class: "muted" }, `${c.change_type} \u00b7 ${when(c.detected_at)}`)),
            el("p", {}, c.summary),
            c.reasons.length ? el("ul", { class: "reasons" }, c.reasons.map((r) => el("li", {}, r))) : null,
            c.affected_services.length ? el("p", { class: "muted" }, `Affects: ${c.affected_services.join(", ")}`) : null,
            toggle, shown);
        }));
      } catch (error) { status.replaceChildren(failed(error)); }
    }
    form.addEventListener("submit", (e) => { e.preventDefault(); load(); });
    ctx.refresh = (event) => { if (event.kind === "config_change") load(); };
    await load();
  }

  // ---- Device -------------------------------------------------------------------------------------
  const RANGES = { "1h": "1m", "24h": "15m", "7d": "1h", "30d": "6h" };
  async function devicePage(ctx, name) {
    const page = ctx.root;
    const charts = el("div");
    const buttons = Object.keys(RANGES).map((r) => el("button", { type: "button", "data-range": r, "aria-pressed": "false" }, r));
    const extra = el("div");
    page.replaceChildren(heading(name), el("div", { class: "ranges", role: "group", "aria-label": "Time range" }, buttons), charts, extra);
    async function show(range) {
      buttons.forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.range === range)));
      charts.replaceChildren(el("p", { class: "muted" }, "Loading history\u2026"));
      const sections = [];
      for (const [metric, label] of [["cpu_percent", "CPU %"], ["memory_percent", "Memory %"]]) {
        try {
          const h = await api("/metrics/history", { query: { device: name, metric, since: range, bucket: RANGES[range] } });
          sections.push(el("section", { class: "metric" }, el("h2", {}, `${label}, last ${range}`),
            h.points.length ? chart(h.points.map((p) => ({ t: p.bucket_start, avg: p.avg, min: p.min, max: p.max })),
              { unit: "%", label: `${label} over ${range}: ${h.points.length} points` })
              : el("p", { class: "muted" }, "No history recorded in this range.")));
        } catch (error) { sections.push(failed(error)); }
      }
      charts.replaceChildren(...sections);
    }
    buttons.forEach((b) => b.addEventListener("click", () => show(b.dataset.range)));
    await show("24h");
    // one section per tool; a device without it (no docker, no systemd, no ZFS...) shows the tool's error
    const path = `/devices/${encodeURIComponent(name)}`;
    const section = (id, title, fill) => {
      const body = el("div", {}, el("p", { class: "muted" }, "Loading\u2026"));
      extra.append(el("section", { class: "part", id: `s-${id}`, "aria-labelledby": `h-${id}` }, el("h2", { id: `h-${id}` }, title), body));
      return async () => {
        try { body.replaceChildren(...[await fill()].flat()); } catch (error) { body.replaceChildren(failed(error)); }
      };
    };
    const none = (text) => el("p", { class: "muted" }, text);
    const jobs = [
      section("disks", "Disks", async () => {
        const disks = await api(`${path}/disks`);
        return table([
          { key: "mount_point", label: "Mount", render: (r) => r.mount_point },
          { key: "use_percent", label: "Use %", num: true },
          { key: "size_bytes", label: "Size", num: true },
        ], disks.data.filesystems, { caption: "Filesystems" });
      }),
      section("network", "Network", async () => {
        const interfaces = (await api(`${path}/network`)).data.interfaces;
        const rates = new Map(); // interface -> {rx, tx}: the latest recorded rate, bytes/s
        const grid = table([
          { key: "name", label: "Interface", render: (r) => r.name },
          { key: "operstate", label: "State", render: (r) => r.operstate },
          { key: "addresses", label: "Addresses", sortable: false, render: (r) => r.addresses.map((a) => `${a.address}/${a.prefix_length}`).join(" ") },
          { key: "rx_rate", label: "Receiving", num: true, value: (r) => (rates.get(r.name) || {}).rx, render: (r) => fmt((rates.get(r.name) || {}).rx, 0, "B/s") },
          { key: "tx_rate", label: "Sending", num: true, value: (r) => (rates.get(r.name) || {}).tx, render: (r) => fmt((rates.get(r.name) || {}).tx, 0, "B/s") },
          { key: "rx_bytes", label: "Received", num: true, render: (r) => fmt(r.rx_bytes, 0, "B") },
          { key: "tx_bytes", label: "Sent", num: true, render: (r) => fmt(r.tx_bytes, 0, "B") },
          { key: "errors", label: "Errors", num: true, value: (r) => (r.rx_errors || 0) + (r.tx_errors || 0), render: (r) => String((r.rx_errors || 0) + (r.tx_errors || 0)) },
        ], interfaces, { caption: "Network interfaces; rates are the latest recorded in the last hour" });
        (async () => { // rates from the recorded history, after the table shows
          for (const i of interfaces.slice(0, 16)) {
            const rate = {};
            for (const [k, metric] of [["rx", "net_rx_bytes_per_s"], ["tx", "net_tx_bytes_per_s"]]) {
              try { rate[k] = (await api("/metrics/history", { query: { device: name, metric, interface: i.name, since: "1h" } })).summary.latest; }
              catch (error) { /* no history: no rate */ }
            }
            if (current !== ctx) return;
            rates.set(i.name, rate);
            grid.refresh();
          }
        })();
        return interfaces.length ? grid : none("No network interfaces.");
      }),
      section("containers", "Containers", async () => {
        const rows = (await api(`${path}/containers`, { query: { all: true } })).data.containers || [];
        const columns = [{ key: "name", label: "Container", render: (r) => r.name }, { key: "state", label: "State", render: (r) => r.state || r.status || "" }];
        if (can("infra:write")) {
          columns.push({ key: "actions", label: "Actions", sortable: false, render: (r) => {
            const button = el("button", { type: "button" }, `Restart ${r.name}`);
            button.addEventListener("click", async () => {
              button.disabled = true;
              try { await api(`${path}/containers/${encodeURIComponent(r.name)}/restart`, { method: "POST", body: {} }); say(`Restarted ${r.name}.`); }
              catch (error) { say(`Restart of ${r.name} failed: ${error.message}`); }
              button.disabled = false;
            });
            return button;
          } });
        }
        return rows.length ? table(columns, rows, { caption: "Containers" }) : none("No containers.");
      }),
      section("services", "Services", async () => {
        const data = (await api(`${path}/services`, { query: { limit: 200 } })).data; // failed units first
        return [
          el("p", { class: data.failed_total ? "error" : "muted" }, `${count(data.failed_total, "failed unit")} of ${data.total}${data.truncated ? ` (first ${data.units.length} shown)` : ""}.`),
          data.units.length ? table([
            { key: "unit", label: "Unit", render: (r) => r.unit },
            { key: "active", label: "Active", render: (r) => (r.active === "failed" ? badge("failed", "down") : r.active) },
            { key: "sub", label: "Sub", render: (r) => r.sub },
            { key: "description", label: "Description", render: (r) => r.description },
          ], data.units, { caption: "systemd units, failed first", rowClass: (r) => (r.active === "failed" ? "problem" : null) }) : none("No units."),
        ];
      }),
      section("drives", "Drives", async () => {
        const data = (await api(`${path}/drives`)).data;
        return data.drives.length ? table([
          { key: "path", label: "Drive", render: (r) => r.path },
          { key: "model", label: "Model", render: (r) => r.model || "\u2013" },
          { key: "status", label: "Health", render: (r) => badge(r.status, { healthy: "up", watch: "medium", failing: "down" }[r.status] || "low") },
          { key: "verdict", label: "Verdict", render: (r) => r.verdict },
          { key: "temperature_c", label: "\u00b0C", num: true },
          { key: "power_on_hours", label: "Power-on h", num: true },
        ], data.drives, { caption: "Drive health (SMART)", rowClass: (r) => (r.status === "failing" ? "problem" : null) }) : none("No drives.");
      }),
      section("zfs", "ZFS", async () => {
        const data = (await api(`${path}/zfs`)).data;
        return data.pools.length ? table([
          { key: "name", label: "Pool", render: (r) => r.name },
          { key: "health", label: "Health", render: (r) => badge(r.health, data.unhealthy.includes(r.name) ? "down" : "up") },
          { key: "size", label: "Size", num: true, value: (r) => r.usage && r.usage.size_bytes, render: (r) => fmt(r.usage && r.usage.size_bytes) },
          { key: "capacity", label: "Used %", num: true, value: (r) => r.usage && r.usage.capacity_percent, render: (r) => fmt(r.usage && r.usage.capacity_percent) },
        ], data.pools, { caption: "ZFS pools" }) : none("No ZFS pools.");
      }),
    ];
    await Promise.all(jobs.map((job) => job()));
  }

  // ---- Audit (infra:admin) ------------------------------------------------------------------------
  async function auditPage(ctx) {
    const page = ctx.root;
    if (!can("infra:admin")) {
      page.replaceChildren(heading("Audit"), el("p", { class: "error", role: "alert" }, "The audit log needs the infra:admin scope."));
      return;
    }
    const field = (name, label, node) => el("div", {}, el("label", { for: `a-${name}` }, label), node);
    const input = (name) => el("input", { id: `a-${name}`, name, autocomplete: "off" });
    const inputs = { subject: input("subject"), tool: input("tool"), device: input("device"),
      outcome: el("select", { id: "a-outcome", name: "outcome" }, ["", "ok", "error", "denied"].map((o) => el("option", { value: o }, o || "any"))),
      since: el("select", { id: "a-since", name: "since" }, ["", "1h", "24h", "7d", "30d"].map((o) => el("option", { value: o }, o ? `last ${o}` : "any time"))),
      request_id: input("request_id") };
    const form = el("form", { class: "filters", role: "search", "aria-label": "Filter the audit log" },
      field("subject", "Subject", inputs.subject), field("tool", "Tool", inputs.tool), field("device", "Device", inputs.device),
      field("outcome", "Outcome", inputs.outcome), field("since", "Time", inputs.since), field("request_id", "Request id", inputs.request_id),
      el("button", { type: "submit" }, "Filter"));
    const status = el("p", { class: "muted" }), holder = el("div");
    page.replaceChildren(heading("Audit"), form, status, holder);
    const columns = [
      { key: "occurred_at", label: "When", render: (r) => when(r.occurred_at) },
      { key: "kind", label: "Kind", render: (r) => r.kind },
      { key: "subject", label: "Subject", render: (r) => r.subject || "\u2013" },
      { key: "tool", label: "Tool", render: (r) => r.tool || "" },
      { key: "device", label: "Device", render: (r) => r.device || "" },
      { key: "outcome", label: "Outcome", render: (r) => badge(r.outcome, r.outcome === "ok" ? "up" : "down") },
      { key: "client_ip", label: "From", render: (r) => `${r.client_ip || ""} ${r.client_id ? "(" + r.client_id + ")" : ""}` },
      { key: "duration_ms", label: "ms", num: true },
      { key: "request_id", label: "Request", render: (r) => {
        if (!r.request_id) return "";
        // a call and the collections it caused share its request id
        const button = el("button", { type: "button", class: "link", "aria-label": `Everything of request ${r.request_id}` }, r.request_id.slice(0, 8));
        button.addEventListener("click", () => { inputs.request_id.value = r.request_id; load(); });
        return button;
      } },
    ];
    async function load() {
      const query = { limit: 100 };
      for (const [k, node] of Object.entries(inputs)) query[k] = node.value.trim();
      if (query.since) query.since = new Date(Date.now() - { "1h": 36e5, "24h": 864e5, "7d": 6048e5, "30d": 2592e6 }[query.since]).toISOString();
      try {
        const data = await api("/audit", { query });
        status.textContent = `${count(data.total, "entry").replace("entrys", "entries")}${data.total > data.entries.length ? `, newest ${data.entries.length} shown` : ""}.`;
        holder.replaceChildren(table(columns, data.entries, { caption: "Audit log, newest first" }));
      } catch (error) { holder.replaceChildren(failed(error)); }
    }
    form.addEventListener("submit", (e) => { e.preventDefault(); load(); });
    await load();
  }

  // ---- Alerts (infra:admin) -----------------------------------------------------------------------
  async function alertsPage(ctx) {
    const page = ctx.root;
    if (!can("infra:admin")) {
      page.replaceChildren(heading("Alerts"), el("p", { class: "error", role: "alert" }, "Alert rules need the infra:admin scope."));
      return;
    }
    const rules = el("div"), deliveries = el("div");
    page.replaceChildren(heading("Alerts"), el("h2", {}, "Rules"), rules, el("h2", {}, "Recent deliveries"), deliveries);
    async function load() {
      try {
        const data = await api("/alerts/rules");
        rules.replaceChildren(data.rules.length ? table([
          { key: "name", label: "Rule", render: (r) => r.name },
          { key: "kind", label: "Kind", render: (r) => r.kind },
          { key: "device", label: "Device", render: (r) => r.device || "every device" },
          { key: "threshold", label: "Threshold", render: (r) => (r.threshold ?? r.min_risk ?? "\u2013") },
          { key: "channel", label: "Channel", render: (r) => `${r.channel} ${r.url}` },
          { key: "enabled", label: "Enabled", render: (r) => (r.enabled ? "yes" : "no") },
        ], data.rules, { caption: "Alert rules" }) : el("p", { class: "muted" }, "No alert rules."));
      } catch (error) { rules.replaceChildren(failed(error)); }
      try {
        const data = await api("/audit", { query: { kind: "alert", limit: 50 } });
        deliveries.replaceChildren(data.entries.length ? table([
          { key: "occurred_at", label: "When", render: (r) => when(r.occurred_at) },
          { key: "tool", label: "Rule", render: (r) => r.tool || "" },
          { key: "device", label: "Device", render: (r) => r.device || "" },
          { key: "outcome", label: "Outcome", render: (r) => badge(r.outcome, r.outcome === "ok" ? "up" : "down") },
          { key: "error_message", label: "Detail", render: (r) => r.error_message || "" },
        ], data.entries, { caption: "Alert deliveries, newest first" }) : el("p", { class: "muted" }, "No alerts delivered yet."));
      } catch (error) { deliveries.replaceChildren(failed(error)); }
    }
    ctx.refresh = (event) => { if (event.kind === "alert") load(); };
    await load();
  }

  // ---- routing, live events, theme, sign-out ------------------------------------------------------
  async function route() {
    const hash = decodeURIComponent(location.hash.slice(1)) || "fleet";
    const [name, arg] = hash.split(/\/(.*)/s);
    document.querySelectorAll("#nav a").forEach((a) => {
      if (a.dataset.page === name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    });
    // each visit renders into its own element: a slow answer for a page left meanwhile lands nowhere
    const ctx = { name, root: el("div"), refresh: null };
    current = ctx;
    document.getElementById("page").replaceChildren(ctx.root);
    const pages = { fleet: fleetPage, changes: changesPage, audit: auditPage, alerts: alertsPage };
    if (name === "device" && arg) await devicePage(ctx, arg);
    else await (pages[name] || fleetPage)(ctx);
  }

  function listen() {
    const stream = new EventSource("/api/v1/events");
    // open: the server has fixed where the stream starts, so every event logged from now on reaches the page
    stream.addEventListener("open", () => { live.dataset.stream = "open"; });
    stream.addEventListener("error", () => { live.dataset.stream = "reconnecting"; });
    const handle = (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch { return; }
      const where = event.device ? `${event.device}: ` : "";
      if (event.kind === "config_change") say(`${where}${event.data.path} changed (${event.data.risk} risk).`);
      else if (event.kind === "device_health") say(`${where}now ${event.data.status}.`);
      else if (event.kind === "alert") say(`Alert: ${event.data.title || event.data.rule}`);
      if (current && current.refresh) current.refresh(event);
    };
    for (const kind of ["config_change", "device_health", "poll_failure", "alert"]) stream.addEventListener(kind, handle);
  }

  const THEMES = ["auto", "light", "dark"];
  function theme(next) {
    const button = document.getElementById("theme");
    if (next === "auto") document.documentElement.removeAttribute("data-theme");
    else document.documentElement.setAttribute("data-theme", next);
    button.textContent = `Theme: ${next}`;
    button.setAttribute("aria-label", `Colour theme: ${next === "auto" ? "automatic" : next}`);
    try { localStorage.setItem("infra-theme", next); } catch { /* private mode */ }
  }

  async function start() {
    let saved = "auto";
    try { saved = localStorage.getItem("infra-theme") || "auto"; } catch { /* private mode */ }
    theme(THEMES.includes(saved) ? saved : "auto");
    document.getElementById("theme").addEventListener("click", () => {
      const now = document.documentElement.getAttribute("data-theme") || "auto";
      theme(THEMES[(THEMES.indexOf(now) + 1) % THEMES.length]);
    });
    const response = await fetch("/ui/session", { credentials: "same-origin" });
    if (!response.ok) { location.assign("/ui/signin"); return; }
    session = await response.json();
    document.getElementById("who").textContent = session.subject ? `${session.subject} (${session.scopes.join(", ")})` : "auth off";
    document.querySelectorAll("#nav a[data-scope]").forEach((a) => { a.hidden = !can(a.dataset.scope); });
    const signout = document.getElementById("signout");
    signout.hidden = !session.auth;
    signout.addEventListener("click", async () => {
      await fetch("/ui/signout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": session.csrf } });
      location.assign("/ui/signin");
    });
    window.addEventListener("hashchange", () => { document.getElementById("page").focus(); route(); });
    listen();
    await route();
  }

  start();
})();
