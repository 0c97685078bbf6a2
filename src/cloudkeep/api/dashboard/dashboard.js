// cloudkeep dashboard: plain JavaScript, no library, no build step.
// Every text that comes from the server (file and device names, SQL results, error
// messages) is inserted with textContent / createTextNode, never as HTML.

const KEY_STORAGE = "cloudkeep.appKey";
const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELED"]);
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  appKey: sessionStorage.getItem(KEY_STORAGE) || "",
  backups: [], // GET /cloudkeep/backups, newest first
  stats: null,
  status: null,
  files: { backup: "", path: "" },
  restore: null, // {backup, body}
  ownJobs: new Set(), // creation jobs started by "Back up now" (their own socket follows them)
  watchedJob: null, // a creation started elsewhere, shown on the bar
};

// ---------------------------------------------------------------- helpers
const $ = (id) => document.getElementById(id);

/** An element with attributes and children (strings become text nodes). */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function formatBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} days ${h % 24} h`;
}

function formatTime(value) {
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function setOutcome(id, text, kind = "") {
  const node = $(id);
  node.textContent = text;
  node.className = `outcome${kind ? ` ${kind}` : ""}`;
}

class HttpError extends Error {
  constructor(status, text) {
    super(text);
    this.status = status;
  }
}

/** A failure as one line for the user; a route this server lacks says so. */
function describe(error, what) {
  if (error instanceof HttpError) {
    if ((error.status === 404 && /^not found\.?$/i.test(error.message)) || error.status === 501 || error.status === 405) {
      return `Cannot ${what}: this server does not have that feature (HTTP ${error.status}).`;
    }
    return `Could not ${what}: ${error.message} (HTTP ${error.status})`;
  }
  return `Could not ${what}: ${error && error.message ? error.message : error}`;
}

// ---------------------------------------------------------------- API access
function headers(extra = {}) {
  const result = { Accept: "application/json", ...extra };
  if (state.appKey) result["X-Application-ID"] = state.appKey;
  return result;
}

async function request(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(), cache: "no-store", credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) {
    const text = (await response.text()).trim() || response.statusText;
    if (response.status === 401) askForKey(text);
    throw new HttpError(response.status, text);
  }
  return response;
}

async function api(path, options) {
  const response = await request(path, options);
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

function socketUrl(path) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${path}`;
}

/** A WebSocket to this server; the key travels as a subprotocol (no headers in browsers). */
function openSocket(path) {
  const protocols = ["cloudkeep"];
  if (state.appKey) protocols.push(`cloudkeep.key.${state.appKey}`);
  return new WebSocket(socketUrl(path), protocols);
}

function askForKey(reason) {
  const form = $("key-form");
  if (!form.hidden) return;
  if (state.appKey) {
    $("key-reason").textContent = "The application key was refused. Paste a valid key (create one with `cloudkeep app-key create`).";
  }
  form.hidden = false;
  $("key-input").focus();
  showGlobal(reason);
}

function showGlobal(text) {
  const node = $("global-message");
  node.textContent = text;
  node.hidden = !text;
}

// ---------------------------------------------------------------- status
function renderStatus() {
  const status = state.status;
  if (!status) return;
  const last = status.last_backup;
  const lastNode = $("status-last");
  if (last) {
    const age = (Date.now() - new Date(last.time).getTime()) / 1000;
    lastNode.textContent = `${formatDuration(age)} ago (${formatTime(last.time)})`;
    lastNode.className = age > 2 * 86400 ? "bad" : "good";
  } else {
    lastNode.textContent = "None yet on this device";
    lastNode.className = "bad";
  }
  const next = $("status-next");
  if (status.running) next.textContent = "Running now";
  else if (status.next_run) next.textContent = `${formatTime(status.next_run)} (${status.schedule})`;
  else next.textContent = "None: no schedule is set (see Settings)";
  const failure = status.last_failure;
  const failureNode = $("status-failure");
  if (failure) {
    const runs = failure.consecutive_failures;
    const streak = runs > 0 ? ` — ${runs} failed run${runs === 1 ? "" : "s"} in a row` : " — succeeded since";
    failureNode.textContent = `${formatTime(failure.time)}: ${failure.reason}${streak}`;
    failureNode.className = runs > 0 ? "bad" : "";
  } else {
    failureNode.textContent = "None";
    failureNode.className = "good";
  }
  if (status.store_unreachable_since) {
    failureNode.textContent += ` (store unreachable since ${formatTime(status.store_unreachable_since)})`;
    failureNode.className = "bad";
  }
  $("status-device").textContent = status.device_name;
  $("status-data").textContent = status.data;
  $("status-store").textContent = status.store; // masked by the server
}

async function loadStatus() {
  try {
    state.status = await api("/cloudkeep/status");
    renderStatus();
  } catch (error) {
    for (const id of ["status-last", "status-next", "status-failure"]) $(id).textContent = "–";
    setOutcome("backup-outcome", describe(error, "read the status"), "error");
  }
}

// ---------------------------------------------------------------- backups
function backupLabel(backup) {
  return `${formatTime(backup.created)} · ${backup.device_name} · ${formatBytes(backup.bytes)}`;
}

function fillBackupSelect(select, { placeholder, chosen } = {}) {
  const previous = chosen ?? select.value;
  select.replaceChildren();
  if (placeholder) select.append(el("option", { value: "" }, placeholder));
  for (const backup of state.backups) {
    select.append(el("option", { value: backup.id }, backupLabel(backup)));
  }
  if (previous && state.backups.some((b) => b.id === previous)) select.value = previous;
}

function renderBackups() {
  const rows = $("backup-rows");
  rows.replaceChildren();
  if (state.backups.length === 0) {
    rows.append(el("tr", {}, el("td", { colspan: 7 }, "No backups yet: press “Back up now”.")));
  }
  for (const backup of state.backups) {
    const name = `${formatTime(backup.created)} on ${backup.device_name}`;
    rows.append(
      el(
        "tr",
        { "data-backup": backup.id },
        el("td", { "data-label": "Created" }, el("time", { datetime: backup.created, title: backup.id }, formatTime(backup.created))),
        el("td", { "data-label": "Device" }, backup.device_name),
        el("td", { class: "num", "data-label": "Size" }, formatBytes(backup.bytes)),
        el("td", { class: "num", "data-label": "Added" }, formatBytes(backup.added_bytes)),
        el("td", { class: "num", "data-label": "Files" }, String(backup.files)),
        el("td", { "data-label": "Warnings" }, backup.warnings ? `${backup.warnings}` : "–"),
        el(
          "td",
          { "data-label": "Actions" },
          el(
            "div",
            { class: "actions" },
            el("button", { type: "button", class: "link", "aria-label": `Browse files of the backup of ${name}`, onclick: () => browseBackup(backup.id) }, "Browse"),
            el("button", { type: "button", class: "link", "aria-label": `Restore the backup of ${name}`, onclick: () => prepareRestore(backup.id) }, "Restore"),
            el("button", { type: "button", class: "link", "aria-label": `Delete the backup of ${name}`, onclick: () => confirmDelete(backup) }, "Delete"),
          ),
        ),
      ),
    );
  }
  fillBackupSelect($("restore-backup"));
  fillBackupSelect($("files-backup"));
  fillBackupSelect($("query-backup"));
  const older = state.backups[1] ? state.backups[1].id : state.backups[0]?.id;
  fillBackupSelect($("compare-a"), { chosen: $("compare-a").value || older });
  fillBackupSelect($("compare-b"), { chosen: $("compare-b").value || state.backups[0]?.id });
  drawTimeline();
  drawCharts();
}

async function loadBackups() {
  try {
    const answer = await api("/cloudkeep/backups");
    state.backups = answer.backups;
    renderBackups();
  } catch (error) {
    $("backup-rows").replaceChildren(el("tr", {}, el("td", { colspan: 7 }, describe(error, "list the backups"))));
  }
}

async function loadStats() {
  try {
    state.stats = await api("/cloudkeep/stats");
  } catch (error) {
    state.stats = null;
    $("charts-summary").textContent = describe(error, "read the store's figures");
    return;
  }
  drawCharts();
}

// ---------------------------------------------------------------- back up now
function setProgress(prefix, percentage, text) {
  const box = $(`${prefix}-progress-box`);
  const bar = $(`${prefix}-progress`);
  box.hidden = false;
  const value = Math.max(0, Math.min(100, Math.round(percentage ?? 0)));
  bar.setAttribute("aria-valuenow", String(value));
  bar.setAttribute("aria-valuetext", text);
  bar.firstElementChild.style.width = `${value}%`;
  $(`${prefix}-progress-text`).textContent = text;
}

function backUpNow() {
  const button = $("backup-now");
  button.disabled = true;
  setOutcome("backup-outcome", "Starting the backup…");
  setProgress("backup", 0, "Starting…");
  let finished = false;
  const socket = openSocket("/backups/create/streamed/websocket");
  socket.addEventListener("message", (event) => {
    let progress;
    try {
      progress = JSON.parse(event.data);
    } catch {
      return;
    }
    if (progress.backup && progress.backup.id) state.ownJobs.add(progress.backup.id);
    const percentage = progress.percentage ?? 0;
    if (progress.status === "COMPLETED") {
      finished = true;
      setProgress("backup", 100, "Done");
      const backup = progress.backup;
      setOutcome("backup-outcome", backup ? `Backup completed: ${formatBytes(backup.bytes)} (${backup.id}).` : "Backup completed.", "ok");
      refreshAfterChange();
    } else if (progress.status === "FAILED") {
      finished = true;
      setProgress("backup", percentage, "Failed");
      setOutcome("backup-outcome", `The backup failed: ${progress.reason || "no reason given"}`, "error");
      loadStatus();
    } else if (progress.status === "CANCELED") {
      finished = true;
      setProgress("backup", percentage, "Canceled");
      setOutcome("backup-outcome", "The backup was canceled.", "error");
    } else {
      setProgress("backup", percentage, `${Math.floor(percentage)} %`);
      if (progress.status === "IN-PROGRESS") setOutcome("backup-outcome", "Backing up…");
    }
  });
  socket.addEventListener("close", (event) => {
    button.disabled = false;
    if (finished) return;
    if (event.code === 1013) {
      setOutcome("backup-outcome", `The server is busy: ${event.reason || "too many jobs queued"}. Try again shortly.`, "error");
    } else {
      setOutcome("backup-outcome", "The connection to the server closed before the backup ended (a backup already started goes on in the server).", "error");
      checkAccess();
    }
  });
}

/** After a refused socket (browsers hide why): a 401 on a plain request asks for the key. */
async function checkAccess() {
  try {
    await api("/cloudkeep/status");
  } catch {
    // askForKey ran for a 401; other failures are shown by their own sections.
  }
}

function refreshAfterChange() {
  loadStatus();
  loadBackups().then(() => {
    if (state.backups.length) loadStats();
  });
}

// ---------------------------------------------------------------- delete
function confirmDelete(backup) {
  const dialog = $("delete-dialog");
  $("delete-text").textContent = `The backup of ${formatTime(backup.created)} on ${backup.device_name} (${formatBytes(backup.bytes)}, ${backup.id}) will be deleted from the store. Data other backups still use is kept. This cannot be undone.`;
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "delete") return;
    setOutcome("backups-outcome", `Deleting ${backup.id}…`);
    try {
      await api(`/backups/${encodeURIComponent(backup.id)}/delete`, { method: "POST" });
      setOutcome("backups-outcome", `Deleted the backup ${backup.id}.`, "ok");
      refreshAfterChange();
    } catch (error) {
      setOutcome("backups-outcome", describe(error, `delete ${backup.id}`), "error");
    }
  };
  dialog.showModal();
}

// ---------------------------------------------------------------- restore
function prepareRestore(id, paths) {
  $("restore-backup").value = id;
  if (paths) {
    const current = $("restore-paths").value.split("\n").map((p) => p.trim()).filter(Boolean);
    for (const path of paths) if (!current.includes(path)) current.push(path);
    $("restore-paths").value = current.join("\n");
  }
  $("restore-heading").scrollIntoView({ block: "start" });
  $("restore-backup").focus();
}

async function startRestore(force) {
  const id = $("restore-backup").value;
  if (!id) return;
  const paths = $("restore-paths").value.split("\n").map((p) => p.trim()).filter(Boolean);
  const target = $("restore-target").value.trim();
  const body = { paths, target: target || null, force };
  $("restore-force").hidden = true;
  $("restore-submit").disabled = true;
  setOutcome("restore-outcome", `Restoring ${id}${paths.length ? ` (${paths.length} path${paths.length === 1 ? "" : "s"})` : ""}${target ? ` into ${target}` : " in place"}…`);
  setProgress("restore", 0, "Queued");
  state.restore = { backup: id, body };
  try {
    await api(`/cloudkeep/backups/${encodeURIComponent(id)}/restore`, { method: "POST", body });
  } catch (error) {
    state.restore = null;
    $("restore-submit").disabled = false;
    $("restore-progress-box").hidden = true;
    setOutcome("restore-outcome", describe(error, "restore"), "error");
    return;
  }
  followRestore(id);
}

/** Poll the outcome; the progress socket moves the bar meanwhile. */
async function followRestore(id) {
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (!state.restore || state.restore.backup !== id) return;
    let status;
    try {
      status = await api(`/backup/${encodeURIComponent(id)}/restoration/status`);
    } catch (error) {
      finishRestore();
      setOutcome("restore-outcome", describe(error, "follow the restore"), "error");
      return;
    }
    if (status.percentage !== undefined && status.percentage !== null && !TERMINAL.has(status.value)) {
      setProgress("restore", status.percentage, `${Math.floor(status.percentage)} %`);
    }
    if (status.value === "COMPLETED") {
      finishRestore();
      setProgress("restore", 100, "Done");
      setOutcome("restore-outcome", `Restored ${id}.`, "ok");
      showUndo(status);
      return;
    }
    if (status.value === "FAILED" || status.value === "CANCELED") {
      const reason = status.reason || (status.value === "CANCELED" ? "canceled" : "no reason given");
      finishRestore();
      setProgress("restore", status.percentage ?? 0, status.value === "FAILED" ? "Failed" : "Canceled");
      setOutcome("restore-outcome", `The restore failed: ${reason}`, "error");
      if (/in use/i.test(reason)) {
        const force = $("restore-force");
        force.hidden = false;
        force.focus();
      }
      return;
    }
  }
}

function finishRestore() {
  state.restore = null;
  $("restore-submit").disabled = false;
}

/** Where the replaced data is kept, when the server says (a restore's or undo's answer). */
function showUndo(answer) {
  const path = answer && answer.undo_path;
  $("undo-info").textContent = path
    ? `What the last in-place restore replaced is kept in ${path}; “Undo last restore” puts it back.`
    : "An in-place restore keeps what it replaced; “Undo last restore” puts it back.";
}

async function undoRestore() {
  const button = $("undo-restore");
  button.disabled = true;
  setOutcome("undo-outcome", "Putting back what the last restore replaced…");
  try {
    const answer = await api("/cloudkeep/restore/undo", { method: "POST" });
    const where = answer && (answer.restored_to || answer.undo_path || answer.path);
    setOutcome("undo-outcome", where ? `Undone: ${where} is back as it was.` : "Undone: the data is back as it was before the restore.", "ok");
    showUndo(null);
  } catch (error) {
    setOutcome("undo-outcome", describe(error, "undo the last restore"), "error");
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- live progress
let progressSocket = null;
let progressRetry = 1000;

function watchProgress() {
  progressSocket = openSocket("/backups/streamed/progress");
  progressSocket.addEventListener("open", () => {
    progressRetry = 1000;
  });
  progressSocket.addEventListener("message", (event) => {
    let all;
    try {
      all = JSON.parse(event.data);
    } catch {
      return;
    }
    for (const progress of all.restorations || []) {
      const id = progress.backup && progress.backup.id;
      if (!state.restore || id !== state.restore.backup || TERMINAL.has(progress.status)) continue;
      const percentage = progress.percentage ?? 0;
      setProgress("restore", percentage, `${Math.floor(percentage)} %`);
    }
    // A backup started elsewhere (the schedule, another client of this server).
    for (const progress of all.backups || []) {
      const id = progress.backup && progress.backup.id;
      if (!id || state.ownJobs.has(id) || $("backup-now").disabled) continue;
      if (!TERMINAL.has(progress.status)) {
        state.watchedJob = id;
        const percentage = progress.percentage ?? 0;
        setProgress("backup", percentage, `Another backup: ${Math.floor(percentage)} %`);
      } else if (state.watchedJob === id) {
        state.watchedJob = null;
        setProgress("backup", progress.status === "COMPLETED" ? 100 : progress.percentage ?? 0, progress.status === "COMPLETED" ? "Another backup: done" : "Another backup: failed");
        refreshAfterChange();
      }
    }
  });
  progressSocket.addEventListener("close", () => {
    setTimeout(watchProgress, progressRetry);
    progressRetry = Math.min(progressRetry * 2, 30000);
  });
}

// ---------------------------------------------------------------- files
function browseBackup(id) {
  $("files-backup").value = id;
  showFiles(id, "");
  $("files-heading").scrollIntoView({ block: "start" });
  $("files-backup").focus();
}

async function showFiles(id, path) {
  state.files = { backup: id, path };
  renderCrumbs();
  setOutcome("files-outcome", "Loading…");
  let answer;
  try {
    answer = await api(`/cloudkeep/backups/${encodeURIComponent(id)}/files?path=${encodeURIComponent(path)}`);
  } catch (error) {
    $("files-table").hidden = true;
    setOutcome("files-outcome", describe(error, "list the files"), "error");
    return;
  }
  const rows = $("files-rows");
  rows.replaceChildren();
  const entries = [...answer.entries].sort((a, b) => (a.type === "dir") === (b.type === "dir") ? a.name.localeCompare(b.name) : a.type === "dir" ? -1 : 1);
  for (const entry of entries) {
    const nameCell = entry.type === "dir"
      ? el("button", { type: "button", class: "link", "aria-label": `Open folder ${entry.name}`, onclick: () => showFiles(id, entry.path) }, `${entry.name}/`)
      : el("span", {}, entry.type === "symlink" ? `${entry.name} → ${entry.target ?? ""}` : entry.name);
    const actions = el("div", { class: "actions" });
    if (entry.type === "file") {
      actions.append(el("button", { type: "button", class: "link", "aria-label": `Download ${entry.name}`, onclick: () => download(id, entry) }, "Download"));
      if (entry.sqlite) {
        actions.append(el("button", { type: "button", class: "link", "aria-label": `Query ${entry.name}`, onclick: () => queryDatabase(id, entry.path) }, "Query"));
      }
    }
    actions.append(el("button", { type: "button", class: "link", "aria-label": `Add ${entry.name} to the restore`, onclick: () => prepareRestore(id, [entry.path]) }, "Add to restore"));
    rows.append(
      el(
        "tr",
        {},
        el("td", { class: "mono", "data-label": "Name" }, nameCell),
        el("td", { class: "num", "data-label": "Size" }, entry.type === "dir" ? "–" : formatBytes(entry.size)),
        el("td", { "data-label": "Modified" }, entry.mtime ? formatTime(entry.mtime) : "–"),
        el("td", { "data-label": "Actions" }, actions),
      ),
    );
  }
  if (entries.length === 0) rows.append(el("tr", {}, el("td", { colspan: 4 }, "This folder is empty.")));
  $("files-caption").textContent = `Files in ${path || "the top folder"} of ${id}`;
  $("files-table").hidden = false;
  setOutcome("files-outcome", `${entries.length} entr${entries.length === 1 ? "y" : "ies"}.`);
}

function renderCrumbs() {
  const { backup, path } = state.files;
  const crumbs = $("files-crumbs");
  crumbs.replaceChildren();
  const parts = path ? path.split("/") : [];
  crumbs.append(el("button", { type: "button", class: "link", onclick: () => showFiles(backup, "") }, "Top folder"));
  parts.forEach((part, index) => {
    const target = parts.slice(0, index + 1).join("/");
    crumbs.append(el("span", { class: "sep", "aria-hidden": "true" }, "/"));
    const last = index === parts.length - 1;
    crumbs.append(last ? el("span", { "aria-current": "location" }, part) : el("button", { type: "button", class: "link", onclick: () => showFiles(backup, target) }, part));
  });
}

async function download(id, entry) {
  setOutcome("files-outcome", `Downloading ${entry.name}…`);
  try {
    const response = await request(`/cloudkeep/backups/${encodeURIComponent(id)}/file?path=${encodeURIComponent(entry.path)}`);
    const blob = await response.blob();
    const url = URL.createObjectURL(blob);
    const link = el("a", { href: url, download: entry.name.replace(/[\\/]/g, "_") || "download" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    setOutcome("files-outcome", `Downloaded ${entry.name} (${formatBytes(blob.size)}).`, "ok");
  } catch (error) {
    setOutcome("files-outcome", describe(error, `download ${entry.name}`), "error");
  }
}

// ---------------------------------------------------------------- compare
/** A row of a diff as one line: values as text, objects as "name: value" pairs. */
function rowText(row) {
  if (row === null || row === undefined) return "NULL";
  if (Array.isArray(row)) return row.map(rowText).join(" | ");
  if (typeof row === "object") {
    if (row.blob !== undefined && Object.keys(row).length === 1) return `(blob, ${formatBytes(row.blob)})`;
    return Object.entries(row).map(([name, value]) => `${name}: ${typeof value === "object" && value !== null ? `{${rowText(value)}}` : rowText(value)}`).join(", ");
  }
  return String(row);
}

function renderDiff(diff) {
  const out = $("compare-result");
  out.replaceChildren();
  const files = diff.files || {};
  const added = files.added || [];
  const removed = files.removed || [];
  const changed = files.changed || [];
  out.append(el("h3", {}, `Files: ${added.length} added, ${removed.length} removed, ${changed.length} changed`));
  const list = el("ul", { class: "diff-list" });
  for (const f of added) list.append(el("li", { class: "added" }, `+ ${f.path} (${formatBytes(f.size)})`));
  for (const f of removed) list.append(el("li", { class: "removed" }, `− ${f.path} (${formatBytes(f.size)})`));
  for (const f of changed) list.append(el("li", { class: "changed" }, `~ ${f.path} (${formatBytes(f.size_a)} → ${formatBytes(f.size_b)})`));
  if (list.childElementCount) out.append(list);
  for (const db of diff.databases || []) {
    out.append(el("h3", {}, `Database ${db.path}`));
    if (db.schema_changed && db.schema_changed.length) {
      out.append(el("p", { class: "changed" }, `Schema changed: ${db.schema_changed.join(", ")}`));
    }
    const table = el("table", {}, el("caption", {}, `Row changes in ${db.path}`));
    table.append(el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Table"), el("th", { scope: "col", class: "num" }, "Added"), el("th", { scope: "col", class: "num" }, "Removed"), el("th", { scope: "col", class: "num" }, "Changed"))));
    const body = el("tbody");
    for (const t of db.tables || []) {
      body.append(el("tr", {}, el("td", { class: "mono" }, t.name), el("td", { class: "num" }, String(t.added)), el("td", { class: "num" }, String(t.removed)), el("td", { class: "num" }, String(t.changed))));
    }
    table.append(body);
    out.append(el("div", { class: "table-wrap" }, table));
    for (const t of db.tables || []) {
      if (!t.rows) continue;
      const rows = el("ul", { class: "diff-list mono" });
      for (const r of t.rows.added || []) rows.append(el("li", { class: "added" }, `+ ${rowText(r)}`));
      for (const r of t.rows.removed || []) rows.append(el("li", { class: "removed" }, `− ${rowText(r)}`));
      for (const r of t.rows.changed || []) rows.append(el("li", { class: "changed" }, `~ ${rowText(r)}`));
      if (rows.childElementCount) out.append(el("h4", {}, `Rows of ${t.name}`), rows);
    }
  }
  if (!added.length && !removed.length && !changed.length && !(diff.databases || []).length) {
    out.append(el("p", {}, "The two backups hold the same files."));
  }
}

async function compare(event) {
  event.preventDefault();
  const a = $("compare-a").value;
  const b = $("compare-b").value;
  const rows = $("compare-rows").checked;
  setOutcome("compare-outcome", "Comparing…");
  $("compare-result").replaceChildren();
  try {
    const diff = await api(`/cloudkeep/diff?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}${rows ? "&rows=true" : ""}`);
    renderDiff(diff);
    setOutcome("compare-outcome", `Compared in ${Math.round(diff.elapsed_ms ?? 0)} ms, ${formatBytes(diff.fetched_bytes ?? 0)} fetched from the store.`, "ok");
  } catch (error) {
    setOutcome("compare-outcome", describe(error, "compare the backups"), "error");
  }
}

// ---------------------------------------------------------------- query
async function loadDatabases(chosen) {
  const id = $("query-backup").value;
  const select = $("query-database");
  select.replaceChildren();
  if (!id) return;
  try {
    const answer = await api(`/cloudkeep/backups/${encodeURIComponent(id)}/databases`);
    for (const db of answer.databases) select.append(el("option", { value: db.path }, `${db.path} (${formatBytes(db.size)})`));
    if (chosen) select.value = chosen;
    if (!answer.databases.length) setOutcome("query-outcome", "This backup holds no SQLite database.");
  } catch (error) {
    setOutcome("query-outcome", describe(error, "list the databases"), "error");
  }
}

function queryDatabase(id, path) {
  $("query-backup").value = id;
  loadDatabases(path);
  $("query-heading").scrollIntoView({ block: "start" });
  $("query-text").focus();
}

function cellText(value) {
  if (value === null) return "NULL";
  if (typeof value === "object") return value.blob !== undefined ? `(blob, ${formatBytes(value.blob)})` : JSON.stringify(value);
  return String(value);
}

async function runQuery(event) {
  event.preventDefault();
  const id = $("query-backup").value;
  const body = {
    database: $("query-database").value || null,
    query: $("query-text").value,
    max_rows: Number($("query-max").value) || 500,
  };
  setOutcome("query-outcome", "Running…");
  const out = $("query-result");
  out.replaceChildren();
  let answer;
  try {
    answer = await api(`/cloudkeep/backups/${encodeURIComponent(id)}/sql`, { method: "POST", body });
  } catch (error) {
    setOutcome("query-outcome", describe(error, "run the query"), "error");
    return;
  }
  const table = el("table", {}, el("caption", {}, `Result of the query on ${body.database || "the backup's database"}`));
  table.append(el("thead", {}, el("tr", {}, answer.columns.map((c) => el("th", { scope: "col" }, String(c))))));
  const tbody = el("tbody");
  for (const row of answer.rows) tbody.append(el("tr", {}, row.map((v) => el("td", { class: "mono" }, cellText(v)))));
  table.append(tbody);
  out.append(table);
  const count = `${answer.rows.length} row${answer.rows.length === 1 ? "" : "s"}${answer.truncated ? " (more not shown)" : ""}`;
  setOutcome("query-outcome", `${count} in ${Math.round(answer.elapsed_ms)} ms, ${formatBytes(answer.fetched_bytes)} fetched from the store.`, "ok");
}

// ---------------------------------------------------------------- charts
const CHART = { width: 480, height: 220, left: 64, right: 14, top: 12, bottom: 34 };

function scale(domainMin, domainMax, rangeMin, rangeMax) {
  const span = domainMax - domainMin || 1;
  return (value) => rangeMin + ((value - domainMin) / span) * (rangeMax - rangeMin);
}

function niceTicks(max, count = 4) {
  if (!(max > 0)) return [0];
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = 0; t <= max * 1.0001; t += step) ticks.push(t);
  return ticks;
}

function byteTicks(max, count = 4) {
  if (!(max > 0)) return [0];
  const unit = 1024 ** Math.max(0, Math.floor(Math.log(max) / Math.log(1024)));
  return niceTicks(max / unit, count).map((t) => t * unit);
}

function chartFrame(svg, { yMax, yTicks, yFormat, xLabels }) {
  const { width, height, left, right, top, bottom } = CHART;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const y = scale(0, yMax || 1, height - bottom, top);
  for (const tick of yTicks) {
    svg.append(svgEl("line", { class: "gridline", x1: left, x2: width - right, y1: y(tick), y2: y(tick) }));
    svg.append(svgEl("text", { x: left - 6, y: y(tick) + 4, "text-anchor": "end" }, yFormat(tick)));
  }
  svg.append(svgEl("line", { class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom }));
  for (const [x, label, anchor] of xLabels) {
    svg.append(svgEl("text", { x, y: height - bottom + 16, "text-anchor": anchor }, label));
  }
  return y;
}

function shortDate(value) {
  return new Date(value).toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

function emptyChart(svg, text) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${CHART.width} ${CHART.height / 2}`);
  svg.append(svgEl("text", { x: CHART.width / 2, y: CHART.height / 4, "text-anchor": "middle" }, text));
}

function drawTimeline() {
  const svg = $("timeline-chart");
  const backups = [...state.backups].reverse();
  if (!backups.length) {
    emptyChart(svg, "No backups yet");
    return;
  }
  const devices = [...new Set(backups.map((b) => b.device_name))];
  const laneHeight = 34;
  const width = 720;
  const left = 120;
  const right = 16;
  const height = devices.length * laneHeight + 34;
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const times = backups.map((b) => new Date(b.created).getTime());
  const first = Math.min(...times);
  const last = Math.max(...times);
  const pad = Math.max((last - first) * 0.03, 60000);
  const x = scale(first - pad, last + pad, left, width - right);
  const maxAdded = Math.max(...backups.map((b) => b.added_bytes), 1);
  devices.forEach((device, lane) => {
    const cy = lane * laneHeight + laneHeight / 2 + 4;
    svg.append(svgEl("line", { class: "gridline", x1: left, x2: width - right, y1: cy, y2: cy }));
    const label = device.length > 16 ? `${device.slice(0, 15)}…` : device;
    svg.append(svgEl("text", { x: left - 8, y: cy + 4, "text-anchor": "end" }, label));
  });
  backups.forEach((b) => {
    const lane = devices.indexOf(b.device_name);
    const cy = lane * laneHeight + laneHeight / 2 + 4;
    const r = 3 + 9 * Math.sqrt(b.added_bytes / maxAdded);
    const dot = svgEl("circle", { class: `dot s${lane % 5}`, cx: x(new Date(b.created).getTime()), cy, r });
    dot.append(svgEl("title", {}, `${formatTime(b.created)} · ${b.device_name} · ${formatBytes(b.bytes)}, added ${formatBytes(b.added_bytes)}`));
    svg.append(dot);
  });
  const axisY = height - 22;
  svg.append(svgEl("line", { class: "axis", x1: left, x2: width - right, y1: axisY, y2: axisY }));
  svg.append(svgEl("text", { x: left, y: axisY + 16, "text-anchor": "start" }, formatTime(first)));
  if (last !== first) svg.append(svgEl("text", { x: width - right, y: axisY + 16, "text-anchor": "end" }, formatTime(last)));
}

function drawCharts() {
  const backups = [...state.backups].reverse(); // oldest first
  const stats = state.stats;
  const summary = $("charts-summary");
  if (stats) {
    const ratio = stats.dedup_ratio === null || stats.dedup_ratio === undefined ? "–" : `${stats.dedup_ratio.toFixed(2)}×`;
    summary.textContent = `The store holds ${formatBytes(stats.store_bytes)} for ${stats.backups} backup${stats.backups === 1 ? "" : "s"} of ${formatBytes(stats.logical_bytes)} in all: dedup ratio ${ratio}.`;
  }
  const svgs = ["chart-store", "chart-added", "chart-dedup"].map($);
  if (!backups.length) {
    for (const svg of svgs) emptyChart(svg, "No backups yet");
    return;
  }
  const { width, left, right } = CHART;
  const n = backups.length;
  const xLabels = [[left, shortDate(backups[0].created), "start"]];
  if (n > 1) xLabels.push([width - right, shortDate(backups[n - 1].created), "end"]);
  const slot = (width - left - right) / n;
  const xAt = (i) => left + slot * (i + 0.5);

  // Store size over time: cumulative bytes added; the store's size now as a dot.
  let total = 0;
  const cumulative = backups.map((b) => (total += b.added_bytes));
  const storeNow = stats ? stats.store_bytes : null;
  const storeMax = Math.max(total, storeNow ?? 0, 1);
  const storeTicks = byteTicks(storeMax);
  const yStore = chartFrame(svgs[0], { yMax: storeTicks.at(-1) || storeMax, yTicks: storeTicks, yFormat: formatBytes, xLabels });
  const points = cumulative.map((v, i) => `${xAt(i)},${yStore(v)}`).join(" ");
  svgs[0].append(svgEl("polyline", { class: "line", points }));
  cumulative.forEach((v, i) => {
    const c = svgEl("circle", { class: "dot s0", cx: xAt(i), cy: yStore(v), r: 3 });
    c.append(svgEl("title", {}, `${formatTime(backups[i].created)}: ${formatBytes(v)} uploaded so far`));
    svgs[0].append(c);
  });
  if (storeNow !== null) {
    const c = svgEl("circle", { class: "now", cx: width - right - 2, cy: yStore(storeNow), r: 5 });
    c.append(svgEl("title", {}, `The store now: ${formatBytes(storeNow)}`));
    svgs[0].append(c);
  }

  // Bytes added per backup.
  const addedMax = Math.max(...backups.map((b) => b.added_bytes), 1);
  const addedTicks = byteTicks(addedMax);
  const yAdded = chartFrame(svgs[1], { yMax: addedTicks.at(-1) || addedMax, yTicks: addedTicks, yFormat: formatBytes, xLabels });
  const barWidth = Math.max(1, Math.min(28, slot * 0.7));
  backups.forEach((b, i) => {
    const top = yAdded(b.added_bytes);
    const bar = svgEl("rect", { class: "bar", x: xAt(i) - barWidth / 2, y: top, width: barWidth, height: Math.max(0, yAdded(0) - top) });
    bar.append(svgEl("title", {}, `${formatTime(b.created)} · ${b.device_name}: added ${formatBytes(b.added_bytes)}`));
    svgs[1].append(bar);
  });

  // Dedup ratio after each backup: logical bytes so far / bytes uploaded so far.
  let logical = 0;
  let uploaded = 0;
  const ratios = backups.map((b) => {
    logical += b.bytes;
    uploaded += b.added_bytes;
    return uploaded > 0 ? logical / uploaded : null;
  });
  const ratioNow = stats && typeof stats.dedup_ratio === "number" ? stats.dedup_ratio : null;
  const ratioMax = Math.max(...ratios.filter((r) => r !== null), ratioNow ?? 0, 1);
  const ratioTicks = niceTicks(ratioMax);
  const yRatio = chartFrame(svgs[2], { yMax: ratioTicks.at(-1) || ratioMax, yTicks: ratioTicks, yFormat: (t) => `${Number(t.toFixed(2))}×`, xLabels });
  const ratioPoints = ratios.map((r, i) => (r === null ? null : `${xAt(i)},${yRatio(r)}`)).filter(Boolean).join(" ");
  svgs[2].append(svgEl("polyline", { class: "line", points: ratioPoints }));
  ratios.forEach((r, i) => {
    if (r === null) return;
    const c = svgEl("circle", { class: "dot s0", cx: xAt(i), cy: yRatio(r), r: 3 });
    c.append(svgEl("title", {}, `${formatTime(backups[i].created)}: ${r.toFixed(2)}×`));
    svgs[2].append(c);
  });
  if (ratioNow !== null) {
    const c = svgEl("circle", { class: "now", cx: width - right - 2, cy: yRatio(ratioNow), r: 5 });
    c.append(svgEl("title", {}, `The store now: ${ratioNow.toFixed(2)}×`));
    svgs[2].append(c);
  }
}

// ---------------------------------------------------------------- settings
const KEEP = ["last", "hourly", "daily", "weekly", "monthly", "yearly"];

async function loadSettings() {
  try {
    const schedule = await api("/cloudkeep/schedule");
    $("schedule-text").value = schedule.schedule ?? "off";
    $("schedule-jitter").value = schedule.jitter ?? "";
    $("schedule-next").textContent = schedule.next_run ? `Next run: ${formatTime(schedule.next_run)}.` : "";
  } catch (error) {
    setOutcome("schedule-outcome", describe(error, "read the schedule"), "error");
  }
  try {
    const retention = await api("/cloudkeep/retention");
    for (const k of KEEP) $(`keep-${k}`).value = String(retention[`keep_${k}`]);
    $("keep-within").value = retention.keep_within ?? "";
  } catch (error) {
    setOutcome("retention-outcome", describe(error, "read the retention policy"), "error");
  }
}

async function saveSchedule(event) {
  event.preventDefault();
  const schedule = $("schedule-text").value.trim();
  const jitter = $("schedule-jitter").value.trim();
  try {
    const saved = await api("/cloudkeep/schedule", { method: "PUT", body: { schedule: schedule || "off", jitter: jitter || null } });
    $("schedule-next").textContent = saved.next_run ? `Next run: ${formatTime(saved.next_run)}.` : "";
    setOutcome("schedule-outcome", `Saved: ${saved.schedule ?? "off"}.`, "ok");
    loadStatus();
  } catch (error) {
    setOutcome("schedule-outcome", describe(error, "save the schedule"), "error");
  }
}

async function saveRetention(event) {
  event.preventDefault();
  const body = {};
  for (const k of KEEP) body[`keep_${k}`] = Number($(`keep-${k}`).value || 0);
  body.keep_within = $("keep-within").value.trim() || null;
  try {
    await api("/cloudkeep/retention", { method: "PUT", body });
    setOutcome("retention-outcome", "Saved: in effect from the next scheduled backup.", "ok");
  } catch (error) {
    setOutcome("retention-outcome", describe(error, "save the retention policy"), "error");
  }
}

// ---------------------------------------------------------------- start
function loadAll() {
  // In parallel: the page's structure is already painted.
  loadStatus();
  loadBackups().then(() => {
    if (!state.backups.length) return; // an empty store has no figures yet (511)
    loadStats();
    loadDatabases();
  });
  loadSettings();
}

function start() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.appKey = $("key-input").value.trim();
    sessionStorage.setItem(KEY_STORAGE, state.appKey);
    $("key-input").value = "";
    $("key-form").hidden = true;
    showGlobal("");
    loadAll();
    if (progressSocket) progressSocket.close();
  });
  $("backup-now").addEventListener("click", backUpNow);
  $("restore-form").addEventListener("submit", (event) => {
    event.preventDefault();
    startRestore(false);
  });
  $("restore-force").addEventListener("click", () => startRestore(true));
  $("undo-restore").addEventListener("click", undoRestore);
  $("files-form").addEventListener("submit", (event) => {
    event.preventDefault();
    showFiles($("files-backup").value, "");
  });
  $("compare-form").addEventListener("submit", compare);
  $("query-backup").addEventListener("change", () => loadDatabases());
  $("query-form").addEventListener("submit", runQuery);
  $("schedule-form").addEventListener("submit", saveSchedule);
  $("retention-form").addEventListener("submit", saveRetention);
  setInterval(renderStatus, 30000); // the age of the last backup keeps moving
  setInterval(() => {
    if (!document.hidden) {
      loadStatus();
      loadBackups();
    }
  }, 60000);
  loadAll();
  watchProgress();
}

start();
