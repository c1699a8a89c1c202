package dev.tessera.android

import dev.tessera.ffi.Authenticator
import dev.tessera.ffi.AuthenticatorConfig
import dev.tessera.ffi.Enrollment
import dev.tessera.ffi.EnrollmentState
import dev.tessera.ffi.Field
import dev.tessera.ffi.IncomingRequest
import dev.tessera.ffi.LogLevel
import dev.tessera.ffi.LogRecord
import dev.tessera.ffi.Logger
import dev.tessera.ffi.NumberMatching
import dev.tessera.ffi.OneTimePasscode
import dev.tessera.ffi.OtpAccount
import dev.tessera.ffi.PlatformKeyStore
import dev.tessera.ffi.PlatformStorage
import dev.tessera.ffi.PushOutcome
import dev.tessera.ffi.PushRegistration
import dev.tessera.ffi.QrAnswerRecorded
import dev.tessera.ffi.QrAuthentication
import dev.tessera.ffi.RequestContext
import dev.tessera.ffi.RequestKind
import dev.tessera.ffi.ResponseRecorded
import dev.tessera.ffi.TesseraException
import dev.tessera.ffi.UserVerifier
import kotlinx.coroutines.channels.awaitClose
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.channelFlow
import kotlinx.coroutines.launch

/**
 * A request to show to the user, by kind. Silent verifications never appear here: the SDK
 * answers them itself. A new kind becomes one more subclass, so `when` over a request stays
 * exhaustive.
 */
sealed class TesseraRequest {
    /** The checked request as the SDK returned it; passed back to approve and deny. */
    abstract val raw: IncomingRequest

    /** The request's id (`aut_…`). */
    val id: String get() = raw.requestId
    /** The user asked: on a device with several users, whom to show it to. */
    val userId: String get() = raw.userId
    /** The application asking. */
    val applicationName: String get() = raw.applicationName
    /** The headline to show. */
    val message: String get() = raw.message
    /** Where the sign-in comes from. */
    val context: RequestContext get() = raw.context
    /**
     * Number matching: [NumberMatching.CHOICE] (offer [numberChoices]), [NumberMatching.TYPED]
     * (a 2-digit input, no choices) or [NumberMatching.OFF]. Pass the number to `approve`; a
     * wrong number ends the request (the result's `denialReason` is `WRONG_NUMBER`).
     */
    val numberMatching: NumberMatching get() = raw.numberMatching
    /** Number matching ([NumberMatching.CHOICE]): the numbers to offer, or null. */
    val numberChoices: List<Int>? get() = raw.numberChoices?.map { it.toInt() }
    /**
     * Context the signature binds besides the displayed fields (the request's hidden fields).
     * The approval covers them: show them, or at least surface them (e.g. under "Details"),
     * labelled as additional context.
     */
    val hiddenFields: List<Field> get() = raw.hiddenFields
    /** Whether approving will ask for biometrics or the device PIN. */
    val requiresUserVerification: Boolean get() = raw.requireUserVerification
    /** When it expires (Unix seconds). */
    val expiresAt: Long get() = raw.expiresAt
    /**
     * The language (BCP 47, e.g. "de") the server wrote its own texts of this request in, as
     * signed; null from older servers. Show your own labels (buttons, "Details") in it if you can.
     */
    val locale: String? get() = raw.locale

    /** "Sign in to <app>?" */
    data class Approval(override val raw: IncomingRequest) : TesseraRequest()

    /** A transaction: show [message] and every field, in order; the answer signs exactly these. */
    data class Transaction(override val raw: IncomingRequest) : TesseraRequest() {
        /** The fields to show, in order. */
        val fields: List<Field> get() = raw.fields
    }

    /**
     * An OpenID CIBA request: [clientName] asks the user to sign in through the backchannel.
     * Show [message] (the binding message, which the relying party shows too), the client and
     * the scopes; approving always asks for biometrics or the device PIN.
     */
    data class Ciba(override val raw: IncomingRequest) : TesseraRequest() {
        /** The relying party's registered name. */
        val clientName: String get() = raw.ciba?.clientName ?: ""
        /** The binding message, if the relying party sent one. */
        val bindingMessage: String? get() = raw.ciba?.bindingMessage
        /** The scopes asked for (`openid` first). */
        val scopes: List<String> get() = raw.ciba?.scopes ?: emptyList()
        /** The fields as signed: the relying party and the scopes. */
        val fields: List<Field> get() = raw.fields
    }

    companion object {
        /** The request by kind; null for a silent verification (never shown). */
        fun from(raw: IncomingRequest): TesseraRequest? = when (raw.kind) {
            RequestKind.APPROVAL -> Approval(raw)
            RequestKind.TRANSACTION -> Transaction(raw)
            RequestKind.CIBA -> Ciba(raw)
            RequestKind.SILENT -> null
        }
    }
}

/** What a push turned out to be. */
sealed class PushResult {
    /** Show this request. */
    data class Show(val request: TesseraRequest) : PushResult()
    /** A silent verification the SDK answered; nothing to show. */
    data class AnsweredSilently(val requestId: String, val enrollmentId: String) : PushResult()
    /** The request is no longer pending (answered elsewhere, or expired). */
    object NothingPending : PushResult()
}

/**
 * Tessera's device SDK for Kotlin: one per app (keep it in your `Application`). Every function is
 * a `suspend` function safe to call from the main thread (the work runs on the SDK's own
 * threads). Errors are [TesseraException]s: match on the subclass, or on `code`.
 */
class Tessera private constructor(val sdk: Authenticator) : AutoCloseable {
    companion object {
        /** Opens the SDK with the platform's key store, storage and user-verification prompt. */
        suspend fun open(
            config: AuthenticatorConfig,
            keyStore: PlatformKeyStore,
            storage: PlatformStorage,
            userVerifier: UserVerifier?,
            verifyEveryApproval: Boolean = false,
        ): Tessera = Tessera(Authenticator.open(config, keyStore, storage, userVerifier, verifyEveryApproval))

        /**
         * Sends the SDK's log records at [minLevel] and more severe to [logger]; `null` stops.
         * A record has its level, target (the Rust module) and one line of text; the SDK never
         * logs secrets (keys, passcodes, pairing codes, tokens, payloads). [logger] runs on the
         * thread that logged: keep it quick and do not call the SDK from it. On Android,
         * [TesseraAndroid.logToLogcat] sends them to Logcat.
         */
        fun setLogger(minLevel: LogLevel = LogLevel.INFO, logger: ((LogRecord) -> Unit)?) {
            val forward = logger?.let { log ->
                object : Logger {
                    override fun log(record: LogRecord) = log(record)
                }
            }
            dev.tessera.ffi.setLogger(forward, minLevel)
        }

        /** An FCM `data` map (or any string map) as the JSON object `handlePush` takes. */
        fun pushJson(data: Map<String, String>): String =
            data.entries.joinToString(",", "{", "}") { (k, v) -> "${jsonString(k)}:${jsonString(v)}" }

        private fun jsonString(s: String): String {
            val out = StringBuilder("\"")
            for (c in s) {
                when {
                    c == '"' -> out.append("\\\"")
                    c == '\\' -> out.append("\\\\")
                    c < ' ' -> out.append(String.format("\\u%04x", c.code))
                    else -> out.append(c)
                }
            }
            return out.append('"').toString()
        }
    }

    /** This installation's device id. */
    val deviceId: String get() = sdk.deviceId()

    /** Pairs with a scanned `tessera://pair?…` URI, or a typed code plus the server's URL. */
    suspend fun pair(codeOrUri: String, server: String? = null): Enrollment = sdk.pair(codeOrUri, server)

    /** Relay pairing, step 1: the payload for your backend to forward to the server. */
    suspend fun createMobilePayload(server: String): String = sdk.createMobilePayload(server)

    /**
     * Seamless device authorization: signs the server flow's `authorization_nonce` with the
     * enrollment's key, without asking the user. Hand the result to the web view (the
     * `tessera.authorization` bridge message or your app-scheme redirect, see docs/flows.md) or
     * to your backend for the flow's `authenticate` action. Bound to that flow; lives 60 s; used once.
     */
    suspend fun createAuthorizationPayload(enrollmentId: String, flowNonce: String): String =
        sdk.createAuthorizationPayload(enrollmentId, flowNonce)

    /**
     * The hosted page in your web view asked something (docs/flows.md, "The hosted page in an
     * app's web view"). With `WebViewCompat.addWebMessageListener(webView, "TesseraBridge",
     * setOf(serverOrigin), listener)`, in `onPostMessage(view, message, sourceOrigin, isMainFrame,
     * replyProxy)`: `replyProxy.postMessage(tessera.handleWebViewMessage(message.data!!,
     * sourceOrigin.toString()))`. The answer is JSON for the page; questions from any origin but
     * the server's are refused in it. `userId` picks the signed-in user's enrollment when this
     * device holds several on that server.
     */
    suspend fun handleWebViewMessage(message: String, sourceOrigin: String, userId: String? = null): String =
        sdk.handleWebViewMessage(message, sourceOrigin, userId)

    /**
     * The scheme mode: in `shouldOverrideUrlLoading`, for a `<your scheme>://tessera/…` URL,
     * `webView.loadUrl(tessera.handleWebViewUrl(url, originOf(webView.url)))` and return true.
     * Throws (load nothing) when the URL is not the page's question or its return URL is not on
     * the server's origin.
     */
    suspend fun handleWebViewUrl(url: String, sourceOrigin: String, userId: String? = null): String =
        sdk.handleWebViewUrl(url, sourceOrigin, userId)

    /** Relay pairing, step 2: the server payload your backend got back. */
    suspend fun completeRelayPairing(serverPayload: String): Enrollment = sdk.completeRelayPairing(serverPayload)

    /** The enrollments on this device, oldest first. */
    suspend fun enrollments(): List<Enrollment> = sdk.enrollments()

    /** Unpairs (tells the server, then deletes the keys). */
    suspend fun unpair(enrollmentId: String) = sdk.removeEnrollment(enrollmentId)

    /** Waits for the user's primary device to approve this new device. */
    suspend fun waitForVerification(enrollmentId: String, timeoutSeconds: Int): EnrollmentState =
        sdk.waitForVerification(enrollmentId, timeoutSeconds.toUInt())

    /** Registers a fresh FCM token with every enrollment (call from `onNewToken`). */
    suspend fun updateFcmToken(token: String) {
        for (enrollment in sdk.enrollments()) {
            sdk.updatePushToken(enrollment.enrollmentId, PushRegistration.Fcm(token))
        }
    }

    /** Handles an FCM message's data map. */
    suspend fun handlePush(data: Map<String, String>): PushResult = handlePush(pushJson(data))

    /** Handles a push payload (JSON, or the signed request itself). */
    suspend fun handlePush(payload: String): PushResult =
        when (val outcome = sdk.handlePush(payload)) {
            is PushOutcome.Request -> TesseraRequest.from(outcome.request)?.let { PushResult.Show(it) }
                ?: PushResult.NothingPending
            is PushOutcome.SilentVerificationAnswered ->
                PushResult.AnsweredSilently(outcome.requestId, outcome.enrollmentId)
            PushOutcome.NothingPending -> PushResult.NothingPending
        }

    /**
     * The requests waiting for an answer (pull: for apps without push, and after a missed push).
     * An enrollment the server no longer knows (a user of a shared device unpaired by the
     * backend) does not hide the others' requests: the SDK marks it `removed` (see
     * [enrollments]) and skips it.
     */
    suspend fun pendingRequests(): List<TesseraRequest> = sdk.pendingRequests().mapNotNull(TesseraRequest::from)

    /**
     * One pending request by id, for a tapped notification (`enrollmentId` and `requestId` from
     * its payload), checked exactly as pulled requests are. Throws [TesseraException.Server]
     * with code `authentication_not_found`, `authentication_expired` or `already_answered` when
     * it cannot be answered any more.
     */
    suspend fun request(enrollmentId: String, requestId: String): TesseraRequest? =
        TesseraRequest.from(sdk.request(enrollmentId, requestId))

    /**
     * The incoming requests as a cold [Flow]: long-polls every active enrollment (`waitSeconds`
     * at a time) while collected, emits each request once, and keeps going across network errors
     * (retrying after `retryDelayMillis`). An enrollment the server no longer knows stops being
     * polled (the SDK marks it `removed`) while the others go on. Other errors end the flow with
     * the exception. Collect it while a screen that shows requests is visible; push covers the
     * rest.
     */
    fun requests(waitSeconds: Int = 25, retryDelayMillis: Long = 2_000): Flow<TesseraRequest> = channelFlow {
        val seen = LinkedHashSet<String>()
        for (enrollment in sdk.enrollments().filter { it.status == EnrollmentState.ACTIVE && !it.removed }) {
            launch {
                while (true) {
                    val batch = try {
                        sdk.waitForRequests(enrollment.enrollmentId, waitSeconds.toUInt())
                    } catch (e: TesseraException.Network) {
                        delay(retryDelayMillis)
                        continue
                    } catch (e: TesseraException.NotFound) {
                        // Unpaired by the backend (`enrollment_removed`) or removed on this
                        // device: this enrollment is done, the others go on.
                        return@launch
                    }
                    for (raw in batch) {
                        val request = TesseraRequest.from(raw) ?: continue
                        val fresh = synchronized(seen) {
                            if (seen.size > 1024) seen.remove(seen.first())
                            seen.add(request.id)
                        }
                        if (fresh) send(request)
                    }
                    if (batch.isNotEmpty()) delay(retryDelayMillis)
                }
            }
        }
        awaitClose()
    }

    /**
     * Approves: asks the [UserVerifier] first when the request requires it, then signs with the
     * matching key. [selectedNumber] is the number the user picked for number matching.
     */
    suspend fun approve(request: TesseraRequest, selectedNumber: Int? = null): ResponseRecorded =
        sdk.approve(request.raw, selectedNumber?.toUInt())

    /** Approves after the app verified the user itself; [amr] as RFC 8176 (`fpt`, `face`, `pin`). */
    suspend fun approveVerified(request: TesseraRequest, amr: List<String>, selectedNumber: Int? = null): ResponseRecorded =
        sdk.approveVerified(request.raw, amr, selectedNumber?.toUInt())

    /** Denies; [reportFraud] when the user did not start it. */
    suspend fun deny(request: TesseraRequest, reportFraud: Boolean = false): ResponseRecorded =
        sdk.deny(request.raw, reportFraud)

    /** QR login: checks a scanned code and returns who may answer. */
    suspend fun scanQr(scanned: String): QrAuthentication = sdk.authenticateWithQr(scanned)

    /** QR login: [userId] (one of the QR authentication's users) approves. */
    suspend fun approveQr(qr: QrAuthentication, userId: String): QrAnswerRecorded = sdk.approveQr(qr, userId)

    /** QR login: [userId] denies. */
    suspend fun denyQr(qr: QrAuthentication, userId: String, reportFraud: Boolean = false): QrAnswerRecorded =
        sdk.denyQr(qr, userId, reportFraud)

    /** Imports an offline OTP account from an `otpauth://` URI. */
    suspend fun importOtpAccount(uri: String): OtpAccount = sdk.importOtpAccount(uri)

    /** The current code of an OTP account. */
    suspend fun oneTimePasscode(accountId: String): OneTimePasscode = sdk.oneTimePasscode(accountId)

    override fun close() = sdk.close()
}

/** The error's stable code (`invalid_pairing_code`, `user_cancelled`, `network`, …), whatever its kind. */
val TesseraException.errorCode: String
    get() = when (this) {
        is TesseraException.InvalidInput -> code
        is TesseraException.Network -> code
        is TesseraException.Server -> code
        is TesseraException.UntrustedServer -> code
        is TesseraException.NotFound -> code
        is TesseraException.Expired -> code
        is TesseraException.Conflict -> code
        is TesseraException.UserVerification -> code
        is TesseraException.Platform -> code
    }
