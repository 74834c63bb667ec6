// GLM Token Saver's live dashboard: polls GET /stats with the master key (kept in sessionStorage,
// sent as a header, never put in a URL or the page) and draws what it says. No build step.
"use strict";

(() => {
  const POLL_MS = 2000;
  const KEY_NAME = "glm-saver.dashboard.key";
  const STATS_URL = new URL("../stats", window.location.href).pathname;
  const TWO_TIERS = ["local", "cerebras"];
  const PATH_LABELS = { local: "Local model", draft: "Local draft (cascade)" };

  const $ = (selector) => document.querySelector(selector);
  const stat = (name) => document.querySelector(`[data-stat="${name}"]`);
  const charts = {};
  let timer = null;
  let downSince = null;

  // ---- the key: this tab's session only --------------------------------------------------------

  const storedKey = () => sessionStorage.getItem(KEY_NAME);

  function showLogin(message) {
    sessionStorage.removeItem(KEY_NAME);
    clearTimeout(timer);
    $("#board").hidden = true;
    $("#logout").hidden = true;
    $("#login").hidden = false;
    const error = $("#login-error");
    error.hidden = !message;
    error.textContent = message || "";
    setStatus("idle", "not connected");
    $("#key").focus();
  }

  function onLogin(event) {
    event.preventDefault();
    const input = $("#key");
    const key = input.value.trim();
    input.value = "";
    if (!key) return;
    sessionStorage.setItem(KEY_NAME, key);
    $("#login-error").hidden = true;
    poll();
  }

  // ---- polling ---------------------------------------------------------------------------------

  function setStatus(state, text) {
    const status = $("#status");
    status.dataset.state = state;
    status.textContent = text;
  }

  function refusal(code) {
    if (code === 401) return "Wrong key: the proxy refused it (401). Enter the proxy's master key.";
    if (code === 403) return "This key may not read the dashboard (403): it shows every key's spend, so it needs the master key.";
    return `The proxy answered ${code}; try again.`;
  }

  async function poll() {
    clearTimeout(timer);
    const key = storedKey();
    if (!key) return showLogin("");
    let response;
    try {
      response = await fetch(STATS_URL, { headers: { Authorization: `Bearer ${key}` }, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" });
    } catch (err) {
      return unreachable();
    }
    if (response.status === 401 || response.status === 403 || response.status === 400) return showLogin(refusal(response.status));
    if (!response.ok) return unreachable(`answered ${response.status}`);
    let stats;
    try {
      stats = await response.json();
    } catch (err) {
      return unreachable("sent no JSON");
    }
    reachable();
    render(stats);
    timer = setTimeout(poll, POLL_MS);
  }

  function unreachable(why) {
    downSince = downSince || new Date();
    const banner = $("#unreachable");
    banner.textContent = `The proxy is unreachable${why ? ` (${why})` : ""} since ${downSince.toLocaleTimeString()}. Showing the last figures; retrying every ${POLL_MS / 1000} s.`;
    banner.hidden = false;
    setStatus("down", "unreachable");
    timer = setTimeout(poll, POLL_MS);
  }

  function reachable() {
    downSince = null;
    $("#unreachable").hidden = true;
    $("#login").hidden = true;
    $("#board").hidden = false;
    $("#logout").hidden = false;
    setStatus("live", `live · ${new Date().toLocaleTimeString()}`);
  }

  // ---- formatting ------------------------------------------------------------------------------

  // Dollars at any size, as glm_saver/money.py: cents at least, else four significant digits ($0.0002), no exponent.
  const usd = (value) => {
    if (value == null) return "–";
    const size = Math.abs(Number(value));
    const decimals = size === 0 ? 2 : Math.min(8, Math.max(2, 3 - Math.floor(Math.log10(size))));
    const text = size.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: decimals });
    return `${value < 0 && /[1-9]/.test(text) ? "-" : ""}$${text}`;
  };
  const count = (value) => (value == null ? "–" : Number(value).toLocaleString("en-US"));
  const share = (value) => (value == null ? "–" : `${(value * 100).toFixed(1)}%`);
  const seconds = (value) => (value == null ? "–" : value >= 3600 ? `${(value / 3600).toFixed(1)} h` : `${value.toFixed(1)} s`);
  const sum = (values) => values.reduce((total, value) => total + (value || 0), 0);

  function show(name, value, format) {
    const element = stat(name);
    if (!element) return;
    element.textContent = format(value);
    element.dataset.value = value == null ? "" : String(value);
  }

  // ---- the figures -----------------------------------------------------------------------------

  function render(stats) {
    const books = stats.books || {};
    const totals = books.totals || {};
    const series = (stats.history && stats.history.series) || [];
    show("spend", totals.cost_usd, usd);
    show("cloud-cost", totals.cloud_cost_usd, usd);
    show("savings", totals.savings_usd, usd);
    show("savings-share", totals.cloud_cost_usd ? totals.savings_usd / totals.cloud_cost_usd : null, (v) => (v == null ? "" : `${share(v)} of always-Cerebras`));
    show("requests", totals.requests, count);
    const spec = stats.speculative || {};
    show("acceptance", spec.acceptance_rate, share);
    show("cascades", spec.cascades, (v) => (v ? `of ${v} cascades` : "no cascade yet"));
    renderHeadroom(stats);
    nameTierColors(stats.tiers);
    renderSplit(series, stats.tiers);
    renderTiers(stats.tiers);
    renderBudgets(books.budgets || {});
    renderRecent(stats.recent_decisions || []);
    renderCharts(stats.history);
  }

  const HEADROOM_FACTS = [
    ["tokens-left", "Tokens left this minute"],
    ["requests-left", "Requests left today"],
    ["tokens-reset", "Minute resets in"],
    ["requests-reset", "Day resets in"],
    ["exhausted-for", "Resting after a 429 for"],
  ];

  // Cerebras limits each model on its own: with more than two tiers, each paid tier's headroom
  // under its name (its figures' names end in -<tier>); with two, the strongest's, unnamed.
  function renderHeadroom(stats) {
    const rooms = stats.tiers ? stats.tiers.slice(1).map((tier) => [tier.name, tier.headroom]) : [[null, stats.cerebras_headroom]];
    $("#headroom").replaceChildren(...rooms.map(([tier]) => headroomFacts(tier)));
    for (const [tier, room] of rooms) showHeadroom(tier ? `-${tier}` : "", room || {});
    show("rate-limited", stats.cerebras_429s, count);
    show("shifts", sum(Object.values(stats.rate_limit_shifts || {})), count);
  }

  function headroomFacts(tier) {
    const list = document.createElement("dl");
    list.className = "facts";
    list.append(...facts(HEADROOM_FACTS.map(([name, label]) => [tier ? `${name}-${tier}` : name, label])));
    if (!tier) return list;
    const section = document.createElement("section");
    section.className = "tier-headroom";
    section.dataset.tier = tier;
    const title = document.createElement("h3");
    title.textContent = tier;
    section.append(title, list);
    return section;
  }

  function showHeadroom(suffix, room) {
    const limited = (left, limit) => (left == null ? "unknown" : `${count(left)}${limit != null ? ` of ${count(limit)}` : ""}`);
    show(`tokens-left${suffix}`, room.tokens_remaining_minute, () => limited(room.tokens_remaining_minute, room.tokens_limit_minute));
    show(`requests-left${suffix}`, room.requests_remaining_day, () => limited(room.requests_remaining_day, room.requests_limit_day));
    show(`tokens-reset${suffix}`, room.tokens_reset_in, seconds);
    show(`requests-reset${suffix}`, room.requests_reset_in, seconds);
    show(`exhausted-for${suffix}`, room.exhausted_for, (v) => (v ? seconds(v) : "no"));
  }

  // Who answered: local, Cerebras or a draft; with more than two tiers each tier by its name.
  function renderSplit(series, tiers) {
    const paths = [...(tiers ? tiers.map((tier) => tier.name) : TWO_TIERS), "draft"];
    const label = (path) => PATH_LABELS[path] || (tiers ? path : "Cerebras");
    const totals = Object.fromEntries(paths.map((path) => [path, sum(series.map((bucket) => (bucket.by_path || {})[path]))]));
    const all = sum(Object.values(totals));
    const colors = palette();
    $("#split").replaceChildren(
      ...paths.map((path, i) => {
        const part = document.createElement("span");
        part.style.width = `${all ? (100 * totals[path]) / all : 0}%`;
        part.style.background = colorOf(path, i, colors);
        part.title = `${label(path)}: ${totals[path]}`;
        return part;
      })
    );
    $("#split-facts").replaceChildren(...facts(paths.map((path) => [`split-${path}`, label(path)])));
    for (const path of paths) show(`split-${path}`, totals[path], (v) => `${count(v)}${all ? ` (${share(v / all)})` : ""}`);
  }

  // One fact (a label over a figure) per [figure's name, label], the figure filled by show().
  function facts(entries) {
    return entries.map(([name, label]) => {
      const fact = document.createElement("div");
      const term = document.createElement("dt");
      const value = document.createElement("dd");
      term.textContent = label;
      value.dataset.stat = name;
      fact.append(term, value);
      return fact;
    });
  }

  function budgetRow(name, budget) {
    const row = document.createElement("div");
    row.className = "budget";
    row.dataset.budget = name;
    row.dataset.used = String(budget.used);
    const label = document.createElement("div");
    label.className = "label";
    const title = document.createElement("strong");
    title.textContent = `${name} (${budget.period}, ${budget.action} at 100%)`;
    const figures = document.createElement("span");
    figures.textContent = `${usd(budget.spent_usd)} of ${usd(budget.limit_usd)} · ${share(budget.used)}${budget.held_usd ? ` · ${usd(budget.held_usd)} held` : ""}`;
    label.append(title, figures);
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.className = `fill${budget.used >= 1 ? " over" : budget.used >= 0.8 ? " warn" : ""}`;
    fill.style.width = `${Math.min(100, budget.used * 100)}%`;
    bar.append(fill);
    for (const threshold of budget.alert_thresholds || []) {
      const mark = document.createElement("span");
      mark.className = "mark";
      mark.style.left = `${threshold * 100}%`;
      bar.append(mark);
    }
    const alerts = document.createElement("div");
    alerts.className = "alerts";
    alerts.dataset.alerts = (budget.alerts_fired || []).join(",");
    alerts.textContent = budget.alerts_fired && budget.alerts_fired.length ? `Alerts fired: ${budget.alerts_fired.map(share).join(", ")}` : "No alert fired this period";
    row.append(label, bar, alerts);
    return row;
  }

  function renderBudgets(budgets) {
    const names = Object.keys(budgets);
    $("#budgets-empty").hidden = names.length > 0;
    $("#budgets").replaceChildren(...names.map((name) => budgetRow(name, budgets[name])));
  }

  // More than two tiers: one row each (with two, the split and headroom cards say it all).
  function renderTiers(tiers) {
    $("#tiers-card").hidden = !tiers;
    $("#tiers").replaceChildren(
      ...(tiers || []).map((tier) => {
        const tr = document.createElement("tr");
        tr.dataset.tier = tier.name;
        tr.dataset.requests = String(tier.requests);
        tr.dataset.cost = String(tier.cost_usd);
        const room = tier.headroom || {};
        tr.append(
          cell(tier.name),
          cell(tier.group),
          cell(`${tier.price_per_m.input} / ${tier.price_per_m.output}`, true),
          cell(`${count(tier.requests)} (${share(tier.request_share)})`, true),
          cell(`${count(tier.total_tokens)} (${share(tier.token_share)})`, true),
          cell(usd(tier.cost_usd), true),
          cell(usd(tier.savings_usd), true),
          cell(tier.headroom ? count(room.tokens_remaining_minute) : "free", true)
        );
        return tr;
      })
    );
  }

  function cell(text, numeric) {
    const td = document.createElement("td");
    td.textContent = text;
    if (numeric) td.className = "num";
    return td;
  }

  function renderRecent(decisions) {
    $("#recent").replaceChildren(
      ...decisions.map((d) => {
        const tr = document.createElement("tr");
        tr.append(
          cell(new Date(d.time * 1000).toLocaleTimeString()),
          cell(d.key),
          cell(d.route),
          cell(d.reason),
          cell(d.answered_by),
          cell(`${count(d.prompt_tokens)} / ${count(d.completion_tokens)}`, true),
          cell(usd(d.cost_usd), true)
        );
        return tr;
      })
    );
  }

  // ---- charts (uPlot) --------------------------------------------------------------------------

  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const palette = () => [0, 1, 2, 3, 4, 5, 6, 7].map((i) => css(`--c${i}`));
  // The same colour for the same thing on every chart (the split bar's too); others take the palette.
  const FIXED = { local: "--c2", cerebras: "--c1", draft: "--c0", spent: "--c0", "always-Cerebras": "--c1", saved: "--c2" };
  const tierColors = {}; // tiers between local and the strongest, by name
  function nameTierColors(tiers) {
    (tiers || []).slice(1, -1).forEach((tier, i) => (tierColors[tier.name] = `--c${3 + (i % 5)}`));
  }
  const colorOf = (name, i, colors) => {
    const fixed = FIXED[name] || tierColors[name];
    return fixed ? css(fixed) : colors[(i + 3) % colors.length];
  };

  // Every minute from the first with traffic (at most the window) to now; empty minutes are 0.
  function minutes(history) {
    const step = (history && history.bucket_seconds) || 60;
    const now = Math.floor(Date.now() / 1000 / step) * step;
    const first = history && history.series.length ? history.series[0].minute : now - 29 * step;
    const start = Math.min(first, now - 29 * step);
    const xs = [];
    for (let t = start; t <= now; t += step) xs.push(t);
    const byMinute = new Map(((history && history.series) || []).map((bucket) => [bucket.minute, bucket]));
    return { xs, buckets: xs.map((t) => byMinute.get(t)) };
  }

  function cumulative(buckets, field) {
    let total = 0;
    return buckets.map((bucket) => (total += bucket ? bucket[field] : 0));
  }

  function perMinute(buckets, table) {
    const names = [...new Set(buckets.flatMap((bucket) => (bucket ? Object.keys(bucket[table]) : [])))].sort();
    return { names, columns: names.map((name) => buckets.map((bucket) => (bucket ? bucket[table][name] || 0 : 0))) };
  }

  // Axis ticks: two significant digits are enough to read a chart.
  const usdTick = (value) => (value === 0 ? "$0" : `$${Number(value.toPrecision(2))}`);

  function drawChart(id, names, columns, xs, format, tick) {
    const element = document.getElementById(id);
    const width = Math.max(240, element.clientWidth);
    const signature = `${names.join("|")}@${width}@${css("--fg")}`;
    const data = [xs, ...columns];
    const existing = charts[id];
    if (existing && existing.signature === signature) return existing.plot.setData(data);
    if (existing) existing.plot.destroy();
    const colors = palette();
    const axis = { stroke: css("--muted"), grid: { stroke: css("--line"), width: 1 }, ticks: { stroke: css("--line") } };
    const opts = {
      width,
      height: 220,
      series: [{}, ...names.map((name, i) => ({ label: name, stroke: colorOf(name, i, colors), width: 2, points: { show: false }, value: (u, v) => (v == null ? "–" : format(v)) }))],
      axes: [axis, { ...axis, size: 64, values: (u, ticks) => ticks.map(tick || format) }],
      scales: { x: { time: true } },
      legend: { live: true },
    };
    charts[id] = { signature, plot: new uPlot(opts, data, element) };
  }

  function renderCharts(history) {
    if (typeof uPlot === "undefined") return;
    const { xs, buckets } = minutes(history);
    $("[data-stat=window]").textContent = history ? `(per minute, last ${history.window_minutes} min kept)` : "";
    drawChart("chart-cost", ["spent", "always-Cerebras", "saved"], [cumulative(buckets, "cost_usd"), cumulative(buckets, "cloud_cost_usd"), cumulative(buckets, "savings_usd")], xs, usd, usdTick);
    const routes = perMinute(buckets, "by_route");
    drawChart("chart-route", routes.names, routes.columns, xs, (v) => String(v));
    const reasons = perMinute(buckets, "by_reason");
    drawChart("chart-reason", reasons.names, reasons.columns, xs, (v) => String(v));
  }

  // ---- start -----------------------------------------------------------------------------------

  function start() {
    $("#login-form").addEventListener("submit", onLogin);
    $("#logout").addEventListener("click", () => showLogin(""));
    window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => storedKey() && poll());
    if (storedKey()) poll();
    else showLogin("");
  }

  start();
})();
