// The Secrets page. Plain DOM code, no framework, no inline handlers (the CSP forbids them).
// Every request carries the user's token as a bearer header; values only ever travel from a
// password input to the API, and the input is cleared as soon as the request is sent.
"use strict";

(() => {
  const TOKEN_KEY = "secretfs.token";
  const WORKSPACE_KEY = "secretfs.workspace";
  const $ = (id) => document.getElementById(id);

  const state = {
    token: null,
    me: null,
    workspace: "default",
    secrets: [],
    templates: [],
    selected: new Set(),
    target: null, // the secret a dialog acts on
    session: 0, // bumped at each sign-in and sign-out: late answers of an old session are dropped
  };

  // ---- API -----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `request failed (HTTP ${status})`);
      this.status = status;
      this.field = body && body.field;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const init = { method, headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (e) {
      throw new ApiError(0, { message: "the server cannot be reached; check your connection and try again" });
    }
    const text = await resp.text();
    let json = null;
    if (text) {
      try { json = JSON.parse(text); } catch (e) { json = null; }
    }
    if (!resp.ok) {
      if (resp.status === 401 && state.me) {
        signOut("Your token was refused (expired or revoked); sign in again.");
      }
      throw new ApiError(resp.status, json);
    }
    return json;
  }

  const wsPath = (rest) => `/api/v1/workspaces/${encodeURIComponent(state.workspace)}${rest}`;

  // ---- small helpers --------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else if (k in node) node[k] = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function setError(id, message) {
    const p = $(id);
    if (!p) return;
    p.textContent = message || "";
    const input = document.querySelector(`[aria-describedby~="${id}"]`);
    if (input) {
      if (message) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
  }

  function notice(message) {
    $("notice").textContent = message || "";
  }

  function fmtTime(t) {
    const d = new Date(t);
    if (Number.isNaN(d.getTime())) return String(t);
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  }

  // An environment variable name for a secret name (the launcher's NAME=SECRET form).
  const envName = (name) => name.toUpperCase().replace(/[^A-Z0-9_]/g, "_").replace(/^([0-9])/, "_$1");

  function openDialog(id, focus) {
    const d = $(id);
    d.showModal();
    if (focus) $(focus).focus();
  }

  function closeDialog(id) {
    const d = $(id);
    if (d.open) d.close();
  }

  // ---- sign in and out ------------------------------------------------------------------

  async function signIn(token) {
    state.session += 1;
    state.token = token;
    try {
      const me = await api("GET", "/api/v1/whoami");
      if (me.token && me.token.kind && me.token.kind !== "user") {
        throw new ApiError(403, { message: "that is a workload token; sign in with a user token (sfs_u_...)" });
      }
      state.me = me;
    } catch (e) {
      state.token = null;
      throw e;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    const saved = sessionStorage.getItem(WORKSPACE_KEY);
    const spaces = state.me.workspaces || [];
    state.workspace = spaces.includes(saved) ? saved : (spaces.includes("default") ? "default" : spaces[0]);
    $("who-name").textContent = `${state.me.user}${state.me.admin ? " (admin)" : ""}`;
    const select = $("workspace");
    select.replaceChildren(...spaces.map((w) => el("option", { value: w, text: w, selected: w === state.workspace })));
    $("sign-in").hidden = true;
    $("secrets").hidden = false;
    $("who").hidden = false;
    if (!state.templates.length) state.templates = await api("GET", "/api/v1/templates");
    await refresh();
    $("add").focus();
  }

  function signOut(message) {
    state.session += 1;
    state.token = null;
    state.me = null;
    state.secrets = [];
    state.selected.clear();
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(WORKSPACE_KEY);
    for (const d of document.querySelectorAll("dialog")) if (d.open) d.close();
    $("rows").replaceChildren();
    $("binding-rows").replaceChildren();
    $("identity").hidden = true;
    $("audit-rows").replaceChildren();
    $("audit").hidden = true;
    $("secrets").hidden = true;
    $("who").hidden = true;
    $("sign-in").hidden = false;
    $("token").value = "";
    setError("token-error", message || "");
    $("token").focus();
  }

  // ---- the list -------------------------------------------------------------------------

  async function refresh() {
    const session = state.session;
    const secrets = await api("GET", wsPath("/secrets"));
    if (session !== state.session) return;
    state.secrets = secrets;
    const names = new Set(state.secrets.map((s) => s.name));
    for (const n of [...state.selected]) if (!names.has(n)) state.selected.delete(n);
    render();
    await loadBindings();
    await loadAudit();
  }

  function matches(s) {
    const text = $("filter-text").value.trim().toLowerCase();
    const owner = $("filter-owner").value.trim().toLowerCase();
    const vis = $("filter-visibility").value;
    if (text && !s.name.toLowerCase().includes(text)) return false;
    if (owner && !s.owner.toLowerCase().startsWith(owner)) return false;
    if (vis && s.visibility !== vis) return false;
    return true;
  }

  function labelOf(kind) {
    const t = state.templates.find((t) => t.kind === kind);
    return t ? t.label.replace(/^custom secret$/, "custom") : kind;
  }

  function canChange(s) {
    return state.me && (s.owner === state.me.user || state.me.admin);
  }

  function render() {
    const rows = state.secrets.filter(matches).map((s) => {
      const check = el("input", {
        type: "checkbox",
        checked: state.selected.has(s.name),
        "aria-label": `Select ${s.name} for a workload token`,
        "data-select": s.name,
      });
      const vis = s.visibility === "public" ? "Public" : "Private";
      const actions = el("td", { class: "actions-cell" });
      if (canChange(s)) {
        actions.append(
          el("button", { type: "button", class: "secondary", text: "Replace value", "data-replace": s.name, "aria-label": `Replace the value of ${s.name}` }),
          el("button", {
            type: "button", class: "secondary",
            text: s.visibility === "public" ? "Make private" : "Make public",
            "data-visibility": s.name,
            "aria-label": `Make ${s.name} ${s.visibility === "public" ? "private" : "public"}`,
          }),
          el("button", { type: "button", class: "danger", text: "Delete", "data-delete": s.name, "aria-label": `Delete ${s.name}` }),
        );
      }
      return el("tr", { "data-name": s.name },
        el("td", { "data-label": "Select" }, check),
        el("th", { scope: "row", "data-label": "Name", class: "name", text: s.name }),
        el("td", { "data-label": "Kind", text: labelOf(s.kind) }),
        el("td", { "data-label": "Visibility" }, el("span", { class: `badge ${s.visibility}`, text: vis })),
        el("td", { "data-label": "Owner", text: s.owner }),
        el("td", { "data-label": "Tags", text: (s.tags || []).join(", ") }),
        el("td", { "data-label": "Updated" }, el("time", { dateTime: s.updated_at, text: fmtTime(s.updated_at) })),
        el("td", { "data-label": "Version", text: String(s.version) }),
        actions,
      );
    });
    $("rows").replaceChildren(...rows);
    $("empty").hidden = rows.length > 0;
    $("mint").disabled = state.selected.size === 0;
  }

  // ---- add ------------------------------------------------------------------------------

  function fillTemplates() {
    const select = $("add-kind");
    select.replaceChildren(...state.templates.map((t) => el("option", { value: t.kind, text: t.label.charAt(0).toUpperCase() + t.label.slice(1) })));
    select.value = "custom";
    onTemplate();
  }

  function onTemplate() {
    const t = state.templates.find((t) => t.kind === $("add-kind").value);
    const name = $("add-name");
    // Fill the suggested name unless the user typed one of their own.
    if (!name.value || name.dataset.suggested === name.value) {
      name.value = (t && t.name) || "";
      name.dataset.suggested = name.value;
    }
    $("add-kind-hint").textContent = t && t.format ? `Expected: ${t.format}.` : "Any value up to the server's limit.";
  }

  function clearAddErrors() {
    for (const id of ["add-name-error", "add-value-error", "add-tags-error", "add-error"]) setError(id, "");
  }

  function showFieldError(prefix, e) {
    const id = e.field ? `${prefix}-${e.field}-error` : `${prefix}-error`;
    if ($(id)) setError(id, e.message);
    else setError(`${prefix}-error`, e.message);
    const input = e.field && $(`${prefix}-${e.field}`);
    if (input) input.focus();
  }

  async function submitAdd(ev) {
    ev.preventDefault();
    clearAddErrors();
    const valueInput = $("add-value");
    const name = $("add-name").value.trim();
    const value = valueInput.value;
    if (!name) { setError("add-name-error", "a name is required"); $("add-name").focus(); return; }
    if (!value) { setError("add-value-error", "a value is required"); valueInput.focus(); return; }
    const tags = $("add-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
    const visibility = document.querySelector('input[name="add-visibility"]:checked').value;
    // The value leaves the page's state as soon as the request is built.
    valueInput.value = "";
    $("add-submit").disabled = true;
    try {
      const meta = await api("POST", wsPath("/secrets"), { name, kind: $("add-kind").value, visibility, tags, value });
      closeDialog("add-dialog");
      await refresh();
      const warn = meta.warnings && meta.warnings.length ? ` Note: ${meta.warnings.join("; ")}.` : "";
      notice(`Added ${meta.name} (${visibility}, version ${meta.version}).${warn}`);
    } catch (e) {
      showFieldError("add", e);
    } finally {
      $("add-submit").disabled = false;
    }
  }

  function openAdd() {
    $("add-form").reset();
    $("add-name").value = "";
    $("add-name").dataset.suggested = "";
    clearAddErrors();
    fillTemplates();
    openDialog("add-dialog", "add-kind");
  }

  // ---- replace, visibility, delete ------------------------------------------------------

  function openReplace(name) {
    state.target = name;
    $("replace-title").textContent = `Replace the value of ${name}`;
    $("replace-value").value = "";
    setError("replace-value-error", "");
    openDialog("replace-dialog", "replace-value");
  }

  async function submitReplace(ev) {
    ev.preventDefault();
    const input = $("replace-value");
    const value = input.value;
    if (!value) { setError("replace-value-error", "a value is required"); return; }
    input.value = "";
    try {
      const meta = await api("PATCH", wsPath(`/secrets/${encodeURIComponent(state.target)}`), { value });
      closeDialog("replace-dialog");
      await refresh();
      const warn = meta.warnings && meta.warnings.length ? ` Note: ${meta.warnings.join("; ")}.` : "";
      notice(`Replaced the value of ${meta.name} (now version ${meta.version}).${warn}`);
    } catch (e) {
      setError("replace-value-error", e.message);
      input.focus();
    }
  }

  async function toggleVisibility(name) {
    const s = state.secrets.find((s) => s.name === name);
    if (!s) return;
    const visibility = s.visibility === "public" ? "private" : "public";
    try {
      await api("PATCH", wsPath(`/secrets/${encodeURIComponent(name)}`), { visibility });
      await refresh();
      notice(`${name} is now ${visibility}.`);
    } catch (e) {
      notice(`Could not change ${name}: ${e.message}`);
    }
  }

  function openDelete(name) {
    state.target = name;
    $("delete-question").textContent = `Delete the secret "${name}"? Workloads using it will no longer receive it. This cannot be undone.`;
    $("delete-confirm").textContent = `Delete ${name}`;
    setError("delete-error", "");
    openDialog("delete-dialog", "delete-confirm");
  }

  async function submitDelete(ev) {
    ev.preventDefault();
    const name = state.target;
    try {
      await api("DELETE", wsPath(`/secrets/${encodeURIComponent(name)}`));
      closeDialog("delete-dialog");
      await refresh();
      notice(`Deleted ${name}.`);
    } catch (e) {
      setError("delete-error", e.message);
    }
  }

  // ---- workload tokens ------------------------------------------------------------------

  async function submitMint(ev) {
    ev.preventDefault();
    setError("mint-error", "");
    const secrets = [...state.selected].sort();
    if (!secrets.length) { setError("mint-error", "select at least one secret above"); return; }
    try {
      const minted = await api("POST", wsPath("/tokens"), { secrets, ttl: $("mint-ttl").value.trim() || "1h" });
      showToken(minted, secrets);
    } catch (e) {
      setError("mint-error", e.message);
    }
  }

  function showToken(minted, secrets) {
    const origin = window.location.origin;
    $("token-value").value = minted.token;
    $("token-secrets").textContent = secrets.join(", ");
    $("token-expires").textContent = minted.expires_at ? fmtTime(minted.expires_at) : "it is revoked";
    $("token-copied").textContent = "";
    const pairs = secrets.map((n) => (envName(n) === n ? `-s ${n}` : `-s ${envName(n)}=${n}`));
    $("token-run").textContent =
      `secretfs run --url ${origin} --token-file job.token \\\n    ${pairs.join(" ")} -- python3 app.py`;
    $("token-mount").textContent =
      `secretfs mount /run/secrets --url ${origin} --token-file job.token`;
    $("token-spec").textContent = [
      'command = ["python3", "app.py"]',
      "",
      "[secrets]",
      ...secrets.map((n) => `${envName(n)} = "${n}"`),
      "",
      "[source]",
      `url = "${origin}"`,
      'token_file = "job.token"',
    ].join("\n");
    openDialog("token-dialog", "token-copy");
  }

  async function copyToken() {
    const input = $("token-value");
    try {
      await navigator.clipboard.writeText(input.value);
      $("token-copied").textContent = "Copied.";
    } catch (e) {
      input.select();
      $("token-copied").textContent = "Select the token and copy it (the clipboard is not available here).";
    }
  }

  // ---- the audit (admins) ----------------------------------------------------------------

  const AUDIT_ROWS = 100;

  async function loadAudit() {
    const session = state.session;
    if (!state.me || !state.me.admin) { $("audit").hidden = true; return; }
    const q = new URLSearchParams({ workspace: state.workspace, newest: "true", limit: String(AUDIT_ROWS) });
    const records = await api("GET", `/api/v1/audit?${q}`);
    if (session !== state.session) return;
    const when = (t) => t.replace("T", " ").replace(/\.\d+Z$/, "Z");
    const rows = records.reverse().map((r) => el("tr", { "data-audit": String(r.id) },
      el("td", { "data-label": "When", text: r.first_at ? `${when(r.first_at)} – ${when(r.at)}` : when(r.at) }),
      el("td", { "data-label": "Who", text: r.actor }),
      el("td", { "data-label": "Action", text: r.action }),
      el("td", { "data-label": "Target", text: `${r.target_kind} ${r.target}${r.version ? ` v${r.version}` : ""}` }),
      el("td", { "data-label": "Count", class: "count", text: r.count > 1 ? `×${r.count}` : "1" }),
      el("td", { "data-label": "From", text: r.address }),
      el("td", { "data-label": "Detail", text: r.detail }),
    ));
    $("audit-rows").replaceChildren(...rows);
    $("audit-empty").hidden = rows.length > 0;
    $("audit").hidden = false;
  }

  // ---- workload identity (admins) -------------------------------------------------------

  async function loadBindings() {
    const session = state.session;
    if (!state.me || !state.me.admin) { $("identity").hidden = true; return; }
    const all = await api("GET", "/api/v1/identity/bindings");
    if (session !== state.session) return;
    const here = all.filter((b) => b.workspace === state.workspace);
    const rows = here.map((b) => el("tr", { "data-binding": b.name },
      el("th", { scope: "row", "data-label": "Name", class: "name", text: b.name }),
      el("td", { "data-label": "Issuer", text: b.issuer }),
      el("td", { "data-label": "Subject", text: [b.subject, ...b.claims].join(" · ") }),
      el("td", { "data-label": "User", text: b.user }),
      el("td", { "data-label": "Secrets", text: b.secrets.join(", ") }),
      el("td", { class: "actions-cell" },
        el("button", { type: "button", class: "danger", text: "Remove", "data-unbind": b.name, "aria-label": `Remove the binding ${b.name}` })),
    ));
    $("binding-rows").replaceChildren(...rows);
    $("bindings-empty").hidden = rows.length > 0;
    $("identity").hidden = false;
  }

  async function submitBind(ev) {
    ev.preventDefault();
    setError("bind-error", "");
    const secrets = [...state.selected].sort();
    if (!secrets.length) { setError("bind-error", "select the secrets the binding grants above"); return; }
    const text = (id) => $(id).value.trim();
    const body = {
      name: text("bind-name"),
      workspace: state.workspace,
      issuer: text("bind-issuer"),
      audience: text("bind-audience"),
      subject: text("bind-subject"),
      claims: text("bind-claims").split("\n").map((l) => l.trim()).filter(Boolean),
      user: text("bind-user") || state.me.user,
      secrets,
    };
    if (text("bind-ttl")) body.ttl = text("bind-ttl");
    if (text("bind-jwks")) body.jwks = text("bind-jwks");
    try {
      const b = await api("POST", "/api/v1/identity/bindings", body);
      for (const id of ["bind-name", "bind-subject", "bind-claims", "bind-jwks"]) $(id).value = "";
      await loadBindings();
      notice(`Added the identity binding ${b.name}: tokens of ${b.issuer} whose sub matches ${b.subject} read ${b.secrets.join(", ")} as ${b.user}.`);
    } catch (e) {
      setError("bind-error", e.message);
    }
  }

  function openUnbind(name) {
    state.target = name;
    $("unbind-question").textContent = `Remove the identity binding "${name}"? Workloads using it can no longer exchange their tokens, and the tokens it minted are revoked.`;
    $("unbind-confirm").textContent = `Remove ${name}`;
    setError("unbind-error", "");
    openDialog("unbind-dialog", "unbind-confirm");
  }

  async function submitUnbind(ev) {
    ev.preventDefault();
    const name = state.target;
    try {
      await api("DELETE", `/api/v1/identity/bindings/${encodeURIComponent(name)}`);
      closeDialog("unbind-dialog");
      await loadBindings();
      notice(`Removed the identity binding ${name}; the tokens it minted are revoked.`);
    } catch (e) {
      setError("unbind-error", e.message);
    }
  }

  // ---- wiring ---------------------------------------------------------------------------

  function wire() {
    $("sign-in-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const input = $("token");
      const token = input.value.trim();
      input.value = "";
      setError("token-error", "");
      if (!token) { setError("token-error", "paste your user token"); return; }
      try {
        await signIn(token);
      } catch (e) {
        setError("token-error", e.status === 401 ? "this token is not valid (unknown, expired or revoked)" : e.message);
        input.focus();
      }
    });
    $("sign-out").addEventListener("click", () => signOut());
    $("workspace").addEventListener("change", async (ev) => {
      state.workspace = ev.target.value;
      sessionStorage.setItem(WORKSPACE_KEY, state.workspace);
      state.selected.clear();
      notice("");
      await refresh().catch((e) => notice(e.message));
    });
    for (const id of ["filter-text", "filter-owner", "filter-visibility"]) {
      $(id).addEventListener("input", render);
    }
    $("filters").addEventListener("submit", (ev) => ev.preventDefault());
    $("add").addEventListener("click", openAdd);
    $("add-kind").addEventListener("change", onTemplate);
    $("add-form").addEventListener("submit", submitAdd);
    $("replace-form").addEventListener("submit", submitReplace);
    $("delete-form").addEventListener("submit", submitDelete);
    $("mint-form").addEventListener("submit", submitMint);
    $("bind-form").addEventListener("submit", submitBind);
    $("unbind-form").addEventListener("submit", submitUnbind);
    $("audit-refresh").addEventListener("click", () => loadAudit().catch((e) => notice(e.message)));
    $("binding-rows").addEventListener("click", (ev) => {
      const t = ev.target;
      if (t instanceof HTMLElement && t.dataset.unbind) openUnbind(t.dataset.unbind);
    });
    $("token-copy").addEventListener("click", copyToken);
    // The token leaves the page when its dialog closes, however it closes ("close" comes a
    // task later; Done clears it at once).
    const forgetToken = () => {
      $("token-value").value = "";
      for (const id of ["token-run", "token-mount", "token-spec"]) $(id).textContent = "";
    };
    $("token-form").addEventListener("submit", forgetToken);
    $("token-dialog").addEventListener("close", forgetToken);
    for (const d of ["add-dialog", "replace-dialog"]) {
      // A value typed and abandoned is not kept either.
      $(d).addEventListener("close", () => {
        for (const input of $(d).querySelectorAll('input[type="password"]')) input.value = "";
      });
    }
    for (const b of document.querySelectorAll("[data-close]")) {
      b.addEventListener("click", () => b.closest("dialog").close());
    }
    $("rows").addEventListener("click", (ev) => {
      const t = ev.target;
      if (!(t instanceof HTMLElement)) return;
      if (t.dataset.replace) openReplace(t.dataset.replace);
      else if (t.dataset.visibility) toggleVisibility(t.dataset.visibility);
      else if (t.dataset.delete) openDelete(t.dataset.delete);
    });
    $("rows").addEventListener("change", (ev) => {
      const t = ev.target;
      if (t instanceof HTMLInputElement && t.dataset.select) {
        if (t.checked) state.selected.add(t.dataset.select);
        else state.selected.delete(t.dataset.select);
        $("mint").disabled = state.selected.size === 0;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", async () => {
    wire();
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      try {
        await signIn(saved);
      } catch (e) {
        signOut("Your session ended; sign in again.");
      }
    } else {
      $("token").focus();
    }
  });
})();
