"""The SDK's flows through the generated Python module, against a real tessera-server process:
pairing (URI, typed code, relay), push approval, denial, a transaction with fields and user
verification, silent verification, number matching, QR login with two users on one device, OTP,
reopening, and errors raised as Python exceptions with stable codes.

Run through bindings/tests/run.sh (it generates the module and builds the server)."""

import asyncio
import base64
import json
import os
import sys
import tempfile
import unittest
from urllib.parse import quote

sys.path.insert(0, os.environ.get("TESSERA_PYTHON_BINDINGS", ""))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tessera as t  # noqa: E402  (the generated module)
from harness import ApiError, PushReceiver, Server, TlsProxy  # noqa: E402


def run(coroutine):
    async def main():
        # Async foreign callbacks (the user verifier) run on this test's loop.
        t.uniffi_set_event_loop(asyncio.get_running_loop())
        return await coroutine

    return asyncio.run(main())


class Verifier(t.UserVerifier):
    """The user-verification prompt, answered as a user would."""

    def __init__(self, amr=("fpt",), cancel=False):
        self.amr, self.cancel, self.reasons = list(amr), cancel, []

    async def verify_user(self, reason):
        self.reasons.append(reason)
        await asyncio.sleep(0)
        if self.cancel:
            raise t.PlatformError.UserCancelled()
        return self.amr


class RecordingKeyStore(t.PlatformKeyStore):
    """A key store written in Python (the foreign-trait path an app takes): keys live in the
    SDK's software store, and every signature is recorded with the kind of key that made it."""

    def __init__(self):
        self.inner = t.software_key_store(None)
        self.kinds, self.signed = {}, []

    def generate_signing_key(self, alias, kind):
        self.kinds[alias] = kind
        return self.inner.generate_signing_key(alias, kind)

    def public_key(self, alias):
        return self.inner.public_key(alias)

    def sign(self, alias, data):
        self.signed.append(self.kinds.get(alias))
        return self.inner.sign(alias, data)

    def delete_key(self, alias):
        self.kinds.pop(alias, None)
        self.inner.delete_key(alias)

    def seal(self, alias, plaintext):
        return self.inner.seal(alias, plaintext)

    def open(self, alias, sealed):
        return self.inner.open(alias, sealed)

    def generate_attested_signing_key(self, alias, kind, challenge):
        return []  # software keys: no attestation

    def attest_app(self, client_data_hash):
        return None


class AppAttestingKeyStore(RecordingKeyStore):
    """A key store that App Attests its pairings as an iPhone would (the object is not a real
    one: the test server's attestation setting is `off`, so it is not verified)."""

    KEY_ID = bytes(range(32))

    def attest_app(self, client_data_hash):
        return t.AppAttestationResult(key_id=self.KEY_ID, attestation_object=b"\xa0")


class RecordingAsserter(t.AppAttestAsserter):
    """The app's App Attest asserter (iOS: DCAppAttestService.generateAssertion)."""

    def __init__(self):
        self.calls = []

    def generate_assertion(self, key_id, client_data_hash):
        self.calls.append((bytes(key_id), bytes(client_data_hash)))
        return b"\xa2isignature@qauthenticatorData@"


def config(push=None):
    return t.AuthenticatorConfig(
        device=t.DeviceInfo(model="Pixel 8", os_name="Android", os_version="15",
                            app_version="1.0", name=None),
        signals=t.DeviceSignals(rooted=False, screen_lock=True, mdm=None),
        push=push or t.PushRegistration.NONE(),
        allow_insecure_http=False,
        http_timeout_seconds=30,
    )


class Device:
    """One phone: its own folder for keys and encrypted state (kept until the process ends)."""

    alive = []

    def __init__(self, verifier=None, key_store=None, verify_every_approval=False):
        self.dir = tempfile.TemporaryDirectory(prefix="tessera-device-")
        Device.alive.append(self)
        self.verifier, self.key_store = verifier, key_store
        self.verify_every_approval = verify_every_approval

    async def open(self):
        key_store = self.key_store or t.software_key_store(os.path.join(self.dir.name, "keys"))
        storage = t.file_storage(os.path.join(self.dir.name, "state"))
        return await t.Authenticator.open(config(), key_store, storage, self.verifier,
                                          self.verify_every_approval)


class Flows(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pushes = PushReceiver()
        cls.server = Server(webhook=cls.pushes.url)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        cls.pushes.close()

    def user(self, name):
        user_id = f"{name}-{self.id().rsplit('.', 1)[-1]}"
        self.server.create_user(user_id, display_name=name.title())
        return user_id

    async def paired(self, device, user_id):
        uri = self.server.start_pairing(user_id)["pairing_uri"]
        return await device.pair(uri, None)

    def next_push(self, authentication_id):
        while True:
            push = self.pushes.next()
            if push["data"].get("request") and push["kind"]:
                status = self.server.authentication(authentication_id)
                if push["enrollment_id"] == status["enrollment_id"]:
                    return push

    def test_pairing_by_uri_code_and_relay(self):
        async def flow():
            device = await Device().open()
            alice, bob, carol = self.user("alice"), self.user("bob"), self.user("carol")
            by_uri = await self.paired(device, alice)
            self.assertEqual(by_uri.user_id, alice)
            self.assertEqual(by_uri.status, t.EnrollmentState.ACTIVE)
            self.assertEqual(by_uri.application_name, "Example Bank")
            self.assertEqual(by_uri.server, self.server.public_url)
            self.assertTrue(by_uri.enrollment_id.startswith("enr_"))
            self.assertEqual(by_uri.device_id, device.device_id())

            code = self.server.start_pairing(bob)["pairing_code"]
            by_code = await device.pair(code.lower().replace("-", " "), self.server.public_url)
            self.assertEqual(by_code.user_id, bob)

            payload = await device.create_mobile_payload(self.server.public_url)
            relayed = self.server.relay_pairing(carol, payload)
            by_relay = await device.complete_relay_pairing(relayed["server_payload"])
            self.assertEqual(by_relay.user_id, carol)
            self.assertEqual(by_relay.enrollment_id, relayed["device"]["enrollment_id"])

            listed = await device.enrollments()
            self.assertEqual([e.user_id for e in listed], [alice, bob, carol])
            status = await device.enrollment_status(by_code.enrollment_id)
            self.assertEqual(status.status, t.EnrollmentState.ACTIVE)
            self.assertEqual(status.application_id, self.server.application_id)

            await device.remove_enrollment(by_code.enrollment_id)
            self.assertEqual(len(await device.enrollments()), 2)
            self.assertEqual(self.server.call("GET", f"/v1/users/{bob}/devices")["devices"], [])

        run(flow())

    def test_web_view_registration_and_seamless_authorization_through_a_server_flow(self):
        async def flow():
            device = await Device().open()
            dana = self.user("dana")
            # Automatic device registration: the app's mobile payload through a flow.
            started = self.server.call("POST", "/v1/flows", {"user_id": dana})
            payload = await device.create_mobile_payload(self.server.public_url)
            pairing = self.server.call("POST", f"/v1/flows/{started['id']}",
                                       {"action": "authenticate", "mobile_payload": payload})
            self.assertEqual(pairing["status"], "MOBILE_PAIRING_REQUIRED")
            enrollment = await device.complete_relay_pairing(pairing["pairing"]["server_payload"])
            done = self.server.call("POST", f"/v1/flows/{started['id']}",
                                    {"action": "continueAuthentication"})
            self.assertEqual(done["status"], "MFA_COMPLETED")
            self.assertEqual(done["result"]["status"], "device_paired")

            # Seamless device authorization: the device signs the next flow's nonce.
            login = self.server.call("POST", "/v1/flows", {"user_id": dana})
            signed = await device.create_authorization_payload(
                enrollment.enrollment_id, login["authorization_nonce"])
            authorized = self.server.call("POST", f"/v1/flows/{login['id']}",
                                          {"action": "authenticate",
                                           "authorization_payload": signed})
            self.assertEqual(authorized["status"], "MFA_COMPLETED")
            self.assertEqual(authorized["result"]["attributes"]["pingid.authentication.type"],
                             "DEVICE_AUTHORIZATION")
            with self.assertRaises(t.TesseraError):
                await device.create_authorization_payload("enr_" + "0" * 32, "nonce")

        run(flow())

    def test_web_view_questions_are_answered_by_the_core(self):
        async def flow():
            device = await Device().open()
            erin = self.user("erin")
            server = self.server.public_url
            origin = server.rstrip("/")

            def ask(kind, **fields):
                return json.dumps({"type": kind, "flow_id": "flw_1", "request_id": "r1",
                                   "server": server, **fields})

            # Not paired yet: the page is told so and asks to register instead.
            started = self.server.call("POST", "/v1/flows", {"user_id": erin})
            question = ask("tessera.authorization",
                           authorization_nonce=started["authorization_nonce"])
            answer = json.loads(await device.handle_web_view_message(question, origin, None))
            self.assertEqual(answer["type"], "tessera.authorization.result")
            self.assertEqual((answer["flow_id"], answer["request_id"]), ("flw_1", "r1"))
            self.assertEqual(answer["error"], "not_paired")
            answer = json.loads(await device.handle_web_view_message(
                ask("tessera.register"), origin, None))
            pairing = self.server.call("POST", f"/v1/flows/{started['id']}",
                                       {"action": "authenticate",
                                        "mobile_payload": answer["mobile_payload"]})
            answer = json.loads(await device.handle_web_view_message(
                ask("tessera.register.complete",
                    server_payload=pairing["pairing"]["server_payload"]), origin, None))
            self.assertTrue(answer["enrollment_id"].startswith("enr_"))
            done = self.server.call("POST", f"/v1/flows/{started['id']}",
                                    {"action": "continueAuthentication"})
            self.assertEqual(done["result"]["status"], "device_paired")

            # Paired: a seamless authorization of the next flow.
            login = self.server.call("POST", "/v1/flows", {"user_id": erin})
            question = ask("tessera.authorization", authorization_nonce=login["authorization_nonce"])
            answer = json.loads(await device.handle_web_view_message(question, origin, erin))
            authorized = self.server.call("POST", f"/v1/flows/{login['id']}",
                                          {"action": "authenticate",
                                           "authorization_payload": answer["authorization_payload"]})
            self.assertEqual(authorized["status"], "MFA_COMPLETED")

            # Another page the web view shows cannot make the device sign.
            answer = json.loads(await device.handle_web_view_message(
                question, "https://evil.example", None))
            self.assertEqual(answer["error"], "origin_mismatch")
            self.assertNotIn("authorization_payload", answer)
            with self.assertRaises(t.TesseraError):
                await device.handle_web_view_message("not a question", origin, None)

            # The scheme mode: the answer comes back in the return URL's fragment.
            url = (f"com.example.app://tessera/authorization?flow_id=flw_2&request_id=r2"
                   f"&server={quote(server, safe='')}&authorization_nonce=n"
                   f"&return_url={quote(origin + '/prompt', safe='')}")
            back = await device.handle_web_view_url(url, origin, None)
            self.assertTrue(back.startswith(origin + "/prompt#type=tessera.authorization.result"))
            self.assertIn("authorization_payload=", back)
            elsewhere = url.replace(quote(origin + "/prompt", safe=""),
                                    quote("https://evil.example/x", safe=""))
            with self.assertRaises(t.TesseraError):
                await device.handle_web_view_url(elsewhere, origin, None)

        run(flow())

    def test_push_approval(self):
        async def flow():
            device = await Device().open()
            alice = self.user("alice")
            await self.paired(device, alice)
            created = self.server.authenticate(alice, accessing_ip="203.0.113.9",
                                               accessing_location="Lisbon, Portugal")
            push = self.next_push(created["authentication_id"])
            outcome = await device.handle_push(json.dumps(push["data"]))
            self.assertTrue(outcome.is_request())
            request = outcome.request
            self.assertEqual(request.request_id, created["authentication_id"])
            self.assertEqual(request.kind, t.RequestKind.APPROVAL)
            self.assertEqual(request.user_id, alice)
            self.assertEqual(request.context.ip, "203.0.113.9")
            self.assertEqual(request.context.location, "Lisbon, Portugal")
            self.assertFalse(request.require_user_verification)
            recorded = await device.approve(request, None)
            self.assertEqual(recorded.state, t.RequestState.APPROVED)
            status = self.server.authentication(created["authentication_id"], wait=5)
            self.assertEqual(status["state"], "approved")
            self.assertEqual(status["decision"], "approve")

        run(flow())

    def test_an_app_attested_enrollments_answers_ask_the_apps_asserter(self):
        async def flow():
            device = await Device(key_store=AppAttestingKeyStore()).open()
            asserter = RecordingAsserter()
            device.set_app_attest_asserter(asserter)
            erin = self.user("erin")
            await self.paired(device, erin)
            created = self.server.authenticate(erin)
            push = self.next_push(created["authentication_id"])
            outcome = await device.handle_push(json.dumps(push["data"]))
            recorded = await device.approve(outcome.request, None)
            self.assertEqual(recorded.state, t.RequestState.APPROVED)
            # Asked once, for the attested key, with the answer's 32-byte client data hash.
            self.assertEqual(len(asserter.calls), 1)
            key_id, client_data_hash = asserter.calls[0]
            self.assertEqual(key_id, AppAttestingKeyStore.KEY_ID)
            self.assertEqual(len(client_data_hash), 32)
            # Without an asserter the answer goes without an assertion.
            device.set_app_attest_asserter(None)
            created = self.server.authenticate(erin)
            push = self.next_push(created["authentication_id"])
            outcome = await device.handle_push(json.dumps(push["data"]))
            recorded = await device.approve(outcome.request, None)
            self.assertEqual(recorded.state, t.RequestState.APPROVED)
            self.assertEqual(len(asserter.calls), 1)

        run(flow())

    def test_a_tapped_notification_fetches_its_request_by_id(self):
        async def flow():
            device = await Device().open()
            alice = self.user("alice")
            enrollment = await self.paired(device, alice)
            created = self.server.authenticate(alice, accessing_ip="203.0.113.9")
            request = await device.request(enrollment.enrollment_id, created["authentication_id"])
            self.assertEqual(request.request_id, created["authentication_id"])
            self.assertEqual(request.user_id, alice)
            self.assertEqual(request.context.ip, "203.0.113.9")
            recorded = await device.approve(request, None)
            self.assertEqual(recorded.state, t.RequestState.APPROVED)
            with self.assertRaises(t.TesseraError.Server) as answered:
                await device.request(enrollment.enrollment_id, created["authentication_id"])
            self.assertEqual(answered.exception.code, "already_answered")
            # Another phone's request is not this enrollment's to fetch.
            other = await Device().open()
            bob = self.user("bob")
            await self.paired(other, bob)
            bobs = self.server.authenticate(bob)
            with self.assertRaises(t.TesseraError.Server) as foreign:
                await device.request(enrollment.enrollment_id, bobs["authentication_id"])
            self.assertEqual(foreign.exception.code, "authentication_not_found")
            with self.assertRaises(t.TesseraError.InvalidInput):
                await device.request(enrollment.enrollment_id, "not an id")

        run(flow())

    def test_the_apps_logger_receives_the_sdks_records_and_no_secret(self):
        class Collect(t.Logger):
            def __init__(self):
                self.records = []

            def log(self, record):
                self.records.append(record)

        async def flow():
            logger = Collect()
            t.set_logger(logger, t.LogLevel.TRACE)
            try:
                device = await Device().open()
                alice = self.user("alice")
                uri = self.server.start_pairing(alice)["pairing_uri"]
                enrollment = await device.pair(uri, None)
                created = self.server.authenticate(alice)
                pending = await device.pending_requests()
                await device.approve(pending[0], None)
                secret = "JBSWY3DPEHPK3PXP"
                account = await device.import_otp_account(
                    f"otpauth://totp/Example:alice?secret={secret}&issuer=Example")
                code = (await device.one_time_passcode(account.id)).code
                await device.remove_enrollment(enrollment.enrollment_id)
            finally:
                t.set_logger(None, t.LogLevel.TRACE)
            lines = [f"{r.level} {r.target} {r.message}" for r in logger.records]
            self.assertTrue(any(r.level == t.LogLevel.INFO and r.target.startswith("tessera_core")
                                and "device key created" in r.message for r in logger.records),
                            lines)
            self.assertTrue(any("OTP account imported" in line for line in lines), lines)
            pairing_code = uri.rsplit("code=", 1)[-1].split("&", 1)[0]
            everything = "\n".join(lines)
            self.assertRegex(pairing_code, r"^[A-Z0-9-]{8,}$")
            for value in (uri, pairing_code, pairing_code.replace("-", ""), secret, code):
                self.assertNotIn(value, everything)
            count = len(logger.records)
            await device.remove_otp_account(account.id)  # logged by the core, to no one now
            self.assertEqual(len(logger.records), count)

        run(flow())

    def test_denial_and_fraud_report_refuse_a_second_answer(self):
        async def flow():
            device = await Device().open()
            alice = self.user("alice")
            await self.paired(device, alice)
            created = self.server.authenticate(alice)
            pending = await device.pending_requests()
            self.assertEqual([r.request_id for r in pending], [created["authentication_id"]])
            recorded = await device.deny(pending[0], True)
            self.assertEqual(recorded.state, t.RequestState.DENIED)
            status = self.server.authentication(created["authentication_id"])
            self.assertEqual((status["state"], status["decision"]), ("denied", "report_fraud"))
            with self.assertRaises(t.TesseraError.Server) as refused:
                await device.approve(pending[0], None)
            self.assertEqual(refused.exception.code, "already_answered")
            self.assertEqual(await device.pending_requests(), [])

        run(flow())

    def test_transaction_with_fields_is_verified_and_signed_with_the_user_verification_key(self):
        async def flow():
            verifier, keys = Verifier(amr=("face",)), RecordingKeyStore()
            device = await Device(verifier=verifier, key_store=keys).open()
            alice = self.user("alice")
            await self.paired(device, alice)
            fields = [{"label": "Amount", "value": "120.00 EUR"},
                      {"label": "Payee", "value": "ACME GmbH"},
                      {"label": "IBAN", "value": "DE02 1203 0000 0000 2020 51"}]
            created = self.server.authenticate(
                alice, kind="transaction", message="Pay 120.00 EUR to ACME GmbH?",
                fields=fields, hidden_fields=[{"label": "ref", "value": "inv-7"}],
                require_user_verification=True)
            push = self.next_push(created["authentication_id"])
            request = (await device.handle_push(json.dumps(push["data"]))).request
            self.assertEqual(request.kind, t.RequestKind.TRANSACTION)
            self.assertEqual(request.message, "Pay 120.00 EUR to ACME GmbH?")
            self.assertEqual([(f.label, f.value) for f in request.fields],
                             [(f["label"], f["value"]) for f in fields])
            # What the signature binds but the headline does not show reaches the app too.
            self.assertEqual([(f.label, f.value) for f in request.hidden_fields],
                             [("ref", "inv-7")])
            self.assertTrue(request.require_user_verification)

            keys.signed.clear()
            recorded = await device.approve(request, None)
            self.assertEqual(recorded.state, t.RequestState.APPROVED)
            self.assertEqual(len(verifier.reasons), 1)
            reason = verifier.reasons[0]
            self.assertEqual(reason.message, "Pay 120.00 EUR to ACME GmbH?")
            self.assertEqual(reason.application_name, "Example Bank")
            self.assertTrue(reason.required_by_server)
            # The alias of the key that signs right after (Android prepares a CryptoObject).
            self.assertEqual(keys.kinds.get(reason.key_alias), t.KeyKind.USER_VERIFICATION)
            self.assertEqual(keys.signed, [t.KeyKind.USER_VERIFICATION])
            status = self.server.authentication(created["authentication_id"], wait=5)
            self.assertEqual(status["state"], "approved")
            self.assertIn("face", json.dumps(status["attributes"]))

        run(flow())

    def test_ciba_poll_request_is_shown_and_approved_with_biometrics(self):
        async def flow():
            verifier = Verifier(amr=("face",))
            device = await Device(verifier=verifier).open()
            alice = self.user("alice")
            await self.paired(device, alice)
            client = self.server.register_ciba_client("Call Centre")
            status, ack = self.server.oauth_post("/oidc/backchannel", client, {
                "scope": "openid profile", "login_hint": alice, "binding_message": "Call 4711"})
            self.assertEqual(status, 200, ack)
            self.assertEqual(ack["interval"], 1)
            [request] = await device.pending_requests()
            self.assertEqual(request.kind, t.RequestKind.CIBA)
            self.assertEqual(request.message, "Call 4711")
            self.assertEqual(request.ciba.client_name, "Call Centre")
            self.assertEqual(request.ciba.binding_message, "Call 4711")
            self.assertEqual(request.ciba.scopes, ["openid", "profile"])
            self.assertTrue(request.require_user_verification)
            token_form = {"grant_type": "urn:openid:params:grant-type:ciba",
                          "auth_req_id": ack["auth_req_id"]}
            await asyncio.sleep(1.1)
            status, pending = self.server.oauth_post("/oidc/token", client, token_form)
            self.assertEqual((status, pending["error"]), (400, "authorization_pending"))

            recorded = await device.approve(request, None)
            self.assertEqual(recorded.state, t.RequestState.APPROVED)
            self.assertEqual(len(verifier.reasons), 1)
            await asyncio.sleep(1.1)
            status, tokens = self.server.oauth_post("/oidc/token", client, token_form)
            self.assertEqual(status, 200, tokens)
            payload = tokens["id_token"].split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            # The subject is namespaced by the application (one person per issuer and subject).
            self.assertEqual(claims["sub"], f"{self.server.application_id}:{alice}")
            self.assertEqual(claims["amr"], ["face", "mfa"])

        run(flow())

    def test_silent_verification_is_answered_without_the_user(self):
        async def flow():
            verifier, keys = Verifier(), RecordingKeyStore()
            device = await Device(verifier=verifier, key_store=keys).open()
            alice = self.user("alice")
            enrollment = await self.paired(device, alice)
            created = self.server.authenticate(alice, kind="silent")
            push = self.next_push(created["authentication_id"])
            keys.signed.clear()
            outcome = await device.handle_push(json.dumps(push["data"]))
            self.assertTrue(outcome.is_silent_verification_answered())
            self.assertEqual(outcome.request_id, created["authentication_id"])
            self.assertEqual(outcome.enrollment_id, enrollment.enrollment_id)
            self.assertEqual(verifier.reasons, [])
            self.assertIn(t.KeyKind.POSSESSION, keys.signed)
            self.assertNotIn(t.KeyKind.USER_VERIFICATION, keys.signed)
            status = self.server.authentication(created["authentication_id"], wait=5)
            self.assertEqual(status["state"], "approved")
            # Pulling finds nothing left: the answer was recorded.
            self.assertEqual(await device.pending_requests(), [])

        run(flow())

    def test_number_matching(self):
        async def flow():
            device = await Device().open()
            alice = self.user("alice")
            enrollment = await self.paired(device, alice)
            created = self.server.authenticate(alice, number_matching=True)
            [request] = await device.wait_for_requests(enrollment.enrollment_id, 5)
            self.assertEqual(request.number_matching, t.NumberMatching.CHOICE)
            self.assertIn(created["number_to_show"], request.number_choices)
            with self.assertRaises(t.TesseraError.InvalidInput):
                await device.approve(request, None)
            # A wrong pick ends the request: denied, wrong_number; the right one is refused after.
            wrong = next(n for n in request.number_choices if n != created["number_to_show"])
            recorded = await device.approve(request, wrong)
            self.assertEqual(recorded.state, t.RequestState.DENIED)
            self.assertEqual(recorded.denial_reason, t.DenialReason.WRONG_NUMBER)
            with self.assertRaises(t.TesseraError.Server) as refused:
                await device.approve(request, created["number_to_show"])
            self.assertEqual(refused.exception.code, "already_answered")
            status = self.server.authentication(created["authentication_id"])
            self.assertEqual((status["state"], status["denial_reason"]), ("denied", "wrong_number"))

            # Typed: no choices; the typed number approves.
            created = self.server.authenticate(alice, number_matching="typed")
            [request] = await device.wait_for_requests(enrollment.enrollment_id, 5)
            self.assertEqual(request.number_matching, t.NumberMatching.TYPED)
            self.assertIsNone(request.number_choices)
            recorded = await device.approve(request, created["number_to_show"])
            self.assertEqual(recorded.state, t.RequestState.APPROVED)
            self.assertIsNone(recorded.denial_reason)

        run(flow())

    def test_qr_login_with_two_users_on_one_device(self):
        async def flow():
            device = await Device().open()
            alice, bob = self.user("alice"), self.user("bob")
            await self.paired(device, alice)
            await self.paired(device, bob)

            session = self.server.create_qr_session(accessing_ip="198.51.100.7")
            qr = await device.authenticate_with_qr(session["qr_uri"])
            self.assertEqual(qr.session_id, session["session_id"])
            self.assertEqual(qr.application_name, "Example Bank")
            self.assertEqual(qr.context.ip, "198.51.100.7")
            self.assertEqual(sorted(u.user_id for u in qr.users), sorted([alice, bob]))
            self.assertEqual({u.display_name for u in qr.users}, {"Alice", "Bob"})
            recorded = await device.approve_qr(qr, bob)
            self.assertEqual(recorded.state, t.QrState.APPROVED)
            status = self.server.qr_session(session["session_id"])
            self.assertEqual((status["state"], status["user_id"]), ("approved", bob))

            second = self.server.create_qr_session()
            qr = await device.authenticate_with_qr(second["qr_uri"])
            recorded = await device.deny_qr(qr, alice, False)
            self.assertEqual(recorded.state, t.QrState.DENIED)
            status = self.server.qr_session(second["session_id"])
            self.assertEqual((status["state"], status["user_id"]), ("denied", alice))
            # A code already scanned cannot be claimed again.
            with self.assertRaises(t.TesseraError.Server) as refused:
                await device.authenticate_with_qr(second["qr_uri"])
            self.assertIn(refused.exception.code, ("qr_already_scanned", "qr_session_not_found"))

        run(flow())

    def test_every_approval_verified_when_the_app_asks(self):
        async def flow():
            verifier, keys = Verifier(amr=("pin",)), RecordingKeyStore()
            device = await Device(verifier=verifier, key_store=keys,
                                  verify_every_approval=True).open()
            alice = self.user("alice")
            await self.paired(device, alice)
            self.server.authenticate(alice)
            [request] = await device.pending_requests()
            self.assertFalse(request.require_user_verification)
            keys.signed.clear()
            await device.approve(request, None)
            self.assertEqual(keys.signed, [t.KeyKind.USER_VERIFICATION])
            self.assertFalse(verifier.reasons[0].required_by_server)

            session = self.server.create_qr_session()
            qr = await device.authenticate_with_qr(session["qr_uri"])
            keys.signed.clear()
            recorded = await device.approve_qr(qr, alice)
            self.assertEqual(recorded.state, t.QrState.APPROVED)
            self.assertEqual(len(verifier.reasons), 2)
            self.assertEqual(keys.signed, [t.KeyKind.USER_VERIFICATION])

        run(flow())

    def test_devices_reach_the_server_over_https_through_the_test_ca(self):
        if not self.server.tls:
            self.fail("TESSERA_TEST_TLS_DIR is not set: the TLS path is not exercised")
        tls_dir = os.environ["TESSERA_TEST_TLS_DIR"]

        async def flow():
            self.assertTrue(self.server.public_url.startswith("https://localhost:"))
            before = self.server.tls.handshakes
            await self.paired(await Device().open(), self.user("alice"))
            self.assertGreater(self.server.tls.handshakes, before)
            # The same server behind a self-signed certificate: refused by the verifier.
            untrusted = TlsProxy(int(self.server.url.rsplit(":", 1)[1]), tls_dir, "untrusted")
            try:
                code = self.server.start_pairing(self.user("bob"))["pairing_code"]
                with self.assertRaises(t.TesseraError.Network):
                    await (await Device().open()).pair(code, f"https://localhost:{untrusted.port}")
                self.assertEqual(untrusted.handshakes, 0)
            finally:
                untrusted.close()

        run(flow())

    def test_errors_are_exceptions_with_stable_codes(self):
        async def flow():
            device = await Device().open()
            alice = self.user("alice")
            with self.assertRaises(t.TesseraError.Server) as wrong_code:
                await device.pair("ABCD-EFGH-JKMN", self.server.public_url)
            self.assertEqual(wrong_code.exception.code, "invalid_pairing_code")
            self.assertNotIn("ABCD", str(wrong_code.exception))
            with self.assertRaises(t.TesseraError.InvalidInput) as insecure:
                await device.pair("ABCD-EFGH-JKMN", "http://auth.example.com")
            self.assertEqual(insecure.exception.code, "insecure_server_url")
            with self.assertRaises(t.TesseraError.InvalidInput) as malformed:
                await device.enrollment_status("not-an-id")
            self.assertEqual(malformed.exception.code, "invalid_input")
            with self.assertRaises(t.TesseraError.NotFound) as missing:
                await device.forget_enrollment("enr_" + "0" * 32)
            self.assertEqual(missing.exception.code, "enrollment_not_found")
            with self.assertRaises(t.TesseraError.InvalidInput):
                device.set_location(t.DeviceLocation(latitude=91.0, longitude=0.0,
                                                     altitude=None, accuracy=None))
            with self.assertRaises(t.TesseraError.NotFound) as unpaired:
                await device.authenticate_with_qr(self.server.create_qr_session()["qr_uri"])
            self.assertEqual(unpaired.exception.code, "not_paired_with_server")
            self.assertIsInstance(unpaired.exception, t.TesseraError)

            # User verification: cancelled, then not set up. Nothing is sent either time.
            await self.paired(device, alice)
            created = self.server.authenticate(alice, require_user_verification=True)
            [request] = await device.pending_requests()
            with self.assertRaises(t.TesseraError.UserVerification) as unavailable:
                await device.approve(request, None)
            self.assertEqual(unavailable.exception.code, "user_verification_unavailable")
            other = await Device(verifier=Verifier(cancel=True)).open()
            bob = self.user("bob")
            await self.paired(other, bob)
            self.server.authenticate(bob, require_user_verification=True)
            [for_bob] = await other.pending_requests()
            with self.assertRaises(t.TesseraError.UserVerification) as cancelled:
                await other.approve(for_bob, None)
            self.assertEqual(cancelled.exception.code, "user_cancelled")
            self.assertEqual(self.server.authentication(created["authentication_id"])["state"],
                             "pending")
            self.assertEqual(len(await other.pending_requests()), 1)
            # The app's own prompt (approve_verified) still works.
            recorded = await device.approve_verified(request, ["pin"], None)
            self.assertEqual(recorded.state, t.RequestState.APPROVED)

        run(flow())

    def test_state_survives_reopening_and_otp_codes(self):
        async def flow():
            phone = Device()
            device = await phone.open()
            alice = self.user("alice")
            enrollment = await self.paired(device, alice)
            account = await device.import_otp_account(
                "otpauth://totp/ACME:alice@example.com?secret=JBSWY3DPEHPK3PXP&issuer=ACME")
            self.assertEqual(account.issuer, "ACME")
            self.assertEqual(account.kind, t.OtpAccountKind.TOTP(period=30))
            code = await device.one_time_passcode(account.id)
            self.assertRegex(code.code, r"^\d{6}$")
            self.assertTrue(0 < code.valid_for_seconds <= 30)
            with self.assertRaises(t.TesseraError.Conflict) as duplicate:
                await device.import_otp_account(
                    "otpauth://totp/ACME:alice@example.com?secret=JBSWY3DPEHPK3PXP&issuer=ACME")
            self.assertEqual(duplicate.exception.code, "otp_account_exists")
            with self.assertRaises(t.TesseraError.InvalidInput) as bad_uri:
                await device.import_otp_account("otpauth://totp/x?secret=NOTBASE32!!")
            self.assertEqual(bad_uri.exception.code, "invalid_otp_uri")
            self.assertNotIn("NOTBASE32", str(bad_uri.exception))
            device_id = device.device_id()
            del device

            reopened = await phone.open()
            self.assertEqual(reopened.device_id(), device_id)
            self.assertEqual([e.enrollment_id for e in await reopened.enrollments()],
                             [enrollment.enrollment_id])
            self.assertIn(account.id, [a.id for a in await reopened.otp_accounts()])
            created = self.server.authenticate(alice)
            [request] = await reopened.pending_requests()
            self.assertEqual(request.request_id, created["authentication_id"])
            await reopened.approve(request, None)

        run(flow())


def ffi_round_trip():
    """The cost of one FFI round trip: a trivial synchronous call, many times."""
    import time

    async def open_device():
        return await Device().open()

    device = run(open_device())
    for what, call in (("sdk_version()", t.sdk_version), ("device_id()", device.device_id)):
        for _ in range(2_000):
            call()
        n = 20_000
        start = time.perf_counter_ns()
        for _ in range(n):
            call()
        print(f"python ffi round trip, {what}: {(time.perf_counter_ns() - start) / n:.0f} ns per call ({n} calls)")


if __name__ == "__main__":
    runner = unittest.TextTestRunner(verbosity=2)
    result = runner.run(unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__]))
    if "--bench" in sys.argv:
        ffi_round_trip()
    failed = len(result.failures) + len(result.errors)
    print(f"bindings-python: {result.testsRun - failed} passed, {failed} failed")
    sys.exit(0 if failed == 0 and result.testsRun > 0 else 1)
