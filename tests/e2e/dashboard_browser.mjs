// The browser half of tests/e2e/test_dashboard.py: one step of the suite
// per run, in headless Chromium driven by playwright-core.
//
//   node dashboard_browser.mjs <step>
//
// Environment: HUB_URL, TOKENS (JSON {admin, operator, viewer}), ARTIFACTS
// (folder for screenshots), NODE_MODULES (the build tree's node_modules
// holding playwright-core), CHROMIUM, STEP_ARGS (JSON, per step).
// Prints one JSON line with what the step saw; exits 1 with a message (and
// a screenshot "<step>-failure.png") when an expectation fails.
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const require = createRequire(join(process.env.NODE_MODULES, "x.js"));
const { chromium } = require("playwright-core");

const step = process.argv[2];
const hub = process.env.HUB_URL;
const tokens = JSON.parse(process.env.TOKENS);
const args = JSON.parse(process.env.STEP_ARGS || "{}");
const artifacts = process.env.ARTIFACTS;
mkdirSync(artifacts, { recursive: true });

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

async function shot(page, name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

async function login(page, token) {
  await page.goto(`${hub}/`);
  // "/" redirects to the dashboard, which asks for a token.
  await page.waitForURL(/\/ui\/(#.*)?$/);
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("heading", { name: "Fleet" }).waitFor();
}

const number = async (locator) => Number((await locator.textContent()).trim());

const steps = {
  // Sign in (a wrong token first), see the fleet and the alerts panel.
  async fleet(page) {
    await page.goto(`${hub}/`);
    await page.waitForURL(/\/ui\//);
    await page.getByLabel("API token").fill("oat_not-a-token");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "unknown or revoked" }).waitFor();
    await shot(page, "login");
    await page.getByLabel("API token").fill(tokens.operator);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("heading", { name: "Fleet" }).waitFor();
    await page.getByText(`operator-e2e (operator)`).waitFor();
    const devices = await number(page.locator("#n-devices"));
    const online = await number(page.locator("#n-online"));
    const alerts = await page.getByRole("region", { name: "Alerts" }).textContent();
    const rows = await page.getByRole("table", { name: "Devices", exact: true })
      .locator("tbody tr").count();
    const versions = await page.getByRole("table", { name: "Versions in the field" })
      .textContent();
    const bySite = await page.getByRole("table", { name: "Devices by site" }).textContent();
    await shot(page, "fleet");
    return { devices, online, alerts, rows, versions, bySite };
  },

  // Open a device from the fleet list.
  async device(page) {
    await login(page, tokens.viewer);
    await page.getByRole("link", { name: args.device, exact: true }).click();
    await page.getByRole("heading", { name: `Device ${args.device}` }).waitFor();
    const running = (await page.locator("#current-release").textContent()).trim();
    const history = await page.getByRole("table", { name: "Update history" }).textContent();
    // Charts draw after layout: wait for the latency chart's canvas.
    await page.getByRole("figure", { name: "Latency percentiles (ms)" }).locator("canvas")
      .waitFor();
    const canvases = await page.locator("figure canvas").count();
    await shot(page, "device");
    return { running, history, canvases };
  },

  // Start a rollout from the Releases page, pause and resume it, watch it
  // advance to completed.
  async rollout(page) {
    page.on("dialog", (d) => d.accept());
    await login(page, tokens.operator);
    await page.getByRole("link", { name: "Releases" }).click();
    await page.getByRole("link", { name: `Roll out ${args.release}` }).click();
    await page.getByLabel("Waves").fill(args.waves);
    await page.getByLabel("Soak (s)").fill(String(args.soak));
    await page.getByLabel("p95 regression gate (%)").fill("0");
    await page.getByLabel("Error rate gate (0–1)").fill("");
    await page.getByRole("button", { name: "Start rollout" }).click();
    await page.getByRole("heading", { name: new RegExp(`^Rollout #\\d+ of ${args.release}$`) })
      .waitFor();
    const id = Number(page.url().match(/rollouts\/(\d+)/)[1]);
    await page.getByRole("button", { name: "Pause" }).click();
    await page.locator("#rollout-state").getByText("paused").waitFor();
    await shot(page, "rollout-paused");
    await page.getByRole("button", { name: "Resume" }).click();
    // Live progress: remember every "n of m committed" the page showed.
    const seen = new Set();
    const deadline = Date.now() + 240_000;
    let state = "";
    while (Date.now() < deadline) {
      state = (await page.locator("#rollout-state").textContent()).trim();
      seen.add((await page.locator("#rollout-committed").textContent()).trim());
      if (["completed", "halted", "aborted"].includes(state)) break;
      await page.waitForTimeout(300);
    }
    const gates = await page.getByRole("table", { name: "Gates against thresholds" })
      .textContent();
    await shot(page, "rollout");
    return { id, state, progress: [...seen], gates };
  },

  // A bad release: a gate halts it at the canary.
  async gate(page) {
    await login(page, tokens.operator);
    await page.goto(`${hub}/ui/#/rollouts/new/${encodeURIComponent(args.release)}`);
    await page.getByLabel("Waves").fill("1, 100%");
    await page.getByLabel("Soak (s)").fill("300");
    await page.getByLabel("p95 regression gate (%)").fill("20");
    await page.getByLabel("Error rate gate (0–1)").fill("");
    await page.getByLabel("Min. samples").fill("2");
    await page.getByRole("button", { name: "Start rollout" }).click();
    await page.getByRole("heading", { name: new RegExp(`of ${args.release}$`) }).waitFor();
    const id = Number(page.url().match(/rollouts\/(\d+)/)[1]);
    await page.locator("#halt-reason").waitFor({ timeout: 180_000 });
    const state = (await page.locator("#rollout-state").textContent()).trim();
    const reason = (await page.locator("#halt-reason").textContent()).trim();
    const gates = await page.getByRole("table", { name: "Gates against thresholds" })
      .textContent();
    await shot(page, "gate-halted");
    return { id, state, reason, gates };
  },

  // A viewer sees no button that changes anything, and the API refuses.
  async viewer(page) {
    await login(page, tokens.viewer);
    await page.goto(`${hub}/ui/#/rollouts/${args.rollout}`);
    await page.getByRole("heading", { name: new RegExp(`^Rollout #${args.rollout} `) }).waitFor();
    const buttons = await page.locator("main button").count();
    await shot(page, "viewer-rollout");
    await page.goto(`${hub}/ui/#/releases`);
    await page.getByRole("table", { name: "Releases" }).waitFor();
    const rolloutLinks = await page.getByRole("link", { name: /^Roll out / }).count();
    await page.goto(`${hub}/ui/#/rollouts/new/${encodeURIComponent(args.release)}`);
    const newRollout = await page.locator("main").textContent();
    const refused = await page.evaluate(async ([id, token]) => {
      const r = await fetch(`/api/v1/admin/rollouts/${id}/rollback`, {
        method: "POST", headers: { Authorization: `Bearer ${token}` } });
      return { status: r.status, body: await r.json() };
    }, [args.rollout, tokens.viewer]);
    return { buttons, rolloutLinks, newRollout, refused };
  },

  // Two releases side by side on the same devices.
  async compare(page) {
    await login(page, tokens.viewer);
    await page.getByRole("link", { name: "Compare" }).click();
    await page.getByLabel("Before (A)").selectOption(args.a);
    await page.getByLabel("After (B)").selectOption(args.b);
    await page.getByRole("button", { name: "Compare" }).click();
    const table = page.getByRole("table", { name: "Release comparison" });
    await table.waitFor();
    const rows = {};
    for (const tr of await table.locator("tbody tr").all()) {
      const cells = await tr.locator("td").allTextContents();
      rows[cells[0]] = cells.slice(1);
    }
    const sameDevices = await page.getByText(/^On the same \d+ device/).textContent();
    await page.locator("figure canvas").first().waitFor();
    const charts = await page.locator("figure canvas").count();
    await shot(page, `compare-${args.a}-${args.b}`);
    return { rows, sameDevices, charts };
  },
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
const context = await browser.newContext({ ignoreHTTPSErrors: true,
  viewport: { width: 1280, height: 900 } });
context.setDefaultTimeout(30_000);
const page = await context.newPage();
const consoleErrors = []; // includes the browser's own "failed to load" lines
const pageErrors = []; // uncaught exceptions in the dashboard: always a bug
page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
page.on("pageerror", (e) => pageErrors.push(String(e)));
let code = 0;
try {
  if (!steps[step]) throw new Error(`no step '${step}'`);
  const result = await steps[step](page);
  result.consoleErrors = consoleErrors;
  result.pageErrors = pageErrors;
  console.log(JSON.stringify(result));
} catch (e) {
  code = 1;
  console.error(`step ${step} failed: ${e.stack || e}\nconsole: ${[...consoleErrors, ...pageErrors].join("\n")}`);
  await shot(page, `${step}-failure`).catch(() => {});
} finally {
  await browser.close();
}
process.exit(code);
