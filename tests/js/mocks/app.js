// Stand-in for the frontend's scripts/app.js: records the extension and offers what the pack uses.
export const toasts = [];
export const settings = { "LoraState.Toasts": true };
export const app = {
  extensions: [],
  registerExtension(ext) { this.extensions.push(ext); },
  extensionManager: {
    toast: { add: (t) => toasts.push(t) },
    setting: { get: (id) => settings[id] },
    registerSidebarTab(tab) { app.sidebarTab = tab; },
  },
  canvas: {},
  graph: { setDirtyCanvas() {} },
};
