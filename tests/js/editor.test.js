// The LoRA Stack row editor, the Reconcile status and the sidebar, driven through jsdom with stand-ins for the
// frontend's app/api modules (mocks/): the same data-testid contract the browser tests use (web/docs/frontend.md).
import { beforeAll, beforeEach, describe, expect, it } from "vitest";
import { app, settings, toasts } from "./mocks/app.js";
import { listeners, routes } from "./mocks/api.js";

const flush = () => new Promise((resolve) => setTimeout(resolve, 0));
const q = (root, id) => root.querySelector(`[data-testid="${id}"]`);
const qa = (root, id) => [...root.querySelectorAll(`[data-testid="${id}"]`)];

const SLOT_WIDGETS = [];
for (let s = 1; s <= 5; s++) {
  SLOT_WIDGETS.push([`lora_${s}`, "None"], [`strength_model_${s}`, 1], [`strength_clip_${s}`, 1], [`on_${s}`, true]);
}

class FakeNode {
  constructor(widgets) {
    this.widgets = widgets.map(([name, value]) => ({ name, value, options: {} }));
    this.size = [300, 100];
    this.outputs = [{ name: "lora_stack", type: "LORA_STACK" }];
  }
  addDOMWidget(name, type, element, options) {
    const widget = { name, type, element, options };
    this.widgets.push(widget);
    document.body.append(element);
    return widget;
  }
  computeSize() { return [300, 100]; }
  setSize(size) { this.size = size; }
  setDirtyCanvas() {}
  addOutput(name, type) { this.outputs.push({ name, type }); }
}

let ext;
class StackNode extends FakeNode {
  constructor() { super([...SLOT_WIDGETS, ["clip_strength_separate", false], ["rows", "[]"]]); }
}
class ReconcileNode extends FakeNode {
  constructor() { super([["mode", "auto"]]); }
}

beforeAll(async () => {
  routes["/lora_state/loras"] = { loras: ["a.safetensors", "styles/neon.safetensors", "chars/neo.safetensors"] };
  routes["/lora_state/trigger_words"] = (path) => ({ trigger_words: path.includes("neon") ? ["neon glow"] : [] });
  routes["/lora_state/ledger"] = { models: [] };
  await import("../../web/lora_state.js");
  ext = app.extensions[0];
  await ext.beforeRegisterNodeDef(StackNode, { name: "LoraStateStack" });
  await ext.beforeRegisterNodeDef(ReconcileNode, { name: "LoraStateReconcile" });
  await ext.setup();
});

beforeEach(() => { document.body.replaceChildren(); toasts.length = 0; settings["LoraState.Toasts"] = true; });

function newStack() {
  const node = new StackNode();
  node.onNodeCreated();
  return node;
}
const rowsOf = (node) => JSON.parse(node.widgets.find((w) => w.name === "rows").value);
const root = (node) => node.loraStateEditor.root;

async function pick(rowEl, query) {
  const input = q(rowEl, "row-lora");
  input.focus();
  input.value = query;
  input.dispatchEvent(new Event("input"));
  await flush();
  input.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter" }));
  await flush();
}

describe("LoRA Stack editor", () => {
  it("declares the setting, the command and its keybinding", () => {
    expect(ext.settings.map((s) => [s.id, s.type, s.defaultValue])).toEqual([["LoraState.Toasts", "boolean", true]]);
    expect(ext.commands.map((c) => c.id)).toEqual(["LoraState.ResetAll"]);
    expect(ext.keybindings[0].commandId).toBe("LoraState.ResetAll");
  });

  it("hides the legacy, rows and clip widgets and shows the editor", () => {
    const node = newStack();
    const hidden = node.widgets.filter((w) => w.hidden).map((w) => w.name);
    expect(hidden).toHaveLength(22);
    expect(q(document, "lora-state-stack")).not.toBeNull();
    expect(node.widgets.at(-1).serialize).toBe(false);
    expect(node.widgets.at(-1).options.serialize).toBe(false);
  });

  it("builds 7 rows by clicking, picks, toggles, re-weights, reorders, duplicates, removes", async () => {
    const node = newStack();
    for (let i = 0; i < 7; i++) q(root(node), "lora-state-add-row").click();
    expect(qa(root(node), "lora-state-row")).toHaveLength(7);
    await pick(qa(root(node), "lora-state-row")[0], "neon");
    expect(rowsOf(node)[0].lora).toBe("styles/neon.safetensors");
    await flush();
    expect(q(qa(root(node), "lora-state-row")[0], "row-trigger-words").textContent).toBe("neon glow");
    await pick(qa(root(node), "lora-state-row")[1], "a.saf");
    const strength = q(qa(root(node), "lora-state-row")[1], "row-strength");
    strength.value = "0.35";
    strength.dispatchEvent(new Event("change"));
    const toggle = q(qa(root(node), "lora-state-row")[0], "row-toggle");
    toggle.checked = false;
    toggle.dispatchEvent(new Event("change"));
    expect(rowsOf(node).slice(0, 2)).toEqual([
      { on: false, lora: "styles/neon.safetensors", strength: 1, strength_clip: null },
      { on: true, lora: "a.safetensors", strength: 0.35, strength_clip: null }]);
    q(qa(root(node), "lora-state-row")[1], "row-up").click();
    expect(rowsOf(node).map((r) => r.lora).slice(0, 2)).toEqual(["a.safetensors", "styles/neon.safetensors"]);
    q(qa(root(node), "lora-state-row")[0], "row-duplicate").click();
    expect(rowsOf(node)).toHaveLength(8);
    q(qa(root(node), "lora-state-row")[0], "row-remove").click();
    q(qa(root(node), "lora-state-row")[0], "row-down").click();
    expect(rowsOf(node).map((r) => r.lora).slice(0, 2)).toEqual(["styles/neon.safetensors", "a.safetensors"]);
    q(root(node), "lora-state-toggle-all").click();
    expect(rowsOf(node).every((r) => r.on)).toBe(true);
  });

  it("shows clip strength only when the node's clip toggle is on", () => {
    const node = newStack();
    q(root(node), "lora-state-add-row").click();
    expect(q(root(node), "row-strength-clip")).toBeNull();
    const clip = q(root(node), "lora-state-clip-separate");
    clip.checked = true;
    clip.dispatchEvent(new Event("change"));
    expect(node.widgets.find((w) => w.name === "clip_strength_separate").value).toBe(true);
    const input = q(root(node), "row-strength-clip");
    input.value = "0.2";
    input.dispatchEvent(new Event("change"));
    expect(rowsOf(node)[0].strength_clip).toBe(0.2);
  });

  it("moves a 5-slot workflow's LoRAs into rows on load and empties the slots", () => {
    const node = newStack();
    const set = (name, value) => { node.widgets.find((w) => w.name === name).value = value; };
    set("lora_1", "a.safetensors"); set("strength_model_1", 0.8); set("strength_clip_1", 1.0);
    set("lora_3", "styles/neon.safetensors"); set("strength_model_3", 0.5); set("strength_clip_3", 0.5); set("on_3", false);
    node.onConfigure({});
    expect(rowsOf(node)).toEqual([
      { on: true, lora: "a.safetensors", strength: 0.8, strength_clip: 1 },
      { on: false, lora: "styles/neon.safetensors", strength: 0.5, strength_clip: 0.5 }]);
    expect(node.widgets.find((w) => w.name === "lora_1").value).toBe("None");
    expect(node.widgets.find((w) => w.name === "clip_strength_separate").value).toBe(true);
    expect(node.outputs.map((o) => o.name)).toEqual(["lora_stack", "trigger_words"]);
    expect(qa(root(node), "lora-state-row")).toHaveLength(2);
    node.onConfigure({});        // loading again changes nothing
    expect(rowsOf(node)).toHaveLength(2);
  });
});

describe("LoRA Reconcile status, toasts and sidebar", () => {
  it("shows the ledger after a run", () => {
    const node = new ReconcileNode();
    node.onNodeCreated();
    const status = q(document, "lora-state-status");
    expect(status.textContent).toBe("not run yet");
    node.onExecuted({ lora_state_status: [{ requested: 4, parts: { model: { id: "model-1", loras: 4, keys: 312,
      ms: 41, backend: "in place", max_drift_ulps: 0, flagged: {} } } }] });
    expect(status.textContent).toContain("4 LoRAs, 312 keys, 41 ms; in place");
  });

  it("toasts removed LoRAs unless the setting silences it", () => {
    const event = { detail: { event: "reconcile", id: "model-1", removed: ["a", "b"] } };
    listeners["lora_state.ledger"].forEach((fn) => fn(event));
    expect(toasts.map((t) => t.summary)).toEqual(["2 LoRAs removed from model-1"]);
    settings["LoraState.Toasts"] = false;
    listeners["lora_state.ledger"].forEach((fn) => fn(event));
    expect(toasts).toHaveLength(1);
  });

  it("renders the sidebar: empty explanation, then a model with its buttons", async () => {
    expect(app.sidebarTab.id).toBe("lora-state");
    const host = document.createElement("div");
    app.sidebarTab.render(host);
    await flush(); await flush();
    expect(q(host, "lora-state-empty")).not.toBeNull();
    routes["/lora_state/ledger"] = { models: [{ id: "model-1", kind: "model", status: "applied", mode: "auto",
      stack: [{ name: "a.safetensors", sha256: "s1", strength: 0.8 }], keys_by_lora: { s1: 192 }, keys_touched: 192,
      backend: "in place", keys_in_place: 192, backup_bytes: 2 ** 21, last_change: { summary: "added a", at: 1 } }] };
    app.sidebarTab.render(host);
    await flush(); await flush();
    const model = q(host, "lora-state-model");
    expect(model.textContent).toContain("a.safetensors  ×0.8 · 192 keys");
    expect(model.textContent).toContain("2.0 MiB");
    expect(q(model, "lora-state-verify")).not.toBeNull();
    expect(q(model, "lora-state-reset")).not.toBeNull();
  });
});

describe("a flagged file marks its rows", () => {
  it("shows row-warning on rows whose file did not fit at the last run", () => {
    const stack = newStack();
    stack.widgets.find((w) => w.name === "rows").value = JSON.stringify([{ lora: "a.safetensors" }, { lora: "b.safetensors" }]);
    stack.loraStateEditor.render();
    app.graph.nodes = [stack];
    const reconcile = new ReconcileNode();
    reconcile.id = 7;
    reconcile.onNodeCreated();
    reconcile.onExecuted({ lora_state_status: [{ parts: { model: { id: "model-1", loras: 2, keys: 3, ms: 1, backend: "in place" } },
      flagged: { "b.safetensors": { unmatched: 5, mismatched: 0 } } }] });
    const rows = qa(root(stack), "lora-state-row");
    expect(q(rows[0], "row-warning")).toBeNull();
    expect(q(rows[1], "row-warning").textContent).toContain("5 unmatched");
    reconcile.onExecuted({ lora_state_status: [{ parts: {}, flagged: {} }] });
    expect(q(root(stack), "row-warning")).toBeNull();
    delete app.graph.nodes;
  });
});
