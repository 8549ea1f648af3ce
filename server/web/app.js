// livedm's Data Management page: a plain JSON-RPC client of /api (the same API as the CLI).
"use strict";

const DATATYPES = ["raw", "micrographs", "thumbnails", "particles", "metadata"];
const LABELS = {
  raw: "Raw import data", micrographs: "Motion corrected micrographs", thumbnails: "Exposure thumbnails",
  particles: "Extracted particles", metadata: "Metadata",
};
const TRANSIENT = ["deleting", "calculating"];
const REFRESH_EVERY_MS = 10000;
const TOKEN_KEY = "livedm.token";

// expandAll: every project's sessions are rows (but those in `collapsed`); else only those in `expanded`.
const state = {
  token: null, me: null, overview: null, view: "table", timer: null, rows: null, window: null,
  page: 1, expandAll: false, expanded: new Set(), collapsed: new Set(), loads: 0,
};
const $ = (selector) => document.querySelector(selector);

// --- the API ------------------------------------------------------------------------------------

class RpcError extends Error {
  constructor(error) {
    super(error.message);
    this.code = error.code;
    this.kind = error.name;
  }
}

let nextId = 1;
async function rpc(method, params = {}) {
  let response;
  try {
    response = await fetch("/api", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${state.token}` },
      body: JSON.stringify({ jsonrpc: "2.0", method, params, id: nextId++ }),
    });
  } catch (err) {
    throw new RpcError({ message: `livedmd does not answer (${err.message}); is it running?`, name: "Unreachable" });
  }
  const reply = await response.json();
  if (reply.error) {
    if (reply.error.code === -32004 && state.me) signOut(reply.error.message);
    throw new RpcError(reply.error);
  }
  return reply.result;
}

// --- small helpers ------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    // Styles through the CSSOM: the Content-Security-Policy refuses inline style attributes.
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child.nodeType ? child : String(child));
  }
  return node;
}

function humanSize(bytes) {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let size = bytes, unit = 0;
  while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit++; }
  return unit === 0 ? `${size} B` : `${size.toFixed(1)} ${units[unit]}`;
}

// Times on the page are the browser's local time; the page says so (zoneName) where it shows them.
function shortTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function zoneName() {
  const minutes = -new Date().getTimezoneOffset();
  const sign = minutes < 0 ? "-" : "+";
  const offset = `UTC${sign}${String(Math.floor(Math.abs(minutes) / 60)).padStart(2, "0")}:` +
    String(Math.abs(minutes) % 60).padStart(2, "0");
  const name = Intl.DateTimeFormat().resolvedOptions().timeZone;
  return name && name !== "UTC" ? `${name}, ${offset}` : offset;
}

function age(iso) {
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 90) return "just now";
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 129600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function toast(message, isError = false) {
  const node = el("div", { class: isError ? "toast error" : "toast", role: isError ? "alert" : "status" }, message);
  $("#toasts").append(node);
  setTimeout(() => node.remove(), isError ? 9000 : 4000);
}

async function guarded(action) {
  try { return await action(); } catch (err) { toast(err.message, true); return undefined; }
}

function download(filename, data) {
  downloadBlob(filename, new Blob([JSON.stringify(data, null, 2)], { type: "application/json" }));
}

function downloadText(filename, text) {
  downloadBlob(filename, new Blob([text], { type: "text/plain;charset=utf-8" }));
}

function downloadBlob(filename, blob) {
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// --- signing in and out --------------------------------------------------------------------------

async function signIn(token) {
  state.token = token.trim();
  try {
    state.me = await rpc("whoami");
  } catch (err) {
    state.token = null;
    $("#sign-in-error").textContent = err.code === -32004
      ? "That token is not valid (mistyped or revoked). Ask an admin for a new one." : err.message;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("#sign-in-error").textContent = "";
  $("#token").value = "";
  $("#who-name").textContent = `${state.me.name} (${state.me.role}${state.me.live_data_management ? ", may change data" : ""})`;
  $("#who").hidden = false;
  $("#nav").hidden = false;
  $("#users-tab").hidden = state.me.role !== "admin";
  show("table");
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(state, { token: null, me: null, overview: null, page: 1 });
  clearInterval(state.timer);
  closeMenus();
  for (const id of ["#who", "#nav", "#table-view", "#jobs-view", "#users-view"]) $(id).hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = message;
}

function show(view) {
  state.view = view;
  $("#sign-in").hidden = true;
  for (const name of ["table", "jobs", "users"]) $(`#${name}-view`).hidden = name !== view;
  for (const tab of document.querySelectorAll("nav .tab")) tab.classList.toggle("active", tab.dataset.view === view);
  clearInterval(state.timer);
  const load = { table: loadOverview, jobs: loadJobs, users: loadUsers }[view];
  guarded(load);
  state.timer = setInterval(() => {
    if (!$("#dialog").open && $("#menu").hidden && $("#context-menu").hidden) guarded(load);
  }, REFRESH_EVERY_MS);
}

// --- the overview table --------------------------------------------------------------------------

// One page of rows, searched and filtered by livedmd (paging.js says which); a load started later wins.
async function loadOverview() {
  const load = ++state.loads;
  const [overview, discovery] = await Promise.all([rpc("get_overview", overviewParams()),
    rpc("get_discovery_report").catch(() => null)]);
  if (load !== state.loads) return;
  if (overview.first_row === 0 && overview.rows > 0 && state.page > 1) {  // fewer rows now: the last page
    state.page = overview.pages;
    return loadOverview();
  }
  state.overview = overview;
  state.discovery = discovery;
  renderOverview();
}

function plural(n, word) {
  return `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`;
}

function renderSummary(overview) {
  const facility = overview.facility;
  const totals = Object.fromEntries(DATATYPES.map((dt) => [dt, facility.data_management[dt].size]));
  const all = DATATYPES.reduce((sum, dt) => sum + totals[dt], 0);
  $("#summary").replaceChildren(
    el("div", { class: "total" }, `${humanSize(all)} in ${plural(facility.project_count, "project")}, ` +
      `${plural(facility.session_count, "session")}`),
    el("div", { class: "bar", "aria-label": "bytes by category" },
      DATATYPES.filter((dt) => totals[dt] > 0).map((dt) => el("span", {
        class: `seg-${dt}`, style: { width: `${(100 * totals[dt]) / all}%` }, title: `${LABELS[dt]}: ${humanSize(totals[dt])}`,
      }))),
    el("div", { class: "legend" }, DATATYPES.map((dt) =>
      el("span", { "data-total": dt }, el("i", { class: `seg-${dt}` }), `${LABELS[dt]}: ${humanSize(totals[dt])}`))),
  );
}

function mixBar(dataManagement) {
  const total = DATATYPES.reduce((sum, dt) => sum + (dataManagement[dt].size || 0), 0);
  return el("div", { class: "mix", title: DATATYPES.map((dt) => `${LABELS[dt]} ${humanSize(dataManagement[dt].size)}`).join("\n") },
    total === 0 ? [] : DATATYPES.filter((dt) => dataManagement[dt].size > 0).map((dt) =>
      el("span", { class: `seg-${dt}`, style: { width: `${(100 * dataManagement[dt].size) / total}%` } })));
}

// What went wrong with a category (the server's `alert`): one red badge in place of the status badge,
// the reason on hover; a click shows the hook run's log, or the deletion's job.
const ALERT_LABELS = { hook_failed: "hook failed", deletion_failed: "deletion failed", deletion_stuck: "stuck" };

function alertBadge(category, where) {
  const alert = category.alert;
  const label = category.status === "active" ? ALERT_LABELS[alert.kind] : `${category.status} · ${ALERT_LABELS[alert.kind]}`;
  const next = alert.kind === "hook_failed" ? "Click for the run's log." : "Click for the deletion job.";
  return el("button", {
    type: "button", class: `badge alert ${alert.kind}`, dataset: { alert: alert.kind, job: alert.job_id || "" },
    title: `${category.status}: ${alert.message}. ${next}`,
    onclick: (event) => {
      event.stopPropagation();
      if (alert.kind === "hook_failed") guarded(() => showLog(alert.job_id, where));
      else guarded(() => showDeletion(alert, where));
    },
  }, `⚠ ${label}`);
}

function statusBadge(category, where) {
  if (category.alert) return alertBadge(category, where);
  const status = category.status;
  return status && status !== "active" ? el("span", { class: `badge ${status}` }, status) : null;
}

function sizeCell(category, attrs = {}, neverMeasured = false, where = "") {
  const status = category.status;
  if (neverMeasured) {
    return el("td", { class: "num never", title: "never measured: its directory has not been there yet", ...attrs },
      el("div", { class: "figure" }, "–"),
      el("div", { class: "badges" }, statusBadge(category, where) || el("span", { class: "never-measured" }, "never measured")));
  }
  const measured = category.updated_at ? `measured ${shortTime(category.updated_at)}` : "not measured yet";
  const stale = status === "missing" ? "; missing: these are the last figures" : "";
  return el("td", { class: "num", title: `${category.size.toLocaleString()} bytes, ${measured}${stale}`, ...attrs },
    el("div", { class: "figure" }, humanSize(category.size)), el("div", { class: "badges" }, statusBadge(category, where)));
}

// Two lines per cell: rows are ROW_PX high.
function twoLines(first, second, attrs = {}) {
  return el("td", attrs, el("div", { class: "line" }, first), el("div", { class: "sub" }, second));
}

function titleCell(title, dataManagement) {
  return el("td", { class: "title", title }, el("div", { class: "line" }, title), mixBar(dataManagement));
}

function latestDate(session) {
  const paused = session.paused_at.length ? session.paused_at[session.paused_at.length - 1] : null;
  const events = [["created", session.created_at], ["started", session.started_at], ["paused", paused],
    ["completed", session.completed_at]].filter(([, iso]) => iso);
  const [what, iso] = events.reduce((last, event) => (event[1] > last[1] ? event : last));
  const all = `Created ${shortTime(session.created_at)}\nLast paused ${shortTime(paused)}\n` +
    `Completed ${shortTime(session.completed_at)}\n(local time, ${zoneName()})`;
  return twoLines(shortTime(iso), what, { class: "dates", title: all });
}

function rowMenuButton(label, actions) {
  return el("td", { class: "actions" }, el("button", {
    type: "button", class: "row-menu", "aria-label": label, title: label,
    onclick: (event) => openMenu(event, label, actions),
  }, "⋯"));
}

function projectRow(project) {
  const open = project.expanded;
  const matched = filtering() ? `${project.matched_sessions.toLocaleString()} match` : "";
  const byStatus = Object.entries(project.sessions_by_status || {}).map(([status, n]) => `${n} ${status}`).join(", ");
  return el("tr", { class: project.continued ? "project continued" : "project", dataset: { uid: project.uid } },
    el("td", {}, el("button", {
      type: "button", "aria-label": `${open ? "collapse" : "expand"} ${project.uid}`, "aria-expanded": String(open),
      onclick: () => toggleProject(project.uid, open),
    }, open ? "▾" : "▸")),
    el("td", { title: project.uid }, project.uid), titleCell(project.title, project.data_management),
    twoLines(plural(project.session_count, "session"), project.continued ? "↳ continued" : matched,
      { class: "count", title: byStatus || "no sessions" }),
    DATATYPES.map((dt) => sizeCell(project.data_management[dt])),
    twoLines(shortTime(project.created_at), "created", { class: "dates", title: `Created ${shortTime(project.created_at)} (local time, ${zoneName()})` }),
    el("td", {}),
    rowMenuButton(`${project.uid}: actions`, [
      { label: "Refresh project stats", why: null, run: () => refreshProject(project) },
      { label: "Download project stats (JSON)", why: null, run: () => downloadProjectStats(project) },
    ]),
  );
}

function sessionRow(project, session) {
  const where = (dt) => `${project.uid} ${session.uid} ${dt}`;
  return el("tr", { class: "session", dataset: { uid: `${project.uid}-${session.uid}` } },
    el("td", {}), el("td", { title: session.uid }, session.uid), titleCell(session.title, session.data_management),
    el("td", { class: `status-${session.status}`, title: session.cryosparc_status
      ? `cryoSPARC: ${session.cryosparc_status}${session.left_cryosparc_at ? " (no longer listed by cryoSPARC)" : ""}`
      : session.status }, session.cryosparc_status || session.status),
    DATATYPES.map((dt) => sizeCell(session.data_management[dt], {
      class: "num category", dataset: { datatype: dt }, tabindex: "0", "aria-haspopup": "menu",
      "aria-label": `${project.uid} ${session.uid} ${LABELS[dt]}: ${humanSize(session.data_management[dt].size)}, ` +
        `${session.data_management[dt].status}; actions`,
      onclick: (event) => openCategoryMenu(project, session, dt, event),
      onkeydown: (event) => {
        if (event.target === event.currentTarget && (event.key === "Enter" || event.key === " ")) {
          event.preventDefault();
          openCategoryMenu(project, session, dt, event);
        }
      },
    }, !session.measured_at && !session.data_management[dt].updated_at, where(dt))),
    latestDate(session),
    session.measured_at
      ? twoLines(age(session.measured_at), shortTime(session.measured_at),
        { class: "measured", title: `measured ${shortTime(session.measured_at)} (local time, ${zoneName()})` })
      : twoLines("never", "", { class: "measured never" }),
    rowMenuButton(`${project.uid} ${session.uid}: actions`, [
      { label: "Refresh session stats", why: null, run: () => refreshSession(project, session) },
      { label: "Mark completed…", run: () => markCompleted(project, session),
        why: session.status === "completed" ? "it is completed already" : null },
    ]),
  );
}

// Only the rows near the viewport are in the DOM (5,000 sessions would make every frame slow);
// spacer rows of the right height stand for the others, so the page scrolls as if all were there.
const ROW_PX = 40;  // the height style.css gives every row (two lines)
const BUFFER_ROWS = 40;

function renderOverview() {
  const overview = state.overview;
  renderSummary(overview);
  renderPager(overview);
  state.rows = [];
  for (const project of overview.projects) {
    state.rows.push({ project });
    for (const session of project.sessions) state.rows.push({ project, session });
  }
  state.window = null;
  renderWindow();
  $("#empty").hidden = overview.facility.project_count > 0;
  $("#no-match").hidden = overview.facility.project_count === 0 || overview.rows > 0;
  $("#as-of").textContent = `Table read ${shortTime(state.overview.as_of)}; times are local (${zoneName()}).`;
  renderDiscovery(state.discovery);
}

function spacer(rows) {
  return el("tr", { class: "spacer", "aria-hidden": "true" },
    el("td", { colspan: "12", style: { height: `${rows * ROW_PX}px` } }));
}

// The last discovery pass: when, and (for those who may change data) what it could not take in.
function renderDiscovery(report) {
  const box = $("#discovery");
  if (!report || !report.job_id) { box.hidden = true; return; }
  const counts = report.counts || {};
  const unreached = (report.roots || []).filter((root) => !root.reached);
  const problems = (counts.conflicts || 0) + (counts.unreadable || 0) + unreached.length;
  box.hidden = false;
  box.classList.toggle("warn", problems > 0 || report.state === "failed");
  box.replaceChildren(
    `Last discovery ${shortTime(report.finished_at)}: ${counts.projects ?? 0} cryoSPARC projects` +
      (report.state === "failed" ? ` (failed: ${report.error})` : "") +
      (unreached.length ? `; ${unreached.length} root${unreached.length === 1 ? "" : "s"} not reached` : "") +
      (counts.conflicts ? `; ${counts.conflicts} conflict${counts.conflicts === 1 ? "" : "s"}` : "") +
      (counts.unreadable ? `; ${counts.unreadable} unreadable` : "") + ". ",
    problems && state.me.live_data_management
      ? el("button", { type: "button", id: "discovery-details", onclick: () => showDiscoveryProblems(report) }, "Details")
      : "");
}

function showDiscoveryProblems(report) {
  const items = [
    ...(report.roots || []).filter((r) => !r.reached).map((r) => el("li", {}, el("b", {}, "Root not reached: "),
      `${r.path || r.label}: ${r.reason}`)),
    ...(report.conflicts || []).map((c) => el("li", { class: "conflict" }, el("b", {}, `Conflict ${c.project_uid}: `),
      `${c.reason}: `, el("code", {}, c.paths.join(", ")))),
    ...(report.unreadable || []).map((u) => el("li", { class: "unreadable" }, el("b", {}, "Unreadable: "),
      el("code", {}, u.path), ` ${u.reason}`)),
  ];
  ask({ title: "Discovery: what it could not take in", body: [el("ul", { class: "problems" }, items)],
    okLabel: "Close" });
}

function renderWindow() {
  const body = $("#rows");
  if (!state.rows || $("#table-view").hidden) return;
  const above = Math.max(0, -body.getBoundingClientRect().top);
  const visibleFirst = Math.floor(above / ROW_PX);
  const visibleLast = Math.min(state.rows.length, visibleFirst + Math.ceil(window.innerHeight / ROW_PX));
  if (state.window && state.window[0] <= Math.max(0, visibleFirst - 5) && state.window[1] >= visibleLast + 5) return;
  const first = Math.max(0, visibleFirst - BUFFER_ROWS);
  const last = Math.min(state.rows.length, visibleLast + BUFFER_ROWS);
  state.window = [first, last];
  body.replaceChildren(
    first > 0 ? spacer(first) : "",
    ...state.rows.slice(first, last).map((row) => row.session ? sessionRow(row.project, row.session) : projectRow(row.project)),
    last < state.rows.length ? spacer(state.rows.length - last) : "");
}

let windowQueued = false;
window.addEventListener("scroll", () => {
  if (windowQueued) return;
  windowQueued = true;
  requestAnimationFrame(() => { windowQueued = false; renderWindow(); });
}, { passive: true });
window.addEventListener("resize", () => { state.window = null; renderWindow(); });

// --- what may be done to a category (the server decides; this explains why a button is off) -----

function categoryActions(project, session, dt) {
  const category = session.data_management[dt];
  const where = { project_uid: project.uid, session_uid: session.uid, datatype: dt };
  const blocked = (...reasons) => reasons.find(Boolean) || null;
  const notCompleted = session.status !== "completed" && `the session is ${session.status}: mark it completed first`;
  const noPermission = !state.me.live_data_management && "you do not have the live data management permission";
  const busy = TRANSIENT.includes(category.status) && `the category is ${category.status}`;
  const thumbs = dt === "thumbnails" && "not offered for thumbnails";
  const actions = [{
    label: "Download file list (JSON)", why: blocked(thumbs),
    run: async () => download(`${project.uid}_${session.uid}_${dt}.json`, await rpc("get_datatype_file_paths", where)),
  }];
  for (const status of ["archiving", "archived", "active", "deleted"]) {
    actions.push({
      label: status === "deleted" ? "Mark as deleted (files stay)" : `Mark as ${status}`,
      why: blocked(thumbs, notCompleted, noPermission, busy, category.status === status && `it is ${status} already`),
      run: async () => {
        await rpc("change_session_data_management_state", { ...where, status });
        toast(`${LABELS[dt]} of ${project.uid} ${session.uid} marked ${status}`);
        await loadOverview();
      },
    });
  }
  const about = `${project.uid} ${session.uid} ${dt}`;
  if (category.hook) {
    actions.push({ label: `Last hook run's log (${category.hook.job_id}, ${category.hook.state})`,
      why: blocked(!state.me.live_data_management && "hook logs need the live data management permission"),
      run: () => showLog(category.hook.job_id, about) });
  }
  if (category.alert && category.alert.kind !== "hook_failed") {
    actions.push({ label: `Deletion ${category.alert.job_id || ""}: what went wrong`, why: null,
      run: () => showDeletion(category.alert, about) });
  }
  actions.push({
    label: "Delete data…", danger: true,
    why: blocked(dt === "raw" && "raw data is never deleted by livedm: archive it, then mark it deleted",
      notCompleted, noPermission, busy),
    run: () => confirmDelete(project, session, dt),
  });
  const deletable = !blocked(dt === "raw", notCompleted, busy);
  if (noPermission && deletable) {  // the preview is a read: anyone may see what a deletion would take
    actions.push({ label: "Preview deletion…", why: null, run: () => previewDelete(project, session, dt) });
  }
  return actions;
}

function openCategoryMenu(project, session, dt, event) {
  openMenu(event, `${project.uid} ${session.uid} · ${LABELS[dt]}`, categoryActions(project, session, dt));
}

function openMenu(event, heading, actions) {
  event.stopPropagation();
  closeMenus();
  const menu = $("#menu");
  menu.replaceChildren(el("h3", {}, heading),
    ...actions.map((action) => el("button", {
      type: "button", disabled: action.why !== null, title: action.why || "", class: action.danger ? "danger" : "",
      onclick: () => { closeMenus(); guarded(action.run); },
    }, action.label, action.why ? el("span", { class: "why" }, action.why) : null)));
  placeMenu(menu, event);
}

function placeMenu(menu, event) {
  menu.hidden = false;
  // a key (Enter on a cell) has no pointer: the menu opens under the cell, its first action focused
  const cell = event.currentTarget instanceof Element ? event.currentTarget.getBoundingClientRect() : null;
  const byKey = !("clientX" in event) && cell;
  const x = Math.min(byKey ? cell.left : event.clientX, window.innerWidth - menu.offsetWidth - 8);
  const y = Math.min(byKey ? cell.bottom : event.clientY, window.innerHeight - menu.offsetHeight - 8);
  menu.style.left = `${Math.max(4, x)}px`;
  menu.style.top = `${Math.max(4, y)}px`;
  if (byKey) menu.querySelector("button:not(:disabled)")?.focus();
}

function closeMenus() {
  $("#menu").hidden = true;
  $("#context-menu").hidden = true;
}

// --- dialogs --------------------------------------------------------------------------------------

function ask({ title, body, okLabel = "OK", danger = false, confirmText = null, wide = false }) {
  const dialog = $("#dialog");
  dialog.classList.toggle("wide", wide);
  $("#dialog-title").textContent = title;
  $("#dialog-body").replaceChildren(...body);
  const ok = $("#dialog-ok");
  ok.textContent = okLabel;
  ok.classList.toggle("danger", danger);
  ok.disabled = false;
  $("#dialog-cancel").hidden = okLabel === "Close";
  if (confirmText !== null) {
    const input = el("input", { id: "confirm-input", autocomplete: "off", "aria-label": "confirmation" });
    const typed = () => input.value.trim().split(/\s+/).join(" ");
    input.addEventListener("input", () => { ok.disabled = typed() !== confirmText; });
    $("#dialog-body").append(el("label", {}, `Type ${confirmText} to confirm: `, input));
    ok.disabled = true;
  }
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

async function confirmDelete(project, session, dt) {
  const where = { project_uid: project.uid, session_uid: session.uid, datatype: dt };
  const dry = await rpc("delete_live_datatype", { ...where, dry_run: true });
  const confirmed = await ask({
    title: `Delete ${LABELS[dt].toLowerCase()} of ${project.uid} ${session.uid}?`,
    body: [el("p", { id: "dry-run" }, `${dry.file_count.toLocaleString()} files, ${humanSize(dry.bytes)} `,
      `(${dry.bytes.toLocaleString()} bytes) will be deleted from disk. This cannot be undone.`)],
    okLabel: "Delete", danger: true, confirmText: `${project.uid} ${session.uid}`,  // every project has an S1
  });
  if (!confirmed) return;
  const jobId = await rpc("delete_live_datatype", { ...where, confirm_digest: dry.confirm_digest });
  await loadOverview();
  trackJob(jobId, `Deleting ${LABELS[dt].toLowerCase()} of ${project.uid} ${session.uid}`);
}

async function previewDelete(project, session, dt) {
  const dry = await rpc("delete_live_datatype", { project_uid: project.uid, session_uid: session.uid, datatype: dt,
    dry_run: true });
  return ask({
    title: `Deleting ${LABELS[dt].toLowerCase()} of ${project.uid} ${session.uid} would take`,
    body: [el("p", { id: "dry-run" }, `${dry.file_count.toLocaleString()} files, ${humanSize(dry.bytes)} `,
      `(${dry.bytes.toLocaleString()} bytes). Deleting needs the live data management permission: an admin grants `,
      "it (", el("code", {}, `livedm user allow ${state.me.name}`), ")."),],
    okLabel: "Close",
  });
}

// A deletion that failed or is stuck: what the category's alert says, and its job as it stands.
async function showDeletion(alert, where) {
  const body = [el("p", { class: "alert-message" }, alert.message)];
  if (alert.job_id) {
    const job = await rpc("get_job", { job_id: alert.job_id }).catch(() => null);
    if (job) {
      body.push(el("p", {}, `Job ${job.id}: ${job.state}${job.error ? ` — ${job.error}` : ""}`));
      if (job.result && job.result.failed_paths && job.result.failed_paths.length) {
        body.push(el("ul", { class: "problems" }, job.result.failed_paths.map((line) => el("li", {}, el("code", {}, line)))));
      }
    }
  }
  return ask({ title: `Deletion of ${where}`, body, okLabel: "Close" });
}

// --- row actions -------------------------------------------------------------------------------------

async function refreshProject(project) {
  const jobId = await guarded(() => rpc("update_all_sessions_datatype_sizes", { project_uid: project.uid }));
  if (jobId) trackJob(jobId, `Refreshing ${project.uid}`);
}

async function downloadProjectStats(project) {
  const stats = await guarded(() => rpc("get_project_file_paths", { project_uid: project.uid }));
  if (stats) download(`${project.uid}_project_stats.json`, stats);
}

async function refreshSession(project, session) {
  // a background job, like a project's: a big session takes its time, and the job panel shows it
  const jobId = await guarded(() => rpc("update_all_sessions_datatype_sizes",
    { project_uid: project.uid, session_uid: session.uid }));
  if (jobId) trackJob(jobId, `Refreshing ${project.uid} ${session.uid}`);
}

async function markCompleted(project, session) {
  const confirmed = await ask({ title: `Mark ${project.uid} ${session.uid} completed?`,
    body: [el("p", {}, "Category actions (archive, delete) become available; the session cannot run again.")] });
  if (confirmed) {
    await guarded(async () => {
      await rpc("mark_session_completed", { project_uid: project.uid, session_uid: session.uid });
      await loadOverview();
    });
  }
}

// --- wiring ---------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("#sign-in-form").addEventListener("submit", (event) => { event.preventDefault(); signIn($("#token").value); });
  $("#sign-out").addEventListener("click", () => signOut());
  wirePaging();
  for (const tab of document.querySelectorAll("nav .tab")) tab.addEventListener("click", () => show(tab.dataset.view));
  $("#overview").addEventListener("contextmenu", (event) => {
    if (event.target.closest("td.num")) return;  // the size cells keep the browser's menu (copying)
    event.preventDefault();
    closeMenus();
    placeMenu($("#context-menu"), event);
  });
  $("#context-menu").addEventListener("click", (event) => {
    const action = event.target.closest("button")?.dataset.action;
    closeMenus();
    if (action === "refresh") guarded(loadOverview);
    if (action === "expand") setExpandAll(true);
    if (action === "collapse") setExpandAll(false);
  });
  document.addEventListener("click", (event) => { if (!event.target.closest(".menu")) closeMenus(); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeMenus(); });
  $("#add-user").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(async () => {
      const made = await rpc("create_user", { name: $("#new-user").value, role: $("#new-user-admin").checked ? "admin" : "user" });
      $("#new-user").value = "";
      await loadUsers();
      await showToken(made);
    });
  });
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) signIn(saved);
});
