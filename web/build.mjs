// Bundles the dashboard into one folder the hub serves under /ui/:
//   node build.mjs <web/src> <out-dir>
// (run from the folder whose node_modules holds esbuild and uPlot).
// index.html plus assets/app-<hash>.js and assets/app-<hash>.css (content
// hashes in the names, so the hub may let browsers cache them for a year).
import * as esbuild from "esbuild";
import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const [src, out] = process.argv.slice(2);
if (!src || !out) {
  console.error("usage: node build.mjs <web/src> <out-dir>");
  process.exit(2);
}
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });

const result = await esbuild.build({
  entryPoints: { app: join(src, "app.js"), style: join(src, "app.css") },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2020"],
  entryNames: "[name]-[hash]",
  outdir: join(out, "assets"),
  metafile: true,
  legalComments: "linked",
  logLevel: "warning",
  // The sources live outside the folder npm installed into.
  nodePaths: [join(here, "node_modules")],
});

const names = {};
for (const [file, meta] of Object.entries(result.metafile.outputs)) {
  if (!meta.entryPoint) continue;
  names[file.endsWith(".css") ? "css" : "js"] = "assets/" + basename(file);
}
const html = readFileSync(join(src, "index.html"), "utf8")
  .replace("{{APP_JS}}", names.js)
  .replace("{{APP_CSS}}", names.css);
writeFileSync(join(out, "index.html"), html);
console.log(`dashboard: ${out} (${names.js}, ${names.css})`);
