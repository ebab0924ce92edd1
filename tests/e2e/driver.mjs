// Browser end-to-end scenarios for the LoRA State pack, run against a live ComfyUI server (started by
// tests/e2e/test_browser.py or tests/e2e/serve.py). Headless Debian chromium driven by playwright-core.
//
//   node tests/e2e/driver.mjs --url http://127.0.0.1:PORT --scenario smoke[,stack,workflows] [--out DIR]
//        [--pack lora_state_pack] [--chromium /usr/bin/chromium] [--shots DIR]
//
// Every scenario opens a fresh browser context, collects console errors and page errors, and fails on any that
// comes from the pack's own files (/extensions/<pack>/...). It prints one line per scenario:
//   RESULT {"scenario": ..., "ok": true|false, "steps": [...], "error": ..., "pack_errors": [...]}
// and exits 1 when any scenario failed. Screenshots of failures go to --out.
//
// DOM contract with web/ (data-testid): see CONTRACT below.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");

const CONTRACT = {
  stack: "lora-state-stack",
  addRow: "lora-state-add-row",
  toggleAll: "lora-state-toggle-all",
  clipSeparate: "lora-state-clip-separate",
  row: "lora-state-row",
  rowToggle: "row-toggle",
  rowLora: "row-lora",
  rowOption: "row-lora-option",
  rowStrength: "row-strength",
  rowStrengthClip: "row-strength-clip",
  rowUp: "row-up",
  rowDown: "row-down",
  rowDuplicate: "row-duplicate",
  rowRemove: "row-remove",
  rowTriggers: "row-trigger-words",
  status: "lora-state-status",
  sidebarTab: "lora-state",
  sidebar: "lora-state-sidebar",
  model: "lora-state-model",
  verify: "lora-state-verify",
  reset: "lora-state-reset",
  empty: "lora-state-empty",
};
const tid = (id) => `[data-testid="${id}"]`;

// Files of the test assets (tests/integration/build_assets.py); the 7 rows of the stack scenario use these.
const LORAS = [
  "kohya_lora_a.safetensors",
  "kohya_lora_b.safetensors",
  "locon_conv.safetensors",
  "loha.safetensors",
  "lokr.safetensors",
  "dora.safetensors",
  "sub/nested_lora.safetensors",
];
// Placeholder names in example_workflows/ -> the test assets.
const NAME_MAP = {
  "v1-5-pruned-emaonly-fp16.safetensors": "tiny_a.safetensors",
  "example_lora_a.safetensors": "kohya_lora_a.safetensors",
  "example_lora_b.safetensors": "kohya_lora_b.safetensors",
};

function parseArgs(argv) {
  const args = { pack: "lora_state_pack", chromium: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
                 out: null, shots: null, scenario: "smoke", workflows: null };
  for (let i = 2; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, "");
    args[key] = argv[++i];
  }
  if (!args.url) throw new Error("--url is required");
  args.url = args.url.replace(/\/$/, "");
  return args;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Run {
  constructor(args, scenario) {
    this.args = args;
    this.scenario = scenario;
    this.steps = [];
    this.packErrors = [];
    this.otherErrors = [];
    this.packFilesLoaded = new Set();
    this.promptResponses = [];
    this.packPrefix = `/extensions/${args.pack}/`;
  }

  step(name, detail) {
    this.steps.push(detail === undefined ? name : `${name}: ${detail}`);
    console.error(`[${this.scenario}] ${name}${detail === undefined ? "" : ": " + detail}`);
  }

  fromPack(text) {
    return typeof text === "string" && text.includes(this.packPrefix);
  }

  async open() {
    this.browser = await chromium.launch({
      executablePath: this.args.chromium,
      headless: true,
      args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    });
    this.context = await this.browser.newContext({ viewport: { width: 1600, height: 1000 } });
    this.page = await this.context.newPage();
    const page = this.page;
    page.setDefaultTimeout(20000);
    page.on("console", (msg) => {
      if (msg.type() !== "error") return;
      const loc = msg.location() || {};
      const entry = `${msg.text()} @ ${loc.url || "?"}:${loc.lineNumber ?? "?"}`;
      if (this.fromPack(loc.url) || this.fromPack(msg.text())) this.packErrors.push(entry);
      else this.otherErrors.push(entry);
    });
    page.on("pageerror", (err) => {
      const entry = `${err.name}: ${err.message}\n${err.stack || ""}`;
      if (this.fromPack(err.stack) || this.fromPack(err.message)) this.packErrors.push(entry);
      else this.otherErrors.push(entry);
    });
    page.on("requestfailed", (req) => {
      if (this.fromPack(req.url())) this.packErrors.push(`request failed: ${req.url()} ${req.failure()?.errorText}`);
    });
    page.on("response", async (res) => {
      const url = res.url();
      if (this.fromPack(url)) {
        if (res.status() >= 400) this.packErrors.push(`HTTP ${res.status()} for ${url}`);
        else this.packFilesLoaded.add(url.slice(url.indexOf(this.packPrefix) + this.packPrefix.length));
      }
      if (/\/prompt$/.test(new URL(url).pathname) && res.request().method() === "POST") {
        let body = null;
        try { body = await res.json(); } catch { /* not JSON */ }
        this.promptResponses.push({ status: res.status(), body });
      }
    });
    // No first-run tutorial/templates dialog over the canvas.
    await this.setSetting("Comfy.TutorialCompleted", true);
    await this.load();
  }

  async setSetting(id, value) {
    const res = await fetch(`${this.args.url}/settings/${encodeURIComponent(id)}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(value) });
    if (!res.ok) throw new Error(`POST /settings/${id} -> ${res.status}`);
  }

  async load() {
    await this.page.goto(this.args.url + "/");
    await this.page.waitForFunction(() => window.app?.graph && window.LiteGraph && window.app.extensionManager,
                                     null, { timeout: 90000 });
    // extensions are set up after the graph exists: wait for ours
    await this.page.waitForFunction(
      () => (window.app.extensions || []).some((e) => /lora.?state/i.test(e.name)), null, { timeout: 30000 });
    // Every toast shown through the frontend's toast API, kept in window.__e2eToasts with whether its text was
    // on the page a moment later (PrimeVue .p-toast up to 1.4x, another toast component in 1.5x: the text is
    // what both show). Toasts vanish after a few seconds, hence the record.
    await this.page.evaluate(() => {
      const toast = window.app.extensionManager.toast;
      if (!toast || toast.__e2eSpy) return;
      window.__e2eToasts = [];
      const add = toast.add.bind(toast);
      toast.add = (msg) => {
        const rec = { summary: String(msg?.summary ?? ""), detail: String(msg?.detail ?? ""), shown: false };
        window.__e2eToasts.push(rec);
        const check = (n) => {
          if (document.body.innerText.includes(rec.summary)) rec.shown = true;
          else if (n > 0) setTimeout(() => check(n - 1), 100);
        };
        setTimeout(() => check(20), 50);
        return add(msg);
      };
      toast.__e2eSpy = true;
    });
    await sleep(1000);
  }

  async close() {
    try { await this.browser?.close(); } catch { /* already gone */ }
  }

  async shot(name) {
    if (!this.args.out) return;
    fs.mkdirSync(this.args.out, { recursive: true });
    try { await this.page.screenshot({ path: path.join(this.args.out, `${this.scenario}-${name}.png`) }); }
    catch { /* page gone */ }
  }

  // ---------------------------------------------------------------- graph helpers
  async objectInfo(cls) {
    const res = await fetch(`${this.args.url}/object_info/${encodeURIComponent(cls)}`);
    return (await res.json())[cls];
  }

  // A test graph, made through LiteGraph: checkpoint -> [stack] -> Reconcile -> text encoders -> KSampler (64x64,
  // 2 steps) -> SaveLatent. The stack node is left with its defaults: its rows are built by clicking.
  async buildTestGraph({ withStack = true } = {}) {
    return await this.page.evaluate(async ({ withStack }) => {
      const { app, LiteGraph } = window;
      app.graph.clear();
      const add = (type, pos, values = {}, size) => {
        const node = LiteGraph.createNode(type);
        if (!node) throw new Error(`cannot create ${type}`);
        node.pos = pos;
        app.graph.add(node);
        for (const [name, value] of Object.entries(values)) {
          const w = node.widgets?.find((x) => x.name === name);
          if (!w) throw new Error(`${type} has no widget ${name}`);
          w.value = value;
        }
        if (size) node.setSize(size);
        return node;
      };
      const ckpt = add("CheckpointLoaderSimple", [20, 820], { ckpt_name: "tiny_a.safetensors" });
      const stack = withStack ? add("LoraStateStack", [20, 20]) : null;
      const rec = add("LoraStateReconcile", [720, 20]);
      const pos = add("CLIPTextEncode", [1120, 20], { text: "a photo of a cat" });
      const neg = add("CLIPTextEncode", [1120, 260], { text: "blurry" });
      const lat = add("EmptyLatentImage", [1120, 500], { width: 64, height: 64, batch_size: 1 });
      const ks = add("KSampler", [1500, 20], { seed: 1234, steps: 2, cfg: 2.0 });
      const save = add("SaveLatent", [1500, 400], { filename_prefix: "lora_state_e2e/latent" });
      const link = (a, out, b, input) => {
        const slot = b.findInputSlot(input);
        if (slot < 0) throw new Error(`${b.type} has no input ${input}`);
        a.connect(out, b, slot);
      };
      link(ckpt, 0, rec, "model");
      link(ckpt, 1, rec, "clip");
      if (stack) link(stack, 0, rec, "lora_stack");
      link(rec, 0, ks, "model");
      link(rec, 1, pos, "clip");
      link(rec, 1, neg, "clip");
      link(pos, 0, ks, "positive");
      link(neg, 0, ks, "negative");
      link(lat, 0, ks, "latent_image");
      link(ks, 0, save, "samples");
      if (stack) stack.setSize([Math.max(stack.size[0], 640), Math.max(stack.size[1], 760)]);
      app.canvas.ds.offset = [40, 90];
      app.canvas.ds.scale = 1;
      app.graph.setDirtyCanvas(true, true);
      return { stack: stack?.id ?? null, reconcile: rec.id };
    }, { withStack });
  }

  // Load a workflow file as a user would (app.loadGraphData), with its placeholder model names mapped to the test
  // assets and its sampling made cheap (64x64, 2 steps).
  async loadWorkflowFile(file) {
    const workflow = adaptWorkflow(JSON.parse(fs.readFileSync(file, "utf8")));
    await this.page.evaluate(async (wf) => {
      await window.app.loadGraphData(wf);
      window.app.canvas.ds.offset = [450, 20];
      window.app.canvas.ds.scale = 1;
      window.app.graph.setDirtyCanvas(true, true);
    }, workflow);
    await sleep(800);
    return workflow;
  }

  async historyIds() {
    const res = await fetch(`${this.args.url}/history?max_items=1000`);
    return new Set(Object.keys(await res.json()));
  }

  // Click the frontend's Queue/Run button; wait for the prompt to finish; return its history entry.
  async queueAndWait(timeoutMs = 180000) {
    const before = await this.historyIds();
    const responses = this.promptResponses.length;
    const button = this.page.locator(tid("queue-button")).first();
    if (await button.count()) await button.click();
    else {
      this.step("no queue-button in this frontend: app.queuePrompt(0, 1)");
      await this.page.evaluate(() => window.app.queuePrompt(0, 1));
    }
    const deadline = Date.now() + timeoutMs;
    let entry = null;
    while (Date.now() < deadline) {
      if (this.promptResponses.length > responses) {
        const r = this.promptResponses[responses];
        if (r.status !== 200) throw new Error(`the server refused the prompt (HTTP ${r.status}): ${JSON.stringify(r.body).slice(0, 1500)}`);
      }
      const res = await fetch(`${this.args.url}/history?max_items=1000`);
      const hist = await res.json();
      const fresh = Object.keys(hist).filter((k) => !before.has(k));
      if (fresh.length) {
        entry = hist[fresh[0]];
        if (entry.status?.completed || entry.status?.status_str === "error") break;
      }
      await sleep(500);
    }
    if (!entry) throw new Error(`no prompt finished within ${timeoutMs / 1000} s`);
    if (entry.status?.status_str !== "success") {
      const msgs = (entry.status?.messages || []).filter(([t]) => t === "execution_error");
      throw new Error(`the prompt failed: ${JSON.stringify(msgs).slice(0, 2000)}`);
    }
    await sleep(700);   // the websocket "executed" events reach the page
    return entry;
  }

  // ---------------------------------------------------------------- UI helpers
  // The stack editor of node `nodeId` (data-node-id when the editor carries it), else the first on the page.
  async stackEditor(nodeId) {
    const all = this.page.locator(tid(CONTRACT.stack));
    if (nodeId != null) {
      const byId = this.page.locator(`${tid(CONTRACT.stack)}[data-node-id="${nodeId}"]`);
      if (await byId.count()) return byId.first();
    }
    return all.first();
  }

  rows(editor) {
    return editor.locator(tid(CONTRACT.row));
  }

  async pickLora(row, name) {
    const input = row.locator(tid(CONTRACT.rowLora));
    await input.click();
    await input.fill("");
    const stem = name.split("/").pop().replace(/\.safetensors$/, "");
    await input.pressSequentially(stem, { delay: 20 });
    const option = this.page.locator(tid(CONTRACT.rowOption)).filter({ hasText: stem }).first();
    await option.waitFor({ state: "visible", timeout: 10000 });
    await option.click();
    await this.expectValue(input, name);
  }

  async expectValue(locator, want, timeout = 5000) {
    const deadline = Date.now() + timeout;
    let got;
    while (Date.now() < deadline) {
      got = await locator.inputValue().catch(() => locator.textContent());
      if (String(got).trim() === String(want)) return;
      await sleep(100);
    }
    throw new Error(`expected ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
  }

  async setStrength(row, value) {
    const input = row.locator(tid(CONTRACT.rowStrength));
    await input.click();
    await input.fill(String(value));
    await input.press("Enter");
    await input.blur().catch(() => {});
  }

  async readRows(editor) {
    const rows = this.rows(editor);
    const n = await rows.count();
    const out = [];
    for (let i = 0; i < n; i++) {
      const row = rows.nth(i);
      out.push({
        on: await row.locator(tid(CONTRACT.rowToggle)).isChecked(),
        lora: (await row.locator(tid(CONTRACT.rowLora)).inputValue()).trim(),
        strength: Number(await row.locator(tid(CONTRACT.rowStrength)).inputValue()),
      });
    }
    return out;
  }

  // The sidebar tab's button: class "<id>-tab-button" (frontends 1.2x-1.3x) or data-testid (1.4x+).
  sidebarButton(id = CONTRACT.sidebarTab) {
    return this.page.locator(`.${id}-tab-button, [data-testid="${id}-tab-button"]`).first();
  }

  async openSidebar() {
    const sidebar = this.page.locator(tid(CONTRACT.sidebar));
    if (await sidebar.isVisible().catch(() => false)) return sidebar;
    await this.sidebarButton().click();
    await sidebar.waitFor({ state: "visible", timeout: 15000 });
    return sidebar;
  }

  async closeSidebar() {
    const sidebar = this.page.locator(tid(CONTRACT.sidebar));
    if (!(await sidebar.isVisible().catch(() => false))) return;
    await this.sidebarButton().click();
    await sidebar.waitFor({ state: "hidden", timeout: 10000 }).catch(() => {});
  }

  // Wait for a toast matching `re` shown since toast number `since` (toastCount() before the action).
  async toastCount() {
    return await this.page.evaluate(() => window.__e2eToasts?.length ?? 0);
  }

  async waitToast(re, since = 0, timeout = 20000) {
    const deadline = Date.now() + timeout;
    let toasts = [];
    while (Date.now() < deadline) {
      toasts = (await this.page.evaluate(() => window.__e2eToasts || [])).slice(since);
      const hit = toasts.find((t) => re.test(`${t.summary}: ${t.detail}`));
      if (hit?.shown) return `${hit.summary}: ${hit.detail}`;
      if (hit && Date.now() > deadline - timeout / 2) throw new Error(`toast ${JSON.stringify(hit)} was not shown on the page`);
      await sleep(200);
    }
    throw new Error(`no toast ${re} within ${timeout / 1000} s; toasts: ${JSON.stringify(toasts)}`);
  }

  // Wait until every element of `locator` (at least one) matches `re`; returns their texts.
  async waitTextAll(locator, re, timeout = 20000) {
    const deadline = Date.now() + timeout;
    let texts = [];
    while (Date.now() < deadline) {
      texts = await locator.allTextContents().catch(() => []);
      if (texts.length && texts.every((t) => re.test(t))) return texts;
      await sleep(200);
    }
    throw new Error(`not every element matches ${re} within ${timeout / 1000} s; got ${JSON.stringify(texts).slice(0, 800)}`);
  }

  async waitText(locator, re, timeout = 20000) {
    const deadline = Date.now() + timeout;
    let text = "";
    while (Date.now() < deadline) {
      text = (await locator.allTextContents().catch(() => [])).join("\n");
      if (re.test(text)) return text;
      await sleep(200);
    }
    throw new Error(`text ${re} not found within ${timeout / 1000} s; got ${JSON.stringify(text.slice(0, 600))}`);
  }

  async serializedStack(nodeId) {
    return await this.page.evaluate((id) => {
      const wf = window.app.graph.serialize();
      const n = wf.nodes.find((x) => x.id === id) || wf.nodes.find((x) => x.type === "LoraStateStack");
      return n ? { widgets_values: n.widgets_values, properties: n.properties } : null;
    }, nodeId);
  }
}

// Map placeholder names and make sampling cheap; keeps everything else as the file has it.
function adaptWorkflow(wf) {
  const mapString = (s) => {
    for (const [from, to] of Object.entries(NAME_MAP)) s = s.split(from).join(to);
    return s;
  };
  const mapValue = (v) => (typeof v === "string" ? mapString(v)
    : Array.isArray(v) ? v.map(mapValue)
    : v && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, mapValue(x)])) : v);
  const nodes = [...(wf.nodes || []), ...((wf.definitions?.subgraphs || []).flatMap((g) => g.nodes || []))];
  for (const node of nodes) {
    if (node.widgets_values !== undefined) node.widgets_values = mapValue(node.widgets_values);
    if (node.type === "EmptyLatentImage" && Array.isArray(node.widgets_values)) {
      node.widgets_values[0] = 64;
      node.widgets_values[1] = 64;
    }
    if (node.type === "KSampler" && Array.isArray(node.widgets_values)) node.widgets_values[2] = 2;
  }
  return wf;
}

// ================================================================== scenarios
const SCENARIOS = {};

// The page loads, the pack's script is served and runs, its nodes are registered, its sidebar tab opens.
SCENARIOS.smoke = async (run) => {
  const { page } = run;
  const info = await page.evaluate(() => ({
    version: window.__COMFYUI_FRONTEND_VERSION__ || null,
    types: Object.keys(window.LiteGraph.registered_node_types).filter((t) => t.startsWith("LoraState")),
    extensions: (window.app.extensions || []).map((e) => e.name).filter((n) => /lora.?state/i.test(n)),
    sidebarApi: typeof window.app.extensionManager?.registerSidebarTab === "function",
  }));
  run.step("frontend", info.version);
  const files = [...run.packFilesLoaded];
  if (!files.some((f) => f.endsWith(".js"))) throw new Error(`no script of the pack was loaded (${run.packPrefix}*)`);
  run.step("pack files loaded", files.sort().join(", "));
  for (const t of ["LoraStateStack", "LoraStateReconcile", "LoraStateReset"]) {
    if (!info.types.includes(t)) throw new Error(`node type ${t} not registered (have ${info.types})`);
  }
  run.step("node types registered", info.types.join(", "));
  if (!info.extensions.length) throw new Error("no LoRA State extension registered");
  run.step("extensions", info.extensions.join(", "));
  // the sidebar tab: clicked open
  const tabs = await page.evaluate(() => {
    const m = window.app.extensionManager;
    const list = m.sidebarTab?.sidebarTabs ?? m.getSidebarTabs?.() ?? [];
    return (Array.isArray(list) ? list : list.value || []).map((t) => t.id);
  });
  if (tabs.includes(CONTRACT.sidebarTab)) {
    await run.openSidebar();
    await run.waitText(page.locator(tid(CONTRACT.sidebar)), /LoRA State/i);
    run.step("sidebar tab opens", `#${CONTRACT.sidebarTab}, ${tid(CONTRACT.sidebar)}`);
  } else if (tabs.includes("lora_state")) {
    // the sidebar before the DOM contract (tab id "lora_state", no data-testid)
    await run.sidebarButton("lora_state").click();
    await run.waitText(page.locator(".sidebar-content-container, .side-bar-panel, body"), /No managed model yet|Refresh/);
    run.step("sidebar tab opens (legacy tab id lora_state, not the contract's lora-state)");
  } else {
    throw new Error(`no LoRA State sidebar tab; tabs: ${tabs}`);
  }
  // a node added from the pack has its editor/widgets without errors
  const ids = await run.buildTestGraph();
  run.step("test graph built", JSON.stringify(ids));
  await run.queueAndWait();
  run.step("queued (LoRA Stack as created) and executed");
  await run.shot("end");
};

// The whole user story: 7 rows by clicking, toggle, re-weight, queue, status, ledger, reload, delete, toast.
SCENARIOS.stack = async (run) => {
  const { page } = run;
  await run.setSetting("LoraState.Toasts", true).catch(() => {});
  const ids = await run.buildTestGraph();
  run.step("graph: checkpoint, LoRA Stack, LoRA Reconcile, sampler", JSON.stringify(ids));
  const editor = await run.stackEditor(ids.stack);
  await editor.waitFor({ state: "visible", timeout: 15000 });
  const addRow = editor.locator(tid(CONTRACT.addRow));
  // build 7 rows by clicking
  for (let i = 0; i < LORAS.length; i++) {
    const before = await run.rows(editor).count();
    if (before <= i) {
      await addRow.click();
      await run.rows(editor).nth(i).waitFor({ state: "visible" });
    }
    await run.pickLora(run.rows(editor).nth(i), LORAS[i]);
  }
  if ((await run.rows(editor).count()) !== 7) throw new Error(`expected 7 rows, have ${await run.rows(editor).count()}`);
  run.step("7 rows built by clicking", LORAS.join(", "));
  // toggle row 2 off, re-weight rows 1 and 4
  const row2 = run.rows(editor).nth(1);
  await row2.locator(tid(CONTRACT.rowToggle)).click();
  if (await row2.locator(tid(CONTRACT.rowToggle)).isChecked()) throw new Error("row 2 is still on after its toggle was clicked");
  await run.setStrength(run.rows(editor).nth(0), 0.75);
  await run.setStrength(run.rows(editor).nth(3), -0.5);
  const built = await run.readRows(editor);
  run.step("toggled row 2 off, strengths 0.75 and -0.5", JSON.stringify(built));
  const expectOn = built.filter((r) => r.on).length;
  if (expectOn !== 6) throw new Error(`expected 6 rows on, have ${expectOn}`);
  if (built[0].strength !== 0.75 || built[3].strength !== -0.5) throw new Error(`strengths not taken: ${JSON.stringify(built)}`);
  run.step("serialized", JSON.stringify(await run.serializedStack(ids.stack)).slice(0, 600));

  // queue; status on LoRA Reconcile
  await run.queueAndWait();
  run.step("queued and executed");
  const status = page.locator(tid(CONTRACT.status)).first();
  const statusText = await run.waitText(status, new RegExp(`\\b${expectOn} LoRAs\\b`));
  run.step("status on LoRA Reconcile", statusText.replace(/\s+/g, " ").slice(0, 200));

  // ledger in the sidebar
  const sidebar = await run.openSidebar();
  const ledger = await run.waitText(sidebar.locator(tid(CONTRACT.model)), /kohya_lora_a/);
  for (const [i, name] of LORAS.entries()) {
    const listed = ledger.includes(name.split("/").pop());
    if ((i !== 1) !== listed) throw new Error(`ledger ${listed ? "lists" : "misses"} ${name}: ${ledger.slice(0, 800)}`);
  }
  run.step("ledger in the sidebar lists the 6 enabled LoRAs", ledger.replace(/\s+/g, " ").slice(0, 300));
  await run.closeSidebar();

  // reload: rows intact
  await sleep(1500);   // the workflow is persisted on change (debounced)
  await page.reload();
  await run.load();
  const editor2 = await run.stackEditor(null);
  await editor2.waitFor({ state: "visible", timeout: 20000 });
  const reloaded = await run.readRows(editor2);
  if (JSON.stringify(reloaded) !== JSON.stringify(built)) {
    throw new Error(`rows changed across reload:\n before ${JSON.stringify(built)}\n after  ${JSON.stringify(reloaded)}`);
  }
  run.step("reload: the 7 rows are intact");

  // delete the stack node (select it, Delete), queue again: toast, ledger empty
  const stackId = await page.evaluate(() => window.app.graph._nodes.find((n) => n.type === "LoraStateStack")?.id);
  await page.evaluate((id) => {
    const node = window.app.graph.getNodeById(id);
    window.app.canvas.selectNode(node);
  }, stackId);
  await page.locator("canvas#graph-canvas, #graph-canvas").first().focus().catch(() => {});
  await page.keyboard.press("Delete");
  await sleep(300);
  const gone = await page.evaluate((id) => !window.app.graph.getNodeById(id), stackId);
  if (!gone) {
    run.step("Delete key did not remove the node (focus); removing it through the graph API");
    await page.evaluate((id) => window.app.graph.remove(window.app.graph.getNodeById(id)), stackId);
  }
  run.step("LoRA Stack node deleted");
  const toastsBefore = await run.toastCount();
  await run.queueAndWait();
  run.step("queued again");
  const toast = await run.waitToast(/6 LoRAs removed from/i, toastsBefore);
  run.step("toast", toast.replace(/\s+/g, " ").slice(0, 200));
  const sidebar2 = await run.openSidebar();
  const empty = sidebar2.locator(tid(CONTRACT.empty));
  if (await empty.count()) {
    run.step("ledger empty", (await empty.first().textContent()).trim().slice(0, 200));
  } else {
    // every model's card: no LoRA listed (its "last change" line may name the removed ones)
    const cards = await run.waitTextAll(sidebar2.locator(tid(CONTRACT.model)), /none \(clean weights\)/);
    for (const text of cards) {
      const listed = text.split(/last change/i)[0];
      const left = LORAS.filter((n) => listed.includes(n.split("/").pop()));
      if (left.length) throw new Error(`ledger still lists ${left}: ${text.slice(0, 800)}`);
    }
    run.step(`ledger lists no LoRA on its ${cards.length} models`, cards.map((t) => t.replace(/\s+/g, " ").slice(0, 120)).join(" | "));
  }
};

// Row editing beyond the stack scenario: duplicate, remove, move up/down, the header toggle, separate clip strength;
// the saved rows and the run follow; the status fits inside LoRA Reconcile at the size it has.
SCENARIOS.editing = async (run) => {
  const { page } = run;
  const ids = await run.buildTestGraph();
  const editor = await run.stackEditor(ids.stack);
  await editor.waitFor({ state: "visible", timeout: 15000 });
  const names = ["kohya_lora_a.safetensors", "kohya_lora_b.safetensors", "locon_conv.safetensors"];
  for (let i = 0; i < names.length; i++) {
    if ((await run.rows(editor).count()) <= i) await editor.locator(tid(CONTRACT.addRow)).click();
    await run.pickLora(run.rows(editor).nth(i), names[i]);
  }
  const order = async () => (await run.readRows(editor)).map((r) => r.lora.replace(".safetensors", ""));
  const expectOrder = async (want, what) => {
    const got = await order();
    if (JSON.stringify(got) !== JSON.stringify(want)) throw new Error(`${what}: rows ${got}, want ${want}`);
    run.step(what, got.join(", "));
  };
  await expectOrder(["kohya_lora_a", "kohya_lora_b", "locon_conv"], "3 rows picked");
  await run.rows(editor).nth(0).locator(tid(CONTRACT.rowDuplicate)).click();
  await expectOrder(["kohya_lora_a", "kohya_lora_a", "kohya_lora_b", "locon_conv"], "row 1 duplicated");
  await run.rows(editor).nth(1).locator(tid(CONTRACT.rowRemove)).click();
  await expectOrder(["kohya_lora_a", "kohya_lora_b", "locon_conv"], "row 2 removed");
  await run.rows(editor).nth(0).locator(tid(CONTRACT.rowDown)).click();
  await expectOrder(["kohya_lora_b", "kohya_lora_a", "locon_conv"], "row 1 moved down");
  await run.rows(editor).nth(2).locator(tid(CONTRACT.rowUp)).click();
  await expectOrder(["kohya_lora_b", "locon_conv", "kohya_lora_a"], "row 3 moved up");
  // header toggle: all off, then all on
  const toggleAll = editor.locator(tid(CONTRACT.toggleAll));
  await toggleAll.click();
  if ((await run.readRows(editor)).some((r) => r.on)) throw new Error("header toggle left a row on");
  await toggleAll.click();
  if (!(await run.readRows(editor)).every((r) => r.on)) throw new Error("header toggle left a row off");
  run.step("header toggle: all off, all on");
  // separate clip strength: a clip field per row
  if (await editor.locator(tid(CONTRACT.rowStrengthClip)).count()) throw new Error("clip strength shown before asked for");
  await editor.locator(tid(CONTRACT.clipSeparate)).click();
  await editor.locator(tid(CONTRACT.rowStrengthClip)).nth(2).waitFor({ state: "visible" });
  const clipInput = run.rows(editor).nth(0).locator(tid(CONTRACT.rowStrengthClip));
  await clipInput.click();
  await clipInput.fill("0.3");
  await clipInput.press("Enter");
  await run.setStrength(run.rows(editor).nth(0), 0.9);
  run.step("separate clip strength on; row 1: model 0.9, clip 0.3");
  const saved = await run.serializedStack(ids.stack);
  const rowsJson = JSON.parse(saved.widgets_values.find((v) => typeof v === "string" && v.trim().startsWith("[")));
  const want = [["kohya_lora_b.safetensors", 0.9, 0.3], ["locon_conv.safetensors", 1, null], ["kohya_lora_a.safetensors", 1, null]];
  const got = rowsJson.map((r) => [r.lora, r.strength, r.strength_clip ?? null]);
  // rows 2-3 may carry their model strength as clip strength once the clip fields exist
  const same = want.every(([l, sm, sc], i) => got[i] && got[i][0] === l && got[i][1] === sm && (got[i][2] === sc || (sc === null && got[i][2] === sm)));
  if (got.length !== 3 || !same || !saved.widgets_values.includes(true)) {
    throw new Error(`saved rows ${JSON.stringify(saved.widgets_values).slice(0, 600)}, want ${JSON.stringify(want)} and clip separate on`);
  }
  run.step("saved rows", JSON.stringify(got));
  await run.queueAndWait();
  const status = page.locator(tid(CONTRACT.status)).first();
  const text = await run.waitText(status, /\b3 LoRAs\b/);
  run.step("queued; status", text.replace(/\s+/g, " ").slice(0, 160));
  const sidebar = await run.openSidebar();
  const cards = await run.waitTextAll(sidebar.locator(tid(CONTRACT.model)), /kohya_lora_b/);
  const clipCard = cards.find((t) => /^\s*clip/i.test(t) || /CLIP/.test(t.slice(0, 40)));
  if (!clipCard || !/kohya_lora_b\.safetensors\s*×0\.3\b/.test(clipCard)) {
    throw new Error(`the clip's ledger should list kohya_lora_b ×0.3: ${JSON.stringify(cards).slice(0, 800)}`);
  }
  if (!cards.some((t) => /kohya_lora_b\.safetensors\s*×0\.9\b/.test(t))) throw new Error(`no model ×0.9 in ${cards}`);
  run.step("ledger: model ×0.9, clip ×0.3 for kohya_lora_b");
  await run.closeSidebar();
  // "Save (API)": the prompt carries the rows as the node's `rows` input
  const api = await page.evaluate(async (id) => {
    const p = await window.app.graphToPrompt();
    return p.output[String(id)]?.inputs;
  }, ids.stack);
  const apiRows = JSON.parse(api?.rows ?? "null");
  if (!Array.isArray(apiRows) || JSON.stringify(apiRows) !== JSON.stringify(rowsJson) || api.clip_strength_separate !== true) {
    throw new Error(`API prompt of the stack: ${JSON.stringify(api).slice(0, 600)}; want rows ${JSON.stringify(rowsJson)}`);
  }
  run.step("API format: rows input as saved, clip_strength_separate true");
  // undo: a removed row comes back with Ctrl+Z
  const beforeRemove = await order();
  await run.rows(editor).nth(2).locator(tid(CONTRACT.rowRemove)).click();
  await expectOrder(beforeRemove.slice(0, 2), "row 3 removed");
  await page.mouse.click(1000, 900);     // empty canvas: keyboard focus off the editor's inputs
  await page.keyboard.press("Control+KeyZ");
  const deadlineUndo = Date.now() + 5000;
  while ((await run.rows(editor).count()) !== 3 && Date.now() < deadlineUndo) await sleep(100);
  const editorAfterUndo = await run.stackEditor(ids.stack);
  const afterUndo = (await run.readRows(editorAfterUndo)).map((r) => r.lora.replace(".safetensors", ""));
  if (JSON.stringify(afterUndo) !== JSON.stringify(beforeRemove)) throw new Error(`after Ctrl+Z: ${afterUndo}, want ${beforeRemove}`);
  run.step("Ctrl+Z brings the removed row back", afterUndo.join(", "));
  // copy/paste: the pasted stack has the same rows
  await page.evaluate((id) => {
    const { app } = window;
    app.canvas.deselectAll?.();
    app.canvas.selectNode(app.graph.getNodeById(id));
  }, ids.stack);
  await page.keyboard.press("Control+KeyC");
  await page.mouse.move(900, 600);
  await page.keyboard.press("Control+KeyV");
  await sleep(800);
  const copies = await page.evaluate(() => window.app.graph.serialize().nodes.filter((n) => n.type === "LoraStateStack")
    .map((n) => n.widgets_values.find((v) => typeof v === "string" && v.trim().startsWith("["))));
  if (copies.length !== 2 || copies[0] !== copies[1]) throw new Error(`after copy/paste: ${JSON.stringify(copies).slice(0, 800)}`);
  run.step("copy/paste: the pasted LoRA Stack has the same rows");
  await page.keyboard.press("Control+KeyZ");      // paste undone: one stack again
  // the status is readable where it is: inside LoRA Reconcile's box on the canvas, not cut off
  await sleep(500);
  const fit = await page.evaluate(({ id, sel }) => {
    const { app, LiteGraph } = window;
    const node = app.graph.getNodeById(id);
    const ds = app.canvas.ds;
    const rect = app.canvas.canvas.getBoundingClientRect();
    const bottom = rect.top + (node.pos[1] + node.size[1] + ds.offset[1]) * ds.scale;
    const el = document.querySelector(sel);
    const r = el.getBoundingClientRect();
    return { nodeBottom: Math.round(bottom), statusBottom: Math.round(r.bottom), scroll: el.scrollHeight, client: el.clientHeight,
             size: [...node.size] };
  }, { id: ids.reconcile, sel: tid(CONTRACT.status) });
  if (fit.statusBottom > fit.nodeBottom + 2 || fit.scroll > fit.client + 2) {
    throw new Error(`LoRA Reconcile's status is cut off at the node's size ${fit.size}: ${JSON.stringify(fit)}`);
  }
  run.step("status fits inside LoRA Reconcile", JSON.stringify(fit));
};

// The sidebar's actions: Verify (toast), toasts silenced by the setting, Reset LoRA State by its keybinding
// (confirmed): the ledger empties.
SCENARIOS.sidebar = async (run) => {
  const { page } = run;
  page.on("dialog", (d) => d.accept());
  const ids = await run.buildTestGraph();
  const editor = await run.stackEditor(ids.stack);
  await editor.waitFor({ state: "visible", timeout: 15000 });
  for (const [i, name] of ["kohya_lora_a.safetensors", "lokr.safetensors"].entries()) {
    if ((await run.rows(editor).count()) <= i) await editor.locator(tid(CONTRACT.addRow)).click();
    await run.pickLora(run.rows(editor).nth(i), name);
  }
  await run.queueAndWait();
  const sidebar = await run.openSidebar();
  await run.waitText(sidebar.locator(tid(CONTRACT.model)), /lokr/);
  let since = await run.toastCount();
  await sidebar.locator(tid(CONTRACT.verify)).first().click();
  run.step("Verify", await run.waitToast(/verified/i, since));
  // toasts off: removing a LoRA says nothing
  await page.evaluate(async () => await window.app.extensionManager.setting.set("LoraState.Toasts", false));
  await run.rows(editor).nth(1).locator(tid(CONTRACT.rowRemove)).click();
  since = await run.toastCount();
  await run.queueAndWait();
  await sleep(3000);
  const silent = (await page.evaluate(() => window.__e2eToasts)).slice(since).filter((t) => /removed/i.test(t.summary));
  if (silent.length) throw new Error(`toast shown with LoraState.Toasts off: ${JSON.stringify(silent)}`);
  // each card's LoRA list (the text before its "last change" line) no longer names lokr
  const deadline = Date.now() + 20000;
  let listed;
  do {
    listed = (await sidebar.locator(tid(CONTRACT.model)).allTextContents()).map((t) => t.split(/last change/i)[0]);
    if (listed.length && !listed.some((t) => t.includes("lokr"))) break;
    await sleep(200);
  } while (Date.now() < deadline);
  if (listed.some((t) => t.includes("lokr"))) throw new Error(`lokr still in the ledger: ${listed}`);
  run.step("LoraState.Toasts off: no toast for the removed LoRA");
  await page.evaluate(async () => await window.app.extensionManager.setting.set("LoraState.Toasts", true));
  // Reset LoRA State: its keybinding (Alt+Shift+R), confirmed
  await page.locator("#graph-canvas, canvas").first().click({ position: { x: 900, y: 700 } }).catch(() => {});
  since = await run.toastCount();
  await page.keyboard.press("Alt+Shift+KeyR");
  const reset = await run.waitToast(/reset/i, since).catch(async (err) => {
    run.step("keybinding gave no toast; running the command LoraState.ResetAll");
    await page.evaluate(() => window.app.extensionManager.command.execute("LoraState.ResetAll"));
    return await run.waitToast(/reset/i, since);
  });
  run.step("Reset LoRA State", reset);
  const cards = await run.waitTextAll(sidebar.locator(tid(CONTRACT.model)), /none \(clean weights\)/)
    .catch(async () => [await sidebar.locator(tid(CONTRACT.empty)).textContent()]);
  run.step("ledger after reset", cards.map((t) => t.replace(/\s+/g, " ").slice(0, 100)).join(" | "));
};

// Every example workflow, and one saved with the 5-slot node, loads (old stacks become rows) and queues.
SCENARIOS.workflows = async (run) => {
  const files = [
    ...fs.readdirSync(path.join(REPO, "example_workflows")).filter((f) => f.endsWith(".json")).sort()
      .map((f) => path.join(REPO, "example_workflows", f)),
    path.join(HERE, "fixtures", "old_5slot_stack.json"),
  ];
  for (const file of files) {
    const name = path.relative(REPO, file);
    const wf = await run.loadWorkflowFile(file);
    const stacks = wf.nodes.filter((n) => n.type === "LoraStateStack");
    for (const node of stacks) {
      const editor = await run.stackEditor(node.id);
      await editor.waitFor({ state: "visible", timeout: 15000 });
      const rows = await run.readRows(editor);
      // expected rows: the LoRAs of the 5 numbered slots (workflows saved by the 5-slot node), then the saved rows
      const wv = node.widgets_values || [];
      const slots = [0, 1, 2, 3, 4].map((i) => ({ lora: wv[4 * i], strength: wv[4 * i + 1], on: wv[4 * i + 3] }))
        .filter((x) => typeof x.lora === "string" && x.lora !== "None" && x.lora !== "");
      const saved = typeof wv[21] === "string" ? JSON.parse(wv[21]) : [];
      const want = [...slots, ...saved.map((r) => ({ lora: r.lora, strength: r.strength ?? 1, on: r.on ?? true }))];
      const got = rows.map((r) => ({ lora: r.lora, strength: r.strength, on: r.on }));
      if (JSON.stringify(got) !== JSON.stringify(want)) {
        throw new Error(`${name}: stack shows ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
      }
      run.step(`${name}: ${slots.length ? `5-slot stack converted to ${rows.length} rows` : `stack with ${rows.length} rows`}`,
               JSON.stringify(got));
      // clip strengths survive the conversion: the saved rows carry each slot's own clip strength
      const serialized = await run.serializedStack(node.id);
      const savedRows = JSON.parse(serialized.widgets_values.find((v) => typeof v === "string" && v.trim().startsWith("[")) || "[]");
      slots.forEach((slot, i) => {
        const clip = wv[4 * [0, 1, 2, 3, 4].filter((k) => typeof wv[4 * k] === "string" && wv[4 * k] !== "None")[i] + 2];
        const row = savedRows[i] || {};
        if ((row.strength_clip ?? row.strength) !== clip) {
          throw new Error(`${name}: slot ${i + 1}'s clip strength ${clip} became ${JSON.stringify(row)}`);
        }
      });
      run.step(`${name}: saved as`, JSON.stringify(serialized?.widgets_values).slice(0, 300));
    }
    const expectLoras = stacks.length === 1
      ? (await run.readRows(await run.stackEditor(stacks[0].id))).filter((r) => r.on && r.lora !== "None").length : null;
    await run.queueAndWait();
    run.step(`${name}: queued and executed`);
    if (wf.nodes.some((n) => n.type === "LoraStateReconcile")) {
      const re = expectLoras == null ? /\bLoRAs?\b/ : new RegExp(`\\b${expectLoras} LoRAs?\\b`);
      const text = await run.waitText(run.page.locator(tid(CONTRACT.status)).first(), re);
      run.step(`${name}: status`, text.replace(/\s+/g, " ").slice(0, 160));
    }
  }
};

// Subgraphs and trigger words: 3 rows (one of them e2e_support.TRIGGER_LORA, whose safetensors header carries
// trigger metadata) built by clicking; the row shows its trigger words; the stack's `trigger_words` output feeds a
// test-only output node (tests/e2e/show_text), whose history entry must carry the words. Then the LoRA Stack node
// is converted into a subgraph (command Comfy.Graph.ConvertToSubgraph, frontend 1.20.1+): the inner node's rows,
// the API prompt and a second run (status, trigger words) are the same.
const TRIGGER_LORA = "e2e_trigger_lora.safetensors";       // tests/e2e/e2e_support.py TRIGGER_LORA / TRIGGER_WORDS
const UNMATCHED_LORA = "e2e_unmatched_lora.safetensors";   // tests/e2e/e2e_support.py UNMATCHED_LORA
const TRIGGER_WORDS = "e2ezebra, striped coat";
SCENARIOS.subgraph_triggers = async (run) => {
  const { page } = run;
  const ids = await run.buildTestGraph();
  ids.show = await page.evaluate((stackId) => {
    const { app, LiteGraph } = window;
    const stack = app.graph.getNodeById(stackId);
    const show = LiteGraph.createNode("E2EShowText");
    if (!show) throw new Error("cannot create E2EShowText (tests/e2e/show_text not loaded?)");
    show.pos = [720, 520];
    app.graph.add(show);
    const out = stack.findOutputSlot("trigger_words");
    if (out < 0) throw new Error(`LoRA Stack has no trigger_words output: ${stack.outputs.map((o) => o.name)}`);
    stack.connect(out, show, show.findInputSlot("text"));
    app.graph.setDirtyCanvas(true, true);
    return show.id;
  }, ids.stack);
  const editor = await run.stackEditor(ids.stack);
  await editor.waitFor({ state: "visible", timeout: 15000 });
  const names = ["kohya_lora_a.safetensors", TRIGGER_LORA, "locon_conv.safetensors"];
  for (let i = 0; i < names.length; i++) {
    if ((await run.rows(editor).count()) <= i) {
      await editor.locator(tid(CONTRACT.addRow)).click();
      await run.rows(editor).nth(i).waitFor({ state: "visible" });
    }
    await run.pickLora(run.rows(editor).nth(i), names[i]);
  }
  const built = await run.readRows(editor);
  run.step("3 rows built by clicking", JSON.stringify(built));
  // the row of the LoRA with metadata shows its words; the others none
  const words = await run.waitText(run.rows(editor).nth(1).locator(tid(CONTRACT.rowTriggers)), /e2ezebra/);
  if (!/striped coat/.test(words)) throw new Error(`row 2's trigger words: ${JSON.stringify(words)}`);
  const others = [await run.rows(editor).nth(0).locator(tid(CONTRACT.rowTriggers)).textContent(),
                  await run.rows(editor).nth(2).locator(tid(CONTRACT.rowTriggers)).textContent()];
  if (others.some((t) => /e2ezebra/.test(t || ""))) throw new Error(`other rows show trigger words: ${JSON.stringify(others)}`);
  run.step("row-trigger-words of row 2", words.trim());
  const shownText = (entry, id) => entry.outputs?.[String(id)]?.text?.[0];
  let entry = await run.queueAndWait();
  if (shownText(entry, ids.show) !== TRIGGER_WORDS) {
    throw new Error(`trigger_words output reached the show node as ${JSON.stringify(entry.outputs?.[String(ids.show)])}, want ${JSON.stringify(TRIGGER_WORDS)}`);
  }
  run.step("queued: trigger_words output", shownText(entry, ids.show));
  const status = page.locator(tid(CONTRACT.status)).first();
  run.step("status", (await run.waitText(status, /\b3 LoRAs\b/)).replace(/\s+/g, " ").slice(0, 160));
  // a changed strength, so that the run after the conversion is not served from ComfyUI's cache
  await run.setStrength(run.rows(editor).nth(2), 0.5);
  const rowsBefore = await page.evaluate((id) => window.app.graph.getNodeById(id).widgets.find((w) => w.name === "rows").value, ids.stack);
  if (JSON.parse(rowsBefore)[2]?.strength !== 0.5) throw new Error(`row 3 re-weighted to 0.5: ${rowsBefore}`);
  run.step("row 3 re-weighted to 0.5");

  // convert the LoRA Stack node into a subgraph through the frontend's command
  const conv = await page.evaluate(async (id) => {
    const { app } = window;
    const cmds = app.extensionManager.command;
    const known = (cmds.commands || []).map((c) => c.id);
    if (known.length && !known.includes("Comfy.Graph.ConvertToSubgraph")) return { missing: true };
    app.canvas.deselectAll?.();
    app.canvas.selectNode(app.graph.getNodeById(id));
    await cmds.execute("Comfy.Graph.ConvertToSubgraph");
    const sg = (app.graph._nodes || app.graph.nodes).find((n) => n.subgraph && (n.subgraph._nodes || n.subgraph.nodes)
      .some((x) => x.type === "LoraStateStack"));
    if (!sg) return { failed: (app.graph._nodes || []).map((n) => n.type) };
    const inner = (sg.subgraph._nodes || sg.subgraph.nodes).find((x) => x.type === "LoraStateStack");
    return { subgraphNode: sg.id, innerId: inner.id, rows: inner.widgets.find((w) => w.name === "rows").value,
             stackLeft: (app.graph._nodes || app.graph.nodes).some((n) => n.type === "LoraStateStack") };
  }, ids.stack);
  const version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ || "?");
  if (conv.missing) {
    run.step(`SKIPPED subgraph part: frontend ${version} has no command Comfy.Graph.ConvertToSubgraph`);
    return;
  }
  if (conv.failed) throw new Error(`no subgraph node holds the LoRA Stack after the conversion; root nodes ${conv.failed}`);
  if (conv.stackLeft) throw new Error("a LoRA Stack node is still in the root graph after the conversion");
  if (conv.rows !== rowsBefore) throw new Error(`rows inside the subgraph: ${conv.rows}\nbefore: ${rowsBefore}`);
  run.step(`converted to subgraph node ${conv.subgraphNode} (frontend ${version}); inner LoRA Stack ${conv.innerId} rows intact`, conv.rows);
  // the API prompt carries the rows of the inner node
  const api = await page.evaluate(async () => {
    const p = await window.app.graphToPrompt();
    return Object.entries(p.output).filter(([, n]) => n.class_type === "LoraStateStack").map(([k, n]) => [k, n.inputs.rows]);
  });
  if (api.length !== 1 || api[0][1] !== rowsBefore) throw new Error(`API prompt's LoRA Stack nodes: ${JSON.stringify(api)}`);
  run.step(`API prompt: LoRA Stack ${api[0][0]} carries the rows`);
  // queued again: the status is rendered afresh with the same count, the words still arrive
  await page.evaluate((sel) => { document.querySelector(sel).textContent = "(e2e: cleared)"; }, tid(CONTRACT.status));
  entry = await run.queueAndWait();
  if (!entry.outputs?.[String(ids.reconcile)]) throw new Error(`LoRA Reconcile did not run: outputs ${Object.keys(entry.outputs || {})}`);
  if (shownText(entry, ids.show) !== TRIGGER_WORDS) {
    throw new Error(`after the conversion the show node got ${JSON.stringify(entry.outputs?.[String(ids.show)])}`);
  }
  run.step("queued with the subgraph: trigger_words output", shownText(entry, ids.show));
  run.step("status", (await run.waitText(status, /\b3 LoRAs\b/)).replace(/\s+/g, " ").slice(0, 160));
};

// A LoRA part of whose modules match nothing in the model: the Reconcile status flags it (⚠ line), and so does the
// row naming it, while the rest of the stack is applied.
SCENARIOS.flagged = async (run) => {
  const { page } = run;
  const ids = await run.buildTestGraph();
  const editor = await run.stackEditor(ids.stack);
  await editor.waitFor({ state: "visible", timeout: 15000 });
  const names = ["locon_conv.safetensors", UNMATCHED_LORA];
  for (let i = 0; i < names.length; i++) {
    if ((await run.rows(editor).count()) <= i) {
      await editor.locator(tid(CONTRACT.addRow)).click();
      await run.rows(editor).nth(i).waitFor({ state: "visible" });
    }
    await run.pickLora(run.rows(editor).nth(i), names[i]);
  }
  run.step("2 rows built by clicking", JSON.stringify(await run.readRows(editor)));
  await run.queueAndWait();
  const status = page.locator(tid(CONTRACT.status)).first();
  const text = (await run.waitText(status, /⚠/)).replace(/\s+/g, " ");
  if (!text.includes(UNMATCHED_LORA) || !/\b2 LoRAs\b/.test(text)) {
    throw new Error(`status should apply 2 LoRAs and flag ${UNMATCHED_LORA}: ${JSON.stringify(text)}`);
  }
  run.step("status flags the file", text.slice(0, 240));
  const warning = await run.waitText(run.rows(editor).nth(1).locator('[data-testid="row-warning"]'), /⚠/);
  if ((await run.rows(editor).nth(0).locator('[data-testid="row-warning"]').count()) !== 0) {
    throw new Error("the row of a LoRA that fits the model shows a warning");
  }
  run.step("the row naming it shows", warning.trim());
};

// README screenshots (scripts/screenshots.sh): a stack with several rows, one run, then the stack node, the
// Reconcile status and the sidebar as element screenshots into --shots.
SCENARIOS.screenshots = async (run) => {
  const { page } = run;
  const dir = run.args.shots;
  if (!dir) throw new Error("--shots DIR is required");
  fs.mkdirSync(dir, { recursive: true });
  const ids = await run.buildTestGraph();
  const editor = await run.stackEditor(ids.stack);
  await editor.waitFor({ state: "visible" });
  const picks = [["kohya_lora_a.safetensors", 0.8], ["locon_conv.safetensors", 0.6], ["loha.safetensors", 1.0],
                 ["sub/nested_lora.safetensors", 0.35]];
  for (let i = 0; i < picks.length; i++) {
    if ((await run.rows(editor).count()) <= i) await editor.locator(tid(CONTRACT.addRow)).click();
    const row = run.rows(editor).nth(i);
    await run.pickLora(row, picks[i][0]);
    await run.setStrength(row, picks[i][1]);
  }
  await run.rows(editor).nth(2).locator(tid(CONTRACT.rowToggle)).click();
  await run.queueAndWait();
  const status = page.locator(tid(CONTRACT.status)).first();
  await run.waitText(status, /LoRAs?/);
  // as a user would: move the graph below the floating toolbar, fit each node to its content
  const sizes = await page.evaluate(({ stack, reconcile }) => {
    const { app } = window;
    const out = {};
    for (const [id, width] of [[stack, 560], [reconcile, 460]]) {
      const node = app.graph.getNodeById(id);
      const min = node.computeSize();
      node.setSize([Math.max(width, min[0]), min[1]]);
      out[id] = [...node.size];
    }
    app.graph.getNodeById(reconcile).pos = [640, 20];
    app.canvas.ds.offset = [40, 150];
    app.graph.setDirtyCanvas(true, true);
    return out;
  }, ids);
  run.step("node sizes", JSON.stringify(sizes));
  await sleep(800);
  await nodeShot(page, ids.stack, path.join(dir, "stack.png"));
  await nodeShot(page, ids.reconcile, path.join(dir, "status.png"));
  const sidebar = await run.openSidebar();
  await run.waitText(sidebar.locator(tid(CONTRACT.model)), /kohya_lora_a/);
  await sleep(500);
  await sidebar.screenshot({ path: path.join(dir, "sidebar.png") });
  run.step("screenshots", ["stack.png", "status.png", "sidebar.png"].map((f) => path.join(dir, f)).join(", "));
};

// A node's screenshot: its canvas rectangle (title bar included), with its DOM widgets over it.
async function nodeShot(page, nodeId, file) {
  const box = await page.evaluate((id) => {
    const { app, LiteGraph } = window;
    const node = app.graph.getNodeById(id);
    const ds = app.canvas.ds;
    const rect = app.canvas.canvas.getBoundingClientRect();
    const title = LiteGraph.NODE_TITLE_HEIGHT || 30;
    const x = rect.left + (node.pos[0] + ds.offset[0]) * ds.scale;
    const y = rect.top + (node.pos[1] - title + ds.offset[1]) * ds.scale;
    return { x: x - 6, y: y - 6, width: node.size[0] * ds.scale + 12, height: (node.size[1] + title) * ds.scale + 12 };
  }, nodeId);
  await page.screenshot({ path: file, clip: box });
}

// ================================================================== main
async function main() {
  const args = parseArgs(process.argv);
  let failed = 0;
  for (const name of args.scenario.split(",")) {
    const fn = SCENARIOS[name];
    const run = new Run(args, name);
    let error = null;
    const t0 = Date.now();
    try {
      if (!fn) throw new Error(`no scenario ${name}; have ${Object.keys(SCENARIOS)}`);
      await run.open();
      await fn(run);
      await sleep(500);
    } catch (err) {
      error = String(err.stack || err);
      await run.shot("failure");
    }
    await run.close();
    if (!error && run.packErrors.length) error = "console errors from the pack's files";
    const ok = !error;
    if (!ok) failed++;
    const result = { scenario: name, ok, seconds: Math.round((Date.now() - t0) / 100) / 10, steps: run.steps,
                     error, pack_errors: run.packErrors, other_console_errors: run.otherErrors.length };
    console.log("RESULT " + JSON.stringify(result));
  }
  process.exit(failed ? 1 : 0);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
