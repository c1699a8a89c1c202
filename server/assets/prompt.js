/*
 * Tessera hosted prompt: runs one authentication flow in the browser.
 *
 * The browser token arrives in the URL fragment (never sent to a server or in a Referer); the
 * page keeps it for this tab only and calls /v1/flow-browser with it as a Bearer token. It
 * follows the flow with an event-driven long poll (?wait=&seen=), shows what each status needs,
 * sends the user's choices as flow actions, and, once the flow is over, shows the result briefly
 * and goes back to the application's return_url exactly as the flow was given it.
 *
 * Every text comes from the server (Fluent, in the flow's language) and every value is put
 * into the document as text (textContent), never as markup.
 */
(function () {
  "use strict";

  var API = "/v1/flow-browser";
  var WAIT_SECONDS = 25;
  var RESULT_PAUSE_MS = 1500;
  var FINAL = { MFA_COMPLETED: true, MFA_FAILED: true, CANCELED: true };
  var STORAGE_KEY = "tessera-prompt-token";

  var root = document.getElementById("prompt");
  var heading = document.getElementById("heading");
  var appLine = document.getElementById("app");
  var notes = document.getElementById("notes");
  var body = document.getElementById("body");
  var errorBox = document.getElementById("error");
  var actionsBox = document.getElementById("actions");
  var live = document.getElementById("live");

  var texts = {};
  try {
    var initial = JSON.parse(document.getElementById("tessera-texts").textContent);
    texts = initial[1] || {};
  } catch (e) {
    texts = {};
  }

  function t(id) {
    return Object.prototype.hasOwnProperty.call(texts, id) ? texts[id] : id;
  }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (k === "hidden" || k === "disabled" || k === "readOnly" || k === "required") {
          node[k] = !!attrs[k];
        } else {
          node.setAttribute(k, attrs[k]);
        }
      });
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  // The token: from the fragment (then removed from the address bar), or this tab's copy. A
  // fragment with "=" is not a token but an app's answer in the web-view scheme mode (below).
  var token = (location.hash || "").replace(/^#/, "");
  var arrivedFromApp = null;
  if (token.indexOf("=") >= 0) {
    arrivedFromApp = token;
    token = "";
  }
  try {
    if (token) sessionStorage.setItem(STORAGE_KEY, token);
    else token = sessionStorage.getItem(STORAGE_KEY) || "";
    if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  } catch (e) {
    /* storage unavailable: keep the token in memory */
  }

  var state = null;
  var busy = false;
  var leaving = false;
  var showDevices = false;
  var startedOnce = false;
  var lastAnnounced = "";

  function announce(text) {
    if (text && text !== lastAnnounced) {
      lastAnnounced = text;
      live.textContent = text;
    }
  }

  function showError(text) {
    if (text) {
      errorBox.textContent = text;
      errorBox.hidden = false;
    } else {
      errorBox.textContent = "";
      errorBox.hidden = true;
    }
  }

  function ApiFailure(status, code, message) {
    this.status = status;
    this.code = code;
    this.message = message;
  }

  function call(method, query, payload) {
    var init = {
      method: method,
      headers: { Authorization: "Bearer " + token, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    };
    if (payload) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    return fetch(API + (query || ""), init).then(function (response) {
      return response.json().then(
        function (json) {
          if (response.ok) return json;
          var err = (json && json.error) || {};
          throw new ApiFailure(response.status, err.code || "unknown", err.message || "");
        },
        function () {
          throw new ApiFailure(response.status, "unknown", "");
        }
      );
    });
  }

  function invalidLink() {
    leaving = true;
    root.setAttribute("data-state", "INVALID");
    root.setAttribute("aria-busy", "false");
    clear(notes);
    clear(actionsBox);
    clear(body);
    appLine.hidden = true;
    heading.textContent = t("page-title");
    body.appendChild(el("p", { class: "result bad", id: "result" }, t("invalid-link")));
    announce(t("invalid-link"));
  }

  function fail(err) {
    if (err instanceof ApiFailure) {
      if (err.status === 401) return invalidLink();
      if (err.code === "otp_invalid") return showError(t("otp-invalid"));
      if (err.code === "otp_locked") return showError(t("result-otp_locked"));
      if (/^fido_/.test(err.code)) return showFidoError(err.code);
      return showError(t("error-generic"));
    }
    showError(t("error-network"));
  }

  function allowed(name) {
    return !!state && state.actions.indexOf(name) >= 0;
  }

  function act(action, extra) {
    if (busy || leaving) return Promise.resolve();
    busy = true;
    setDisabled(true);
    var payload = { action: action };
    if (extra) Object.keys(extra).forEach(function (k) { payload[k] = extra[k]; });
    return call("POST", "", payload)
      .then(function (next) {
        showError("");
        if (action === "resendOtp") announce(t("code-sent"));
        accept(next, true);
      })
      .catch(function (err) {
        fail(err);
        // The flow may have moved (a locked passcode ends it): read it again.
        return call("GET", "").then(function (next) { accept(next, false); }, function () {});
      })
      .then(function () {
        busy = false;
        setDisabled(false);
      });
  }

  function setDisabled(on) {
    var controls = root.querySelectorAll("button, input");
    for (var i = 0; i < controls.length; i++) controls[i].disabled = on;
  }

  function button(label, onClick, primary, name) {
    var b = el("button", { type: "button", class: primary ? "primary" : "" }, label);
    if (name) b.setAttribute("data-action", name);
    b.addEventListener("click", onClick);
    return b;
  }

  function deviceLabel(device) {
    var kind = {
      MOBILE: "device-mobile",
      SMS: "device-sms",
      VOICE: "device-voice",
      EMAIL: "device-email",
      OATH_TOKEN: "device-oath",
      SECURITY_KEY: "device-security-key",
      PLATFORM: "device-platform",
      FIDO2_BIOMETRICS: "device-fido2-biometrics",
    }[device.type] || "device-mobile";
    var label = t(kind) + " " + device.nickname;
    if (device.default) label += " " + t("default-device");
    return label;
  }

  function deviceList() {
    var list = el("ul", { class: "devices", "aria-label": t("choose-device") });
    state.devices.forEach(function (device, index) {
      var item = el("li");
      var b = button(deviceLabel(device), function () {
        showDevices = false;
        act("selectDevice", { device_id: device.id });
      }, false, "selectDevice");
      b.setAttribute("data-device-index", String(index));
      b.setAttribute("data-device-type", device.type);
      if (state.selected_device === device.id) b.setAttribute("aria-current", "true");
      item.appendChild(b);
      list.appendChild(item);
    });
    return list;
  }

  // A form for one typed code: its input (`id`, extra input attributes), its label and the flow
  // action it sends with the code under `field` (spaces removed); the field is emptied and
  // focused again after each answer.
  function codeForm(id, attributes, label, action, field) {
    var form = el("form", { id: id + "-form", novalidate: "" });
    var inputAttributes = {
      id: id,
      name: id,
      type: "text",
      autocapitalize: "off",
      spellcheck: "false",
      required: true,
    };
    Object.keys(attributes).forEach(function (name) {
      inputAttributes[name] = attributes[name];
    });
    var input = el("input", inputAttributes);
    form.appendChild(el("label", { for: id }, t(label)));
    form.appendChild(input);
    var submit = el("button", { type: "submit", class: "primary", "data-action": action }, t("verify"));
    form.appendChild(el("div", { class: "actions" })).appendChild(submit);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var code = input.value.replace(/\s+/g, "");
      if (!code) {
        input.focus();
        return;
      }
      var body = {};
      body[field] = code;
      act(action, body).then(function () {
        var again = document.getElementById(id);
        if (again) {
          again.value = "";
          again.focus();
        }
      });
    });
    return form;
  }

  function otpForm() {
    return codeForm(
      "otp",
      { inputmode: "numeric", autocomplete: "one-time-code", maxlength: "16" },
      "otp-label",
      "checkOtp",
      "otp"
    );
  }

  // --- Recovery codes (docs/bypass-and-recovery.md) ------------------------------------------
  // Where the flow offers checkRecoveryCode, a "use a recovery code" button opens a form of its
  // own; the code is sent as the flow action and is never kept by the page.
  var showRecoveryCode = false;

  function recoveryCodeForm() {
    return codeForm(
      "recovery-code",
      { autocomplete: "off", maxlength: "32" },
      "recovery-code-label",
      "checkRecoveryCode",
      "recovery_code"
    );
  }

  function addRecoveryCodeEntry() {
    if (!allowed("checkRecoveryCode")) {
      showRecoveryCode = false;
      return;
    }
    if (showRecoveryCode) {
      body.appendChild(recoveryCodeForm());
      return;
    }
    actionsBox.appendChild(button(t("use-recovery-code"), function () {
      showRecoveryCode = true;
      render();
      var input = document.getElementById("recovery-code");
      if (input) input.focus();
    }, false, "useRecoveryCode"));
  }
  // --- end of recovery codes -----------------------------------------------------------------

  function statusText(s) {
    switch (s.status) {
      case "DEVICE_SELECTION_REQUIRED": return t("choose-device");
      case "PUSH_CONFIRMATION_WAITING": return t("push-waiting");
      case "PUSH_CONFIRMATION_REJECTED": return t("push-rejected");
      case "PUSH_CONFIRMATION_TIMED_OUT": return t("push-timed-out");
      case "OTP_REQUIRED": {
        var source = (s.otp && s.otp.source) || "app";
        var key = { app: "otp-app", oath_token: "otp-oath", sms: "otp-sms", voice: "otp-voice", email: "otp-email" }[source] || "otp-app";
        var text = t(key);
        if (s.otp && s.otp.destination) text += " " + s.otp.destination;
        return text;
      }
      case "MOBILE_PAIRING_REQUIRED": return t("pairing-title");
      case "MFA_SETUP_REQUIRED": return t("setup-title");
      case "ASSERTION_REQUIRED": return t("fido-assertion");
      default:
        if (FINAL[s.status]) return t("result-" + (s.result || (s.status === "CANCELED" ? "canceled" : "failed")));
        return t("loading");
    }
  }

  function render() {
    var s = state;
    root.setAttribute("data-state", s.status);
    root.setAttribute("data-version", String(s.version));
    root.setAttribute("aria-busy", "false");
    document.documentElement.lang = s.lang;
    document.title = t("page-title");
    heading.textContent = t("page-title");
    appLine.textContent = t("signing-in-to") + " " + s.application_name;
    appLine.hidden = false;

    clear(notes);
    if (s.admin_message) {
      var note = el("div", { class: "note", id: "admin-message" });
      note.appendChild(el("strong", null, t("admin-message")));
      note.appendChild(el("span", null, s.admin_message));
      notes.appendChild(note);
    }
    if (s.message) notes.appendChild(el("p", { class: "muted", id: "message" }, s.message));

    clear(body);
    clear(actionsBox);
    var main = statusText(s);
    body.appendChild(el("p", { id: "status-text" }, main));

    switch (s.status) {
      case "DEVICE_SELECTION_REQUIRED":
        body.appendChild(deviceList());
        break;
      case "PUSH_CONFIRMATION_WAITING":
        if (s.number_to_show !== undefined && s.number_to_show !== null) {
          body.appendChild(el("p", { class: "muted" }, t("push-number")));
          body.appendChild(el("p", { class: "number", id: "number", "aria-label": t("push-number") + " " + s.number_to_show }, s.number_to_show));
        }
        if (allowed("useCode")) actionsBox.appendChild(button(t("use-code"), function () { act("useCode"); }, false, "useCode"));
        break;
      case "PUSH_CONFIRMATION_REJECTED":
      case "PUSH_CONFIRMATION_TIMED_OUT":
        if (allowed("authenticate")) actionsBox.appendChild(button(t("send-again"), function () { act("authenticate"); }, true, "authenticate"));
        if (allowed("useCode")) actionsBox.appendChild(button(t("use-code"), function () { act("useCode"); }, false, "useCode"));
        break;
      case "OTP_REQUIRED":
        body.appendChild(otpForm());
        if (allowed("resendOtp")) actionsBox.appendChild(button(t("resend"), function () { act("resendOtp"); }, false, "resendOtp"));
        break;
      case "MOBILE_PAIRING_REQUIRED":
        if (s.pairing) {
          // In an app's web view the app gets the payload itself (webViewAfterRender).
          if (!s.web_view) body.appendChild(el("p", null, t("pairing-instructions")));
          if (s.pairing.qr_svg && !s.web_view) {
            body.appendChild(el("img", {
              class: "qr",
              id: "pairing-qr",
              alt: t("pairing-payload-label"),
              src: "data:image/svg+xml;charset=utf-8," + encodeURIComponent(s.pairing.qr_svg),
            }));
          }
          if (!s.web_view) {
            body.appendChild(el("label", { for: "pairing-payload" }, t("pairing-payload-label")));
            var area = el("textarea", { id: "pairing-payload", readonly: "", rows: "4" });
            area.value = s.pairing.server_payload;
            body.appendChild(area);
          }
          body.appendChild(el("p", { class: "muted", id: "pairing-state" },
            t(s.pairing.state === "pending_verification" ? "pairing-pending" : "pairing-active")));
        }
        pairingPasscode(s);
        if (allowed("continueAuthentication")) actionsBox.appendChild(button(t("continue"), function () { act("continueAuthentication"); }, true, "continueAuthentication"));
        break;
      case "MFA_SETUP_REQUIRED":
        body.appendChild(el("p", null, t("setup-instructions")));
        if (s.mfa_setup) {
          var list = el("ul", { class: "methods", id: "methods" });
          s.mfa_setup.mandatory.forEach(function (method) {
            var done = s.mfa_setup.done.indexOf(method) >= 0;
            var item = el("li");
            item.appendChild(el("span", null, method));
            item.appendChild(el("span", { class: done ? "done" : "missing" }, t(done ? "setup-done" : "setup-missing")));
            list.appendChild(item);
          });
          body.appendChild(list);
        }
        fidoSetupControls(s);
        if (allowed("continueAuthentication")) actionsBox.appendChild(button(t("continue"), function () { act("continueAuthentication"); }, true, "continueAuthentication"));
        break;
      case "ASSERTION_REQUIRED":
        fidoAssertionControls(s);
        break;
      default:
        break;
    }

    if (FINAL[s.status]) {
      clear(body);
      var good = s.status === "MFA_COMPLETED";
      body.appendChild(el("p", { class: "result " + (good ? "ok" : "bad"), id: "result" }, main));
      body.appendChild(el("p", { class: "muted" }, t("returning")));
      announce(main + " " + t("returning"));
      leave();
      return;
    }

    qrAlternative(s);

    if (allowed("selectDevice") && s.status !== "DEVICE_SELECTION_REQUIRED" && s.devices.length > 1) {
      if (showDevices) {
        body.appendChild(deviceList());
      } else {
        actionsBox.appendChild(button(t("other-device"), function () {
          showDevices = true;
          render();
          var first = body.querySelector("ul.devices button");
          if (first) first.focus();
        }, false, "otherDevice"));
      }
    }
    addRecoveryCodeEntry();
    if (allowed("cancelAuthentication")) {
      actionsBox.appendChild(button(t("cancel"), function () { act("cancelAuthentication"); }, false, "cancelAuthentication"));
    }
    announce(main + (s.number_to_show !== undefined && s.number_to_show !== null ? " " + t("push-number") + " " + s.number_to_show : ""));
    fidoAfterRender(s);
  }

  /* ---------------------------------------------------------------------------------------
   * WebAuthn (FIDO2): the two ceremonies with navigator.credentials. The server sends the
   * options as JSON with binary members in base64url; they become ArrayBuffers here, and the
   * authenticator's answer goes back as JSON with base64url members (the shape the server's
   * WebAuthn library reads). A ceremony runs by itself once per flow version (and again on the
   * user's click), once per challenge; a refused one asks the server for a new challenge ("Try again").
   * ------------------------------------------------------------------------------------- */

  var fidoRanForChallenge = "";

  function b64urlToBuffer(text) {
    var base64 = String(text).replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) base64 += "=";
    var binary = atob(base64);
    var bytes = new Uint8Array(binary.length);
    for (var i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  function bufferToB64url(buffer) {
    if (!buffer) return null;
    var bytes = new Uint8Array(buffer);
    var binary = "";
    for (var i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (d) {
      var out = { type: d.type, id: b64urlToBuffer(d.id) };
      if (d.transports) out.transports = d.transports;
      return out;
    });
  }

  function requestOptions(options) {
    var pk = Object.assign({}, options.publicKey);
    pk.challenge = b64urlToBuffer(pk.challenge);
    pk.allowCredentials = descriptors(pk.allowCredentials);
    return { publicKey: pk };
  }

  function creationOptions(options) {
    var pk = Object.assign({}, options.publicKey);
    pk.challenge = b64urlToBuffer(pk.challenge);
    pk.user = Object.assign({}, pk.user, { id: b64urlToBuffer(pk.user.id) });
    pk.excludeCredentials = descriptors(pk.excludeCredentials);
    return { publicKey: pk };
  }

  function extensionResults(credential) {
    try { return credential.getClientExtensionResults() || {}; } catch (e) { return {}; }
  }

  function assertionJson(credential) {
    var r = credential.response;
    return {
      id: credential.id,
      rawId: bufferToB64url(credential.rawId),
      type: credential.type,
      response: {
        authenticatorData: bufferToB64url(r.authenticatorData),
        clientDataJSON: bufferToB64url(r.clientDataJSON),
        signature: bufferToB64url(r.signature),
        userHandle: bufferToB64url(r.userHandle),
      },
      extensions: extensionResults(credential),
    };
  }

  function registrationJson(credential) {
    var r = credential.response;
    var out = {
      id: credential.id,
      rawId: bufferToB64url(credential.rawId),
      type: credential.type,
      response: {
        attestationObject: bufferToB64url(r.attestationObject),
        clientDataJSON: bufferToB64url(r.clientDataJSON),
      },
      extensions: extensionResults(credential),
    };
    if (typeof r.getTransports === "function") out.response.transports = r.getTransports();
    return out;
  }

  function fidoSupported() {
    return !!(window.PublicKeyCredential && navigator.credentials);
  }

  function showFidoError(code) {
    showError(t("fido-failed"));
    errorBox.setAttribute("data-code", code);
  }

  function runAssertion() {
    var fido = state && state.fido;
    if (!fido || !fido.request_options || busy) return;
    if (!fidoSupported()) return showError(t("fido-unsupported"));
    showError("");
    errorBox.removeAttribute("data-code");
    navigator.credentials.get(requestOptions(fido.request_options)).then(function (credential) {
      return act("checkAssertion", { credential: assertionJson(credential) });
    }, function () {
      showFidoError("fido_ceremony_failed");
    });
  }

  function runRegistration() {
    var fido = state && state.fido;
    if (!fido || !fido.creation_options || busy) return;
    if (!fidoSupported()) return showError(t("fido-unsupported"));
    showError("");
    errorBox.removeAttribute("data-code");
    navigator.credentials.create(creationOptions(fido.creation_options)).then(function (credential) {
      return act("checkRegistration", { credential: registrationJson(credential) });
    }, function () {
      showFidoError("fido_ceremony_failed");
    });
  }

  function fidoAssertionControls(s) {
    if (s.fido && s.fido.request_options) {
      actionsBox.appendChild(button(t("fido-start"), runAssertion, true, "checkAssertion"));
    }
    if (allowed("authenticate")) {
      actionsBox.appendChild(button(t("fido-retry"), function () { act("authenticate"); }, false, "authenticate"));
    }
  }

  function fidoSetupControls(s) {
    if (!allowed("startRegistration") || !s.mfa_setup) return;
    [["SECURITY_KEY", "fido-register-security-key"], ["PLATFORM", "fido-register-platform"]].forEach(function (pair) {
      if (s.mfa_setup.missing.indexOf(pair[0]) < 0) return;
      var b = button(t(pair[1]), function () { act("startRegistration", { method: pair[0] }); }, true, "startRegistration");
      b.setAttribute("data-method", pair[0]);
      actionsBox.appendChild(b);
    });
  }

  // A ceremony the flow waits for starts by itself, once per challenge (a refused answer
  // consumes the challenge: the user asks for a new one with "Try again").
  function fidoAfterRender(s) {
    var options = s.fido && (s.fido.request_options || s.fido.creation_options);
    var challenge = options && options.publicKey && options.publicKey.challenge;
    if (!challenge || fidoRanForChallenge === challenge) return;
    fidoRanForChallenge = challenge;
    if (s.status === "ASSERTION_REQUIRED" && s.fido.request_options) {
      whenIdle(runAssertion, challenge);
    } else if (s.status === "MFA_SETUP_REQUIRED" && s.fido.creation_options) {
      whenIdle(runRegistration, challenge);
    }
  }

  // Runs `ceremony` once no action is under way, if the flow still waits for `challenge`.
  function whenIdle(ceremony, challenge) {
    if (leaving) return;
    if (busy) {
      setTimeout(function () { whenIdle(ceremony, challenge); }, 50);
      return;
    }
    var options = state.fido && (state.fido.request_options || state.fido.creation_options);
    if (options && options.publicKey && options.publicKey.challenge === challenge) ceremony();
  }

  // ---- New-device approval by a passcode sent to the user's phone or email ----------------
  // While the new device is held for it, the flow expects the passcode (checkOtp) right here.
  function pairingPasscode(s) {
    if (!s.otp || !allowed("checkOtp")) return;
    var where = s.otp.destination ? " " + s.otp.destination : "";
    body.appendChild(el("p", { id: "pairing-passcode" }, t("pairing-passcode") + where));
    body.appendChild(otpForm());
    if (allowed("resendOtp")) actionsBox.appendChild(button(t("resend"), function () { act("resendOtp"); }, false, "resendOtp"));
  }

  // ---- QR login as the alternative (useQrCode) ------------------------------------------
  // The flow shows a QR code bound to it: only the flow's user's app can answer it, and its
  // approval completes the flow (the long poll sees the flow move). A code that is due for
  // renewal is replaced by a fresh one (useQrCode again) while the page stays open.
  var qrRenewTimer = null;

  function qrAlternative(s) {
    if (qrRenewTimer) {
      clearTimeout(qrRenewTimer);
      qrRenewTimer = null;
    }
    var qr = s.qr;
    if (qr && qr.qr_svg) {
      var box = el("div", { id: "qr-alternative", "data-qr-state": qr.state });
      box.appendChild(el("p", null, t("qr-instructions")));
      box.appendChild(el("img", {
        class: "qr",
        id: "flow-qr",
        alt: t("qr-image-label"),
        src: "data:image/svg+xml;charset=utf-8," + encodeURIComponent(qr.qr_svg),
      }));
      body.appendChild(box);
      if (qr.code_expires_at && allowed("useQrCode")) {
        var delay = Math.min(Math.max(qr.code_expires_at * 1000 - Date.now() - 2000, 5000), 600000);
        var shownSession = qr.session_id;
        qrRenewTimer = setTimeout(function () {
          if (state && state.qr && state.qr.session_id === shownSession && state.qr.state === "created") act("useQrCode");
        }, delay);
      }
    } else if (qr && qr.number_to_show !== undefined && qr.number_to_show !== null) {
      body.appendChild(el("p", { class: "muted" }, t("push-number")));
      body.appendChild(el("p", { class: "number", id: "qr-number" }, qr.number_to_show));
    } else if (qr && qr.state === "created" && allowed("useQrCode")) {
      actionsBox.appendChild(button(t("qr-new-code"), function () { act("useQrCode"); }, false, "useQrCode"));
    }
    if (!qr && allowed("useQrCode")) {
      actionsBox.appendChild(button(t("qr-use"), function () { act("useQrCode"); }, false, "useQrCode"));
    }
  }

  // Goes back to the application, to the return_url exactly as the flow was given it (the
  // server checked it is an absolute https URL, or http on a loopback host).
  function leave() {
    if (leaving) return;
    leaving = true;
    try { sessionStorage.removeItem(STORAGE_KEY); } catch (e) { /* nothing kept */ }
    var target = state.return_url;
    if (!/^https?:\/\//i.test(target)) return;
    setTimeout(function () { location.replace(target); }, RESULT_PAUSE_MS);
  }

  function typedFields() {
    var values = {};
    Array.prototype.forEach.call(root.querySelectorAll("input[id]"), function (input) {
      if (input.value) values[input.id] = input.value;
    });
    var active = document.activeElement;
    var focused = active && active.tagName === "INPUT" && active.id && root.contains(active)
      ? { id: active.id, start: active.selectionStart, end: active.selectionEnd }
      : null;
    return { values: values, focused: focused };
  }

  function restoreTyped(typed) {
    Object.keys(typed.values).forEach(function (id) {
      var input = document.getElementById(id);
      if (input && !input.value) input.value = typed.values[id];
    });
    if (typed.focused) {
      var again = document.getElementById(typed.focused.id);
      if (again) {
        again.focus();
        try { again.setSelectionRange(typed.focused.start, typed.focused.end); } catch (e) { /* not a text field */ }
      }
    }
  }

  function accept(next, moveFocus) {
    if (!next || leaving) return;
    if (state && next.version < state.version) return; // an older answer overtaken by a newer
    var changed = !state || state.version !== next.version || state.lang !== next.lang;
    var statusChanged = !state || state.status !== next.status;
    texts = next.texts || texts;
    state = next;
    if (changed) {
      if (statusChanged) showDevices = false;
      // The same state drawn again (its version moved: a pairing's progress, a resent code)
      // keeps what the user is typing: the fields' values and the focused field's caret.
      var typed = statusChanged ? null : typedFields();
      render();
      if (typed) restoreTyped(typed);
      if (statusChanged && moveFocus !== false) {
        var input = document.getElementById("otp");
        (input || heading).focus();
      }
    }
    // A new flow starts by itself: the page asks the default device (or for a choice); in an
    // app's web view it first asks the app to authorize the flow (or to register).
    if (state.status === "AUTHENTICATION_REQUIRED" && allowed("authenticate") && !startedOnce) {
      startedOnce = true;
      if (!webViewStart()) act("authenticate");
    }
    webViewAfterRender();
  }

  /* ---------------------------------------------------------------------------------------
   * The web-view contract (docs/flows.md, "The hosted page in an app's web view"). When the
   * flow was created with hosted.web_view, the page asks the app that shows it, through a
   * JavaScript bridge or the app's own scheme:
   *   tessera.authorization {server, authorization_nonce}  -> {authorization_payload}
   *     (an answer "not_paired" -> tessera.register; any other error or no answer in time ->
   *     the normal prompt: authenticate, push or device selection)
   *   tessera.register {server}                            -> {mobile_payload}
   *   tessera.register.complete {server, server_payload}   -> {enrollment_id}
   *     (then continueAuthentication once the pairing is active)
   * Every message carries the flow's id and a fresh random request_id; an answer counts only
   * with type "<type>.result", the same flow_id and that request_id, while it is awaited.
   * Anything else is ignored. The page does not listen to window "message" events (any window
   * could post those).
   * ------------------------------------------------------------------------------------- */

  var WEB_VIEW_PENDING_KEY = "tessera-prompt-web-view";
  var PAYLOAD_MAX = 16384;
  var PAYLOAD_SHAPE = /^[A-Za-z0-9._~+\/=-]+$/;
  var SCHEME_SHAPE = /^[a-z][a-z0-9+-]*(\.[a-z][a-z0-9+-]*)+$/;
  var webViewPending = null; // {type, request_id, timer}
  var webViewAskedComplete = "";
  var webViewPaired = "";
  var webViewContinued = "";

  function randomId() {
    var bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return (b < 16 ? "0" : "") + b.toString(16); }).join("");
  }

  // The app's native side: Android's addWebMessageListener object, or iOS's message handler.
  function nativeBridge() {
    var android = window.TesseraBridge;
    if (android && typeof android.postMessage === "function") {
      if (!android.__tesseraListening) {
        android.onmessage = function (event) { receiveFromApp(event && event.data); };
        android.__tesseraListening = true;
      }
      return function (json) { android.postMessage(json); };
    }
    var ios = window.webkit && window.webkit.messageHandlers && window.webkit.messageHandlers.tessera;
    if (ios && typeof ios.postMessage === "function") return function (json) { ios.postMessage(json); };
    return null;
  }

  // iOS (and any app that evaluates JavaScript) answers with window.TesseraPrompt.receive(json).
  try {
    Object.defineProperty(window, "TesseraPrompt", {
      value: Object.freeze({ receive: function (message) { receiveFromApp(message); } }),
      writable: false,
      configurable: false,
    });
  } catch (e) {
    /* defined already: nothing to replace */
  }

  function rememberPending(pending) {
    try {
      if (pending) sessionStorage.setItem(WEB_VIEW_PENDING_KEY, JSON.stringify({ type: pending.type, request_id: pending.request_id }));
      else sessionStorage.removeItem(WEB_VIEW_PENDING_KEY);
    } catch (e) {
      /* in memory only */
    }
  }

  // Sends one message to the app; false when it cannot be sent (no bridge: no app).
  function askApp(name, fields) {
    var w = state && state.web_view;
    if (!w || webViewPending) return false;
    var message = { type: "tessera." + name, flow_id: state.flow_id, request_id: randomId() };
    Object.keys(fields).forEach(function (k) { message[k] = fields[k]; });
    var send;
    if (w.mode === "bridge") {
      send = nativeBridge();
      if (!send) return false;
    } else if (w.mode === "scheme" && SCHEME_SHAPE.test(w.scheme || "")) {
      send = function () {
        var query = new URLSearchParams();
        Object.keys(message).forEach(function (k) { if (k !== "type") query.set(k, message[k]); });
        query.set("return_url", location.origin + location.pathname);
        location.href = w.scheme + "://tessera/" + name + "?" + query.toString();
      };
    } else {
      return false;
    }
    var pending = { type: message.type, request_id: message.request_id, timer: null };
    pending.timer = setTimeout(function () {
      if (webViewPending === pending) {
        webViewPending = null;
        rememberPending(null);
        onAppAnswer(pending.type, null);
      }
    }, Math.max(1, w.timeout_seconds) * 1000);
    webViewPending = pending;
    rememberPending(pending);
    root.setAttribute("data-web-view", message.type);
    send(JSON.stringify(message));
    return true;
  }

  function receiveFromApp(raw) {
    var message = raw;
    if (typeof raw === "string") {
      if (raw.length > 4 * PAYLOAD_MAX) return;
      try { message = JSON.parse(raw); } catch (e) { return; }
    }
    var pending = webViewPending;
    if (!pending || !state || !message || typeof message !== "object") return;
    if (message.type !== pending.type + ".result" || message.flow_id !== state.flow_id ||
        message.request_id !== pending.request_id) return;
    clearTimeout(pending.timer);
    webViewPending = null;
    rememberPending(null);
    onAppAnswer(pending.type, message);
  }

  function payloadIn(message, name) {
    var value = message && message[name];
    return typeof value === "string" && value.length <= PAYLOAD_MAX && PAYLOAD_SHAPE.test(value) ? value : null;
  }

  // Applies an action as soon as no other is under way.
  function actWhenIdle(action, extra) {
    if (leaving) return;
    if (busy) {
      setTimeout(function () { actWhenIdle(action, extra); }, 50);
      return;
    }
    act(action, extra);
  }

  // What the page does with the app's answer (null: none in time).
  function onAppAnswer(type, message) {
    root.removeAttribute("data-web-view");
    var w = state && state.web_view;
    var starting = state && state.status === "AUTHENTICATION_REQUIRED" && allowed("authenticate");
    if (type === "tessera.authorization" && starting) {
      var authorization = payloadIn(message, "authorization_payload");
      if (authorization) return actWhenIdle("authenticate", { authorization_payload: authorization });
      if (message && message.error === "not_paired" && w && askApp("register", { server: w.server })) return;
      return actWhenIdle("authenticate");
    }
    if (type === "tessera.register" && starting) {
      var mobile = payloadIn(message, "mobile_payload");
      return actWhenIdle("authenticate", mobile ? { mobile_payload: mobile } : undefined);
    }
    if (type === "tessera.register.complete") {
      if (message && !message.error && state && state.pairing) {
        webViewPaired = state.pairing.server_payload;
        return continueWhenPaired();
      }
      showError(t("error-generic"));
    }
  }

  function continueWhenPaired() {
    var s = state;
    if (!s || s.status !== "MOBILE_PAIRING_REQUIRED" || !s.pairing) return;
    var payload = s.pairing.server_payload;
    if (webViewPaired !== payload || webViewContinued === payload) return;
    if (s.pairing.state !== "active" || !allowed("continueAuthentication")) return;
    webViewContinued = payload;
    actWhenIdle("continueAuthentication");
  }

  // A flow created for a web view starts by asking the app; false when there is no app.
  function webViewStart() {
    var w = state.web_view;
    if (!w) return false;
    return askApp("authorization", { server: w.server, authorization_nonce: w.authorization_nonce });
  }

  function webViewAfterRender() {
    var s = state;
    if (!s || !s.web_view || leaving) return;
    if (s.status === "MOBILE_PAIRING_REQUIRED" && s.pairing && s.pairing.server_payload &&
        webViewAskedComplete !== s.pairing.server_payload && !webViewPending) {
      webViewAskedComplete = s.pairing.server_payload;
      askApp("register.complete", { server: s.web_view.server, server_payload: s.pairing.server_payload });
    }
    continueWhenPaired();
  }

  // An answer in the fragment (scheme mode): the app loaded the return URL with "#type=…".
  function answerInFragment(fragment) {
    var answer = {};
    new URLSearchParams(fragment).forEach(function (value, key) { answer[key] = value; });
    return answer;
  }

  window.addEventListener("hashchange", function () {
    var fragment = (location.hash || "").replace(/^#/, "");
    if (fragment.indexOf("=") < 0) return;
    try { history.replaceState(null, "", location.pathname + location.search); } catch (e) { /* kept */ }
    receiveFromApp(answerInFragment(fragment));
  });

  // The page was loaded again with the answer (an app that loads the return URL afresh): the
  // question it answers was kept in this tab's storage; the answer is taken once the flow is read.
  var restoredQuestion = null;
  try {
    restoredQuestion = JSON.parse(sessionStorage.getItem(WEB_VIEW_PENDING_KEY) || "null");
  } catch (e) {
    restoredQuestion = null;
  }
  if (restoredQuestion && typeof restoredQuestion.type === "string" && typeof restoredQuestion.request_id === "string") {
    startedOnce = true;
  } else {
    restoredQuestion = null;
  }

  function takeRestoredAnswer() {
    if (!restoredQuestion || !state) return;
    var question = restoredQuestion;
    restoredQuestion = null;
    webViewPending = { type: question.type, request_id: question.request_id, timer: null };
    var timeout = (state.web_view && state.web_view.timeout_seconds) || 15;
    var pending = webViewPending;
    pending.timer = setTimeout(function () {
      if (webViewPending === pending) {
        webViewPending = null;
        rememberPending(null);
        onAppAnswer(pending.type, null);
      }
    }, timeout * 1000);
    if (arrivedFromApp) receiveFromApp(answerInFragment(arrivedFromApp));
    arrivedFromApp = null;
  }

  function pollLoop() {
    if (leaving) return;
    var query = state ? "?wait=" + WAIT_SECONDS + "&seen=" + state.version : "";
    call("GET", query)
      .then(function (next) {
        accept(next, true);
        takeRestoredAnswer();
        setTimeout(pollLoop, 0);
      })
      .catch(function (err) {
        if (err instanceof ApiFailure && err.status === 401) return invalidLink();
        fail(err);
        setTimeout(pollLoop, 2000);
      });
  }

  if (!token || !/^[A-Za-z0-9_-]{20,128}$/.test(token)) {
    invalidLink();
  } else {
    pollLoop();
  }
})();
