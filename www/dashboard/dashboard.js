// shmproxy dashboard: polls /__shmproxy/stats once a second and renders it. Plain JS, no build.
// Rates, the hit ratio and latency percentiles are computed from the difference between two
// readings (the JSON carries the raw histogram buckets); the totals are the JSON's own values.
// The "last 5 minutes" charts are inline SVG paths drawn from a ring of samples the page keeps
// (one per update, older than WINDOW_MS dropped); each chart's `data-points` counts the points of
// its paths and the panel's `data-samples` the samples held.
// `window.shmproxyDashboard` exposes the last reading and refresh/stop/start (tests use them).
(function () {
  "use strict";
  const INTERVAL_MS = 1000;
  const HISTORY = 60;
  const $ = (id) => document.getElementById(id);
  let prev = null;
  let last = null;
  let timer = null;
  let running = true;
  const rates = [];
  const WINDOW_MS = 5 * 60 * 1000;
  // {t, rate, hit, p50, p99, origin, inuse, quar}; NaN = nothing to show for that update.
  const samples = [];

  const fmtInt = (n) => Math.round(n).toLocaleString("en-US");
  function fmtRate(n) {
    if (!isFinite(n)) return "–";
    if (n >= 100) return fmtInt(n);
    return n.toFixed(n >= 10 ? 1 : 2);
  }
  function fmtBytes(n) {
    if (!isFinite(n)) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? Math.round(n) : n.toFixed(n >= 100 ? 0 : 1)) + " " + u[i];
  }
  function fmtUs(us) {
    if (!us) return "–";
    if (us < 1000) return us + " µs";
    if (us < 1e6) return (us / 1000).toFixed(us < 10000 ? 1 : 0) + " ms";
    return (us / 1e6).toFixed(1) + " s";
  }
  const pct = (a, b) => (b > 0 ? ((100 * a) / b).toFixed(1) + "%" : "–");

  // Upper bound (µs) of the bucket that holds quantile q; bucket i holds durations ≤ 2^i µs.
  function percentile(buckets, q) {
    const total = buckets.reduce((a, b) => a + b, 0);
    if (total === 0) return 0;
    const want = Math.max(1, Math.ceil(total * q));
    let seen = 0;
    for (let i = 0; i < buckets.length; i++) {
      seen += buckets[i];
      if (seen >= want) return Math.pow(2, i);
    }
    return Math.pow(2, buckets.length - 1);
  }

  function hits(p) {
    return p.outcome_hit + p.outcome_stale + p.outcome_revalidated + p.outcome_collapsed;
  }
  function lookups(p) { return hits(p) + p.outcome_miss; }

  function row(label, value, cls) {
    const tr = document.createElement("tr");
    const a = document.createElement("td");
    a.textContent = label;
    const b = document.createElement("td");
    b.textContent = value;
    if (cls) b.className = cls;
    tr.append(a, b);
    return tr;
  }

  function renderPool(pool) {
    const grid = $("pool-grid");
    if (!pool) { grid.replaceChildren(); $("pool-summary").textContent = ""; return; }
    const states = pool.states || "";
    if (grid.children.length !== states.length) {
      const cells = [];
      for (let i = 0; i < states.length; i++) {
        const c = document.createElement("span");
        c.className = "cell";
        cells.push(c);
      }
      grid.replaceChildren(...cells);
    }
    for (let i = 0; i < states.length; i++) {
      const ch = states[i];
      const cls = ch === "U" ? "cell inuse" : ch === "Q" ? "cell quar" : "cell free";
      const cell = grid.children[i];
      if (cell.className !== cls) cell.className = cls;
      cell.title = "segment " + i + ": " + (ch === "U" ? "in use" : ch === "Q" ? "quarantined" : "free");
    }
    $("pool-summary").textContent = "· " + pool.segments + " × " + fmtBytes(pool.segment_size) +
      " · " + pool.free + " free, " + pool.in_use + " in use, " + pool.quarantined + " quarantined";
  }

  function cells(values) {
    const tr = document.createElement("tr");
    for (const v of values) {
      const td = document.createElement("td");
      if (v instanceof Node) td.append(v); else td.textContent = v;
      tr.append(td);
    }
    return tr;
  }

  // Sites and upstream servers (origin mode): hidden when cached publishes none.
  function renderUpstreams(s, dt) {
    const sites = s.sites || [], servers = s.servers || [];
    $("upstreams").hidden = sites.length === 0 && servers.length === 0;
    const before = (list, index) => prev && (prev[list] || []).find((x) => x.index === index);
    $("sites").replaceChildren(...sites.map((site) => {
      const p = before("sites", site.index);
      const r = p && dt > 0 ? (site.requests - p.requests) / dt : NaN;
      const tr = cells([site.name, fmtRate(r), fmtInt(site.requests), fmtInt(site.hits),
        fmtInt(site.misses), fmtInt(site.errors)]);
      if (site.errors > 0) tr.lastChild.className = "warn";
      return tr;
    }));
    const down = servers.filter((x) => x.state === "down").length;
    const n = (k, word) => k + " " + word + (k === 1 ? "" : "s");
    $("upstreams-summary").textContent = "· " + n(sites.length, "site") + ", " +
      n(servers.length, "server") + (down > 0 ? ", " + down + " down" : "");
    $("servers").replaceChildren(...servers.map((srv) => {
      const pill = document.createElement("span");
      pill.className = srv.state === "down" ? "pill pill-bad" : "pill pill-ok";
      pill.textContent = srv.state;
      pill.title = "since " + new Date(srv.last_change * 1000).toLocaleString();
      const tr = cells([srv.url, srv.site, pill, fmtInt(srv.in_flight), fmtInt(srv.requests),
        fmtInt(srv.failures), fmtInt(srv.retries), fmtInt(srv.health_failures)]);
      tr.dataset.state = srv.state;
      if (srv.failures > 0) tr.children[5].className = "warn";
      return tr;
    }));
  }

  function drawSpark() {
    const c = $("spark");
    const w = c.clientWidth || c.width, h = c.clientHeight || c.height;
    const dpr = window.devicePixelRatio || 1;
    if (c.width !== Math.round(w * dpr)) { c.width = Math.round(w * dpr); c.height = Math.round(h * dpr); }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    if (rates.length < 2) return;
    const max = Math.max(1, ...rates);
    g.strokeStyle = getComputedStyle(document.documentElement).getPropertyValue("--inuse").trim() || "#2f7de1";
    g.lineWidth = 1.5;
    const step = w / (HISTORY - 1);
    const xy = rates.map((r, i) => [w - (rates.length - 1 - i) * step, h - 2 - (r / max) * (h - 4)]);
    g.beginPath();
    xy.forEach(([x, y], i) => (i === 0 ? g.moveTo(x, y) : g.lineTo(x, y)));
    g.stroke();
    g.lineTo(w, h);
    g.lineTo(xy[0][0], h);
    g.closePath();
    g.globalAlpha = 0.15;
    g.fillStyle = g.strokeStyle;
    g.fill();
    g.globalAlpha = 1;
  }


  // Rounds v up to 1, 2 or 5 × 10^k, so the axis maximum reads well.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const e = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 5, 10]) if (v <= m * e) return m * e;
    return 10 * e;
  }

  // SVG path of one series over the window ending at `now`; NaN values break the line.
  function pathOf(key, now, max) {
    const W = 300, H = 60;
    let d = "", pen = false, n = 0;
    for (const s of samples) {
      const v = s[key];
      if (!isFinite(v)) { pen = false; continue; }
      const x = (W * (s.t - (now - WINDOW_MS))) / WINDOW_MS;
      const y = H - 2 - (Math.min(v, max) / max) * (H - 4);
      d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
      pen = true;
      n++;
    }
    return [d, n];
  }

  function drawChart(id, keys, fmt, fixedMax) {
    const fig = $(id);
    const now = samples.length ? samples[samples.length - 1].t : 0;
    let top = fixedMax;
    if (!top) {
      let m = 0;
      for (const s of samples) for (const k of keys) if (isFinite(s[k])) m = Math.max(m, s[k]);
      top = niceMax(m);
    }
    const paths = fig.querySelectorAll("path");
    let points = 0;
    keys.forEach((k, i) => {
      const [d, n] = pathOf(k, now, top);
      paths[i].setAttribute("d", d);
      points += n;
    });
    fig.dataset.points = String(points);
    const last = samples[samples.length - 1];
    fig.querySelector(".now").textContent = last ? keys.map((k) => fmt(last[k])).join(" / ") : "";
    fig.querySelector(".max").textContent = "max " + fmt(top);
  }

  function recordSample(sample) {
    samples.push(sample);
    while (samples.length && samples[0].t < sample.t - WINDOW_MS) samples.shift();
    $("history").dataset.samples = String(samples.length);
    const p1 = (v) => (isFinite(v) ? (v >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1)) + "%" : "–");
    const us = (v) => (isFinite(v) ? fmtUs(Math.round(v)) : "–");
    drawChart("chart-rate", ["rate"], fmtRate);
    drawChart("chart-hit", ["hit"], p1, 100);
    drawChart("chart-latency", ["p50", "p99"], us);
    drawChart("chart-origin", ["origin"], us);
    drawChart("chart-pool", ["inuse", "quar"], p1, 100);
  }

  function render(s) {
    const p = s.proxy;
    $("instance").textContent = s.instance + " · v" + s.version;
    const req = $("requests");
    req.textContent = fmtInt(p.requests);
    req.dataset.value = String(p.requests);
    const dt = prev ? (s.time_ms - prev.time_ms) / 1000 : 0;
    const d = (k) => (prev && dt > 0 ? (p[k] - prev.proxy[k]) : NaN);
    const rate = dt > 0 ? d("requests") / dt : NaN;
    $("rate").textContent = fmtRate(rate);
    if (isFinite(rate)) { rates.push(rate); if (rates.length > HISTORY) rates.shift(); }
    drawSpark();

    const sample = { t: s.time_ms, rate, hit: NaN, p50: NaN, p99: NaN, origin: NaN, inuse: NaN, quar: NaN };
    const allTime = pct(hits(p), lookups(p));
    if (prev && dt > 0) {
      const h = hits(p) - hits(prev.proxy), l = lookups(p) - lookups(prev.proxy);
      if (l > 0) sample.hit = (100 * h) / l;
      $("hit-ratio").textContent = l > 0 ? pct(h, l) : allTime;
    } else {
      $("hit-ratio").textContent = allTime;
    }
    $("hit-sub").textContent = "all-time " + allTime + " · L1 " + fmtInt(p.l1_hits) + " hits";

    let buckets = p.latency_buckets, window = true;
    if (prev) {
      const delta = buckets.map((b, i) => b - prev.proxy.latency_buckets[i]);
      if (delta.some((x) => x > 0)) buckets = delta; else window = false;
    } else {
      window = false;
    }
    $("p50").textContent = fmtUs(percentile(buckets, 0.5));
    $("p90").textContent = fmtUs(percentile(buckets, 0.9));
    $("p99").textContent = fmtUs(percentile(buckets, 0.99));
    $("lat-sub").textContent = window ? "over the last update" : "all-time (no requests lately)";
    if (window) { sample.p50 = percentile(buckets, 0.5); sample.p99 = percentile(buckets, 0.99); }

    $("bytes-out").textContent = dt > 0 ? fmtBytes(d("bytes_out") / dt) : "–";
    $("bytes-in").textContent = dt > 0 ? fmtBytes(d("bytes_in") / dt) : "–";

    const cs = $("cached-state");
    const c = s.cached;
    if (c) {
      cs.textContent = "up · pid " + c.cached_pid;
      cs.className = "pill pill-ok";
      let up = "origin " + fmtInt(c.upstream_requests) + " req";
      if (prev && prev.cached && dt > 0) {
        const ur = c.upstream_requests - prev.cached.upstream_requests;
        const ue = (c.upstream_errors + c.upstream_timeouts) -
          (prev.cached.upstream_errors + prev.cached.upstream_timeouts);
        const ul = c.upstream_latency_us - prev.cached.upstream_latency_us;
        if (ur > 0) sample.origin = ul / ur;
        up = fmtRate(ur / dt) + " req/s · " + fmtRate(ue / dt) + " err/s · " +
          (ur > 0 ? fmtUs(Math.round(ul / ur)) + " avg" : "idle");
      }
      $("upstream-sub").textContent = up;
    } else {
      cs.textContent = "down";
      cs.className = "pill pill-bad";
      $("upstream-sub").textContent = "proxy answers 503 until cached is back";
    }

    renderPool(s.pool);
    if (s.pool && s.pool.segments > 0) {
      sample.inuse = (100 * s.pool.in_use) / s.pool.segments;
      sample.quar = (100 * s.pool.quarantined) / s.pool.segments;
    }
    if (dt > 0) recordSample(sample);
    renderUpstreams(s, dt);

    const wrows = s.workers.map((w) => {
      const tr = document.createElement("tr");
      const pw = prev && prev.workers.find((x) => x.worker === w.worker);
      const wr = pw && dt > 0 ? (w.requests - pw.requests) / dt : NaN;
      for (const v of ["#" + w.worker, fmtInt(w.connections_active), fmtInt(w.connections_idle), fmtRate(wr), fmtInt(w.requests)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.append(td);
      }
      return tr;
    });
    $("workers").replaceChildren(...wrows);

    $("responses").replaceChildren(
      row("2xx", fmtInt(p.responses_2xx)),
      row("3xx", fmtInt(p.responses_3xx)),
      row("4xx", fmtInt(p.responses_4xx)),
      row("5xx", fmtInt(p.responses_5xx), p.responses_5xx > 0 ? "warn" : ""),
      row("HIT / MISS / PASS", fmtInt(p.outcome_hit) + " / " + fmtInt(p.outcome_miss) + " / " + fmtInt(p.outcome_pass)),
      row("STALE / REVAL. / COLLAPSED", fmtInt(p.outcome_stale) + " / " + fmtInt(p.outcome_revalidated) + " / " + fmtInt(p.outcome_collapsed)),
      row("bytes out / in", fmtBytes(p.bytes_out) + " / " + fmtBytes(p.bytes_in)),
    );

    const cacheRows = [];
    if (c) {
      cacheRows.push(
        row("L2 hits / misses", fmtInt(c.l2_hits) + " / " + fmtInt(c.l2_misses)),
        row("stored", fmtInt(c.stored_objects) + " objects, " + fmtBytes(c.stored_bytes)),
        row("evictions", fmtInt(c.evictions)),
        row("collapsed", fmtInt(c.collapsed)),
        row("origin requests", fmtInt(c.upstream_requests)),
        row("origin errors / timeouts", fmtInt(c.upstream_errors) + " / " + fmtInt(c.upstream_timeouts),
          c.upstream_errors + c.upstream_timeouts > 0 ? "warn" : ""),
        row("origin TLS errors", fmtInt(c.upstream_tls_errors), c.upstream_tls_errors > 0 ? "warn" : ""),
        row("origin retries / down events", fmtInt(c.upstream_retries) + " / " + fmtInt(c.upstream_server_down_events)),
        row("misdirected (421)", fmtInt(c.misdirected_requests)),
      );
    } else {
      cacheRows.push(row("cached", "not running", "warn"));
    }
    cacheRows.push(row("L1 hits / misses", fmtInt(p.l1_hits) + " / " + fmtInt(p.l1_misses)));
    $("cache").replaceChildren(...cacheRows);

    const probs = [
      ["rejected requests", p.bad_requests],
      ["pool acquire timeouts", p.pool_acquire_timeouts],
      ["transfers aborted", p.transfers_aborted + (c ? c.transfers_aborted : 0)],
      ["cached unavailable (503)", p.cached_unavailable],
      ["cached timeouts (504)", p.cached_timeouts],
      ["header timeouts (408)", p.timeouts_header],
      ["worker restarts", p.worker_restarts],
      ["segments reclaimed", p.segments_reclaimed],
      ["access log lines dropped", p.access_log_dropped],
    ].map(([k, v]) => row(k, fmtInt(v), v > 0 ? "warn" : ""));
    $("problems").replaceChildren(...probs);

    const live = $("live");
    live.textContent = "live";
    live.className = "pill pill-ok";
    $("updated").textContent = "updated " + new Date(s.time_ms).toLocaleTimeString();
  }

  let inflight = null;
  function refresh() {
    const p = fetchAndRender();
    inflight = p;
    return p.finally(() => { if (inflight === p) inflight = null; });
  }

  async function fetchAndRender() {
    try {
      const r = await fetch("/__shmproxy/stats", { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const s = await r.json();
      render(s);
      prev = s;
      last = s;
      return s;
    } catch (e) {
      const live = $("live");
      live.textContent = "no data: " + e.message;
      live.className = "pill pill-bad";
      return null;
    }
  }

  async function loop() {
    timer = null;
    const t0 = Date.now();
    await refresh();
    if (running) timer = setTimeout(loop, Math.max(100, INTERVAL_MS - (Date.now() - t0)));
  }

  window.shmproxyDashboard = {
    get last() { return last; },
    get samples() { return samples.slice(); },
    refresh,
    // Stops polling; resolves once no refresh is in flight.
    stop() {
      running = false;
      if (timer) { clearTimeout(timer); timer = null; }
      return inflight ? inflight.then(() => undefined) : Promise.resolve();
    },
    start() { if (!running) { running = true; loop(); } },
  };
  loop();
})();
