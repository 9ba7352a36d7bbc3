// The idlegrid console: sign-in (the key in sessionStorage only), the
// Authorization header on every htmx and fetch call, the scope gate of each
// view, API keys, top-ups and payouts, and the CSV export. No inline script:
// everything the pages do is here (a strict Content-Security-Policy).
"use strict";
(function () {
  const KEY = "idlegrid.key";
  const view = document.body.dataset.view;
  const $ = (id) => document.getElementById(id);
  let ready = false;

  function key() { return sessionStorage.getItem(KEY); }
  function signOut() {
    sessionStorage.clear();
    window.location.assign("/console");
  }

  async function api(method, path, body) {
    const headers = { "Authorization": "Bearer " + key() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                  cache: "no-store", credentials: "omit" });
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    return { status: r.status, ok: r.ok, data };
  }
  function message(r) {
    return (r.data && r.data.error && r.data.error.message) || ("HTTP " + r.status);
  }
  window.idlegrid = { api, key, isReady: () => ready };

  // htmx: the key rides in the Authorization header; nothing is sent before the gate opens.
  document.body.addEventListener("htmx:configRequest", (e) => {
    e.detail.headers["Authorization"] = "Bearer " + key();
  });
  document.body.addEventListener("htmx:beforeRequest", (e) => { if (!ready) e.preventDefault(); });
  document.body.addEventListener("htmx:afterSwap", (e) => {
    const err = e.detail.target.querySelector("[data-status='401']");
    if (err) signOut();
  });

  function showWho(who) {
    $("who-text").textContent = "Signed in: " + who.scope + " key " + who.key_id.slice(0, 8) + "…";
    $("who").hidden = false;
    for (const li of document.querySelectorAll("[data-needs]")) li.hidden = !who.views.includes(li.dataset.needs);
  }

  async function gate() {
    if (!key()) {
      if (view !== "signin") window.location.assign("/console");
      return;
    }
    const r = await api("GET", "/v1/whoami");
    if (r.status === 401) { signOut(); return; }
    if (!r.ok) { if ($("denied")) { $("denied").textContent = message(r); $("denied").hidden = false; } return; }
    const who = r.data;
    showWho(who);
    if (view === "signin") {
      $("sign-in").hidden = true;
      $("signed-in").hidden = false;
      $("views-list").textContent = who.views.join(", ");
      return;
    }
    if (!who.views.includes(view)) {
      $("denied").textContent = "This " + who.scope + " key cannot open the " + view + " view. It may open: " +
        who.views.join(", ") + ".";
      $("denied").hidden = false;
      return;
    }
    $("content").hidden = false;
    ready = true;
    document.body.dispatchEvent(new CustomEvent("igready"));
  }

  async function signIn(e) {
    e.preventDefault();
    const value = $("api-key").value.trim();
    $("sign-in-error").textContent = "";
    if (!value) { $("sign-in-error").textContent = "Paste an API key first."; return; }
    sessionStorage.setItem(KEY, value);
    $("api-key").value = "";
    const r = await api("GET", "/v1/whoami");
    if (!r.ok) {
      sessionStorage.removeItem(KEY);
      $("sign-in-error").textContent = r.status === 401 ? "This key is not valid (unknown, revoked or expired)."
        : message(r);
      return;
    }
    window.location.assign("/console/" + r.data.views[0]);
  }

  async function createKey() {
    const r = await api("POST", "/v1/account/keys", {});
    const box = $("new-key");
    box.textContent = "";
    if (!r.ok) { box.textContent = "Could not create a key: " + message(r); return; }
    const p = document.createElement("p");
    p.textContent = "Your new key (shown only once; copy it now):";
    const out = document.createElement("output");
    out.id = "new-key-value";
    out.textContent = r.data.key;
    box.append(p, out);
    htmx.trigger("#keys", "igrefresh");
  }

  async function revokeKey(id) {
    const r = await api("DELETE", "/v1/account/keys/" + encodeURIComponent(id));
    $("new-key").textContent = r.ok ? "Key " + id + " revoked." : "Could not revoke: " + message(r);
    htmx.trigger("#keys", "igrefresh");
  }

  async function money(e) {
    e.preventDefault();
    const f = e.target, status = $("money-status");
    const m = /^(\d{1,12})(?:\.(\d{1,6}))?$/.exec(f.amount.value.trim());
    if (!m) { status.textContent = "The amount must be credits with at most 6 decimals, e.g. 12.5"; return; }
    const micros = Number(m[1]) * 1e6 + Number((m[2] || "").padEnd(6, "0"));
    const path = "/v1/admin/accounts/" + encodeURIComponent(f.account_id.value.trim()) + "/" + f.action.value;
    const r = await api("POST", path, { amount_micros: micros, idempotency_key: crypto.randomUUID() });
    status.textContent = r.ok ? "Done: " + f.action.value + " of " + f.amount.value + " credits." : "Refused: " + message(r);
    htmx.trigger("#accounts", "igrefresh");
    htmx.trigger("#audit", "igrefresh");
  }

  const CSV_PAGES_MAX = 50;
  function csvCell(v) {
    const s = v === null || v === undefined ? "" : String(v);
    return /[",\n\r]/.test(s) || /^[=+\-@]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }
  async function downloadCsv() {
    const status = $("csv-status"), form = $("job-filter");
    const cols = ["job_id", "finished_at", "node_id", "model", "outcome", "settlement", "prompt_tokens",
                  "completion_tokens", "requests", "cost_micros", "fee_micros", "provider_micros", "settled_at"];
    const rows = [cols.join(",")];
    let cursor = "";
    for (let page = 0; page < CSV_PAGES_MAX; page++) {
      const q = new URLSearchParams({ limit: "1000", node_id: form.node_id.value.trim(), model: form.model.value.trim() });
      if (cursor) q.set("cursor", cursor);
      const r = await api("GET", "/v1/provider/jobs?" + q);
      if (!r.ok) { status.textContent = "Could not read the jobs: " + message(r); return; }
      for (const j of r.data.data) rows.push(cols.map((c) => csvCell(j[c])).join(","));
      cursor = r.data.next_cursor;
      if (!cursor) break;
    }
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([rows.join("\r\n") + "\r\n"], { type: "text/csv" }));
    a.download = "idlegrid-jobs.csv";
    document.body.append(a);
    a.click();
    a.remove();
    status.textContent = (rows.length - 1) + " jobs written to idlegrid-jobs.csv.";
  }

  function on(id, event, fn) { const el = $(id); if (el) el.addEventListener(event, fn); }
  on("sign-in", "submit", signIn);
  on("sign-out", "click", signOut);
  on("create-key", "click", createKey);
  on("money", "submit", money);
  on("download-csv", "click", downloadCsv);
  on("copy-snippet", "click", () => navigator.clipboard && navigator.clipboard.writeText($("snippet").textContent));
  document.body.addEventListener("click", (e) => {
    const b = e.target.closest("button[data-revoke]");
    if (b) revokeKey(b.dataset.revoke);
  });
  gate();
})();
