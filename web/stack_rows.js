// LoRA State: the pure logic behind the LoRA Stack row editor and the status texts (no DOM, no ComfyUI imports),
// so that it is unit-tested on its own (tests/js). Plain ES module, no build step.
//
// A row is {on: bool, lora: string, strength: number, strength_clip: number|null}; the node's hidden `rows` widget
// holds the JSON list, which is also the API prompt's `rows` input (format: lora_state/stack_rows.py).

export const NONE = "None";
export const SLOTS = 5;

const finite = (x, fallback) => (typeof x === "number" && Number.isFinite(x) ? x : fallback);

export function newRow(lora = NONE, strength = 1.0) {
  return { on: true, lora, strength, strength_clip: null };
}

export function normalizeRow(row) {
  const r = row && typeof row === "object" ? row : {};
  const strength = finite(Number(r.strength ?? 1), 1);
  const clip = r.strength_clip === null || r.strength_clip === undefined ? null : finite(Number(r.strength_clip), null);
  return {
    on: r.on === undefined ? true : Boolean(r.on),
    lora: typeof r.lora === "string" && r.lora ? r.lora : NONE,
    strength,
    strength_clip: clip,
  };
}

// The `rows` widget value -> rows. Malformed text gives [] (the server says what is wrong when it is queued).
export function parseRows(text) {
  if (Array.isArray(text)) return text.map(normalizeRow);
  if (typeof text !== "string" || !text.trim()) return [];
  try {
    const value = JSON.parse(text);
    return Array.isArray(value) ? value.map(normalizeRow) : [];
  } catch {
    return [];
  }
}

export function serializeRows(rows) {
  return JSON.stringify(rows.map(normalizeRow));
}

// The numbered slots of LoRA Stack before rows existed ({lora_1, strength_model_1, strength_clip_1, on_1, ...})
// -> rows, skipping empty slots; clipSeparate is true when any slot's clip strength differs from its model
// strength (so that nothing is lost when the node's clip toggle decides).
export function legacySlotsToRows(values) {
  const rows = [];
  let clipSeparate = false;
  for (let slot = 1; slot <= SLOTS; slot++) {
    const lora = values[`lora_${slot}`];
    if (typeof lora !== "string" || !lora || lora === NONE) continue;
    const strength = finite(Number(values[`strength_model_${slot}`] ?? 1), 1);
    const clip = finite(Number(values[`strength_clip_${slot}`] ?? strength), strength);
    if (clip !== strength) clipSeparate = true;
    rows.push({ on: values[`on_${slot}`] !== false, lora, strength, strength_clip: clip });
  }
  return { rows, clipSeparate };
}

// The widgets_values array of a workflow saved with the 5-slot node (20 values in slot order) -> slot values.
export function legacyWidgetValues(values) {
  const named = {};
  const fields = ["lora", "strength_model", "strength_clip", "on"];
  for (let slot = 1; slot <= SLOTS; slot++) {
    fields.forEach((field, i) => { named[`${field}_${slot}`] = values?.[(slot - 1) * 4 + i]; });
  }
  return named;
}

export function moveRow(rows, index, delta) {
  const target = index + delta;
  if (index < 0 || index >= rows.length || target < 0 || target >= rows.length) return rows.slice();
  const copy = rows.slice();
  [copy[index], copy[target]] = [copy[target], copy[index]];
  return copy;
}

export function duplicateRow(rows, index) {
  if (index < 0 || index >= rows.length) return rows.slice();
  const copy = rows.slice();
  copy.splice(index + 1, 0, { ...rows[index] });
  return copy;
}

export function removeRow(rows, index) {
  return rows.filter((_, i) => i !== index);
}

export const allOn = (rows) => rows.length > 0 && rows.every((r) => r.on);

// The header toggle: all rows on, unless all already are (then all off).
export function toggleAll(rows) {
  const on = !allOn(rows);
  return rows.map((r) => ({ ...r, on }));
}

// The picker's filter: every space-separated term must occur (case-insensitive); subfolders match too.
export function filterLoras(names, query, limit = 200) {
  const terms = String(query || "").toLowerCase().split(/\s+/).filter(Boolean);
  const hits = names.filter((n) => terms.every((t) => n.toLowerCase().includes(t)));
  return hits.slice(0, limit);
}

// Trigger words of the enabled rows, comma-joined, each once (case-insensitive): what the STRING output carries.
export function joinTriggerWords(rows, wordsByLora) {
  const seen = new Set();
  const out = [];
  for (const row of rows) {
    if (!row.on || row.lora === NONE) continue;
    for (const word of wordsByLora[row.lora] || []) {
      const key = word.toLowerCase();
      if (word && !seen.has(key)) {
        seen.add(key);
        out.push(word);
      }
    }
  }
  return out.join(", ");
}

const num = (x, digits = 2) => (typeof x === "number" && Number.isFinite(x) ? Number(x.toFixed(digits)).toString() : "-");
export const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

// LoRA Reconcile's `ui.lora_state_status[0]` -> lines for the node: one per part (model, clip), then one per file
// whose keys did not fit (`flagged`, decided by the server: keys neither part knows, or shape mismatches).
export function statusLines(status) {
  if (!status || !status.parts) return ["not run yet"];
  const lines = [];
  const backend = { "in place": "in place", patches: "ComfyUI patches", mixed: "in place + patches", none: "none" };
  for (const [what, part] of Object.entries(status.parts)) {
    if (!part.id && !part.loras) {
      lines.push(`${what}: no LoRAs, clean weights`);
      continue;
    }
    let line = `${what}${part.id ? " (" + part.id + ")" : ""}: ${plural(part.loras, "LoRA")}, ${plural(part.keys, "key")}, ` +
      `${num(part.ms, 1)} ms; ${backend[part.backend] || part.backend}; drift ${num(part.max_drift_ulps, 2)} ulp`;
    if (part.error) line += `; error: ${part.error}`;
    lines.push(line);
  }
  for (const [name, f] of Object.entries(status.flagged || {})) {
    const why = [f.unmatched ? `${f.unmatched} unmatched` : "", f.mismatched ? `${f.mismatched} mismatched` : ""]
      .filter(Boolean).join(", ");
    lines.push(`⚠ ${name}: keys did not fit this model (${why})`);
  }
  return lines;
}

export function statusHasWarning(status) {
  return statusLines(status).some((l) => l.startsWith("⚠")) ||
    Object.values(status?.parts || {}).some((p) => p.error);
}

// A ledger event with removed LoRAs -> the toast ("2 LoRAs removed from model-1"), or null.
export function removedToast(event) {
  const removed = event?.removed || [];
  if (!removed.length || event.event !== "reconcile") return null;
  return { summary: `${plural(removed.length, "LoRA")} removed from ${event.id}`, detail: removed.join(", ") };
}

export const mib = (bytes) => `${((bytes || 0) / 2 ** 20).toFixed(1)} MiB`;

export function timeAgo(seconds, now = Date.now() / 1000) {
  if (!seconds) return "never";
  const d = Math.max(0, Math.round(now - seconds));
  if (d < 60) return `${d} s ago`;
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  return `${Math.round(d / 3600)} h ago`;
}

// The keys a ledger entry's LoRA touches (keys_by_lora is keyed by sha256).
export function keysOf(model, entry) {
  return (model.keys_by_lora || {})[entry.sha256] ?? "-";
}
