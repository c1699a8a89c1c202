// The Android wrapper's platform-independent part (dev.tessera.android.Tessera over the generated
// dev.tessera.ffi bindings) on the JVM, against a real tessera-server process: pairing (URI,
// typed code, relay), push approval, denial, a transaction with fields and user verification,
// silent verification, the Flow of incoming requests, QR login with two users on one device, and
// errors thrown as Kotlin exceptions with stable codes. Run by bindings/tests/run.sh.
package dev.tessera.jvmtests

import dev.tessera.android.Jca
import dev.tessera.android.PushResult
import dev.tessera.android.Tessera
import dev.tessera.android.TesseraRequest
import dev.tessera.android.errorCode
import dev.tessera.ffi.AppAttestationResult
import dev.tessera.ffi.AuthenticatorConfig
import dev.tessera.ffi.DenialReason
import dev.tessera.ffi.DeviceInfo
import dev.tessera.ffi.DeviceSignals
import dev.tessera.ffi.EnrollmentState
import dev.tessera.ffi.KeyKind
import dev.tessera.ffi.LogLevel
import dev.tessera.ffi.LogRecord
import dev.tessera.ffi.NumberMatching
import dev.tessera.ffi.PlatformException
import dev.tessera.ffi.PlatformKeyStore
import dev.tessera.ffi.PushRegistration
import dev.tessera.ffi.QrState
import dev.tessera.ffi.RequestState
import dev.tessera.ffi.TesseraException
import dev.tessera.ffi.UserVerifier
import dev.tessera.ffi.VerificationReason
import dev.tessera.ffi.fileStorage
import dev.tessera.ffi.sdkVersion
import dev.tessera.ffi.softwareKeyStore
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlin.system.exitProcess

class Failure(message: String) : AssertionError(message)

fun expect(condition: Boolean, message: () -> String) {
    if (!condition) throw Failure(message())
}

fun <T> expectEqual(expected: T, actual: T, what: String) =
    expect(expected == actual) { "$what: expected $expected, got $actual" }

suspend inline fun <reified E : Throwable> expectThrows(block: suspend () -> Unit): E {
    try {
        block()
    } catch (e: Throwable) {
        if (e is E) return e
        throw Failure("expected ${E::class.simpleName}, got $e")
    }
    throw Failure("expected ${E::class.simpleName}, nothing was thrown")
}

/** The biometric prompt, answered as a user would. */
class Verifier(private val amr: List<String> = listOf("fpt"), private val cancel: Boolean = false) : UserVerifier {
    val reasons = mutableListOf<VerificationReason>()
    override suspend fun verifyUser(reason: VerificationReason): List<String> {
        reasons.add(reason)
        if (cancel) throw PlatformException.UserCancelled()
        return amr
    }
}

/** A key store written in Kotlin (the path an app's Keystore takes), recording which kind of key signs. */
class RecordingKeyStore : PlatformKeyStore {
    private val inner = softwareKeyStore(null)
    private val kinds = java.util.concurrent.ConcurrentHashMap<String, KeyKind>()
    val signed: MutableList<KeyKind?> = java.util.Collections.synchronizedList(mutableListOf())
    override fun generateSigningKey(alias: String, kind: KeyKind): ByteArray {
        kinds[alias] = kind
        return inner.generateSigningKey(alias, kind)
    }
    override fun publicKey(alias: String) = inner.publicKey(alias)
    override fun sign(alias: String, data: ByteArray): ByteArray {
        signed.add(kinds[alias])
        return inner.sign(alias, data)
    }
    override fun deleteKey(alias: String) {
        kinds.remove(alias)
        inner.deleteKey(alias)
    }
    override fun seal(alias: String, plaintext: ByteArray) = inner.seal(alias, plaintext)
    override fun open(alias: String, sealed: ByteArray) = inner.open(alias, sealed)
    override fun generateAttestedSigningKey(alias: String, kind: KeyKind, challenge: ByteArray): List<ByteArray> =
        emptyList()
    override fun attestApp(clientDataHash: ByteArray): AppAttestationResult? = null
}

/**
 * The Android key store's code path with the JVM's own provider instead of AndroidKeyStore:
 * JCA P-256 keys, DER signatures, [Jca.uncompressedPoint] and [Jca.seal] / [Jca.open].
 */
class JcaKeyStore : PlatformKeyStore {
    private val pairs = java.util.concurrent.ConcurrentHashMap<String, java.security.KeyPair>()
    private val aes = java.util.concurrent.ConcurrentHashMap<String, javax.crypto.SecretKey>()
    override fun generateSigningKey(alias: String, kind: KeyKind): ByteArray {
        val generator = java.security.KeyPairGenerator.getInstance("EC")
        generator.initialize(java.security.spec.ECGenParameterSpec("secp256r1"))
        val pair = generator.generateKeyPair()
        pairs[alias] = pair
        return Jca.uncompressedPoint(pair.public as java.security.interfaces.ECPublicKey)
    }
    override fun publicKey(alias: String) =
        pairs[alias]?.let { Jca.uncompressedPoint(it.public as java.security.interfaces.ECPublicKey) }
    override fun sign(alias: String, data: ByteArray): ByteArray {
        val pair = pairs[alias] ?: throw PlatformException.NotFound()
        return java.security.Signature.getInstance("SHA256withECDSA").run {
            initSign(pair.private); update(data); sign()
        }
    }
    override fun deleteKey(alias: String) { pairs.remove(alias) }
    override fun seal(alias: String, plaintext: ByteArray): ByteArray {
        val key = aes.getOrPut(alias) { javax.crypto.KeyGenerator.getInstance("AES").apply { init(256) }.generateKey() }
        return Jca.seal(key, plaintext, alias.encodeToByteArray())
    }
    override fun open(alias: String, sealed: ByteArray): ByteArray =
        Jca.open(aes[alias] ?: throw PlatformException.NotFound(), sealed, alias.encodeToByteArray())
    override fun generateAttestedSigningKey(alias: String, kind: KeyKind, challenge: ByteArray): List<ByteArray> =
        emptyList()
    override fun attestApp(clientDataHash: ByteArray): AppAttestationResult? = null
}

fun config() = AuthenticatorConfig(
    device = DeviceInfo(model = "Pixel 8", osName = "Android", osVersion = "15", appVersion = "1.0", name = null),
    signals = DeviceSignals(rooted = false, screenLock = true, mdm = null),
    push = PushRegistration.Fcm("fcm-token-for-tests"),
    allowInsecureHttp = false,
    httpTimeoutSeconds = 30u,
)

suspend fun device(verifier: UserVerifier? = null, keyStore: PlatformKeyStore? = null): Tessera {
    val dir = deviceDir()
    return Tessera.open(
        config(),
        keyStore ?: softwareKeyStore(dir.resolve("keys").path),
        fileStorage(dir.resolve("state").path),
        verifier,
    )
}

class Env(val server: Server, val pushes: PushReceiver, val name: String) {
    fun user(who: String): String {
        val id = "$who-$name"
        server.createUser(id, who.replaceFirstChar { it.uppercase() })
        return id
    }

    suspend fun pair(tessera: Tessera, userId: String) = tessera.pair(server.pairingUri(userId))

    @Suppress("UNCHECKED_CAST")
    fun pushData(enrollmentId: String) = pushes.next(enrollmentId)["data"] as Map<String, String>
}

val tests: List<Pair<String, suspend Env.() -> Unit>> = listOf(
    "pairing by URI, typed code and relay" to {
        val phone = device()
        val alice = user("alice"); val bob = user("bob"); val carol = user("carol")
        val byUri = pair(phone, alice)
        expectEqual(alice, byUri.userId, "user")
        expectEqual(EnrollmentState.ACTIVE, byUri.status, "status")
        expectEqual("Example Bank", byUri.applicationName, "application")
        expectEqual(phone.deviceId, byUri.deviceId, "device id")
        val code = server.call("POST", "/v1/users/$bob/pairings", emptyMap())["pairing_code"] as String
        expectEqual(bob, phone.pair(code, server.publicUrl).userId, "paired by code")
        val relayed = server.call(
            "POST", "/v1/users/$carol/relay-pairings",
            mapOf("mobile_payload" to phone.createMobilePayload(server.publicUrl)),
        )
        val byRelay = phone.completeRelayPairing(relayed["server_payload"] as String)
        expectEqual(carol, byRelay.userId, "relay user")
        expectEqual(listOf(alice, bob, carol), phone.enrollments().map { it.userId }, "enrollments")
        phone.unpair(byRelay.enrollmentId)
        expectEqual(2, phone.enrollments().size, "after unpairing")
    },
    "web view: the hosted page's questions answered by handleWebViewMessage" to {
        val phone = device()
        val dana = user("dana")
        val origin = server.publicUrl.trimEnd('/')
        fun question(type: String, extra: Map<String, Any?> = emptyMap()) = Json.write(
            mapOf("type" to type, "flow_id" to "flw_1", "request_id" to "r1", "server" to server.publicUrl) + extra,
        )
        val started = server.call("POST", "/v1/flows", mapOf("user_id" to dana))
        val nonce = started["authorization_nonce"] as String
        val notPaired = Json.parse(phone.handleWebViewMessage(
            question("tessera.authorization", mapOf("authorization_nonce" to nonce)), origin)).obj()
        expectEqual("tessera.authorization.result", notPaired["type"], "answer type")
        expectEqual("r1", notPaired["request_id"], "request id echoed")
        expectEqual("not_paired", notPaired["error"], "not paired yet")
        val registered = Json.parse(phone.handleWebViewMessage(question("tessera.register"), origin)).obj()
        val pairing = server.call(
            "POST", "/v1/flows/${started["id"]}",
            mapOf("action" to "authenticate", "mobile_payload" to registered["mobile_payload"]),
        )
        val serverPayload = pairing["pairing"].obj()["server_payload"] as String
        val completed = Json.parse(phone.handleWebViewMessage(
            question("tessera.register.complete", mapOf("server_payload" to serverPayload)), origin)).obj()
        expect((completed["enrollment_id"] as String).startsWith("enr_")) { "completed: $completed" }
        val done = server.call("POST", "/v1/flows/${started["id"]}", mapOf("action" to "continueAuthentication"))
        expectEqual("device_paired", done["result"].obj()["status"], "flow result")
        val login = server.call("POST", "/v1/flows", mapOf("user_id" to dana))
        val ask = question("tessera.authorization", mapOf("authorization_nonce" to login["authorization_nonce"]))
        val foreign = Json.parse(phone.handleWebViewMessage(ask, "https://evil.example")).obj()
        expectEqual("origin_mismatch", foreign["error"], "a foreign page")
        val signed = Json.parse(phone.handleWebViewMessage(ask, origin, dana)).obj()
        val authorized = server.call(
            "POST", "/v1/flows/${login["id"]}",
            mapOf("action" to "authenticate", "authorization_payload" to signed["authorization_payload"]),
        )
        expectEqual("MFA_COMPLETED", authorized["status"], "seamless authorization")
    },
    "CIBA poll: a relying party's backchannel request, approved with biometrics" to {
        val verifier = Verifier(listOf("fpt"))
        val phone = device(verifier)
        val alice = user("alice")
        pair(phone, alice)
        val client = server.registerCibaClient("Call Centre")
        val (status, ack) = server.oauthPost(
            "/oidc/backchannel", client,
            mapOf("scope" to "openid profile", "login_hint" to alice, "binding_message" to "Call 4711"),
        )
        expectEqual(200, status, "backchannel status")
        val authReqId = ack["auth_req_id"] as String
        expectEqual(1L, (ack["interval"] as Number).toLong(), "interval")
        val request = phone.pendingRequests().single()
        expect(request is TesseraRequest.Ciba) { "expected a CIBA request, got $request" }
        val ciba = request as TesseraRequest.Ciba
        expectEqual("Call Centre", ciba.clientName, "client")
        expectEqual("Call 4711", ciba.bindingMessage, "binding message")
        expectEqual("Call 4711", ciba.message, "headline")
        expectEqual(listOf("openid", "profile"), ciba.scopes, "scopes")
        expect(ciba.requiresUserVerification) { "CIBA approvals need user verification" }
        Thread.sleep(1100)
        val pending = server.oauthPost(
            "/oidc/token", client,
            mapOf("grant_type" to "urn:openid:params:grant-type:ciba", "auth_req_id" to authReqId),
        )
        expectEqual(400 to "authorization_pending", pending.first to pending.second["error"], "before the answer")
        expectEqual(RequestState.APPROVED, phone.approve(request).state, "recorded")
        expectEqual(1, verifier.reasons.size, "one biometric prompt")
        Thread.sleep(1100)
        val (tokenStatus, tokens) = server.oauthPost(
            "/oidc/token", client,
            mapOf("grant_type" to "urn:openid:params:grant-type:ciba", "auth_req_id" to authReqId),
        )
        expectEqual(200, tokenStatus, "token status: $tokens")
        val idToken = (tokens["id_token"] as String).split(".")[1]
        val claims = Json.parse(String(java.util.Base64.getUrlDecoder().decode(idToken))).obj()
        // The subject is namespaced by the application (one person per issuer and subject).
        expectEqual("${server.applicationId}:$alice", claims["sub"], "subject")
        expectEqual(listOf("fpt", "mfa"), claims["amr"], "amr")
    },
    "push approval" to {
        val phone = device()
        val alice = user("alice")
        val enrollment = pair(phone, alice)
        val created = server.authenticate(alice, mapOf("kind" to "approval", "accessing_ip" to "203.0.113.9"))
        val result = phone.handlePush(pushData(enrollment.enrollmentId))
        expect(result is PushResult.Show) { "expected a request, got $result" }
        val request = (result as PushResult.Show).request
        expect(request is TesseraRequest.Approval) { "expected an approval, got $request" }
        expectEqual(created["authentication_id"], request.id, "request id")
        expectEqual("203.0.113.9", request.context.ip, "accessing ip")
        expectEqual(RequestState.APPROVED, phone.approve(request).state, "recorded")
        expectEqual("approved", server.authentication(request.id, wait = 5)["state"], "server state")
    },
    "a tapped notification's request, fetched by id" to {
        val phone = device()
        val alice = user("alice")
        val enrollment = pair(phone, alice)
        val created = server.authenticate(alice, mapOf("kind" to "approval", "accessing_ip" to "203.0.113.9"))
        val id = created["authentication_id"] as String
        val request = phone.request(enrollment.enrollmentId, id)
        expect(request is TesseraRequest.Approval) { "expected an approval, got $request" }
        expectEqual(id, request!!.id, "request id")
        expectEqual("203.0.113.9", request.context.ip, "accessing ip")
        expectEqual(RequestState.APPROVED, phone.approve(request).state, "recorded")
        val answered = expectThrows<TesseraException.Server> { phone.request(enrollment.enrollmentId, id) }
        expectEqual("already_answered", answered.code, "code")
        expectThrows<TesseraException.InvalidInput> { phone.request(enrollment.enrollmentId, "not an id") }
    },
    "the app's logger receives the SDK's records, and no secret" to {
        val records = java.util.Collections.synchronizedList(mutableListOf<LogRecord>())
        Tessera.setLogger(LogLevel.TRACE) { records.add(it) }
        val uri: String
        val secret = "JBSWY3DPEHPK3PXP"
        val code: String
        val phone = device()
        val accountId: String
        try {
            val alice = user("alice")
            uri = server.pairingUri(alice)
            val enrollment = phone.pair(uri)
            server.authenticate(alice, mapOf("kind" to "approval"))
            phone.approve(phone.pendingRequests().single())
            val account = phone.sdk.importOtpAccount("otpauth://totp/Example:alice?secret=$secret&issuer=Example")
            accountId = account.id
            code = phone.sdk.oneTimePasscode(account.id).code
            phone.unpair(enrollment.enrollmentId)
        } finally {
            Tessera.setLogger(LogLevel.TRACE, null)
        }
        val lines = records.map { "${it.level} ${it.target} ${it.message}" }
        expect(records.any { it.level == LogLevel.INFO && it.target.startsWith("tessera_core") && "device key created" in it.message }) {
            "no record of the device key: $lines"
        }
        val pairingCode = uri.substringAfterLast("code=").substringBefore('&')
        expect(pairingCode.length >= 8) { "pairing code from $uri" }
        val everything = lines.joinToString("\n")
        for (value in listOf(uri, pairingCode, pairingCode.replace("-", ""), secret, code)) {
            expect(value !in everything) { "a secret reached the log: $value" }
        }
        val count = records.size
        phone.sdk.removeOtpAccount(accountId) // logged by the core, to no one now
        expectEqual(count, records.size, "records after the logger was removed")
    },
    "denial with a fraud report; a second answer is refused" to {
        val phone = device()
        val alice = user("alice")
        pair(phone, alice)
        val created = server.authenticate(alice, mapOf("kind" to "approval"))
        val request = phone.pendingRequests().single()
        expectEqual(created["authentication_id"], request.id, "pending")
        expectEqual(RequestState.DENIED, phone.deny(request, reportFraud = true).state, "recorded")
        val status = server.authentication(request.id)
        expectEqual("report_fraud", status["decision"], "decision")
        val refused = expectThrows<TesseraException.Server> { phone.approve(request) }
        expectEqual("already_answered", refused.code, "code")
        expectEqual("already_answered", (refused as TesseraException).errorCode, "errorCode")
    },
    "transaction with fields, verified and signed with the user-verification key" to {
        val verifier = Verifier(listOf("fpt"))
        val keys = RecordingKeyStore()
        val phone = device(verifier, keys)
        val alice = user("alice")
        val enrollment = pair(phone, alice)
        val fields = listOf(
            mapOf("label" to "Amount", "value" to "120.00 EUR"),
            mapOf("label" to "Payee", "value" to "ACME GmbH"),
        )
        server.authenticate(
            alice,
            mapOf(
                "kind" to "transaction", "message" to "Pay 120.00 EUR to ACME GmbH?", "fields" to fields,
                "require_user_verification" to true,
            ),
        )
        val request = (phone.handlePush(pushData(enrollment.enrollmentId)) as PushResult.Show).request
        expect(request is TesseraRequest.Transaction) { "expected a transaction, got $request" }
        val transaction = request as TesseraRequest.Transaction
        expectEqual("Pay 120.00 EUR to ACME GmbH?", transaction.message, "message")
        expectEqual(fields.map { it["label"] to it["value"] }, transaction.fields.map { it.label to it.value }, "fields")
        expect(transaction.requiresUserVerification) { "user verification required" }
        keys.signed.clear()
        expectEqual(RequestState.APPROVED, phone.approve(transaction).state, "recorded")
        expectEqual(1, verifier.reasons.size, "prompts")
        expectEqual("Pay 120.00 EUR to ACME GmbH?", verifier.reasons.single().message, "prompt text")
        expectEqual(listOf<KeyKind?>(KeyKind.USER_VERIFICATION), keys.signed.toList(), "signing keys")
        expectEqual("approved", server.authentication(transaction.id, wait = 5)["state"], "server state")
    },
    "silent verification is answered without the user" to {
        val verifier = Verifier()
        val phone = device(verifier)
        val alice = user("alice")
        val enrollment = pair(phone, alice)
        val created = server.authenticate(alice, mapOf("kind" to "silent"))
        val result = phone.handlePush(pushData(enrollment.enrollmentId))
        expectEqual(
            PushResult.AnsweredSilently(created["authentication_id"] as String, enrollment.enrollmentId),
            result, "outcome",
        )
        expect(verifier.reasons.isEmpty()) { "no prompt" }
        expectEqual("approved", server.authentication(created["authentication_id"] as String, wait = 5)["state"], "state")
    },
    "the Flow of incoming requests" to {
        val phone = device()
        val alice = user("alice")
        pair(phone, alice)
        val created = server.authenticate(alice, mapOf("kind" to "approval", "number_matching" to true))
        val request = withTimeout(20_000) { phone.requests(waitSeconds = 5).first() }
        expectEqual(created["authentication_id"], request.id, "request from the flow")
        val shown = (created["number_to_show"] as Double).toInt()
        expect(request.numberChoices?.contains(shown) == true) { "number choices ${request.numberChoices}" }
        expectEqual(NumberMatching.CHOICE, request.numberMatching, "mode")
        expectEqual(RequestState.APPROVED, phone.approve(request, selectedNumber = shown).state, "recorded")
        // Typed: no choices; a wrong number ends the request as denied (wrong_number).
        val typed = server.authenticate(alice, mapOf("kind" to "approval", "number_matching" to "typed"))
        val typedRequest = withTimeout(20_000) { phone.requests(waitSeconds = 5).first() }
        expectEqual(NumberMatching.TYPED, typedRequest.numberMatching, "typed mode")
        expectEqual(null, typedRequest.numberChoices, "no choices")
        val typedShown = (typed["number_to_show"] as Double).toInt()
        val wrong = phone.approve(typedRequest, selectedNumber = if (typedShown == 99) 10 else typedShown + 1)
        expectEqual(RequestState.DENIED to DenialReason.WRONG_NUMBER, wrong.state to wrong.denialReason, "wrong number")
    },
    "QR login with two users on one device" to {
        val phone = device()
        val alice = user("alice"); val bob = user("bob")
        pair(phone, alice); pair(phone, bob)
        val session = server.createQrSession(mapOf("accessing_ip" to "198.51.100.7"))
        val qr = phone.scanQr(session["qr_uri"] as String)
        expectEqual(setOf(alice, bob), qr.users.map { it.userId }.toSet(), "users")
        expectEqual(setOf("Alice", "Bob"), qr.users.map { it.displayName }.toSet(), "names")
        expectEqual("198.51.100.7", qr.context.ip, "browser ip")
        expectEqual(QrState.APPROVED, phone.approveQr(qr, bob).state, "recorded")
        val status = server.qrSession(session["session_id"] as String)
        expectEqual("approved" to bob, status["state"] to status["user_id"], "server state")
        val second = server.createQrSession()
        val again = phone.scanQr(second["qr_uri"] as String)
        expectEqual(QrState.DENIED, phone.denyQr(again, alice).state, "denied")
        expectEqual(alice, server.qrSession(second["session_id"] as String)["user_id"], "denied by")
    },
    "the Android key store's JCA encoding and sealing pair, approve and reopen" to {
        val keys = JcaKeyStore()
        val dir = deviceDir()
        val phone = Tessera.open(config(), keys, fileStorage(dir.path), Verifier())
        val alice = user("alice")
        val enrollment = pair(phone, alice)
        server.authenticate(alice, mapOf("kind" to "approval", "require_user_verification" to true))
        expectEqual(RequestState.APPROVED, phone.approve(phone.pendingRequests().single()).state, "approved")
        phone.close()
        val reopened = Tessera.open(config(), keys, fileStorage(dir.path), Verifier())
        expectEqual(listOf(enrollment.enrollmentId), reopened.enrollments().map { it.enrollmentId }, "reopened")
        val sealed = keys.seal("tessera.test", byteArrayOf(1, 2, 3))
        sealed[sealed.size - 1] = (sealed[sealed.size - 1].toInt() xor 1).toByte()
        expectThrows<PlatformException.OpenFailed> { keys.open("tessera.test", sealed) }
    },
    "errors are Kotlin exceptions with stable codes" to {
        val phone = device()
        val wrongCode = expectThrows<TesseraException.Server> { phone.pair("ABCD-EFGH-JKMN", server.publicUrl) }
        expectEqual("invalid_pairing_code", wrongCode.code, "wrong code")
        expect("ABCD" !in wrongCode.message.orEmpty()) { "the code leaked into the message" }
        val insecure = expectThrows<TesseraException.InvalidInput> { phone.pair("ABCD-EFGH-JKMN", "http://auth.example.com") }
        expectEqual("insecure_server_url", insecure.code, "insecure")
        val missing = expectThrows<TesseraException.NotFound> { phone.unpair("enr_" + "0".repeat(32)) }
        expectEqual("enrollment_not_found", missing.code, "missing")
        val malformed = expectThrows<TesseraException.InvalidInput> { phone.unpair("nope") }
        expectEqual("invalid_input", malformed.code, "malformed")

        val alice = user("alice")
        pair(phone, alice)
        server.authenticate(alice, mapOf("kind" to "approval", "require_user_verification" to true))
        val request = phone.pendingRequests().single()
        val unavailable = expectThrows<TesseraException.UserVerification> { phone.approve(request) }
        expectEqual("user_verification_unavailable", unavailable.code, "no verifier")

        val cancelling = device(Verifier(cancel = true))
        val bob = user("bob")
        pair(cancelling, bob)
        server.authenticate(bob, mapOf("kind" to "approval", "require_user_verification" to true))
        val forBob = cancelling.pendingRequests().single()
        val cancelled = expectThrows<TesseraException.UserVerification> { cancelling.approve(forBob) }
        expectEqual("user_cancelled", cancelled.code, "cancelled")
        expectEqual("pending", server.authentication(forBob.id)["state"], "nothing sent")
        // A key store that throws something other than PlatformException: a typed error, no stack trace.
        val broken = object : PlatformKeyStore by RecordingKeyStore() {
            override fun seal(alias: String, plaintext: ByteArray): ByteArray =
                throw IllegalStateException("secret-detail-42")
        }
        val platform = expectThrows<TesseraException.Platform> { device(keyStore = broken) }
        expect("secret-detail-42" !in platform.message.orEmpty()) { "the foreign exception leaked: ${platform.message}" }
    },
)

/** The cost of one FFI round trip: a trivial synchronous call, many times. */
fun ffiRoundTrip(phone: Tessera) {
    repeat(50_000) { sdkVersion(); phone.deviceId }
    for ((what, call) in listOf<Pair<String, () -> Unit>>("sdkVersion()" to { sdkVersion() }, "deviceId()" to { phone.deviceId })) {
        val n = 100_000
        val start = System.nanoTime()
        repeat(n) { call() }
        val perCall = (System.nanoTime() - start) / n.toDouble()
        println("kotlin ffi round trip, $what: %.0f ns per call (%d calls)".format(perCall, n))
    }
}

fun main(args: Array<String>) {
    val started = System.nanoTime()
    var passed = 0
    var failed = 0
    PushReceiver().use { pushes ->
        Server(pushes.url).use { server ->
            (tests + signalTests).forEachIndexed { index, (name, test) ->
                val t0 = System.nanoTime()
                try {
                    runBlocking { Env(server, pushes, "t$index").test() }
                    passed++
                    println("ok    %-75s %6.0f ms".format(name, (System.nanoTime() - t0) / 1e6))
                } catch (e: Throwable) {
                    failed++
                    println("FAIL  $name: $e")
                    e.printStackTrace()
                }
            }
            if ("--bench" in args) runBlocking { ffiRoundTrip(device()) }
        }
    }
    println("kotlin suite time: %.2f s".format((System.nanoTime() - started) / 1e9))
    println("bindings-kotlin: $passed passed, $failed failed")
    exitProcess(if (failed == 0 && passed > 0) 0 else 1)
}
