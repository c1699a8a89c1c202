// Drives Tessera's hosted prompt page in headless Chromium for
// tests/tests/integration/hosted_browser.rs. Generic on purpose: URL may be the prompt itself
// (`/prompt#<browser token>`) or anything that redirects to it (e.g. `/oidc/authorize?...`).
//
//   node prompt_page.mjs URL [--return-prefix PREFIX] [--pick-device N] [--use-code]
//                            [--type-code-from FILE] [--click ACTION] [--accept-language TAGS]
//                            [--width PX] [--timeout S]
//                            [--authenticator usb|internal[:uv]] [--import-credentials FILE]
//                            [--export-credentials FILE] [--drop-allow-credentials]
//
// WebAuthn (FIDO2): --authenticator adds a virtual CTAP2 authenticator to the page through the
// DevTools WebAuthn domain (usb: a roaming security key; internal: a platform authenticator;
// :uv: it verifies the user); --import-credentials adds the credentials a file holds (as
// WebAuthn.getCredentials answered them: a cloned authenticator), --export-credentials writes
// the authenticator's credentials to a file when the page ends, and --drop-allow-credentials
// makes navigator.credentials.get ignore the server's allow list (the authenticator then offers
// any credential it holds, as an attacker's would). The FINAL line is followed by
// `FIDO elapsed_ms=<n>` when an authenticator was used: from the first ceremony to the end.
//
// The app around the page (the web-view contract, docs/flows.md): --web-view-bridge injects the
// Android bridge object (`window.TesseraBridge`, as addWebMessageListener does) and prints each
// message the page posts to it as `APP <json>`; the command `deliver <json>` hands the app's
// answer back through the object's onmessage, as the reply proxy does. --web-view-scheme SCHEME
// watches the page's navigations to SCHEME:// and prints each as `APP_URL <url>`; the command
// `load <url>` loads a URL in the page, as the app's WebView.loadUrl does.
//
// Prints one line per event on stdout:
//   METRICS bytes=<n> tti_ms=<n> first_state_ms=<n> dom_interactive_ms=<n>
//                                  once the page first shows a control (button or field): the
//                                  bytes of the page, its script and its styles; milliseconds from
//                                  navigation start until that state was rendered (time to
//                                  interactive), until the first flow state, and DOM interactive
//   STATE <status> <json>          every change of the page's flow state (data-state or
//                                  data-version), with what it shows: {"text", "number",
//                                  "lang", "devices", "error", "heading", "qr" (the flow's
//                                  QR code to scan instead is shown)}
//   A11Y ok                        labelled inputs, a live region, a focusable heading, keyboard
//                                  reachable controls (checked on the first state with controls)
//   FINAL <status>                 a final state (MFA_COMPLETED, MFA_FAILED, CANCELED, INVALID);
//   TEXT <text>                    its visible text; then, unless INVALID,
//   RETURNED <url>                 the URL the page navigated to (starting with --return-prefix)
//   ERROR <message>                anything wrong (exit 1), including a CSP violation
//
// Commands, one per stdin line, applied when they can be (the test writes them as it goes):
//   pick N            choose the N-th device in the list shown (opens "another method" first)
//   click ACTION      press the button of that flow action (authenticate, useCode, resendOtp,
//                     continueAuthentication, cancelAuthentication, …) with the keyboard
//   type CODE         type CODE into the passcode field and press Enter
//   recovery CODE     open the recovery-code form ("use a recovery code") and submit CODE
//   open URL          (with --stay) load another prompt URL in the same page, with the same
//                     virtual authenticator and its credentials
// Flags do the same automatically: --pick-device N on DEVICE_SELECTION_REQUIRED, --use-code on
// PUSH_CONFIRMATION_WAITING, --type-code-from FILE on OTP_REQUIRED (waits for FILE to hold a
// code), --click ACTION on the first state offering it.
//
// --stay keeps the browser after a final state (FINAL, TEXT, RETURNED are printed as usual, then
// `READY`): the test sends `open URL` for the next page, so one browser serves a whole test
// (Chromium's start and shutdown are the slow part). The script ends when stdin closes.

import { existsSync, readFileSync, writeFileSync } from "node:fs";
import readline from "node:readline";
import { chromium } from "playwright-core";

const FINAL = new Set(["MFA_COMPLETED", "MFA_FAILED", "CANCELED", "INVALID"]);
const ROOT = "#prompt";

function parseArgs(argv) {
  const args = { url: null, returnPrefix: null, pickDevice: null, useCode: false, codeFile: null, click: null, acceptLanguage: null, width: 360, timeout: 120, authenticator: null, importCredentials: null, exportCredentials: null, dropAllowCredentials: false, stay: false, webViewBridge: false, webViewScheme: null };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (a === "--return-prefix") args.returnPrefix = argv[++i];
    else if (a === "--pick-device") args.pickDevice = Number(argv[++i]);
    else if (a === "--use-code") args.useCode = true;
    else if (a === "--type-code-from") args.codeFile = argv[++i];
    else if (a === "--click") args.click = argv[++i];
    else if (a === "--accept-language") args.acceptLanguage = argv[++i];
    else if (a === "--width") args.width = Number(argv[++i]);
    else if (a === "--timeout") args.timeout = Number(argv[++i]);
    else if (a === "--authenticator") args.authenticator = argv[++i];
    else if (a === "--import-credentials") args.importCredentials = argv[++i];
    else if (a === "--export-credentials") args.exportCredentials = argv[++i];
    else if (a === "--drop-allow-credentials") args.dropAllowCredentials = true;
    else if (a === "--stay") args.stay = true;
    else if (a === "--web-view-bridge") args.webViewBridge = true;
    else if (a === "--web-view-scheme") args.webViewScheme = argv[++i];
    else if (!args.url && !a.startsWith("--")) args.url = a;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!args.url) throw new Error("usage: prompt_page.mjs URL [--return-prefix PREFIX] [...]");
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
  const deadline = setTimeout(() => fail(`timed out after ${args.timeout} s`), args.timeout * 1000);

  browser = await chromium.launch({
    executablePath: process.env.TESSERA_CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const context = await browser.newContext({
    viewport: { width: args.width, height: 740 },
    deviceScaleFactor: 1,
    reducedMotion: "reduce",
    extraHTTPHeaders: args.acceptLanguage ? { "Accept-Language": args.acceptLanguage } : {},
  });
  const page = await context.newPage();
  page.on("pageerror", (e) => fail(`page error: ${e.message}`));
  page.on("console", (msg) => {
    const text = msg.text();
    if (/Content Security Policy/i.test(text)) fail(`CSP violation: ${text}`);
    else if (msg.type() === "error" && !/Failed to load resource/.test(text)) say(`CONSOLE ${text}`);
  });

  // The page's own files, for its size.
  const sizes = new Map();
  page.on("response", async (response) => {
    const u = new URL(response.url());
    if (["/prompt", "/prompt.js", "/prompt.css"].includes(u.pathname)) {
      try {
        sizes.set(u.pathname, (await response.body()).length);
      } catch {
        /* a navigation away may drop the body */
      }
    }
  });

  // Every state change, in order, from a MutationObserver in the page.
  const events = [];
  let wakeUp = null;
  await page.exposeFunction("__tesseraPrompt", (event) => {
    events.push(event);
    if (wakeUp) wakeUp();
  });
  const commands = [];
  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    if (line.trim()) {
      commands.push(line.trim());
      if (wakeUp) wakeUp();
    }
  });
  rl.on("close", async () => {
    if (!args.stay) return;
    if (webauthn) await webauthn.finish(null).catch(() => {});
    await browser.close().catch(() => {});
    process.exit(0);
  });
  const next = () =>
    new Promise((resolve) => {
      if (events.length || commands.length) resolve();
      else
        wakeUp = () => {
          wakeUp = null;
          resolve();
        };
    });

  await page.addInitScript((selector) => {
    const start = () => {
      const root = document.querySelector(selector);
      if (!root) return;
      const report = () => {
        const text = (id) => {
          const n = document.getElementById(id);
          return n && !n.hidden ? n.textContent : null;
        };
        window.__tesseraPrompt({
          state: root.getAttribute("data-state"),
          version: root.getAttribute("data-version"),
          at: performance.now(),
          // The whole visible text as rendered with this state: a final state's page may
          // navigate away (back to the application) before the driver gets to read it.
          rootText: root.innerText,
          info: {
            text: text("status-text") || text("result"),
            number: text("number"),
            lang: document.documentElement.lang,
            heading: text("heading"),
            error: text("error"),
            code: (document.getElementById("error") || { getAttribute: () => null }).getAttribute("data-code"),
            devices: document.querySelectorAll("ul.devices button").length,
            qr: !!document.getElementById("flow-qr"),
          },
        });
      };
      new MutationObserver(report).observe(root, { attributes: true, attributeFilter: ["data-state", "data-version"], subtree: true, childList: true });
      report();
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
    else start();
  }, ROOT);

  const webauthn = await addAuthenticator(context, page, args);

  // The app's native side of the web-view contract.
  if (args.webViewBridge) {
    await page.exposeFunction("__tesseraApp", (json) => say(`APP ${json}`));
    await page.addInitScript(() => {
      window.TesseraBridge = { postMessage: (json) => window.__tesseraApp(String(json)), onmessage: null };
    });
  }
  if (args.webViewScheme) {
    const prefix = `${args.webViewScheme}://`;
    page.on("request", (request) => {
      if (request.url().startsWith(prefix)) say(`APP_URL ${request.url()}`);
    });
  }

  const response = await page.goto(args.url, { waitUntil: "domcontentloaded" });
  if (!response || !response.ok()) await fail(`page load: HTTP ${response ? response.status() : "?"}`);

  let last = "";
  let metricsSaid = false;
  let firstStateAt = null;
  let a11yChecked = false;
  let typedFromFile = false;
  let pickedAuto = false;
  let usedCode = false;
  let clicked = false;

  const act = async (command) => {
    const [verb, ...rest] = command.split(" ");
    const arg = rest.join(" ");
    if (verb === "pick") {
      const other = page.locator('button[data-action="otherDevice"]');
      if (await other.count()) await other.first().click();
      const b = page.locator(`ul.devices button[data-device-index="${Number(arg)}"]`);
      await b.first().waitFor({ state: "visible", timeout: 10000 });
      await b.first().focus();
      await page.keyboard.press("Enter");
    } else if (verb === "click") {
      const b = page.locator(`button[data-action="${arg}"]`);
      await b.first().waitFor({ state: "visible", timeout: 10000 });
      await b.first().focus();
      await page.keyboard.press("Enter");
    } else if (verb === "recovery") {
      const open = page.locator('button[data-action="useRecoveryCode"]');
      const input = page.locator("#recovery-code");
      if (!(await input.count())) {
        await open.first().waitFor({ state: "visible", timeout: 10000 });
        await open.first().focus();
        await page.keyboard.press("Enter");
      }
      await input.waitFor({ state: "visible", timeout: 10000 });
      await input.fill("");
      await input.focus();
      await page.keyboard.type(arg);
      await page.keyboard.press("Enter");
    } else if (verb === "open" && args.stay) {
      last = "";
      firstStateAt = null;
      typedFromFile = false;
      pickedAuto = false;
      usedCode = false;
      clicked = false;
      // Through a blank page: two prompt URLs differ only in their fragment, and going from
      // one to the other would not load the page again.
      await page.goto("about:blank");
      events.length = 0;
      const next = await page.goto(arg, { waitUntil: "domcontentloaded" });
      if (!next || !next.ok()) await fail(`page load: HTTP ${next ? next.status() : "?"}`);
    } else if (verb === "type") {
      // The page ignores a submit while an action of its own is under way (its controls are
      // disabled then): type once the field is enabled, and type again if no request carrying
      // the code went out.
      const input = page.locator("#otp");
      for (let attempt = 0; ; attempt += 1) {
        await input.waitFor({ state: "visible", timeout: 10000 });
        await page.waitForFunction(() => {
          const field = document.getElementById("otp");
          return field && !field.disabled;
        }, null, { timeout: 30000 });
        await input.fill("");
        await input.focus();
        await page.keyboard.type(arg);
        const posted = page
          .waitForRequest((r) => r.method() === "POST" && (r.postData() || "").includes(arg), { timeout: 3000 })
          .then(() => true, () => false);
        await page.keyboard.press("Enter");
        if ((await posted) || attempt >= 4) break;
      }
    } else if (verb === "deliver") {
      await page.evaluate((json) => window.TesseraBridge.onmessage({ data: json }), arg);
    } else if (verb === "load") {
      await page.goto(arg, { waitUntil: "commit" });
    } else {
      await fail(`unknown command ${command}`);
    }
  };

  const checkA11y = async () => {
    const live = await page.locator('[aria-live="polite"]').count();
    if (live < 1) await fail("no polite live region");
    const heading = await page.locator("h1[tabindex='-1']").count();
    if (heading < 1) await fail("no focusable heading");
    const unlabelled = await page.evaluate(() =>
      Array.from(document.querySelectorAll("input, textarea")).filter((i) => !document.querySelector(`label[for="${i.id}"]`)).length
    );
    if (unlabelled) await fail(`${unlabelled} input(s) without a label`);
    // Controls the keyboard can reach now: visible and enabled (the page disables its controls
    // while an action is under way, and Tab skips disabled ones).
    const reachable = () => page.locator("#prompt button:visible:enabled, #prompt input:visible:enabled").count();
    if (await reachable()) {
      // The page moves focus to its heading whenever it renders a new state (for screen
      // readers), and disables its controls while an action runs: a render or an action landing
      // between the Tab and the check takes the focus away. Try again for a while; a page that
      // meanwhile moved to a state without controls (a ceremony that ran by itself and ended the
      // flow) is checked on its next state with controls instead.
      // The outline is read in the same attempt as the Tab: a render landing between the two
      // replaces the control (the new one is not focused by the keyboard), so that attempt
      // proves nothing either way and the next one tries again. A page whose controls never
      // show an outline when tabbed to fails once the attempts run out.
      let tag = null;
      let outline = null;
      for (let attempt = 0; attempt < 40; attempt += 1) {
        if (!(await reachable())) {
          await page.waitForTimeout(250);
          continue;
        }
        await page.evaluate(() => document.activeElement && document.activeElement.blur());
        await page.keyboard.press("Tab");
        [tag, outline] = await page.evaluate(() => {
          const active = document.activeElement;
          return active ? [active.tagName, getComputedStyle(active).outlineStyle] : [null, null];
        });
        if (["BUTTON", "INPUT"].includes(tag) && outline !== "none") break;
        await page.waitForTimeout(250);
      }
      if (!["BUTTON", "INPUT"].includes(tag)) {
        if (!(await reachable())) return false;
        await fail(`Tab reached ${tag}, not a control`);
      }
      if (outline === "none") await fail("the focused control shows no focus outline");
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
      if (overflow) await fail("the page is wider than the screen");
      await page.evaluate(() => document.activeElement.blur());
    }
    say("A11Y ok");
    return true;
  };

  for (;;) {
    await next();
    while (commands.length) await act(commands.shift());
    if (!events.length) continue;
    const event = events.shift();
    const key = `${event.state} ${event.version} ${JSON.stringify(event.info)}`;
    if (key === last || event.state === "LOADING") continue;
    last = key;
    if (firstStateAt === null) firstStateAt = event.at;
    say(`STATE ${event.state} ${JSON.stringify(event.info)}`);
    if (FINAL.has(event.state)) {
      const text = event.rootText;
      say(`FINAL ${event.state}`);
      say(`TEXT ${text}`);
      if (webauthn) await webauthn.finish(event.at, args.stay);
      if (event.state !== "INVALID" && args.returnPrefix) {
        await page.waitForURL((u) => u.href.startsWith(args.returnPrefix), { timeout: 15000 });
        say(`RETURNED ${page.url()}`);
      }
      if (args.stay) {
        say("READY");
        continue;
      }
      clearTimeout(deadline);
      await browser.close();
      process.exit(0);
    }
    const hasControls = (await page.locator("#prompt button:visible, #prompt input:visible").count()) > 0;
    if (!metricsSaid && hasControls) {
      metricsSaid = true;
      const bytes = ["/prompt", "/prompt.js", "/prompt.css"].reduce((n, p) => n + (sizes.get(p) || 0), 0);
      const nav = await page.evaluate(() => {
        const e = performance.getEntriesByType("navigation")[0];
        return e ? e.domInteractive : 0;
      });
      say(`METRICS bytes=${bytes} tti_ms=${Math.round(event.at)} first_state_ms=${Math.round(firstStateAt)} dom_interactive_ms=${Math.round(nav)}`);
    }
    // The scheme mode's navigation to the app's scheme (an external protocol to Chromium) can
    // take the keyboard focus from the page while the check tabs through it; the same page is
    // checked by every other browser test.
    if (!a11yChecked && hasControls && !args.webViewScheme) {
      a11yChecked = await checkA11y();
    }
    if (event.state === "DEVICE_SELECTION_REQUIRED" && args.pickDevice !== null && !pickedAuto) {
      pickedAuto = true;
      await act(`pick ${args.pickDevice}`);
    } else if (event.state === "PUSH_CONFIRMATION_WAITING" && args.useCode && !usedCode) {
      usedCode = true;
      await act("click useCode");
    } else if (event.state === "OTP_REQUIRED" && args.codeFile && !typedFromFile) {
      typedFromFile = true;
      const code = await waitForFile(args.codeFile);
      await act(`type ${code}`);
    } else if (args.click && !clicked && (await page.locator(`button[data-action="${args.click}"]`).count())) {
      clicked = true;
      await act(`click ${args.click}`);
    }
  }
}

// The virtual authenticator (DevTools WebAuthn domain), if asked for.
async function addAuthenticator(context, page, args) {
  if (!args.authenticator) return null;
  const [transport, flag] = args.authenticator.split(":");
  const uv = flag === "uv";
  if (args.dropAllowCredentials) {
    await page.addInitScript(() => {
      if (!window.navigator.credentials) return;
      const get = navigator.credentials.get.bind(navigator.credentials);
      navigator.credentials.get = (options) => {
        if (options && options.publicKey) options.publicKey.allowCredentials = [];
        return get(options);
      };
    });
  }
  await page.addInitScript(() => {
    if (!window.navigator.credentials) return; // not a secure context (about:blank)
    const wrap = (name) => {
      const original = navigator.credentials[name].bind(navigator.credentials);
      navigator.credentials[name] = (options) => {
        if (window.__tesseraFidoStart === undefined) window.__tesseraFidoStart = performance.now();
        return original(options);
      };
    };
    wrap("get");
    wrap("create");
  });
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport,
      hasResidentKey: true,
      hasUserVerification: uv,
      isUserVerified: uv,
      automaticPresenceSimulation: true,
    },
  });
  if (args.importCredentials) {
    const credentials = JSON.parse(readFileSync(args.importCredentials, "utf8"));
    for (const credential of credentials) {
      const copy = { ...credential };
      if (args.dropAllowCredentials) {
        // Offered without an allow list, so it must be discoverable.
        copy.isResidentCredential = true;
        copy.userHandle = copy.userHandle || Buffer.from("someone-else").toString("base64");
      }
      await cdp.send("WebAuthn.addCredential", { authenticatorId, credential: copy });
    }
  }
  return {
    // The end of a page (endedAt: when it reached its final state; null when the script
    // ends). With keep, the authenticator stays for the next page.
    async finish(endedAt, keep) {
      if (endedAt !== null) {
        const started = await page.evaluate(() => window.__tesseraFidoStart).catch(() => undefined);
        if (started !== undefined) say(`FIDO elapsed_ms=${Math.round(endedAt - started)}`);
      }
      if (keep) return;
      if (args.exportCredentials) {
        const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
        writeFileSync(args.exportCredentials, JSON.stringify(credentials));
      }
      // A virtual authenticator left attached holds the browser's shutdown for seconds.
      await cdp.send("WebAuthn.removeVirtualAuthenticator", { authenticatorId }).catch(() => {});
      await cdp.send("WebAuthn.disable").catch(() => {});
      await cdp.detach().catch(() => {});
    },
  };
}

async function waitForFile(file) {
  for (;;) {
    if (existsSync(file)) {
      const text = readFileSync(file, "utf8").trim();
      if (text) return text;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

main().catch((e) => fail((e && e.message) || String(e)));
