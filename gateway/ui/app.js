// The dashboard: reads the admin JSON APIs with the key given at login (kept for this tab only).
"use strict";
const $ = (selector) => document.querySelector(selector);
let key = sessionStorage.getItem("gateway-key");
let who = null;

async function api(path, options = {}) {
  const response = await fetch(path, {...options, headers: {"Authorization": "Bearer " + key,
                                                             "Content-Type": "application/json"}});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : "HTTP " + response.status);
  return body;
}

function cell(value, field) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "" : value;
  if (field) td.dataset.field = field;
  if (typeof value === "string" && isNaN(Number(value))) td.className = "text";
  return td;
}

function fill(table, rows, toCells) {
  const body = $(table + " tbody");
  body.replaceChildren(...rows.map((row) => {
    const tr = document.createElement("tr");
    const [attributes, cells] = toCells(row);
    Object.assign(tr.dataset, attributes);
    tr.append(...cells);
    return tr;
  }));
}

function daysBefore(day, count) {
  const d = new Date(day + "T00:00:00Z");
  d.setUTCDate(d.getUTCDate() - count);
  return d.toISOString().slice(0, 10);
}

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.ceil(p / 100 * sorted.length) - 1)] : null;
}

async function loadUsage() {
  const from = daysBefore(who.today, 29);
  $("#period").textContent = `(${from} to ${who.today}, UTC)`;
  const range = `from=${from}&to=${who.today}`;
  const [byModel, byDay, savings] = await Promise.all([api(`/admin/usage?group_by=model&${range}`),
                                                       api(`/admin/usage?group_by=day&${range}`),
                                                       api("/admin/cache/savings")]);
  fill("#usage", byModel.data, (r) => [{tenant: r.tenant, model: r.model}, [
    cell(r.tenant), cell(r.model), cell(r.requests, "requests"), cell(r.prompt_tokens, "prompt_tokens"),
    cell(r.completion_tokens, "completion_tokens"), cell(r.cost_usd.toFixed(6), "cost_usd"),
    cell(r.cache_hits, "cache_hits"), cell(r.errors, "errors")]]);
  const top = Math.max(1, ...byDay.data.map((r) => r.requests));
  fill("#daily", byDay.data, (r) => {
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = Math.round(200 * r.requests / top) + "px";
    const td = cell("");
    td.append(bar);
    return [{tenant: r.tenant, day: r.day}, [cell(r.tenant), cell(r.day), cell(r.requests, "requests"),
                                             cell(r.cost_usd.toFixed(6), "cost_usd"), td]];
  });
  const perTenant = {};
  for (const r of byModel.data) {
    const t = perTenant[r.tenant] ??= {requests: 0, hits: 0, cached: 0};
    t.requests += r.requests; t.hits += r.cache_hits; t.cached += r.cached_tokens;
  }
  // dollars saved: what the cached answers cost when they were made, from the request log's records
  const saved = Object.fromEntries(savings.data.map((r) => [r.tenant, r.saved_usd]));
  for (const tenant of Object.keys(saved)) perTenant[tenant] ??= {requests: 0, hits: 0, cached: 0};
  $("#saved-total").textContent = "$" + savings.total_saved_usd.toFixed(6);
  $("#saved-period").textContent = savings.retention_days === null ? "(the request log is off)"
    : `(over the request log's last ${savings.retention_days} days)`;
  fill("#cache", Object.entries(perTenant), ([tenant, t]) => [{tenant}, [
    cell(tenant), cell(t.hits, "cache_hits"), cell(t.requests ? (t.hits / t.requests).toFixed(3) : "", "hit_ratio"),
    cell(t.cached, "cached_tokens"), cell((saved[tenant] ?? 0).toFixed(6), "saved_usd")]]);
}

async function loadRequests() {
  const params = new URLSearchParams();
  for (const [name, value] of new FormData($("#filters"))) if (value) params.set(name, value);
  params.set("limit", "50");
  const recent = await api("/admin/requests?" + params);
  fill("#requests", recent.data, (r) => [{requestId: r.request_id}, [
    cell(new Date(r.ts * 1000).toISOString().slice(0, 19).replace("T", " ")), cell(r.tenant), cell(r.alias),
    cell(r.status, "status"), cell(r.latency_ms.toFixed(1), "latency_ms"),
    cell((r.prompt_tokens || 0) + (r.completion_tokens || 0), "tokens"), cell(r.request_id)]]);
  const all = await api("/admin/requests?limit=1000");
  const byAlias = {};
  for (const r of all.data) if (r.alias) (byAlias[r.alias] ??= []).push(r.latency_ms);
  fill("#latency", Object.entries(byAlias), ([alias, values]) => {
    values.sort((a, b) => a - b);
    return [{alias}, [cell(alias), cell(values.length, "requests"),
                      ...[50, 95, 99].map((p) => cell(percentile(values, p).toFixed(1), "p" + p))]];
  });
}

async function loadDeployments() {
  if (!who.admin) return;
  const found = await api("/admin/deployments");
  fill("#deployments", found.data, (d) => [{alias: d.alias, deployment: d.deployment}, [
    cell(d.alias), cell(d.deployment), Object.assign(cell(d.breaker.state, "breaker"),
                                                     {className: d.breaker.state === "open" ? "open" : "text"}),
    cell(d.breaker.consecutive_failures, "failures"), cell(d.outstanding, "outstanding"),
    cell(d.latency_ewma_ms, "latency_ewma_ms")]]);
}

async function loadKeys() {
  const keys = await api("/admin/keys");
  fill("#keys", keys.data, (k) => {
    const action = document.createElement("td");
    if (who.admin && k.source === "runtime") {
      const revoke = document.createElement("button");
      revoke.textContent = "Revoke";
      revoke.className = "revoke";
      revoke.onclick = () => guarded(async () => {
        await api("/admin/keys/" + k.id, {method: "DELETE"});
        await loadKeys();
      });
      action.append(revoke);
    }
    const expires = k.expires_at ? new Date(k.expires_at * 1000).toISOString() : "";
    return [{id: k.id}, [cell(k.id), cell(k.tenant), cell(k.name), cell(k.source),
                         cell(k.expired ? "expired" : expires), action]];
  });
}

async function guarded(work) {
  try {
    $("#error").textContent = "";
    await work();
  } catch (error) {
    $("#error").textContent = error.message;
  }
}

async function show() {
  who = await api("/admin/whoami");
  $("#who").textContent = who.admin ? "admin" : "tenant " + who.tenant;
  $("#login").classList.add("hidden");
  $("#main").classList.remove("hidden");
  $("#logout").classList.remove("hidden");
  for (const id of ["#deployments-section", "#create-key"]) $(id).classList.toggle("hidden", !who.admin);
  await guarded(() => Promise.all([loadUsage(), loadRequests(), loadDeployments(), loadKeys()]));
  document.body.dataset.loaded = "true";
}

$("#login-form").onsubmit = async (event) => {
  event.preventDefault();
  key = $("#key").value.trim();
  try {
    await show();
    sessionStorage.setItem("gateway-key", key);
    $("#login-error").textContent = "";
  } catch (error) {
    $("#login-error").textContent = error.message;
  }
};
$("#logout").onclick = () => { sessionStorage.removeItem("gateway-key"); location.reload(); };
$("#filters").onsubmit = (event) => { event.preventDefault(); guarded(loadRequests); };
$("#create-key").onsubmit = (event) => {
  event.preventDefault();
  guarded(async () => {
    const form = Object.fromEntries(new FormData($("#create-key")));
    const made = await api("/admin/keys", {method: "POST", body: JSON.stringify(form)});
    $("#newkey").textContent = made.key;
    $("#newkey").classList.remove("hidden");
    await loadKeys();
  });
};
if (key) show().catch(() => sessionStorage.removeItem("gateway-key"));
