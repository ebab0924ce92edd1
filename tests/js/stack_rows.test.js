import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  duplicateRow, filterLoras, joinTriggerWords, legacySlotsToRows, legacyWidgetValues, moveRow, newRow, parseRows,
  removeRow, removedToast, serializeRows, statusLines, toggleAll,
} from "../../web/stack_rows.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const row = (lora, strength = 1, on = true, strength_clip = null) => ({ on, lora, strength, strength_clip });

describe("rows serialize and deserialize", () => {
  it("round-trips", () => {
    const rows = [row("a.safetensors", 0.8), row("sub/b.safetensors", -0.5, false, 0.25)];
    expect(parseRows(serializeRows(rows))).toEqual(rows);
  });
  it("normalizes partial and malformed rows", () => {
    expect(parseRows('[{"lora": "a"}, {}, {"lora": "b", "strength": "x", "strength_clip": "y"}]')).toEqual([
      row("a"), row("None"), row("b", 1, true, null)]);
    expect(parseRows("not json")).toEqual([]);
    expect(parseRows('{"lora": "a"}')).toEqual([]);
    expect(parseRows("")).toEqual([]);
    expect(newRow()).toEqual(row("None"));
  });
});

describe("legacy 5-slot workflows", () => {
  it("converts the widgets_values of the old example workflow into rows", () => {
    const wf = JSON.parse(readFileSync(join(HERE, "../fixtures/legacy_5slot_workflow.json"), "utf8"));
    const node = wf.nodes.find((n) => n.type === "LoraStateStack");
    expect(node.widgets_values).toHaveLength(20);
    const { rows, clipSeparate } = legacySlotsToRows(legacyWidgetValues(node.widgets_values));
    expect(rows).toEqual([row("example_lora_a.safetensors", 0.8, true, 1.0), row("example_lora_b.safetensors", 0.5, true, 0.5)]);
    expect(clipSeparate).toBe(true);   // slot 1 had model 0.8 / clip 1.0: kept by switching clip strengths on
  });
  it("keeps switched-off slots as switched-off rows and skips empty ones", () => {
    const values = { lora_1: "None", lora_2: "x", strength_model_2: 0.3, strength_clip_2: 0.3, on_2: false };
    expect(legacySlotsToRows(values)).toEqual({ rows: [row("x", 0.3, false, 0.3)], clipSeparate: false });
  });
});

describe("row operations", () => {
  const rows = [row("a"), row("b", 0.5, false), row("c")];
  it("reorders", () => {
    expect(moveRow(rows, 0, 1).map((r) => r.lora)).toEqual(["b", "a", "c"]);
    expect(moveRow(rows, 2, -1).map((r) => r.lora)).toEqual(["a", "c", "b"]);
    expect(moveRow(rows, 0, -1).map((r) => r.lora)).toEqual(["a", "b", "c"]);
    expect(moveRow(rows, 2, 1).map((r) => r.lora)).toEqual(["a", "b", "c"]);
  });
  it("duplicates below and removes", () => {
    const dup = duplicateRow(rows, 1);
    expect(dup.map((r) => r.lora)).toEqual(["a", "b", "b", "c"]);
    expect(dup[2]).toEqual(rows[1]);
    expect(dup[2]).not.toBe(rows[1]);
    expect(removeRow(rows, 0).map((r) => r.lora)).toEqual(["b", "c"]);
  });
  it("toggles all: on unless all are on", () => {
    expect(toggleAll(rows).map((r) => r.on)).toEqual([true, true, true]);
    expect(toggleAll(toggleAll(rows)).map((r) => r.on)).toEqual([false, false, false]);
  });
  it("filters the picker by every term, subfolders included", () => {
    const names = ["styles/Neon.safetensors", "chars/neo.safetensors", "other.safetensors"];
    expect(filterLoras(names, "neo")).toEqual(["styles/Neon.safetensors", "chars/neo.safetensors"]);
    expect(filterLoras(names, "styles neo")).toEqual(["styles/Neon.safetensors"]);
    expect(filterLoras(names, "")).toEqual(names);
  });
});

describe("trigger words and status texts", () => {
  it("joins the enabled rows' words once each", () => {
    const words = { a: ["zxc", "neon"], b: ["off"], c: ["Neon", "glow"] };
    expect(joinTriggerWords([row("a"), row("b", 1, false), row("c"), row("None")], words)).toBe("zxc, neon, glow");
  });
  it("formats the reconcile status", () => {
    const status = { requested: 4, parts: {
      model: { id: "model-1", loras: 4, keys: 312, ms: 41.2, backend: "in place", max_drift_ulps: 0.5 },
      clip: { id: "clip-2", loras: 4, keys: 72, ms: 3, backend: "patches", max_drift_ulps: 0 } },
      flagged: { "bad.safetensors": { unmatched: 12, mismatched: 0 }, "odd.safetensors": { unmatched: 0, mismatched: 2 } } };
    const lines = statusLines(status);
    expect(lines).toEqual([
      "model (model-1): 4 LoRAs, 312 keys, 41.2 ms; in place; drift 0.5 ulp",
      "clip (clip-2): 4 LoRAs, 72 keys, 3 ms; ComfyUI patches; drift 0 ulp",
      "⚠ bad.safetensors: keys did not fit this model (12 unmatched)",
      "⚠ odd.safetensors: keys did not fit this model (2 mismatched)"]);
    expect(statusLines(null)).toEqual(["not run yet"]);
    expect(statusLines({ parts: { model: { id: null, loras: 0 } } })).toEqual(["model: no LoRAs, clean weights"]);
  });
  it("says how many LoRAs were removed from which model", () => {
    expect(removedToast({ event: "reconcile", id: "model-1", removed: ["a", "b"] }))
      .toEqual({ summary: "2 LoRAs removed from model-1", detail: "a, b" });
    expect(removedToast({ event: "reconcile", id: "model-1", removed: [] })).toBeNull();
  });
});
