// Velocity live page: polls /stats (cluster view) every few seconds and draws it.
(function () {
  "use strict";
  const POLL_MS = 2000;
  const MAX_POINTS = 300;
  const rate = [[], []];            // [t, tx/s]
  const fresh = [[], [], []];       // [t, p50 ms, p99 ms]
  let seeded = false;

  const $ = (id) => document.getElementById(id);
  const fmtInt = (n) => (n == null ? "–" : Math.round(n).toLocaleString("en-US"));
  const fmtMs = (s) => (s == null ? "–" : (s * 1000 < 10 ? (s * 1000).toFixed(2) : (s * 1000).toFixed(0)));
  const fmtDur = (s) => (s == null ? "–" : s < 90 ? s.toFixed(0) + " s" : s < 5400 ? (s / 60).toFixed(0) + " min" : s < 172800 ? (s / 3600).toFixed(1) + " h" : (s / 86400).toFixed(1) + " days");

  function chart(el, series, colors) {
    const opts = {
      width: el.clientWidth, height: el.clientHeight,
      axes: [
        { stroke: "#8b9bab", grid: { stroke: "#253241" }, ticks: { stroke: "#253241" } },
        { stroke: "#8b9bab", grid: { stroke: "#253241" }, ticks: { stroke: "#253241" }, size: 60 },
      ],
      series: [{}].concat(series.map((label, i) => ({ label, stroke: colors[i], width: 2, fill: i === 0 ? colors[i] + "22" : undefined }))),
      legend: { show: true },
      cursor: { drag: { x: false, y: false } },
      scales: { y: { range: (u, min, max) => [0, Math.max(max * 1.15, 1)] } },
    };
    return new uPlot(opts, [[]].concat(series.map(() => [])), el);
  }
  const rateChart = chart($("chart-rate"), ["tx/s"], ["#4fb3ff"]);
  const freshChart = chart($("chart-fresh"), ["p50", "p99"], ["#3ecf8e", "#f5a524"]);
  window.addEventListener("resize", () => {
    for (const [c, el] of [[rateChart, $("chart-rate")], [freshChart, $("chart-fresh")]]) c.setSize({ width: el.clientWidth, height: el.clientHeight });
  });

  function push(t, r, p50, p99) {
    rate[0].push(t); rate[1].push(r);
    fresh[0].push(t); fresh[1].push(p50 == null ? null : p50 * 1000); fresh[2].push(p99 == null ? null : p99 * 1000);
    for (const a of [rate, fresh]) for (const s of a) if (s.length > MAX_POINTS) s.shift();
  }

  function bars(table, rows, cls) {
    const body = table.tBodies[0];
    const max = Math.max(1, ...rows.map((r) => r[1]));
    body.replaceChildren(...rows.map(([name, value]) => {
      const tr = document.createElement("tr");
      const bar = document.createElement("div");
      bar.className = "bar" + (cls && value > 0 ? " " + cls : "");
      bar.style.width = (100 * value / max) + "%";
      const cells = [name, bar, fmtInt(value)];
      cells.forEach((c, i) => {
        const td = document.createElement("td");
        td.className = ["name", "", "num"][i];
        if (c instanceof Node) td.appendChild(c); else td.textContent = c;
        tr.appendChild(td);
      });
      return tr;
    }));
    if (!rows.length) body.innerHTML = '<tr><td class="muted">no partitions owned yet</td></tr>';
  }

  // With HTTP_AUTH_TOKENS_FILE the page's data calls need a token: open the page as /#token=<an ops token>
  // (a fragment never leaves the browser; README, Production).
  const TOKEN = new URLSearchParams(location.hash.slice(1)).get("token");
  const AUTH = TOKEN ? { Authorization: "Bearer " + TOKEN } : {};

  async function poll() {
    try {
      const res = await fetch("/stats", { cache: "no-store", headers: AUTH });
      const body = await res.json();
      const c = body.cluster;
      if (!seeded && Array.isArray(body.history)) {
        for (const h of body.history) push(h.t, h.rate_tx_s, h.freshness_p50_s, h.freshness_p99_s);
        seeded = true;
      }
      push(body.computed_at, c.rate_tx_s, c.freshness_p50_s, c.freshness_p99_s);
      rateChart.setData(rate);
      freshChart.setData(fresh);
      $("k-rate").textContent = c.rate_tx_s.toFixed(c.rate_tx_s < 10 ? 1 : 0);
      $("k-processed").textContent = fmtInt(c.processed_total);
      $("k-lag").textContent = fmtInt(c.lag_total);
      const cu = c.catch_up || {};
      $("k-lag").parentElement.classList.toggle("warn", c.lag_total > 1000 || !!cu.catching_up);
      $("k-lag-unit").textContent = cu.catching_up
        ? "catching up: reading input from " + fmtDur(cu.behind_s) + " ago, ETA " + (cu.eta_s == null ? "unknown" : fmtDur(cu.eta_s))
        : "messages behind";
      $("k-fresh").textContent = fmtMs(c.freshness_p50_s) + " / " + fmtMs(c.freshness_p99_s) + " ms";
      $("k-users").textContent = fmtInt(c.users);
      $("k-expired").textContent = "active partitions; " + fmtInt(c.users_expired_total || 0) + " expired";
      $("k-dlq").textContent = fmtInt(c.dead_letters_total);
      $("k-pred").textContent = fmtInt(c.predictions_total);
      $("k-model").textContent = (c.model_versions && c.model_versions.length ? "model " + c.model_versions.join(", ") : "scoring off")
        + (c.scoring_failures_total ? "; " + fmtInt(c.scoring_failures_total) + " failed" : "");
      $("k-pred").parentElement.classList.toggle("warn", !!c.scoring_failures_total);
      loop(c);
      const label = (l) => (l.topic.endsWith("-rekeyed") ? "re-key hop" : l.topic) + " [" + l.partition + "]";
      bars($("lag"), c.lag.filter((l) => !l.topic.endsWith("-rekeyed") || l.messages > 0).map((l) => [label(l), l.messages]));
      bars($("dlq"), Object.entries(c.dead_letters), "bad");
      const allReady = body.workers.every((w) => w.ready && !w.error);
      const st = $("status");
      st.textContent = c.workers_answering + " / " + c.workers + " workers " + (allReady ? "ready" : "not ready") + (cu.catching_up ? " · catching up" : "");
      st.className = "pill " + (allReady ? "pill-ok" : "pill-wait");
      $("workers").textContent = "Workers: " + body.workers.map((w) => w.worker + (w.error ? " (" + w.error + ")" : " — partitions " + JSON.stringify(w.partitions))).join(" · ");
    } catch (err) {
      $("status").textContent = "no answer from the worker";
      $("status").className = "pill pill-bad";
    }
  }

  function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }
  function num(v, digits) { return v == null ? "–" : v.toFixed(digits); }
  function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }

  // The fraud loop: online quality per model version, drift per feature (SPEC 10).
  function loop(c) {
    const quality = c.model_quality || {};
    const qrows = Object.entries(quality).map(([version, q]) => {
      const tr = document.createElement("tr");
      tr.append(cell(version), cell(fmtInt(q.labelled || 0)), cell(fmtInt(q.positives || 0)),
        cell(num(q.precision, 3)), cell(num(q.recall, 3)), cell(num(q.auc, 3)));
      return tr;
    });
    $("quality").tBodies[0].replaceChildren(...qrows);
    const l = c.labels || {};
    $("labels").textContent = (l.joined || l.unmatched || l.invalid)
      ? "labels: " + fmtInt(l.joined || 0) + " joined, " + fmtInt(l.unmatched || 0) + " without a logged prediction, "
        + fmtInt(l.invalid || 0) + " invalid (dead letters); predictions unlabelled after LABEL_WAIT_S: " + fmtInt(c.predictions_expired_total || 0)
      : "no labels yet";
    const drift = Object.values(c.drift || {});
    const drows = drift.map((r) => {
      const tr = document.createElement("tr");
      if (r.warning) tr.className = "alert";
      const name = r.model_version ? "score (" + r.model_version + ")" : r.feature;
      tr.append(cell(name), cell(clock(r.window_start)), cell(fmtInt(r.count + r.nulls)),
        cell(r.quantiles && r.quantiles.p50 != null ? num(r.quantiles.p50, 2) : "–"),
        cell(r.psi == null ? "no reference" : num(r.psi, 3)), cell(fmtInt(r.warnings_total || 0)));
      return tr;
    });
    $("drift").tBodies[0].replaceChildren(...drows);
    const alerting = drift.filter((r) => r.warning).map((r) => r.model_version ? "score" : r.feature);
    const note = $("drift-note");
    note.className = alerting.length ? "error" : "muted";
    note.textContent = !drift.length ? "no window published yet"
      : alerting.length ? "drift alert: " + alerting.join(", ") + " (PSI ≥ " + drift[0].threshold + ")"
      : fmtInt(c.drift_warnings_total || 0) + " drift alerts since start; none in the last window";
  }

  const FIELDS = ["transaction_id", "event_time", "as_of", "tx_count_1h", "tx_count_24h", "total_amount_1h", "total_amount_24h",
    "avg_amount_1h", "avg_amount_24h", "max_amount_24h", "unique_merchants_1h", "unique_merchants_24h",
    "seconds_since_last_tx", "amount_zscore_24h", "current_amount", "is_online", "merchant_category"];

  $("lookup-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const user = $("lookup-user").value.trim();
    const out = $("lookup-result");
    if (!user) return;
    out.className = "muted"; out.textContent = "looking up…";
    try {
      const res = await fetch("/features/" + encodeURIComponent(user), { cache: "no-store", headers: AUTH });
      const body = await res.json();
      if (!res.ok) { out.className = "error"; out.textContent = res.status + ": " + body.error; return; }
      const grid = document.createElement("div");
      grid.className = "features";
      grid.id = "lookup-features";
      for (const k of FIELDS) {
        let v = body[k];
        if (typeof v === "number" && !Number.isInteger(v)) v = Math.abs(v) > 1e6 ? v.toFixed(3) : v.toFixed(4);
        const a = document.createElement("div"); a.className = "k"; a.textContent = k;
        const b = document.createElement("div"); b.className = "v"; b.textContent = v == null ? "null" : String(v);
        grid.append(a, b);
      }
      out.className = ""; out.replaceChildren(grid);
    } catch (err) {
      out.className = "error"; out.textContent = "lookup failed: " + err;
    }
  });

  poll();
  setInterval(poll, POLL_MS);
})();
