// Charts of the console, drawn with uPlot from the REST answers: the
// provider's earnings per bucket (released and held) and the partner's spend
// per bucket and model. Each chart has a table with the same numbers (its
// text alternative). Redrawn every few seconds while the page is open.
"use strict";
(function () {
  const POLL_MS = 5000;
  const COLORS = ["#1f5fa8", "#b3541e", "#2e7d32", "#6a1b9a", "#00838f", "#ad1457"];
  const credits = (micros) => micros / 1e6;
  const charts = {};
  const ranges = {};  // chart id -> [since, until] in unix seconds: the x axis spans the asked window

  function table(el, caption, head, rows) {
    const t = document.createElement("table");
    const cap = t.createCaption();
    cap.textContent = caption;
    const tr = t.createTHead().insertRow();
    for (const h of head) { const th = document.createElement("th"); th.scope = "col"; th.textContent = h; tr.append(th); }
    const body = t.createTBody();
    for (const r of rows) { const row = body.insertRow(); for (const v of r) row.insertCell().textContent = v; }
    el.replaceChildren(t);
  }

  function draw(el, series, xs, ys, range) {
    el.dataset.points = String(xs.length);
    ranges[el.id] = range;
    const width = Math.max(280, el.clientWidth || 600);
    const data = [xs, ...ys];
    const opts = {
      width, height: 260,
      series: [{}, ...series.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length], width: 2,
                                                 points: { show: true, size: 6 } }))],
      axes: [{}, { size: 70, values: (u, vals) => vals.map((v) => String(+v.toPrecision(3))) }],
      scales: { x: { time: true, range: () => ranges[el.id] },
                y: { range: (u, lo, hi) => [0, hi > 0 ? hi * 1.15 : 1] } },
    };
    const old = charts[el.id];
    if (old && old.series.length === data.length) { old.setData(data); if (old.width !== width) old.setSize({ width, height: 260 }); return; }
    if (old) old.destroy();
    el.replaceChildren();
    charts[el.id] = new uPlot(opts, data, el);
  }

  async function earnings() {
    const el = document.getElementById("earnings-chart");
    const bucket = document.getElementById("earn-bucket").value;
    const r = await window.idlegrid.api("GET", "/v1/provider/earnings/buckets?bucket=" + bucket);
    if (!r.ok) return;
    const b = r.data.buckets;
    const xs = b.map((x) => Date.parse(x.start) / 1000);
    draw(el, ["released", "held"], xs, [b.map((x) => credits(x.released_micros)), b.map((x) => credits(x.held_micros))],
         [Date.parse(r.data.since) / 1000, Date.parse(r.data.until) / 1000]);
    table(document.getElementById("earnings-table"), "Earnings per " + bucket + " (credits)",
      ["Bucket start (UTC)", "Jobs", "Released", "Held"],
      b.map((x) => [x.start.slice(0, 16).replace("T", " "), x.jobs, credits(x.released_micros).toFixed(6),
                    credits(x.held_micros).toFixed(6)]));
  }

  async function usage() {
    const el = document.getElementById("usage-chart");
    const bucket = document.getElementById("usage-bucket").value;
    const span = bucket === "day" ? 30 * 86400 : 48 * 3600;
    const since = Math.floor(Date.now() / 1000) - span;
    const r = await window.idlegrid.api("GET", "/v1/account/usage?group_by=model&limit=1&bucket=" + bucket + "&since=" + since);
    if (!r.ok) return;
    const b = r.data.buckets;
    const xs = [...new Set(b.map((x) => Date.parse(x.start) / 1000))].sort((p, q) => p - q);
    const models = [...new Set(b.map((x) => x.key || "all"))].sort();
    const ys = models.map((m) => xs.map((t) => {
      const hit = b.find((x) => (x.key || "all") === m && Date.parse(x.start) / 1000 === t);
      return hit ? credits(hit.cost_micros) : 0;
    }));
    draw(el, models, xs, ys, [since, Math.floor(Date.now() / 1000)]);
    table(document.getElementById("usage-table"), "Spend per " + bucket + " and model (credits)",
      ["Bucket start (UTC)", "Model", "Jobs", "Tokens in / out", "Spend"],
      b.map((x) => [x.start.slice(0, 16).replace("T", " "), x.key || "all", x.jobs,
                    x.prompt_tokens + " / " + x.completion_tokens, credits(x.cost_micros).toFixed(6)]));
  }

  function run(fn, selectId) {
    const tick = () => fn().catch(() => {});
    tick();
    setInterval(tick, POLL_MS);
    document.getElementById(selectId).addEventListener("change", tick);
  }

  document.body.addEventListener("igready", () => {
    if (document.getElementById("earnings-chart")) run(earnings, "earn-bucket");
    if (document.getElementById("usage-chart")) run(usage, "usage-bucket");
  });
})();
