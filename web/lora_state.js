// LoRA State frontend: the LoRA Stack row editor, the status line on LoRA Reconcile, the sidebar tab with the ledger
// of every managed model, toasts, a setting and a command. Plain ES module, no build step; only public extension
// APIs (app.registerExtension, app.extensionManager, node.addDOMWidget, widgets) and this pack's own routes/event.
// Lowest supported frontend: 1.27 (the one ComfyUI 0.3.64 pins). The DOM contract (data-testid names the browser
// tests use) is documented in web/docs/frontend.md.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import {
  NONE, SLOTS, allOn, duplicateRow, filterLoras, keysOf, legacySlotsToRows, mib, moveRow, newRow, parseRows,
  plural, removeRow, removedToast, serializeRows, statusHasWarning, statusLines, timeAgo, toggleAll,
} from "./stack_rows.js";

const EVENT = "lora_state.ledger";
const TOASTS_SETTING = "LoraState.Toasts";
const RESET_ALL = "LoraState.ResetAll";
const SIDEBAR_ID = "lora-state";
let panel = null;      // the sidebar tab's element while the tab is open
let models = [];       // last ledger fetched
let loadError = null;
const pending = new Set();   // ids with a Reset/Verify in flight: their own toast says it, not the event's

// ---- small helpers --------------------------------------------------------------------------------------------
function toastsOn() {
  const value = app.extensionManager?.setting?.get?.(TOASTS_SETTING);
  return value === undefined || value === null ? true : Boolean(value);
}

// force: the reply to a click (Reset, Verify) is always shown; background events obey the setting.
function notify(severity, summary, detail, force = false) {
  if (!force && !toastsOn()) return;
  const toast = app.extensionManager?.toast;
  if (toast?.add) toast.add({ severity, summary, detail, life: severity === "info" ? 4000 : 6000 });
  else console.info(`[LoRA State] ${summary}${detail ? ": " + detail : ""}`);
}

function el(tag, text, style, testid) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);   // never innerHTML
  if (style) node.style.cssText = style;
  if (testid) node.dataset.testid = testid;
  return node;
}

function button(label, title, testid, onclick) {
  const b = el("button", label, "padding:0 5px;min-width:22px;cursor:pointer;font-size:11px;line-height:18px", testid);
  b.type = "button";
  b.title = title;
  b.onclick = (e) => { e.stopPropagation(); onclick(); };
  return b;
}

const num = (x, digits = 2) => (typeof x === "number" && isFinite(x) ? Number(x.toFixed(digits)).toString() : "-");

// Keystrokes in the editor's inputs belong to the inputs, not to the canvas shortcuts (Delete, Ctrl+C, ...).
function keepKeys(input) {
  for (const type of ["keydown", "keyup", "keypress"]) input.addEventListener(type, (e) => e.stopPropagation());
}

// ---- LoRA names and trigger words from the server ---------------------------------------------------------------
let loraNames = null;
async function fetchLoras(force = false) {
  if (loraNames && !force) return loraNames;
  try {
    const res = await api.fetchApi("/lora_state/loras");
    if (res.ok) loraNames = (await res.json()).loras || [];
  } catch (err) {
    console.warn("[LoRA State] could not list LoRAs", err);
  }
  return loraNames || [];
}

// Files each LoRA Reconcile node's last run flagged (keys that did not fit): node id -> {name: why}. Rows naming
// such a file show a warning.
const flaggedByReconcile = new Map();
const flaggedWhy = (name) => {
  for (const files of flaggedByReconcile.values()) if (files[name]) return files[name];
  return null;
};

function redrawStacks() {
  for (const node of app.graph?.nodes || app.graph?._nodes || []) node.loraStateEditor?.render();
}

const triggerCache = new Map();   // name -> Promise<string[]>
function fetchTriggerWords(name) {
  if (!name || name === NONE) return Promise.resolve([]);
  if (!triggerCache.has(name)) {
    triggerCache.set(name, api.fetchApi(`/lora_state/trigger_words?name=${encodeURIComponent(name)}`)
      .then((res) => (res.ok ? res.json() : { trigger_words: [] }))
      .then((body) => body.trigger_words || [])
      .catch(() => []));
  }
  return triggerCache.get(name);
}

// ---- LoRA Stack: the row editor -----------------------------------------------------------------------------------
const LEGACY_WIDGETS = [];
for (let slot = 1; slot <= SLOTS; slot++) {
  LEGACY_WIDGETS.push(`lora_${slot}`, `strength_model_${slot}`, `strength_clip_${slot}`, `on_${slot}`);
}

// Hidden, not removed: the widgets keep their positions for widgets_values and their values reach the API prompt.
function hideWidget(widget) {
  if (!widget) return;
  widget.hidden = true;
  widget.computeSize = () => [0, -4];   // frontends that lay out hidden widgets still give them no height
}

const pickerStyle = "position:fixed;z-index:10000;max-height:240px;overflow-y:auto;background:var(--comfy-menu-bg,#222);" +
  "border:1px solid var(--border-color,#555);border-radius:4px;font-size:12px;box-shadow:0 4px 12px #0008";

// The searchable picker of one row: a text input; typing filters the server's list, Enter or a click picks.
function lorapicker(row, onPick) {
  const input = el("input", null, "flex:1;min-width:60px;font-size:12px;padding:1px 4px", "row-lora");
  input.type = "text";
  input.value = row.lora === NONE ? "" : row.lora;
  input.placeholder = "search LoRAs…";
  input.title = row.lora;
  keepKeys(input);
  let list = null;
  let options = [];
  let active = 0;
  const close = () => { list?.remove(); list = null; };
  const draw = async () => {
    const names = await fetchLoras();
    if (document.activeElement !== input) return;   // blurred while the list was loading: nothing to show
    options = filterLoras(names, input.value === row.lora ? "" : input.value);
    if (!list) {
      list = el("div", null, pickerStyle, "row-lora-options");
      document.body.append(list);
    }
    const box = input.getBoundingClientRect();
    list.style.left = `${box.left}px`;
    list.style.top = `${box.bottom + 2}px`;
    list.style.minWidth = `${Math.max(box.width, 200)}px`;
    list.replaceChildren();
    if (!options.length) list.append(el("div", names.length ? "no match" : "no LoRAs in the loras folders", "padding:3px 6px;opacity:.6"));
    options.forEach((name, i) => {
      const slash = name.lastIndexOf("/");
      const option = el("div", null, `padding:2px 6px;cursor:pointer;white-space:nowrap${i === active ? ";background:var(--comfy-input-bg,#444)" : ""}`, "row-lora-option");
      if (slash >= 0) option.append(el("span", name.slice(0, slash + 1), "opacity:.55"));   // the subfolder
      option.append(el("span", name.slice(slash + 1)));
      option.title = name;
      option.dataset.value = name;
      option.addEventListener("mousedown", (e) => { e.preventDefault(); close(); onPick(name); });
      list.append(option);
    });
  };
  input.addEventListener("focus", () => { active = 0; input.select(); draw(); });
  input.addEventListener("input", () => { active = 0; draw(); });
  input.addEventListener("blur", () => { close(); input.value = row.lora === NONE ? "" : row.lora; });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      const name = options[active];
      close();
      if (name) onPick(name);
      input.blur();
    } else if (e.key === "Escape") {
      input.blur();
    } else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      active = Math.max(0, Math.min(options.length - 1, active + (e.key === "ArrowDown" ? 1 : -1)));
      draw();
    }
  });
  return input;
}

function numberInput(value, testid, title, onChange) {
  const input = el("input", null, "width:52px;font-size:12px;padding:1px 2px", testid);
  input.type = "number";
  input.step = "0.05";
  input.min = "-100";
  input.max = "100";
  input.value = String(value);
  input.title = title;
  keepKeys(input);
  input.addEventListener("change", () => {
    const v = Number(input.value);
    if (Number.isFinite(v)) onChange(Math.max(-100, Math.min(100, v)));
  });
  return input;
}

class StackEditor {
  constructor(node) {
    this.node = node;
    this.widget = (name) => node.widgets?.find((w) => w.name === name);
    for (const name of [...LEGACY_WIDGETS, "rows", "clip_strength_separate"]) hideWidget(this.widget(name));
    this.root = el("div", null, "display:flex;flex-direction:column;gap:3px;font-size:12px;color:var(--input-text,#ddd);" +
      "box-sizing:border-box;padding:2px 4px;overflow:hidden", "lora-state-stack");
    this.dom = node.addDOMWidget("lora_state_rows", "lora_state_rows", this.root, {
      serialize: false,               // the hidden `rows` widget carries the value into the workflow and the prompt
      hideOnZoom: false,
      getValue: () => this.widget("rows")?.value ?? "[]",
      setValue: () => {},
      getMinHeight: () => 56 + 27 * Math.max(1, this.rows().length),
    });
    this.dom.serialize = false;
    this.render();
  }

  rows() {
    return parseRows(this.widget("rows")?.value);
  }

  clipSeparate() {
    return Boolean(this.widget("clip_strength_separate")?.value);
  }

  setWidget(name, value) {
    const w = this.widget(name);
    if (!w || w.value === value) return;
    w.value = value;
    w.callback?.(value, app.canvas, this.node);
  }

  // record: bracketed like litegraph's own widget edits, so that the undo history records this change (with the
  // node's new size) as one step, right away. Not while a workflow loads: that is no user edit, and the undo
  // history in effect may still be the previous workflow's.
  commit(rows, { record = true } = {}) {
    if (record) app.canvas?.emitBeforeChange?.();
    try {
      this.setWidget("rows", serializeRows(rows));
      this.render();
      this.fit();
    } finally {
      if (record) app.canvas?.emitAfterChange?.();
    }
  }

  fit() {
    const node = this.node;
    const wanted = node.computeSize?.();
    if (wanted && node.size && wanted[1] > node.size[1]) node.setSize([node.size[0], wanted[1]]);
    node.setDirtyCanvas?.(true, true);
    app.graph?.setDirtyCanvas?.(true, true);
  }

  // A workflow saved with the 5-slot node: its slots become rows in front of any rows (the server's order), and
  // the slots are emptied so that nothing is applied twice.
  convertLegacySlots() {
    const values = Object.fromEntries(LEGACY_WIDGETS.map((name) => [name, this.widget(name)?.value]));
    const { rows, clipSeparate } = legacySlotsToRows(values);
    if (!rows.length) return false;
    for (let slot = 1; slot <= SLOTS; slot++) {
      this.setWidget(`lora_${slot}`, NONE);
      this.setWidget(`strength_model_${slot}`, 1.0);
      this.setWidget(`strength_clip_${slot}`, 1.0);
      this.setWidget(`on_${slot}`, true);
    }
    if (clipSeparate) this.setWidget("clip_strength_separate", true);
    this.commit([...rows, ...this.rows()], { record: false });
    return true;
  }

  render() {
    const rows = this.rows();
    const separate = this.clipSeparate();
    const head = el("div", null, "display:flex;align-items:center;gap:6px;opacity:.9");
    const all = el("input", null, "margin:0", "lora-state-toggle-all");
    all.type = "checkbox";
    all.checked = allOn(rows);
    all.indeterminate = rows.some((r) => r.on) && !allOn(rows);
    all.title = "Switch all rows on or off";
    all.addEventListener("change", () => this.commit(toggleAll(this.rows())));
    const clip = el("input", null, "margin:0", "lora-state-clip-separate");
    clip.type = "checkbox";
    clip.checked = separate;
    clip.addEventListener("change", () => { this.setWidget("clip_strength_separate", clip.checked); this.commit(this.rows()); });
    const clipLabel = el("label", null, "display:flex;align-items:center;gap:3px;margin-left:auto;cursor:pointer");
    clipLabel.title = "Off: the clip strength is the model strength. On: each row has its own clip strength.";
    clipLabel.append(clip, el("span", "separate clip strength"));
    head.append(all, el("span", plural(rows.length, "LoRA")), clipLabel);
    this.root.replaceChildren(head);

    rows.forEach((row, index) => {
      const update = (change) => {
        const current = this.rows();
        current[index] = { ...current[index], ...change };
        this.commit(current);
      };
      const line = el("div", null, `display:flex;flex-direction:column;gap:1px;${row.on ? "" : "opacity:.5"}`, "lora-state-row");
      const main = el("div", null, "display:flex;align-items:center;gap:3px");
      const toggle = el("input", null, "margin:0", "row-toggle");
      toggle.type = "checkbox";
      toggle.checked = row.on;
      toggle.title = "Off: left out of the stack";
      toggle.addEventListener("change", () => update({ on: toggle.checked }));
      main.append(toggle, lorapicker(row, (lora) => update({ lora })),
        numberInput(row.strength, "row-strength", "Strength on the model", (strength) => update({ strength })));
      if (separate) {
        main.append(numberInput(row.strength_clip ?? row.strength, "row-strength-clip", "Strength on the text encoder",
          (strength_clip) => update({ strength_clip })));
      }
      main.append(
        button("↑", "Move up", "row-up", () => this.commit(moveRow(this.rows(), index, -1))),
        button("↓", "Move down", "row-down", () => this.commit(moveRow(this.rows(), index, 1))),
        button("dup", "Duplicate this row", "row-duplicate", () => this.commit(duplicateRow(this.rows(), index))),
        button("✕", "Remove", "row-remove", () => this.commit(removeRow(this.rows(), index))),
      );
      const words = el("div", "", "font-size:10px;opacity:.6;padding-left:18px;white-space:nowrap;overflow:hidden;" +
        "text-overflow:ellipsis;min-height:0", "row-trigger-words");
      fetchTriggerWords(row.lora).then((list) => {
        words.textContent = list.length ? list.join(", ") : "";
        words.title = list.length ? `trigger words (from the file's metadata): ${list.join(", ")}` : "";
      });
      line.append(main, words);
      const why = flaggedWhy(row.lora);
      if (why) {
        line.append(el("div", `⚠ ${why}`, "font-size:10px;color:var(--error-text,#f96);" +
          "padding-left:18px", "row-warning"));
      }
      this.root.append(line);
    });

    const add = button("+ Add LoRA", "Add a row", "lora-state-add-row", () => this.commit([...this.rows(), newRow()]));
    add.style.cssText += ";align-self:flex-start;margin-top:2px;padding:1px 8px";
    this.root.append(add);
  }
}

function setupStackNode(nodeType) {
  const created = nodeType.prototype.onNodeCreated;
  nodeType.prototype.onNodeCreated = function () {
    const result = created?.apply(this, arguments);
    this.loraStateEditor = new StackEditor(this);
    this.setSize([Math.max(this.size[0], 400), this.computeSize()[1]]);
    return result;
  };
  // Load, paste, undo: the widget values are now the saved ones.
  const configured = nodeType.prototype.onConfigure;
  nodeType.prototype.onConfigure = function () {
    const result = configured?.apply(this, arguments);
    const editor = this.loraStateEditor;
    if (editor) {
      if (!this.outputs?.some((o) => o.name === "trigger_words")) this.addOutput("trigger_words", "STRING");
      if (!editor.convertLegacySlots()) editor.render();
    }
    return result;
  };
}

// ---- LoRA Reconcile: the status line --------------------------------------------------------------------------------
function setupReconcileNode(nodeType) {
  const created = nodeType.prototype.onNodeCreated;
  nodeType.prototype.onNodeCreated = function () {
    const result = created?.apply(this, arguments);
    const root = el("div", null, "font-size:11px;line-height:1.4;padding:2px 4px;white-space:pre-wrap;" +
      "overflow-wrap:anywhere;color:var(--input-text,#ddd);opacity:.85;box-sizing:border-box;overflow:hidden", "lora-state-status");
    root.textContent = "not run yet";
    this.loraStateStatus = root;
    const widget = this.addDOMWidget("lora_state_status", "lora_state_status", root, {
      serialize: false, hideOnZoom: false, getValue: () => "", setValue: () => {},
      getMinHeight: () => 16 + 15 * Math.max(1, root.childElementCount || 1),
    });
    widget.serialize = false;
    return result;
  };
  const executed = nodeType.prototype.onExecuted;
  nodeType.prototype.onExecuted = function (output) {
    const result = executed?.apply(this, arguments);
    const status = output?.lora_state_status?.[0];
    if (status && this.loraStateStatus) {
      const lines = statusLines(status);
      this.loraStateStatus.replaceChildren(...lines.map((line) =>
        el("div", line, line.startsWith("⚠") ? "color:var(--error-text,#f96)" : "")));
      const files = {};
      for (const [name, f] of Object.entries(status.flagged || {})) {
        files[name] = `keys did not fit the model at the last run (${f.unmatched} unmatched, ${f.mismatched} mismatched)`;
      }
      const before = JSON.stringify(flaggedByReconcile.get(this.id) || {});
      flaggedByReconcile.set(this.id, files);
      if (JSON.stringify(files) !== before) redrawStacks();
      this.loraStateStatus.title = statusHasWarning(status)
        ? "A file's keys did not fit this model: check that the LoRA was made for this model family." : "";
      const wanted = this.computeSize?.();
      if (wanted && wanted[1] > this.size[1]) this.setSize([this.size[0], wanted[1]]);
      this.setDirtyCanvas?.(true, true);
      if (panel) refresh();
    }
    return result;
  };
}

// ---- the sidebar --------------------------------------------------------------------------------------------------
async function refresh() {
  try {
    const res = await api.fetchApi("/lora_state/ledger");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    models = (await res.json()).models || [];
    loadError = null;
  } catch (err) {
    loadError = `could not load the ledger (${err.message || err})`;
  }
  draw();
}

// POST /lora_state/<action> {"id"}: toasts the server's summary, or its error (409 while a prompt runs).
async function post(action, id, { quiet = false } = {}) {
  let body = null;
  let status = 0;
  pending.add(id);
  try {
    const res = await api.fetchApi(`/lora_state/${action}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id }),
    });
    status = res.status;
    body = await res.json().catch(() => null);
  } catch (err) {
    notify("error", `LoRA State ${action} failed`, String(err.message || err), true);
    return false;
  } finally {
    setTimeout(() => pending.delete(id), 1500);   // the websocket event may arrive just after the reply
  }
  if (status < 200 || status >= 300) {
    notify(status === 409 ? "warn" : "error", `LoRA State: ${action} ${id} refused`, body?.error || `HTTP ${status}`, true);
    return false;
  }
  if (!quiet && action === "verify") {
    notify(body?.ok === false ? "warn" : "success", `LoRA State: verified ${id}`, body?.summary || "done", true);
  } else if (!quiet) {
    notify("success", `LoRA State: reset ${id}`, body?.report?.summary || "clean weights restored", true);
  }
  refresh();
  return true;
}

async function resetOne(id) {
  if (!window.confirm(`Reset ${id}? Its clean weights are restored and its LoRAs taken off (the next run applies ` +
    "them again).")) return;
  await post("reset", id);
}

async function resetAll() {
  await refresh();
  if (!models.length) {
    notify("info", "LoRA State: nothing to reset", "no managed model", true);
    return;
  }
  if (!window.confirm(`Reset LoRA State: restore the clean weights of ${plural(models.length, "managed model")} ` +
    `(${models.map((m) => m.id).join(", ")})?`)) return;
  let done = 0;
  for (const m of models) if (await post("reset", m.id, { quiet: true })) done++;
  notify(done === models.length ? "success" : "warn", "LoRA State: reset", `${done} of ${plural(models.length, "model")} reset`, true);
  refresh();
}

function row(label, value, color) {
  const line = el("div", null, "display:flex;gap:8px;font-size:12px;line-height:1.5");
  const valueStyle = `flex:1;min-width:0;overflow-wrap:anywhere${color ? ";color:" + color : ""}`;
  line.append(el("span", label, "opacity:.65;flex:0 0 78px"), el("span", value, valueStyle));
  return line;
}

function backendText(m) {
  const inPlace = m.keys_in_place ?? 0;
  const patches = m.keys_as_patches ?? 0;
  const text = { "in place": `in place (${inPlace} keys)`, patches: `ComfyUI patches (${patches} keys)`,
                 mixed: `mixed: ${inPlace} in place, ${patches} as ComfyUI patches`, none: "none" }[m.backend];
  return text || m.backend || "-";
}

function card(m) {
  const box = el("div", null, "border:1px solid var(--border-color,#444);border-radius:6px;padding:8px;margin:8px 0", "lora-state-model");
  box.dataset.modelId = m.id;
  const head = el("div", null, "display:flex;justify-content:space-between;align-items:center;margin-bottom:4px");
  head.append(el("b", `${m.kind} ${m.id}`), el("span", `${m.status || ""} · ${m.mode || "?"}`, "font-size:11px;opacity:.7"));
  box.append(head);
  if (m.host) box.append(row("host", m.host));

  const stack = m.stack || [];
  if (!stack.length) box.append(row("LoRAs", "none (clean weights)"));
  stack.forEach((entry, i) => {
    const line = row(i === 0 ? "LoRAs" : "", `${entry.name}  ×${num(entry.strength)} · ${keysOf(m, entry)} keys`);
    line.title = `model ${num(entry.strength_model)}, clip ${num(entry.strength_clip)}\nsha256 ${entry.sha256 || "?"}`;
    box.append(line);
  });
  box.append(row("keys touched", m.keys_touched ?? 0));
  // in place: LoRA State writes the weights; patches: ComfyUI applies them (Dynamic VRAM, read-only, quantized).
  const backendLine = row("backend", backendText(m));
  backendLine.title = "in place: LoRA State writes the weights it owns, incrementally.\n" +
    "patches: carried as ComfyUI's own patches (Dynamic VRAM / read-only weights, quantized weights, " +
    "keys another node patches); LoRA State writes nothing there.";
  box.append(backendLine);
  box.append(row("backups", `${mib(m.backup_bytes)}${m.backup_location ? " (" + m.backup_location + ")" : ""}`));
  box.append(row("max drift", `${num(m.max_drift_ulps, 3)} ulp`));
  const changedAt = m.last_change?.at || m.changed_at;
  if (m.last_change?.summary) box.append(row("last change", `${timeAgo(changedAt)}: ${m.last_change.summary}`));
  else if (changedAt) box.append(row("last change", timeAgo(changedAt)));
  if (m.last_error) box.append(row("last error", m.last_error, "var(--error-text,#f66)"));

  const buttons = el("div", null, "display:flex;gap:6px;margin-top:6px");
  for (const [action, label, tip, run] of [
    ["verify", "Verify", "Recompute every managed weight from clean + stack and report the deviation", () => post("verify", m.id)],
    ["reset", "Reset", "Restore the clean weights and empty the ledger (asks first; refused while a prompt runs)", () => resetOne(m.id)],
  ]) {
    const b = el("button", label, "padding:2px 10px;cursor:pointer", `lora-state-${action}`);
    b.title = tip;
    b.onclick = async () => {
      b.disabled = true;
      try { await run(); } finally { b.disabled = false; }
    };
    buttons.append(b);
  }
  box.append(buttons);
  return box;
}

function draw() {
  if (!panel) return;
  panel.replaceChildren();
  const head = el("div", null, "display:flex;justify-content:space-between;align-items:center");
  const reload = el("button", "Refresh", "padding:2px 10px;cursor:pointer");
  reload.onclick = refresh;
  head.append(el("h3", "LoRA State", "margin:0"), reload);
  panel.append(head);
  if (loadError) panel.append(el("p", loadError, "color:var(--error-text,#f66)"));
  else if (!models.length) {
    panel.append(el("p", "No model carries LoRAs through LoRA State yet. Connect a LoRA Stack to a LoRA Reconcile " +
      "node and run the workflow: each model it patches appears here with its LoRAs, the keys they touch, the " +
      "backup memory, and Verify / Reset.", "opacity:.7;font-size:12px", "lora-state-empty"));
  }
  models.forEach((m) => panel.append(card(m)));
}

function onLedgerEvent(event) {
  const d = event.detail || {};
  if (d.event === "rolled_back" || d.error) {
    notify("warn", `LoRA State: ${d.id} rolled back`, d.error || d.summary || "");
  } else if (!pending.has(d.id)) {
    const removed = removedToast(d);
    if (removed) notify("info", removed.summary, removed.detail);
  }
  if (panel) refresh();
}

app.registerExtension({
  name: "lora_state.ledger",
  settings: [{
    id: TOASTS_SETTING,
    category: ["LoRA State", "Notifications", "Toasts"],
    name: "Show LoRA State toasts (LoRAs removed from a model, rollbacks)",
    type: "boolean",
    defaultValue: true,
  }],
  commands: [{
    id: RESET_ALL,
    label: "Reset LoRA State",
    icon: "pi pi-refresh",
    tooltip: "Restore the clean weights of every model LoRA State manages (asks first)",
    function: () => resetAll(),
  }],
  keybindings: [{ combo: { key: "r", alt: true, shift: true }, commandId: RESET_ALL }],

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name === "LoraStateStack") setupStackNode(nodeType);
    else if (nodeData?.name === "LoraStateReconcile") setupReconcileNode(nodeType);
  },

  async setup() {
    api.addEventListener(EVENT, onLedgerEvent);
    const manager = app.extensionManager;
    if (typeof manager?.registerSidebarTab !== "function") {
      console.info("[LoRA State] this frontend has no sidebar API; ledger at GET /lora_state/ledger");
      return;
    }
    manager.registerSidebarTab({
      id: SIDEBAR_ID,
      icon: "pi pi-sitemap",
      title: "LoRA State",
      tooltip: "LoRA State: what is patched into which model",
      type: "custom",
      render(element) {
        panel = el("div", null, "padding:8px;overflow-y:auto;height:100%;box-sizing:border-box", "lora-state-sidebar");
        element.replaceChildren(panel);
        draw();
        refresh();
      },
      destroy() {
        panel = null;
      },
    });
  },
});
