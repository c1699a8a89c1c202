// Drives Tessera's QR login page in headless Chromium for tests/tests/integration/qr_browser.rs.
//
//   node qr_page.mjs URL [--renew | --await-renewal] [--expect-redirect] [--out DIR]
//                        [--page-shots] [--width PX] [--timeout S]
//
// Prints one line per event on stdout:
//   SHOT <png>          the QR code element, screenshotted (again after a renewal with --renew)
//   A11Y ok             the code has role=img and an aria-label, the "New code" button is
//                       reachable with the keyboard, a polite live region exists
//   STATE <state>       every change of the root's data-state
//   PAGE <state> <png>  the whole page in that state (--page-shots)
//   FINAL <state>       a final state (approved, denied, expired, invalid) is shown; then
//   TEXT <text>         its visible status text, and the script exits 0
//   ERROR <message>     anything wrong (exit 1), including a Content Security Policy violation
//
// --expect-redirect: after an approval, waits for the page to navigate on and prints
// REDIRECT <url>.
// --renew: once the code is shown, presses "New code" with the keyboard and screenshots the
// new code (a second SHOT line). --await-renewal: the same, without pressing: waits for the
// page to renew the code by itself.

import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const FINAL = new Set(["approved", "denied", "expired", "invalid"]);
const ROOT = "[data-state]";

function parseArgs(argv) {
  const args = { url: null, renew: false, awaitRenewal: false, expectRedirect: false, out: null, pageShots: false, width: 480, timeout: 120 };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (a === "--renew") args.renew = true;
    else if (a === "--page-shots") args.pageShots = true;
    else if (a === "--expect-redirect") args.expectRedirect = true;
    else if (a === "--await-renewal") args.awaitRenewal = true;
    else if (a === "--out") args.out = argv[++i];
    else if (a === "--width") args.width = Number(argv[++i]);
    else if (a === "--timeout") args.timeout = Number(argv[++i]);
    else if (!args.url && !a.startsWith("--")) args.url = a;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.url) throw new Error("usage: qr_page.mjs URL [--renew] [--out DIR] [--page-shots]");
  return args;
}

const say = (line) => process.stdout.write(`${line.replace(/\s+/g, " ").trim()}\n`);

let browser = null;

async function fail(message) {
  say(`ERROR ${message}`);
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const out = args.out || mkdtempSync(path.join(tmpdir(), "tessera-qr-"));
  const deadline = setTimeout(() => fail(`timed out after ${args.timeout} s`), args.timeout * 1000);

  browser = await chromium.launch({
    executablePath: process.env.TESSERA_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const context = await browser.newContext({
    viewport: { width: args.width, height: 760 },
    deviceScaleFactor: 1,
    reducedMotion: "reduce",
  });
  const page = await context.newPage();
  page.on("pageerror", (e) => fail(`page error: ${e.message}`));
  page.on("console", (msg) => {
    const text = msg.text();
    if (/Content Security Policy/i.test(text)) fail(`CSP violation: ${text}`);
    else if (msg.type() === "error") say(`CONSOLE ${text}`);
  });

  // Every data-state change, in order, straight from a MutationObserver in the page.
  const states = [];
  let wakeUp = null;
  await page.exposeFunction("__tesseraState", (state) => {
    states.push(state);
    if (wakeUp) wakeUp();
  });
  const nextState = () =>
    new Promise((resolve) => {
      if (states.length) resolve(states.shift());
      else
        wakeUp = () => {
          wakeUp = null;
          resolve(states.shift());
        };
    });

  const response = await page.goto(args.url, { waitUntil: "domcontentloaded" });
  if (!response || !response.ok()) await fail(`page load: HTTP ${response ? response.status() : "?"}`);
  await page.evaluate((selector) => {
    const root = document.querySelector(selector);
    const report = () => window.__tesseraState(root.getAttribute("data-state"));
    new MutationObserver(report).observe(root, { attributes: true, attributeFilter: ["data-state"] });
    report();
  }, ROOT);

  let shots = 0;
  let shownCode = false;
  let lastState = null;
  const pageShot = async (state) => {
    if (!args.pageShots) return;
    await page.waitForTimeout(150);
    const file = path.join(out, `page-${state}.png`);
    await page.screenshot({ path: file, fullPage: true });
    say(`PAGE ${state} ${file}`);
  };
  // The first code's accessibility is checked before its SHOT line: once the test has the
  // code it may scan it at once, and a scanned page no longer shows the code to check.
  const shootCode = async ({ a11y = false } = {}) => {
    const code = page.locator("#tessera-qr-code");
    await code.locator("svg").waitFor({ state: "visible", timeout: 15000 });
    shots += 1;
    const file = path.join(out, `qr-${shots}.png`);
    await code.screenshot({ path: file });
    if (a11y) await checkA11y(page, code);
    say(`SHOT ${file}`);
    if (a11y) say("A11Y ok");
    return code;
  };

  for (;;) {
    const state = await nextState();
    if (state === lastState) continue;
    lastState = state;
    say(`STATE ${state}`);
    if (state === "created" && !shownCode) {
      shownCode = true;
      await shootCode({ a11y: true });
      await pageShot(state);
      if (args.renew || args.awaitRenewal) {
        const before = await page.locator(ROOT).getAttribute("data-version");
        if (args.renew) {
          await page.locator(".tessera-qr-renew").focus();
          await page.keyboard.press("Enter");
        }
        await page.waitForFunction(
          ([selector, v]) => {
            const root = document.querySelector(selector);
            return root.getAttribute("data-version") !== v || root.getAttribute("data-state") !== "created";
          },
          [ROOT, before],
          { timeout: 30000 }
        );
        if ((await page.locator(ROOT).getAttribute("data-state")) === "created") await shootCode();
      }
    } else if (state !== "created" && state !== "loading") {
      await pageShot(state);
    }
    if (FINAL.has(state)) {
      const text = await page.locator(".tessera-qr-panel").innerText();
      say(`FINAL ${state}`);
      say(`TEXT ${text}`);
      if (args.expectRedirect && state === "approved") {
        await page.waitForURL((u) => u.href !== args.url, { timeout: 15000 });
        say(`REDIRECT ${page.url()}`);
      }
      clearTimeout(deadline);
      await browser.close();
      process.exit(0);
    }
  }
}

async function checkA11y(page, code) {
  const role = await code.getAttribute("role");
  const label = (await code.getAttribute("aria-label")) || "";
  if (role !== "img") await fail(`the QR code's role is ${role}, not img`);
  if (!label.trim()) await fail("the QR code has no aria-label");
  const live = await page.locator('[aria-live="polite"]').count();
  if (live < 1) await fail("no polite live region");
  // The "New code" button is the page's only control: one Tab from the top must reach it.
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  await page.keyboard.press("Tab");
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.className);
  if (!/tessera-qr-renew/.test(focused || "")) await fail(`Tab reached "${focused}", not the New code button`);
  const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
  if (outline === "none") await fail("the focused button shows no focus outline");
  await page.evaluate(() => document.activeElement.blur());
}

main().catch((e) => fail((e && e.message) || String(e)));
