// cloudkeep dashboard: plain JavaScript, no library, no build step.
// Every text that comes from the server (file and device names, SQL results, error
// messages) is inserted with textContent / createTextNode, never as HTML.

const KEY_STORAGE = "cloudkeep.appKey";
const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELED"]);
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  appKey: sessionStorage.getItem(KEY_STORAGE) || "",
  backups: [], // GET /cloudkeep/backups, newest first
  backupsSignature: null, // the last answer as text: a re-render only when it changed
  showAllBackups: false,
  labels: [], // backupLabel of each backup, for the five backup choices
  stats: null,
  status: null,
  files: { backup: "", path: "" },
  restore: null, // {backup, body}
  authorized: false, // an API call succeeded with the key we hold (or none was needed)
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

// Built once: toLocaleString with options builds a formatter per call (seconds for 10,000 backups).
const DATE_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const SHORT_DATE = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const COMPACT_TIME = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "numeric", minute: "2-digit" });

function formatTime(value) {
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return DATE_TIME.format(date);
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
    if (response.status === 401) {
      state.authorized = false;
      askForKey(text);
    }
    throw new HttpError(response.status, text);
  }
  if (!state.authorized) {
    state.authorized = true;
    if (!progressSocket) watchProgress(); // only once the key (if any) is known to work
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

const EAGER_OPTIONS = 500; // beyond, a choice gets its options when first used

/** Refill a backup choice: what the user chose stays chosen, else ``fallback`` (the newest).
 * Thousands of options in five choices cost seconds of layout, so a long list is filled
 * when the choice first gets focus (or a pointer): until then it holds the current one. */
function fillBackupSelect(select, { fallback } = {}) {
  const wanted = select.dataset.chosen ? select.value : fallback;
  const index = state.backups.findIndex((b) => b.id === wanted);
  select.replaceChildren();
  if (state.backups.length > EAGER_OPTIONS) {
    const current = index >= 0 ? index : 0;
    if (state.backups.length) select.append(backupOption(current));
    select.dataset.pending = "1";
    return;
  }
  delete select.dataset.pending;
  const options = document.createDocumentFragment();
  state.backups.forEach((_, i) => options.append(backupOption(i)));
  select.append(options);
  if (index >= 0) select.value = wanted;
}

function backupOption(index) {
  const option = document.createElement("option");
  option.value = state.backups[index].id;
  option.textContent = state.labels[index];
  return option;
}

/** A long choice's options, added when the user first reaches it. */
function fillPending(select) {
  if (!select.dataset.pending) return;
  delete select.dataset.pending;
  const value = select.value;
  const options = document.createDocumentFragment();
  state.backups.forEach((_, i) => options.append(backupOption(i)));
  select.replaceChildren(options);
  select.value = value;
}

const TABLE_ROWS = 100; // the table's first rows; "Show all" for the rest (the charts take all)

function renderBackups() {
  const rows = $("backup-rows");
  rows.replaceChildren();
  if (state.backups.length === 0) {
    rows.append(el("tr", {}, el("td", { colspan: 7 }, "No backups yet: press “Back up now”.")));
  }
  const shown = state.showAllBackups ? state.backups : state.backups.slice(0, TABLE_ROWS);
  const more = $("backups-more");
  more.hidden = shown.length === state.backups.length;
  more.textContent = `Show all ${state.backups.length} backups`;
  for (const backup of shown) {
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
  // Drawn before the choices are filled: measuring a drawing's width lays out the page,
  // and thousands of new options make that layout slow.
  drawTimeline();
  drawCharts();
  state.labels = state.backups.map(backupLabel);
  // As `latest` on the command line: this device's backups first, so a restore in place
  // does not default to another device's data, nor a comparison to two devices.
  const device = state.status?.device_name;
  const own = state.backups.filter((b) => b.device_name === device);
  const chosen = own.length ? own : state.backups;
  const newest = chosen[0]?.id;
  const older = chosen[1] ? chosen[1].id : newest;
  for (const id of ["restore-backup", "files-backup", "query-backup"]) fillBackupSelect($(id), { fallback: newest });
  fillBackupSelect($("compare-a"), { fallback: older });
  fillBackupSelect($("compare-b"), { fallback: newest });
}

async function loadBackups() {
  try {
    const answer = await api("/cloudkeep/backups");
    const signature = JSON.stringify(answer.backups);
    if (signature === state.backupsSignature) return; // unchanged: keep the focus where it is
    state.backupsSignature = signature;
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
  const cancel = $("backup-cancel");
  button.disabled = true;
  setOutcome("backup-outcome", "Starting the backup…");
  setProgress("backup", 0, "Starting…");
  let finished = false;
  let heard = false;
  const socket = openSocket("/backups/create/streamed/websocket");
  socket.addEventListener("message", (event) => {
    let progress;
    try {
      progress = JSON.parse(event.data);
    } catch {
      return;
    }
    heard = true;
    if (progress.status === "INITIALIZED" && progress.backup && progress.backup.id) {
      const job = progress.backup.id; // the creation job's id, until the backup has its own
      state.ownJobs.add(job);
      cancel.onclick = () => cancelJob(`/backup/${encodeURIComponent(job)}/creation/cancel`, "backup-outcome", "the backup");
      cancel.hidden = false;
    }
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
    cancel.hidden = true;
    if (finished) return;
    if (event.code === 1013) {
      setOutcome("backup-outcome", `The server is busy: ${event.reason || "too many jobs queued"}. Try again shortly.`, "error");
    } else if (!heard) {
      $("backup-progress-box").hidden = true;
      setOutcome("backup-outcome", "The server did not start a backup: it refused the connection (its queue of jobs may be full, or the application key was refused). Try again shortly.", "error");
      checkAccess();
    } else {
      setOutcome("backup-outcome", "The connection to the server closed before the backup ended (a backup already started goes on in the server).", "error");
      checkAccess();
    }
  });
}

async function cancelJob(path, outcome, what) {
  try {
    await api(path, { method: "POST" });
    setOutcome(outcome, `Canceling ${what}…`);
  } catch (error) {
    setOutcome(outcome, describe(error, `cancel ${what}`), "error");
  }
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
  // The status first (a few ms): it names this device, whose newest backup the choices take.
  loadStatus().then(loadBackups).then(() => {
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
/** Choose ``id`` in a backup select, as the user would. */
function choose(select, id) {
  fillPending(select);
  select.value = id;
  select.dataset.chosen = "1";
}

function prepareRestore(id, paths) {
  choose($("restore-backup"), id);
  if (paths) {
    const current = $("restore-paths").value.split("\n").map((p) => p.trim()).filter(Boolean);
    for (const path of paths) if (!current.includes(path)) current.push(path);
    $("restore-paths").value = current.join("\n");
  }
  $("restore-heading").scrollIntoView({ block: "start" });
  $("restore-backup").focus();
}

/** An in-place restore replaces the live data: asked first, as a delete is (a restore into
 * a folder of the user's choice needs no question). */
function confirmRestore() {
  const id = $("restore-backup").value;
  if (!id) return;
  if ($("restore-target").value.trim()) {
    startRestore(false);
    return;
  }
  const backup = state.backups.find((item) => item.id === id);
  const paths = $("restore-paths").value.split("\n").map((p) => p.trim()).filter(Boolean);
  const what = paths.length ? `${paths.length} chosen path${paths.length === 1 ? "" : "s"} of the backup` : "the whole backup";
  const of = backup ? ` of ${formatTime(backup.created)} on ${backup.device_name}` : ` ${id}`;
  const folder = state.status?.data ? ` ${state.status.data}` : "";
  const dialog = $("restore-dialog");
  $("restore-dialog-text").textContent = `Restore ${what}${of} over the data folder${folder}? What it replaces is kept, and "Undo last restore" puts it back.`;
  dialog.returnValue = "";
  dialog.onclose = () => {
    if (dialog.returnValue === "restore") startRestore(false);
  };
  dialog.showModal();
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
  let queued;
  try {
    queued = await api(`/cloudkeep/backups/${encodeURIComponent(id)}/restore`, { method: "POST", body });
  } catch (error) {
    state.restore = null;
    $("restore-submit").disabled = false;
    $("restore-progress-box").hidden = true;
    setOutcome("restore-outcome", describe(error, "restore"), "error");
    return;
  }
  const job = (queued && queued.job) || id; // the restoration's job id when the server gives it
  const cancel = $("restore-cancel");
  cancel.onclick = () => cancelJob(`/backup/${encodeURIComponent(job)}/restoration/cancel`, "restore-outcome", "the restore");
  cancel.hidden = false;
  followRestore(id, job);
}

/** Poll the outcome; the progress socket moves the bar meanwhile. */
async function followRestore(id, job) {
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 700));
    if (!state.restore || state.restore.backup !== id) return;
    let status;
    try {
      status = await api(`/backup/${encodeURIComponent(job)}/restoration/status`);
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
      loadUndo();
      return;
    }
    if (status.value === "FAILED" || status.value === "CANCELED") {
      finishRestore();
      setProgress("restore", status.percentage ?? 0, status.value === "FAILED" ? "Failed" : "Canceled");
      if (status.value === "CANCELED") {
        setOutcome("restore-outcome", `The restore of ${id} was canceled.`, "error");
        return;
      }
      const reason = status.reason || "no reason given";
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
  $("restore-cancel").hidden = true;
}

/** What "Undo last restore" would put back (GET /cloudkeep/restore/undo). */
async function loadUndo() {
  try {
    showUndo(await api("/cloudkeep/restore/undo"));
  } catch (error) {
    $("undo-info").textContent = describe(error, "read what an undo would put back");
  }
}

function showUndo(undo) {
  const info = $("undo-info");
  const path = undo && undo.undo_path;
  if (!path) {
    info.textContent = "Nothing to undo: no in-place restore has replaced data on this machine yet. An in-place restore keeps what it replaces, and “Undo last restore” puts it back.";
  } else if (undo.state === "undone") {
    info.textContent = `The last restore was undone; what it had restored is kept in ${path}, and “Undo last restore” again puts it back (a redo).`;
  } else if (undo.state === "restoring") {
    info.textContent = `A restore was interrupted; “Undo last restore” takes back what it had done (what it replaced is kept in ${path}).`;
  } else {
    const what = undo.kind === "paths" ? "The last restore of chosen paths" : "The last in-place restore";
    info.textContent = `${what} kept what it replaced in ${path}; “Undo last restore” puts it back.`;
  }
}

async function undoRestore(force) {
  const button = $("undo-restore");
  button.disabled = true;
  $("undo-force").hidden = true;
  setOutcome("undo-outcome", "Putting back what the last restore replaced…");
  try {
    const after = await api("/cloudkeep/restore/undo", { method: "POST", body: { force } });
    setOutcome("undo-outcome", after && after.state === "restored" ? "Redone: the restored data is back in place." : "Undone: the data is back as it was before the restore.", "ok");
    showUndo(after);
  } catch (error) {
    setOutcome("undo-outcome", describe(error, "undo the last restore"), "error");
    if (error instanceof HttpError && error.status === 409) {
      $("undo-force").hidden = false;
      $("undo-force").focus();
    }
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- live progress
let progressSocket = null;
let progressRetry = 1000;

function watchProgress() {
  const socket = openSocket("/backups/streamed/progress");
  progressSocket = socket;
  let opened = false;
  socket.addEventListener("open", () => {
    opened = true;
    progressRetry = 1000;
  });
  socket.addEventListener("message", (event) => {
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
  socket.addEventListener("close", () => {
    progressSocket = null;
    if (!opened && !state.authorized) return; // reopened by the next call that succeeds
    setTimeout(() => {
      if (!progressSocket) watchProgress();
    }, progressRetry);
    progressRetry = Math.min(progressRetry * 2, 30000);
  });
}

// ---------------------------------------------------------------- files
function browseBackup(id) {
  choose($("files-backup"), id);
  showFiles(id, "");
  $("files-heading").scrollIntoView({ block: "start" });
  $("files-backup").focus();
}

let filesAsked = 0; // only the latest listing asked for is shown

async function showFiles(id, path) {
  state.files = { backup: id, path };
  const asked = ++filesAsked;
  renderCrumbs();
  setOutcome("files-outcome", "Loading…");
  let answer;
  try {
    answer = await api(`/cloudkeep/backups/${encodeURIComponent(id)}/files?path=${encodeURIComponent(path)}`);
    if (asked !== filesAsked) return;
  } catch (error) {
    if (asked !== filesAsked) return;
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
    actions.append(el("button", { type: "button", class: "link", "aria-label": `Add to restore: ${entry.name}`, onclick: () => prepareRestore(id, [entry.path]) }, "Add to restore"));
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
/** A value of a row as text: NULL, blobs as their size (and first bytes). */
function valueText(value) {
  if (value === null || value === undefined) return "NULL";
  if (typeof value === "object" && value.blob !== undefined) {
    return `(blob, ${formatBytes(value.blob)}${value.hex ? `: ${value.hex}…` : ""})`;
  }
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** A row of a diff as one line: `key 7: id = 7, body = …`, or for a changed row the
 * columns that differ, `key 7: body: old → new`. */
function rowText(row) {
  if (row === null || typeof row !== "object") return valueText(row);
  const key = row.key !== undefined ? `key ${valueText(row.key)}: ` : "";
  if (row.columns && typeof row.columns === "object") {
    const changes = Object.entries(row.columns).map(([name, sides]) => `${name}: ${valueText(sides && sides.a)} → ${valueText(sides && sides.b)}`);
    return key + changes.join("; ");
  }
  if (row.values && typeof row.values === "object") {
    return key + Object.entries(row.values).map(([name, value]) => `${name} = ${valueText(value)}`).join(", ");
  }
  return valueText(row);
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
      if (t.rows.truncated) rows.append(el("li", {}, "… more rows differ than are listed here"));
      if (rows.childElementCount) out.append(el("h4", {}, `Rows of ${t.name}`), rows);
    }
  }
  if (!added.length && !removed.length && !changed.length && !(diff.databases || []).length) {
    out.append(el("p", {}, "The two backups hold the same files."));
  }
}

let compareAsked = 0; // only the latest comparison asked for is shown

async function compare(event) {
  event.preventDefault();
  const a = $("compare-a").value;
  const b = $("compare-b").value;
  const rows = $("compare-rows").checked;
  setOutcome("compare-outcome", "Comparing…");
  $("compare-result").replaceChildren();
  const asked = ++compareAsked;
  try {
    const diff = await api(`/cloudkeep/diff?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}${rows ? "&rows=true" : ""}`);
    if (asked !== compareAsked) return;
    renderDiff(diff);
    setOutcome("compare-outcome", `Compared in ${Math.round(diff.elapsed_ms ?? 0)} ms, ${formatBytes(diff.fetched_bytes ?? 0)} fetched from the store.`, "ok");
  } catch (error) {
    if (asked !== compareAsked) return;
    setOutcome("compare-outcome", describe(error, "compare the backups"), "error");
  }
}

// ---------------------------------------------------------------- query
let databasesAsked = 0; // answers of an older question are dropped (they can come late)

/** The databases of the chosen backup; the chosen database stays chosen if it is there. */
async function loadDatabases(chosen) {
  const id = $("query-backup").value;
  const select = $("query-database");
  const keep = chosen || select.value;
  const asked = ++databasesAsked;
  if (!id) {
    select.replaceChildren();
    return;
  }
  let answer;
  try {
    answer = await api(`/cloudkeep/backups/${encodeURIComponent(id)}/databases`);
  } catch (error) {
    if (asked !== databasesAsked) return;
    select.replaceChildren();
    setOutcome("query-outcome", describe(error, "list the databases"), "error");
    return;
  }
  if (asked !== databasesAsked) return;
  const current = chosen || select.value || keep; // a choice made while the list was coming
  select.replaceChildren(...answer.databases.map((db) => el("option", { value: db.path }, `${db.path} (${formatBytes(db.size)})`)));
  if (answer.databases.some((db) => db.path === current)) select.value = current;
  if (!answer.databases.length) setOutcome("query-outcome", "This backup holds no SQLite database.");
}

function queryDatabase(id, path) {
  choose($("query-backup"), id);
  loadDatabases(path);
  $("query-heading").scrollIntoView({ block: "start" });
  $("query-text").focus();
}

function cellText(value) {
  if (value === null) return "NULL";
  if (typeof value === "object") return value.blob !== undefined ? `(blob, ${formatBytes(value.blob)})` : JSON.stringify(value);
  return String(value);
}

let queryAsked = 0; // only the latest query's answer is shown

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
  const asked = ++queryAsked;
  try {
    answer = await api(`/cloudkeep/backups/${encodeURIComponent(id)}/sql`, { method: "POST", body });
  } catch (error) {
    if (asked === queryAsked) setOutcome("query-outcome", describe(error, "run the query"), "error");
    return;
  }
  if (asked !== queryAsked) return;
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

/** The drawing's width in CSS pixels, so that its text keeps its size on any window. */
function svgWidth(svg, fallback) {
  const width = Math.round(svg.getBoundingClientRect().width);
  return width >= 200 ? width : fallback;
}

function scale(domainMin, domainMax, rangeMin, rangeMax) {
  const span = domainMax - domainMin || 1;
  return (value) => rangeMin + ((value - domainMin) / span) * (rangeMax - rangeMin);
}

function niceTicks(max, count = 4) {
  if (!(max > 0)) return [0];
  const raw = max / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const ticks = [0];
  while (ticks.at(-1) < max) ticks.push(ticks.at(-1) + step); // the top tick is at or above max
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
  return SHORT_DATE.format(new Date(value));
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
  const width = svgWidth(svg, 720);
  const left = Math.min(120, Math.round(width * 0.25));
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
    const room = Math.max(4, Math.floor((left - 12) / 7));
    const label = device.length > room ? `${device.slice(0, room - 1)}…` : device;
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
  const compact = (t) => COMPACT_TIME.format(new Date(t));
  svg.append(svgEl("text", { x: left, y: axisY + 16, "text-anchor": "start" }, compact(first)));
  if (last !== first) svg.append(svgEl("text", { x: width - right, y: axisY + 16, "text-anchor": "end" }, compact(last)));
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
  CHART.width = svgWidth(svgs[0], 480);
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
  const dots = slot >= 6; // one dot per backup while they stay apart; the line alone beyond
  cumulative.forEach((v, i) => {
    if (!dots) return;
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
  if (slot >= 2) {
    const barWidth = Math.min(28, slot * 0.7);
    backups.forEach((b, i) => {
      const top = yAdded(b.added_bytes);
      const bar = svgEl("rect", { class: "bar", x: xAt(i) - barWidth / 2, y: top, width: barWidth, height: Math.max(0, yAdded(0) - top) });
      bar.append(svgEl("title", {}, `${formatTime(b.created)} · ${b.device_name}: added ${formatBytes(b.added_bytes)}`));
      svgs[1].append(bar);
    });
  } else {
    // More backups than pixels: one bar per 2 px, as high as the most any of them added.
    const columns = new Map();
    backups.forEach((b, i) => {
      const column = Math.floor((xAt(i) - left) / 2);
      const seen = columns.get(column);
      if (!seen) columns.set(column, { max: b.added_bytes, first: b, last: b, count: 1 });
      else Object.assign(seen, { max: Math.max(seen.max, b.added_bytes), last: b, count: seen.count + 1 });
    });
    for (const [column, c] of columns) {
      const top = yAdded(c.max);
      const bar = svgEl("rect", { class: "bar", x: left + column * 2, y: top, width: 1.6, height: Math.max(0, yAdded(0) - top) });
      bar.append(svgEl("title", {}, `${c.count} backups, ${formatTime(c.first.created)} to ${formatTime(c.last.created)}: up to ${formatBytes(c.max)} added`));
      svgs[1].append(bar);
    }
  }

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
    if (r === null || !dots) return;
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
  // In parallel (the page's structure is already painted), but the status before the
  // backups (a few ms): it names this device, whose newest backup the choices take.
  loadStatus().then(loadBackups).then(() => {
    if (!state.backups.length) return; // an empty store has no figures yet (511)
    loadStats();
    loadDatabases();
  });
  loadSettings();
  loadUndo();
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
  $("backups-more").addEventListener("click", () => {
    state.showAllBackups = true;
    renderBackups();
    $("backup-rows").rows[TABLE_ROWS]?.querySelector("button")?.focus();
  });
  $("restore-form").addEventListener("submit", (event) => {
    event.preventDefault();
    confirmRestore();
  });
  $("restore-force").addEventListener("click", () => startRestore(true));
  $("undo-restore").addEventListener("click", () => undoRestore(false));
  $("undo-force").addEventListener("click", () => undoRestore(true));
  for (const id of ["restore-backup", "files-backup", "query-backup", "compare-a", "compare-b"]) {
    $(id).addEventListener("change", (event) => {
      event.target.dataset.chosen = "1";
    });
    for (const type of ["focus", "pointerdown"]) $(id).addEventListener(type, (event) => fillPending(event.target));
  }
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
  let drawnWidth = document.documentElement.clientWidth;
  new ResizeObserver(() => {
    const width = document.documentElement.clientWidth;
    if (Math.abs(width - drawnWidth) < 16) return;
    drawnWidth = width;
    drawTimeline();
    drawCharts();
  }).observe(document.documentElement);
  loadAll();
}

start();
