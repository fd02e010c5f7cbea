/* safeship dashboard: confirmations, the timeline charts (uPlot), and live updates from the
   server-sent events stream. The pages work without it, apart from the chart and live updates. */
(function () {
  "use strict";

  /* ------------------------------------------------------------ confirmations */

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (!question) { return; }
    if (!window.confirm(question)) { event.preventDefault(); return; }
    var answer = form.querySelector('input[name="confirmed"]');
    if (answer) { answer.value = "yes"; }
  });

  /* ------------------------------------------------------------ the timeline */

  var COLORS = {
    weight: "#2563eb", candidate: "#dc2626", baseline: "#16a34a",
    step: "#94a3b8", promoted: "#16a34a", rollback: "#dc2626", trigger: "#f97316",
    failed: "#dc2626", cancelled: "#6b7280", succeeded: "#16a34a", phase: "#7c3aed"
  };
  var charts = [];
  var timeline = null;

  function readTimeline() {
    var el = document.getElementById("timeline-fresh") || document.getElementById("timeline-data");
    if (!el) { return null; }
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  function xRange(data) {
    var xs = data.columns[0].slice();
    data.markers.forEach(function (m) { xs.push(m.at); });
    if (!xs.length) { var now = Date.now() / 1000; return [now - 60, now]; }
    var lo = Math.min.apply(null, xs), hi = Math.max.apply(null, xs);
    var pad = Math.max(1, (hi - lo) * 0.03);
    return [lo - pad, hi + pad];
  }

  function markersPlugin(host) {
    return {
      hooks: {
        draw: function (u) {
          if (!timeline) { return; }
          var ctx = u.ctx, drawn = [];
          var top = u.bbox.top, height = u.bbox.height;
          var line = 13 * devicePixelRatio, lastX = -1e9, row = 0;
          ctx.save();
          timeline.markers.forEach(function (m) {
            var x = Math.round(u.valToPos(m.at, "x", true));
            if (x < u.bbox.left - 1 || x > u.bbox.left + u.bbox.width + 1) { return; }
            drawn.push(m.kind);
            ctx.strokeStyle = COLORS[m.kind] || "#64748b";
            ctx.lineWidth = (m.kind === "step" ? 1 : 2) * devicePixelRatio;
            ctx.setLineDash(m.kind === "step" ? [4 * devicePixelRatio, 4 * devicePixelRatio] : []);
            ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, top + height); ctx.stroke();
            if (m.kind !== "step") {
              /* labels of markers close together go one under the other; the full text is in
                 the list under the chart */
              row = x - lastX < 90 * devicePixelRatio ? row + 1 : 0;
              lastX = x;
              var text = m.kind === "rollback" ? "⟲ " + m.label : (m.kind === "trigger" ? "trigger" : m.label);
              ctx.setLineDash([]);
              ctx.fillStyle = ctx.strokeStyle;
              ctx.font = (11 * devicePixelRatio) + "px system-ui, sans-serif";
              var width = ctx.measureText(text).width;
              var right = u.bbox.left + u.bbox.width;
              var tx = x + 4 * devicePixelRatio + width > right ? x - 4 * devicePixelRatio - width : x + 4 * devicePixelRatio;
              ctx.fillText(text, tx, top + line * (row + 1));
            }
          });
          ctx.restore();
          host.setAttribute("data-markers", drawn.join(" "));
        }
      }
    };
  }

  function chartWidth(host) { return Math.max(260, host.clientWidth || 600); }

  function makeCharts() {
    var host = document.getElementById("chart");
    timeline = readTimeline();
    if (!host || !timeline || !window.uPlot) { return; }
    host.innerHTML = "";
    var cand = timeline.candidate, base = timeline.baseline || "baseline";
    var range = function () { return xRange(timeline); };
    var sync = window.uPlot.sync("timeline");
    var top = document.createElement("div"), bottom = document.createElement("div");
    top.className = "chart-part weight-error"; bottom.className = "chart-part latency";
    host.appendChild(top); host.appendChild(bottom);
    /* Every time on the dashboard is UTC (the tables, the markers, the events), so the charts' time
       axis and legend are UTC too, not the browser's zone; the axis says so. */
    var utc = function (ts) { return window.uPlot.tzDate(new Date(ts * 1e3), "UTC"); };
    var common = function (height) {
      return { width: chartWidth(host), height: height, cursor: { sync: { key: sync.key } }, tzDate: utc,
               scales: { x: { time: true, range: range } }, legend: { live: true } };
    };
    var a = common(220);
    a.title = "Weight and error rate";
    a.scales.pct = { range: [0, 100] };
    a.scales.err = { range: function (u, lo, hi) { return [0, Math.max(1, hi * 1.2 || 1)]; } };
    a.series = [{ label: "time (UTC)" }, { label: cand + " weight %", scale: "pct", stroke: COLORS.weight, width: 2, paths: window.uPlot.paths.stepped({ align: 1 }), spanGaps: true },
                { label: cand + " errors %", scale: "err", stroke: COLORS.candidate, spanGaps: true, points: { show: true, size: 4 } },
                { label: base + " errors %", scale: "err", stroke: COLORS.baseline, spanGaps: true, points: { show: true, size: 4 } }];
    a.axes = [{ label: "time (UTC)" }, { scale: "pct", label: "weight %" }, { scale: "err", side: 1, label: "errors %", grid: { show: false } }];
    a.plugins = [markersPlugin(host)];
    var b = common(180);
    b.title = "p99 latency (ms)";
    b.scales.ms = { range: function (u, lo, hi) { return [0, Math.max(1, hi * 1.2 || 1)]; } };
    b.series = [{ label: "time (UTC)" }, { label: cand + " p99 ms", scale: "ms", stroke: COLORS.candidate, spanGaps: true, points: { show: true, size: 4 } },
                { label: base + " p99 ms", scale: "ms", stroke: COLORS.baseline, spanGaps: true, points: { show: true, size: 4 } }];
    b.axes = [{ label: "time (UTC)" }, { scale: "ms", label: "ms" }];
    b.plugins = [markersPlugin(bottom)];
    var cols = timeline.columns;
    charts = [new window.uPlot(a, [cols[0], cols[1], cols[2], cols[3]], top),
              new window.uPlot(b, [cols[0], cols[4], cols[5]], bottom)];
    host.setAttribute("data-points", String(cols[0].length));
  }

  function updateCharts() {
    var fresh = readTimeline();
    if (!fresh || !charts.length) { makeCharts(); return; }
    timeline = fresh;
    var cols = fresh.columns;
    charts[0].setData([cols[0], cols[1], cols[2], cols[3]]);
    charts[1].setData([cols[0], cols[4], cols[5]]);
    document.getElementById("chart").setAttribute("data-points", String(cols[0].length));
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      var host = document.getElementById("chart");
      if (!host) { return; }
      charts.forEach(function (c) { c.setSize({ width: chartWidth(host), height: c.height }); });
    }, 150);
  });

  /* ------------------------------------------------------------ live updates */

  var pending = false;
  var running = false;

  function refresh() {
    pending = false;
    if (running) { schedule(); return; }
    running = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.redirected || !response.ok) { return null; }
        return response.text();
      })
      .then(function (html) {
        if (!html) { return; }
        var doc = new DOMParser().parseFromString(html, "text/html");
        var missing = false;
        doc.querySelectorAll("[data-live]").forEach(function (el) {
          var old = document.getElementById(el.id);
          if (!old) { missing = true; return; }
          old.replaceWith(document.importNode(el, true));
        });
        if (missing) { window.location.reload(); return; }
        updateCharts();
        document.body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next event tries again */ })
      .then(function () { running = false; });
  }

  function schedule() {
    if (pending) { return; }
    pending = true;
    setTimeout(refresh, 300);
  }

  function listen() {
    var url = document.body.getAttribute("data-stream");
    var light = document.getElementById("live-status");
    if (!url || !window.EventSource) { return; }
    var source = new EventSource(url);
    source.addEventListener("hello", function () { if (light) { light.className = "live on"; } });
    source.addEventListener("change", schedule);
    source.onerror = function () { if (light) { light.className = "live off"; } };
    window.addEventListener("pagehide", function () { source.close(); });
  }

  makeCharts();
  listen();
}());
