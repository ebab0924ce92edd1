// LoRA State: a sidebar tab with the ledger of every managed model, plus toasts for ledger events.
// Plain ES module, no build step. Needs ComfyUI frontend 1.2x+ for the sidebar/toasts (older ones: console only).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const EVENT = "lora_state.ledger";
let panel = null;      // the tab's element while the tab is open
let models = [];       // last ledger fetched
let loadError = null;
const pending = new Set();   // ids with a Reset/Verify in flight: their own toast says it, not the event's

function notify(severity, summary, detail) {
  const toast = app.extensionManager?.toast;
  if (toast?.add) toast.add({ severity, summary, detail, life: severity === "info" ? 3000 : 6000 });
  else console.info(`[LoRA State] ${summary}${detail ? ": " + detail : ""}`);
}

function el(tag, text, style) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);   // never innerHTML
  if (style) node.style.cssText = style;
  return node;
}

const num = (x, digits = 2) => (typeof x === "number" && isFinite(x) ? Number(x.toFixed(digits)).toString() : "-");
const mib = (bytes) => `${((bytes || 0) / 2 ** 20).toFixed(1)} MiB`;

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
async function post(action, id) {
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
    notify("error", `LoRA State ${action} failed`, String(err.message || err));
    return;
  } finally {
    setTimeout(() => pending.delete(id), 1500);   // the websocket event may arrive just after the reply
  }
  if (status < 200 || status >= 300) {
    notify(status === 409 ? "warn" : "error", `LoRA State: ${action} ${id} refused`, body?.error || `HTTP ${status}`);
  } else if (action === "verify") {
    notify(body?.ok === false ? "warn" : "success", `LoRA State: verified ${id}`, body?.summary || "done");
  } else {
    notify("success", `LoRA State: reset ${id}`, body?.report?.summary || "clean weights restored");
  }
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
  const box = el("div", null, "border:1px solid var(--border-color,#444);border-radius:6px;padding:8px;margin:8px 0");
  const head = el("div", null, "display:flex;justify-content:space-between;align-items:center;margin-bottom:4px");
  head.append(el("b", `${m.kind} ${m.id}`), el("span", `${m.status || ""} · ${m.mode || "?"}`, "font-size:11px;opacity:.7"));
  box.append(head);
  if (m.host) box.append(row("host", m.host));

  const stack = m.stack || [];
  if (!stack.length) box.append(row("LoRAs", "none (clean weights)"));
  stack.forEach((entry, i) => {
    const line = row(i === 0 ? "LoRAs" : "", `${entry.name}  ×${num(entry.strength)}`);
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
  if (m.last_change?.summary) box.append(row("last change", m.last_change.summary));
  if (m.last_error) box.append(row("last error", m.last_error, "var(--error-text,#f66)"));

  const buttons = el("div", null, "display:flex;gap:6px;margin-top:6px");
  for (const [action, label, tip] of [
    ["reset", "Reset", "Restore the clean weights and empty the ledger (refused while a prompt runs)"],
    ["verify", "Verify", "Recompute every managed weight from clean + stack and report the deviation"],
  ]) {
    const button = el("button", label, "padding:2px 10px;cursor:pointer");
    button.title = tip;
    button.onclick = async () => {
      button.disabled = true;
      try { await post(action, m.id); } finally { button.disabled = false; }
    };
    buttons.append(button);
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
    panel.append(el("p", "No managed model yet: run a workflow with a LoRA Reconcile node.", "opacity:.7"));
  }
  models.forEach((m) => panel.append(card(m)));
}

function onLedgerEvent(event) {
  const d = event.detail || {};
  if (d.event === "rolled_back" || d.error) {
    notify("warn", `LoRA State: ${d.id} rolled back`, d.error || d.summary || "");
  } else if (d.summary && !pending.has(d.id)) {
    notify("info", `LoRA State: ${d.id}`, d.summary);
  }
  if (panel) refresh();
}

app.registerExtension({
  name: "lora_state.ledger",
  async setup() {
    api.addEventListener(EVENT, onLedgerEvent);
    const manager = app.extensionManager;
    if (typeof manager?.registerSidebarTab !== "function") {
      console.info("[LoRA State] this frontend has no sidebar API; ledger at GET /lora_state/ledger");
      return;
    }
    manager.registerSidebarTab({
      id: "lora_state",
      icon: "pi pi-sitemap",
      title: "LoRA State",
      tooltip: "LoRA State: what is patched into which model",
      type: "custom",
      render(element) {
        panel = el("div", null, "padding:8px;overflow-y:auto;height:100%;box-sizing:border-box");
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
