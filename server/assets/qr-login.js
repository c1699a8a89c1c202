/*
 * Tessera QR login: shows a QR sign-in session's code and follows it until it is approved,
 * denied or expired. Plain ES2020, no dependencies, no build step.
 *
 *   const login = TesseraQrLogin.start({
 *     browserToken,                 // from the customer's backend (QrSessionCreated.browser_token)
 *     element,                      // where to draw; gets data-state="<state>"
 *     baseUrl: "https://auth.example.com", // the Tessera server (default: this page's origin)
 *     onChange(status) { ... },     // every new QrBrowserStatus
 *   });
 *   login.stop();
 *
 * The element also receives a "tessera-qr-login" CustomEvent (detail: the status) on every
 * change. See docs/qr-login.md.
 */
(() => {
  "use strict";

  const FINAL_STATES = new Set(["approved", "denied", "expired"]);
  const KNOWN_STATES = new Set(["created", "scanned", "verifying", "approved", "denied", "expired"]);
  const WAIT_SECONDS = 25;
  const RENEW_BEFORE_SECONDS = 10;
  const REDIRECT_DELAY_MS = 1000;
  const RETRY_DELAYS_MS = [1000, 2000, 4000, 8000, 15000];
  const SVG_NS = "http://www.w3.org/2000/svg";

  // 24 x 24 stroke icons (decorative: hidden from assistive technology).
  const ICONS = {
    phone: [
      "M8 2.75h8A1.75 1.75 0 0 1 17.75 4.5v15A1.75 1.75 0 0 1 16 21.25H8A1.75 1.75 0 0 1 6.25 19.5v-15A1.75 1.75 0 0 1 8 2.75Z",
      "M10.5 18.25h3",
    ],
    check: ["M5 12.75l4.5 4.5L19 7.75"],
    cross: ["M7 7l10 10", "M17 7L7 17"],
    clock: ["M12 3.75a8.25 8.25 0 1 1 0 16.5a8.25 8.25 0 1 1 0-16.5Z", "M12 7.5V12l3 2"],
    alert: ["M12 4 3 19.5h18Z", "M12 10v4.25", "M12 16.9v.1"],
    spinner: ["M12 3.75a8.25 8.25 0 1 0 8.25 8.25"],
  };

  function uniqueId(base) {
    if (!document.getElementById(base)) return base;
    for (let n = 2; ; n += 1) {
      if (!document.getElementById(`${base}-${n}`)) return `${base}-${n}`;
    }
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function icon(name) {
    const wrap = el("span", { class: "tessera-qr-icon", "aria-hidden": "true" });
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("fill", "none");
    svg.setAttribute("stroke", "currentColor");
    svg.setAttribute("stroke-width", "2");
    svg.setAttribute("stroke-linecap", "round");
    svg.setAttribute("stroke-linejoin", "round");
    svg.setAttribute("focusable", "false");
    for (const d of ICONS[name]) {
      const path = document.createElementNS(SVG_NS, "path");
      path.setAttribute("d", d);
      svg.appendChild(path);
    }
    wrap.appendChild(svg);
    return wrap;
  }

  // The server's SVG document, parsed as SVG (never as HTML) and stripped of anything active.
  function parseSvg(text) {
    if (typeof text !== "string" || text.length === 0) return null;
    const doc = new DOMParser().parseFromString(text, "image/svg+xml");
    const svg = doc.documentElement;
    if (
      !svg ||
      svg.localName !== "svg" ||
      svg.namespaceURI !== SVG_NS ||
      doc.getElementsByTagName("parsererror").length > 0
    ) {
      return null;
    }
    for (const bad of svg.querySelectorAll("script, foreignObject, a, use, image")) bad.remove();
    for (const node of [svg, ...svg.querySelectorAll("*")]) {
      for (const attr of [...node.attributes]) {
        if (/^on/i.test(attr.name) || /href$/i.test(attr.name)) node.removeAttribute(attr.name);
      }
    }
    if (!svg.hasAttribute("viewBox")) {
      const w = parseFloat(svg.getAttribute("width") || "");
      const h = parseFloat(svg.getAttribute("height") || "");
      if (w > 0 && h > 0) svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    }
    svg.removeAttribute("width");
    svg.removeAttribute("height");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    return document.importNode(svg, true);
  }

  function formatSeconds(total) {
    const s = Math.max(0, Math.ceil(total));
    return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  }

  function safeRedirect(url) {
    try {
      const target = new URL(url, window.location.href);
      return target.protocol === "https:" || target.protocol === "http:" ? target.href : null;
    } catch (_) {
      return null;
    }
  }

  class RequestError extends Error {
    constructor(kind, message, httpStatus) {
      super(message);
      this.name = "TesseraQrLoginError";
      this.kind = kind; // "unauthorized" | "conflict" | "network" | "server" | "aborted"
      this.httpStatus = httpStatus;
    }
  }

  // What the page says in each state.
  function texts(state, app, hasRedirect, status) {
    const number = status && Number.isInteger(status.number_to_show) ? status.number_to_show : null;
    switch (state) {
      case "created":
        return { live: `Scan the QR code with the ${app} app to sign in.` };
      case "scanned":
        return {
          icon: "phone",
          title: "Scanned. Confirm on your phone.",
          message: `Check the ${app} app on your phone and approve the sign-in.`,
        };
      case "verifying":
        if (number !== null) {
          return {
            icon: "phone",
            title: `Confirm ${number} on your phone`,
            message: `Your phone asks to confirm the sign-in: enter or pick the number ${number} there.`,
          };
        }
        return {
          icon: "phone",
          title: "Approved on your phone. Finishing…",
          message: "This takes a moment.",
        };
      case "approved":
        return {
          icon: "check",
          title: "Signed in",
          message: hasRedirect
            ? `You are signed in to ${app}. Continuing…`
            : `You are signed in to ${app}. You can close this page.`,
        };
      case "denied":
        if (status && status.denial_reason === "wrong_number") {
          return {
            icon: "cross",
            title: "Sign-in denied",
            message: "The number given on your phone did not match. To try again, start a new sign-in.",
          };
        }
        return {
          icon: "cross",
          title: "Sign-in denied",
          message: "The sign-in was denied on your phone. To try again, start a new sign-in.",
        };
      case "expired":
        return {
          icon: "clock",
          title: "This sign-in has expired",
          message: "It was not confirmed in time. To try again, start a new sign-in.",
        };
      case "invalid":
        return {
          icon: "alert",
          title: "This sign-in link is not valid",
          message: "It may be incomplete or already used. To try again, start a new sign-in.",
        };
      default:
        return { icon: "spinner", title: "Loading…", message: "Preparing your sign-in code." };
    }
  }

  // The visible part. Built inside the caller's element; every part has a tessera-qr-* class.
  class View {
    constructor(element, headingLevel) {
      this.element = element;
      this.state = null;
      this.svgSource = null;
      element.replaceChildren();
      element.classList.add("tessera-qr-login");
      const level = Math.min(6, Math.max(1, Number(headingLevel) || 2));
      this.titleTag = `h${Math.min(6, level + 1)}`;
      this.heading = el(`h${level}`, {
        id: uniqueId("tessera-qr-heading"),
        class: "tessera-qr-app",
        tabindex: "-1",
      });
      this.subtitle = el("p", { class: "tessera-qr-subtitle" }, "Sign in with your phone");
      this.panel = el("div", { class: "tessera-qr-panel" });
      this.note = el("p", { class: "tessera-qr-note", hidden: "" });
      this.footer = el(
        "p",
        { class: "tessera-qr-footer", hidden: "" },
        "Only scan a sign-in code on a page you opened yourself."
      );
      this.live = el("div", {
        class: "tessera-qr-live",
        role: "status",
        "aria-live": "polite",
        "aria-atomic": "true",
      });
      element.append(this.heading, this.subtitle, this.panel, this.note, this.footer, this.live);
      if (!element.hasAttribute("aria-label") && !element.hasAttribute("aria-labelledby")) {
        element.setAttribute("aria-labelledby", this.heading.id);
      }
    }

    announce(text) {
      // Clearing first makes a repeated message be announced again.
      this.live.textContent = "";
      window.setTimeout(() => {
        this.live.textContent = text;
      }, 50);
    }

    setReconnecting(on) {
      if (on === !this.note.hidden) return;
      this.note.hidden = !on;
      this.note.textContent = on ? "Connection lost. Reconnecting…" : "";
      this.announce(on ? "Connection lost. Reconnecting." : "Connected again.");
    }

    // Shows a state. `status` is null for the page's own states (loading, invalid).
    show(state, status, { renewCode, hasRedirect }) {
      const app = (status && status.application_name) || "your authenticator";
      this.heading.textContent = (status && status.application_name) || "Sign in with your phone";
      this.subtitle.hidden = !status;
      const changed = state !== this.state;
      if (changed) {
        const hadFocus = this.element.contains(document.activeElement);
        this.state = state;
        this.svgSource = null;
        this.panel.replaceChildren();
        this.footer.hidden = state !== "created";
        const t = texts(state, app, hasRedirect, status);
        if (state === "created") {
          this.buildCode(app, renewCode);
        } else {
          const result = el("div", { class: "tessera-qr-result" });
          result.append(
            icon(t.icon),
            el(this.titleTag, { class: "tessera-qr-title", id: uniqueId("tessera-qr-status") }, t.title),
            el("p", { class: "tessera-qr-message" }, t.message)
          );
          this.panel.append(result);
        }
        if (state !== "loading") this.announce(t.live || `${t.title} ${t.message}`);
        if (hadFocus && !this.element.contains(document.activeElement)) this.heading.focus();
      }
      if (state === "created" && status) this.updateCode(status, app);
    }

    buildCode(app, renewCode) {
      this.code = el("div", {
        id: uniqueId("tessera-qr-code"),
        class: "tessera-qr-code",
        role: "img",
        "aria-label": `QR code: scan it with the ${app} app to sign in`,
      });
      this.steps = el("ol", { class: "tessera-qr-steps" });
      this.timer = el("p", { class: "tessera-qr-timer" });
      this.renewButton = el("button", { type: "button", class: "tessera-qr-renew" }, "New code");
      this.renewButton.addEventListener("click", () => renewCode());
      this.panel.append(this.code, this.steps, this.timer, this.renewButton);
    }

    updateCode(status, app) {
      this.code.setAttribute("aria-label", `QR code: scan it with the ${app} app to sign in`);
      const steps = [
        `Open the ${app} app on your phone.`,
        "Scan this code with it.",
        "Confirm the sign-in on your phone.",
      ];
      this.steps.replaceChildren(...steps.map((s) => el("li", {}, s)));
      if (status.qr_svg !== this.svgSource) {
        this.svgSource = status.qr_svg;
        const svg = parseSvg(status.qr_svg);
        this.code.replaceChildren(svg || el("span", {}, "The code could not be shown."));
      }
    }

    setTimer(text) {
      if (this.state === "created" && this.timer && this.timer.textContent !== text) {
        this.timer.textContent = text;
      }
    }

    setRenewing(on) {
      if (this.state === "created" && this.renewButton) {
        this.renewButton.disabled = on;
        this.renewButton.textContent = on ? "Getting a new code…" : "New code";
      }
    }
  }

  function start(options) {
    const opts = options || {};
    const element = opts.element;
    if (!(element instanceof Element)) {
      throw new TypeError("TesseraQrLogin.start: options.element must be a DOM element");
    }
    const token = typeof opts.browserToken === "string" ? opts.browserToken.trim() : "";
    const baseUrl = String(opts.baseUrl || "").replace(/\/+$/, "");
    const onChange = typeof opts.onChange === "function" ? opts.onChange : null;
    const onError = typeof opts.onError === "function" ? opts.onError : null;
    const redirect = opts.redirect !== false;
    const view = opts.render === false ? null : new View(element, opts.headingLevel ?? 2);

    let stopped = false; // stop() called, or a final or invalid state reached
    let status = null;
    let poller = null; // AbortController of the request in flight
    let wakeRequested = false;
    let renewing = false;
    let failures = 0;
    let skewMs = 0; // server clock minus local clock, from the Date header when readable
    const timers = new Set();

    const later = (fn, ms) => {
      const id = window.setTimeout(() => {
        timers.delete(id);
        fn();
      }, Math.max(0, ms));
      timers.add(id);
      return id;
    };
    const cancel = (id) => {
      if (id) {
        window.clearTimeout(id);
        timers.delete(id);
      }
    };
    const nowSeconds = () => (Date.now() + skewMs) / 1000;

    function setState(state) {
      element.setAttribute("data-state", state);
    }

    async function request(method, path, signal) {
      let response;
      try {
        response = await fetch(baseUrl + path, {
          method,
          headers: { Authorization: `TesseraBrowser ${token}`, Accept: "application/json" },
          cache: "no-store",
          credentials: "omit",
          referrerPolicy: "no-referrer",
          signal,
        });
      } catch (e) {
        if (signal && signal.aborted) throw new RequestError("aborted", "aborted");
        throw new RequestError("network", (e && e.message) || "network error");
      }
      const date = Date.parse(response.headers.get("date") || "");
      if (!Number.isNaN(date)) skewMs = date - Date.now();
      let body = null;
      try {
        body = await response.json();
      } catch (_) {
        body = null;
      }
      if (response.ok && body && KNOWN_STATES.has(body.state)) return body;
      const message = (body && body.error && body.error.message) || `HTTP ${response.status}`;
      if (response.status === 401) throw new RequestError("unauthorized", message, 401);
      if (response.status === 409) throw new RequestError("conflict", message, 409);
      throw new RequestError("server", message, response.status);
    }

    function notify(next) {
      const detail = Object.freeze({ ...next });
      if (onChange) {
        try {
          onChange(detail);
        } catch (e) {
          console.error("TesseraQrLogin onChange failed", e);
        }
      }
      element.dispatchEvent(new CustomEvent("tessera-qr-login", { detail, bubbles: true }));
    }

    function reportError(code, message) {
      if (!onError) return;
      try {
        onError({ code, message });
      } catch (e) {
        console.error("TesseraQrLogin onError failed", e);
      }
    }

    function invalid(message) {
      halt();
      status = null;
      setState("invalid");
      if (view) {
        view.setReconnecting(false);
        view.show("invalid", null, { renewCode, hasRedirect: false });
      }
      reportError("unauthorized", message || "This sign-in link is not valid");
    }

    // Renewal: a little before the code stops working, while the session outlives it.
    let renewTimer = 0;
    let tickTimer = 0;
    function renewAt() {
      if (!status || status.state !== "created" || !status.code_expires_at) return null;
      if (status.code_expires_at >= status.expires_at) return null;
      return status.code_expires_at - RENEW_BEFORE_SECONDS;
    }

    function scheduleRenew() {
      cancel(renewTimer);
      renewTimer = 0;
      const at = renewAt();
      if (at !== null) renewTimer = later(() => renewCode(false), (at - nowSeconds()) * 1000);
      tick();
    }

    function tick() {
      cancel(tickTimer);
      tickTimer = 0;
      if (!view || stopped || !status || status.state !== "created") return;
      const at = renewAt();
      if (at !== null) {
        const left = at - nowSeconds();
        view.setTimer(left > 0 ? `New code in ${formatSeconds(left)}` : "Getting a new code…");
      } else {
        view.setTimer(`This sign-in expires in ${formatSeconds(status.expires_at - nowSeconds())}`);
      }
      tickTimer = later(tick, 1000 - (Date.now() % 1000) + 20);
    }

    async function renewCode(manual = true) {
      if (renewing || stopped || !status || status.state !== "created") return;
      renewing = true;
      if (view) view.setRenewing(true);
      try {
        accept(await request("POST", "/v1/qr-browser/renew"));
        if (manual && view && status && status.state === "created") view.announce("New code shown.");
      } catch (e) {
        if (e.kind === "unauthorized") {
          invalid(e.message);
        } else if (e.kind === "conflict") {
          wake(); // the session moved on; the long poll tells how
        } else if (!stopped) {
          if (view) view.setReconnecting(true);
          renewTimer = later(() => renewCode(false), 3000);
        }
      } finally {
        renewing = false;
        if (view && !stopped) view.setRenewing(false);
      }
    }

    function accept(next) {
      if (stopped || !next) return;
      if (status && next.version < status.version) return; // an older answer arriving late
      const changed = !status || next.version !== status.version || next.state !== status.state;
      status = next;
      if (!changed) return;
      setState(next.state);
      element.setAttribute("data-version", String(next.version));
      const target = next.state === "approved" && next.redirect_url ? safeRedirect(next.redirect_url) : null;
      if (view) view.show(next.state, next, { renewCode, hasRedirect: redirect && target !== null });
      scheduleRenew();
      notify(next);
      if (FINAL_STATES.has(next.state)) {
        halt();
        if (redirect && target) {
          window.setTimeout(() => window.location.assign(target), REDIRECT_DELAY_MS);
        }
      }
    }

    function wake() {
      if (poller) {
        wakeRequested = true;
        poller.abort();
      }
    }

    async function pollLoop() {
      while (!stopped) {
        // The first call, and the first after a failure, do not wait: the page shows the code
        // at once, and learns at once that the connection is back.
        const wait = status && failures === 0 ? WAIT_SECONDS : 0;
        const query = new URLSearchParams({ wait: String(wait) });
        if (status) query.set("seen", String(status.version));
        const controller = new AbortController();
        poller = controller;
        const timeout = window.setTimeout(() => controller.abort(), (WAIT_SECONDS + 15) * 1000);
        try {
          const next = await request("GET", `/v1/qr-browser?${query}`, controller.signal);
          failures = 0;
          if (view) view.setReconnecting(false);
          accept(next);
        } catch (e) {
          if (stopped) return;
          if (e.kind === "aborted" && wakeRequested) {
            wakeRequested = false;
            continue;
          }
          if (e.kind === "unauthorized") {
            invalid(e.message);
            return;
          }
          const delay = RETRY_DELAYS_MS[Math.min(failures, RETRY_DELAYS_MS.length - 1)];
          failures += 1;
          if (view) view.setReconnecting(true);
          reportError("network", e.message);
          await new Promise((resolve) => later(resolve, delay * (0.8 + Math.random() * 0.4)));
        } finally {
          window.clearTimeout(timeout);
          if (poller === controller) poller = null;
        }
      }
    }

    // A page in a background tab may have slept through its renewal: catch up when shown.
    function onVisible() {
      if (document.visibilityState !== "visible" || stopped) return;
      const at = renewAt();
      if (at !== null && at <= nowSeconds()) renewCode(false);
      wake();
    }

    function halt() {
      stopped = true;
      for (const id of timers) window.clearTimeout(id);
      timers.clear();
      document.removeEventListener("visibilitychange", onVisible);
      if (poller) poller.abort();
    }

    setState("loading");
    if (view) view.show("loading", null, { renewCode, hasRedirect: false });
    if (!/^[A-Za-z0-9._~+/=-]{1,512}$/.test(token)) {
      invalid("no valid browser token");
    } else {
      document.addEventListener("visibilitychange", onVisible);
      pollLoop();
    }

    return {
      stop() {
        halt();
      },
      renew() {
        return renewCode(true);
      },
      get status() {
        return status;
      },
    };
  }

  window.TesseraQrLogin = Object.freeze({ start });

  // The server's standalone page (/qr-login#<browser token>) starts itself.
  function autostart() {
    const root = document.querySelector("[data-tessera-autostart]");
    if (!root || root.hasAttribute("data-tessera-started")) return;
    root.setAttribute("data-tessera-started", "");
    let token = "";
    try {
      token = decodeURIComponent(window.location.hash.replace(/^#/, ""));
    } catch (_) {
      token = "";
    }
    start({
      browserToken: token,
      element: root,
      headingLevel: 1,
      onChange(status) {
        if (status.application_name) document.title = `Sign in to ${status.application_name}`;
      },
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", autostart, { once: true });
  } else {
    autostart();
  }
})();
