import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

const here = (p) => fileURLToPath(new URL(p, import.meta.url));

export default defineConfig({
  // web/lora_state.js imports the frontend's own modules ("../../scripts/app.js"): stand-ins here.
  resolve: {
    alias: [
      { find: /^\.\.\/\.\.\/scripts\/app\.js$/, replacement: here("./mocks/app.js") },
      { find: /^\.\.\/\.\.\/scripts\/api\.js$/, replacement: here("./mocks/api.js") },
    ],
  },
  server: { fs: { allow: [here("../..")] } },
  test: { environment: "jsdom", include: ["*.test.js"], root: here(".") },
});
