// Stand-in for the frontend's scripts/api.js: fetchApi answers from `routes`, events go to `listeners`.
export const routes = {};
export const requests = [];
export const listeners = {};
export const api = {
  async fetchApi(path, options = {}) {
    requests.push({ path, options });
    const key = Object.keys(routes).find((k) => path.startsWith(k));
    const body = key ? (typeof routes[key] === "function" ? routes[key](path, options) : routes[key]) : null;
    return { ok: Boolean(key), status: key ? 200 : 404, json: async () => body };
  },
  addEventListener(name, fn) { (listeners[name] ||= []).push(fn); },
};
