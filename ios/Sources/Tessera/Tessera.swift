import Foundation
import os.log
@_exported import TesseraFFI

/// A request to show to the user, by kind. Silent verifications never appear here: the SDK
/// answers them itself. A new kind becomes one more case, so `switch` stays exhaustive.
public enum TesseraRequest: Identifiable {
    /// "Sign in to <app>?"
    case approval(IncomingRequest)
    /// A transaction: show `message` and every field, in order; the answer signs exactly these.
    case transaction(IncomingRequest)
    /// An OpenID CIBA request: `raw.ciba` names the relying party, its binding message (the
    /// headline) and the scopes; approving always asks for biometrics or the device passcode.
    case ciba(IncomingRequest)

    /// The request by kind; nil for a silent verification (never shown).
    public init?(_ raw: IncomingRequest) {
        switch raw.kind {
        case .approval: self = .approval(raw)
        case .transaction: self = .transaction(raw)
        case .ciba: self = .ciba(raw)
        case .silent: return nil
        }
    }

    /// The checked request, passed back to approve and deny.
    public var raw: IncomingRequest {
        switch self {
        case .approval(let r), .transaction(let r), .ciba(let r): return r
        }
    }

    public var id: String { raw.requestId }
    public var userId: String { raw.userId }
    public var applicationName: String { raw.applicationName }
    public var message: String { raw.message }
    public var fields: [Field] { raw.fields }
    public var context: RequestContext { raw.context }
    /// Context the signature binds besides `fields` (the request's hidden fields). The approval
    /// covers them: show them, or at least surface them (e.g. under "Details"), labelled as
    /// additional context.
    public var hiddenFields: [Field] { raw.hiddenFields }
    /// Number matching: `.choice` (offer `numberChoices`), `.typed` (a 2-digit input, no
    /// choices) or `.off`. Pass the number to `approve`; a wrong number ends the request (the
    /// result's `denialReason` is `.wrongNumber`).
    public var numberMatching: NumberMatching { raw.numberMatching }
    /// Number matching (`.choice`): the numbers to offer, or nil.
    public var numberChoices: [UInt32]? { raw.numberChoices }
    public var requiresUserVerification: Bool { raw.requireUserVerification }
    /// For a CIBA request: the relying party, binding message and scopes.
    public var cibaDetails: CibaDetails? { raw.ciba }
    public var expiresAt: Date { Date(timeIntervalSince1970: TimeInterval(raw.expiresAt)) }
    /// The language (BCP 47, e.g. "de") the server wrote its own texts of this request in, as
    /// signed; nil from older servers. Show your own labels (buttons, "Details") in it if you can.
    public var locale: String? { raw.locale }
}

/// What a push turned out to be.
public enum PushResult {
    /// Show this request.
    case show(TesseraRequest)
    /// A silent verification the SDK answered; nothing to show.
    case answeredSilently(requestId: String, enrollmentId: String)
    /// The request is no longer pending.
    case nothingPending
}

public extension TesseraError {
    /// The error's stable code (`invalid_pairing_code`, `user_cancelled`, `network`, …).
    var code: String {
        switch self {
        case .InvalidInput(let code, _), .Network(let code, _), .Server(let code, _),
             .UntrustedServer(let code, _), .NotFound(let code, _), .Expired(let code, _),
             .Conflict(let code, _), .UserVerification(let code, _), .Platform(let code, _):
            return code
        }
    }
}

/// Tessera's device SDK for Swift: one per app. Every method is `async` and safe to call from the
/// main actor (the work runs on the SDK's own threads). Errors are `TesseraError`s.
public final class Tessera: @unchecked Sendable {
    /// The generated SDK object, for anything this wrapper does not cover.
    public let sdk: Authenticator

    private init(sdk: Authenticator) { self.sdk = sdk }

    /// Sends the SDK's log records at `minLevel` and more severe to `logger`; `nil` stops.
    /// A record has its level, target (the Rust module) and one line of text; the SDK never
    /// logs secrets (keys, passcodes, pairing codes, tokens, payloads). `logger` runs on the
    /// thread that logged: keep it quick and do not call the SDK from it. For `os_log`, pass
    /// `Tessera.osLog(subsystem:)`.
    public static func setLogger(minLevel: LogLevel = .info, _ logger: (@Sendable (LogRecord) -> Void)?) {
        TesseraFFI.setLogger(logger: logger.map { ClosureLogger($0) }, minLevel: minLevel)
    }

    /// A logger that writes the SDK's records to the unified log under `subsystem`, category
    /// `Tessera`.
    public static func osLog(subsystem: String) -> @Sendable (LogRecord) -> Void {
        let log = OSLog(subsystem: subsystem, category: "Tessera")
        return { record in
            let type: OSLogType
            switch record.level {
            case .error: type = .error
            case .warn: type = .default
            case .info: type = .info
            case .debug, .trace: type = .debug
            }
            os_log("%{public}@: %{public}@", log: log, type: type, record.target, record.message)
        }
    }

    /// Opens the SDK with the platform's key store, storage and user-verification prompt.
    public static func open(
        config: AuthenticatorConfig,
        keyStore: PlatformKeyStore,
        storage: PlatformStorage,
        userVerifier: UserVerifier?,
        verifyEveryApproval: Bool = false
    ) async throws -> Tessera {
        Tessera(sdk: try await Authenticator.open(
            config: config, keyStore: keyStore, storage: storage,
            userVerifier: userVerifier, verifyEveryApproval: verifyEveryApproval))
    }

    /// Opens the SDK with the Secure Enclave key store, keychain storage and the
    /// LocalAuthentication prompt. `accessGroup`: a keychain access group shared with the
    /// Notification Service Extension, if it handles pushes too.
    public static func open(config: AuthenticatorConfig, accessGroup: String? = nil) async throws -> Tessera {
        let verifier = LocalAuthenticationVerifier()
        let tessera = try await open(
            config: config,
            keyStore: SecureEnclaveKeyStore(accessGroup: accessGroup, authentication: verifier.authentication),
            storage: KeychainStorage(accessGroup: accessGroup),
            userVerifier: verifier)
        // The Secure Enclave key store App Attests pairings where App Attest is supported; their
        // answers then carry assertions.
        tessera.setAppAttestAsserter(AppAttestService())
        return tessera
    }

    public var deviceId: String { sdk.deviceId() }

    /// Sets (or with nil removes) the App Attest asserter: answers of enrollments whose pairing
    /// was App Attested then carry an assertion ([AppAttestService] uses `DCAppAttestService`).
    /// An application with attestation `require`, or a policy asking for assertions, refuses such
    /// answers without one.
    public func setAppAttestAsserter(_ asserter: AppAttestAsserter?) {
        sdk.setAppAttestAsserter(asserter: asserter)
    }

    /// Pairs with a scanned `tessera://pair?…` URI, or a typed code plus the server's URL.
    public func pair(_ codeOrUri: String, server: String? = nil) async throws -> Enrollment {
        try await sdk.pair(codeOrUri: codeOrUri, server: server)
    }

    /// Relay pairing, step 1: the payload for your backend to forward to the server.
    public func createMobilePayload(server: String) async throws -> String {
        try await sdk.createMobilePayload(server: server)
    }

    /// Seamless device authorization: signs the server flow's `authorization_nonce` with the
    /// enrollment's key, without asking the user. Hand the result to the web view (the
    /// `tessera.authorization` bridge message or your app-scheme redirect, see docs/flows.md) or
    /// to your backend for the flow's `authenticate` action. Bound to that flow; lives 60 s; used once.
    public func createAuthorizationPayload(enrollmentId: String, flowNonce: String) async throws -> String {
        try await sdk.createAuthorizationPayload(enrollmentId: enrollmentId, flowNonce: flowNonce)
    }

    /// The hosted page in your web view asked something (docs/flows.md, "The hosted page in an
    /// app's web view"). Register a `WKScriptMessageHandler` named `tessera`; in
    /// `userContentController(_:didReceive:)`, with `message.body as? String` and the frame's
    /// `securityOrigin` as `sourceOrigin` (`protocol://host[:port]`), evaluate
    /// `window.TesseraPrompt.receive(<answer as a JSON string literal>)` with the answer. Questions
    /// from any origin but the server's are refused in it. `userId` picks the signed-in user's
    /// enrollment when this device holds several on that server.
    public func handleWebViewMessage(_ message: String, sourceOrigin: String, userId: String? = nil) async throws -> String {
        try await sdk.handleWebViewMessage(message: message, sourceOrigin: sourceOrigin, userId: userId)
    }

    /// The scheme mode: in `webView(_:decidePolicyFor:decisionHandler:)`, for a
    /// `<your scheme>://tessera/…` URL, cancel the navigation and load the URL this returns
    /// (the page's return URL with the answer in its fragment). Throws (load nothing) when the
    /// URL is not the page's question or its return URL is not on the server's origin.
    public func handleWebViewUrl(_ url: String, sourceOrigin: String, userId: String? = nil) async throws -> String {
        try await sdk.handleWebViewUrl(url: url, sourceOrigin: sourceOrigin, userId: userId)
    }

    /// Relay pairing, step 2: the server payload your backend got back.
    public func completeRelayPairing(_ serverPayload: String) async throws -> Enrollment {
        try await sdk.completeRelayPairing(serverPayload: serverPayload)
    }

    public func enrollments() async -> [Enrollment] { await sdk.enrollments() }

    /// Unpairs (tells the server, then deletes the keys).
    public func unpair(_ enrollmentId: String) async throws {
        try await sdk.removeEnrollment(enrollmentId: enrollmentId)
    }

    /// Registers a fresh APNs device token with every enrollment.
    public func updateApnsToken(_ token: Data, sandbox: Bool) async throws {
        let hex = token.map { String(format: "%02x", $0) }.joined()
        for enrollment in await sdk.enrollments() {
            try await sdk.updatePushToken(enrollmentId: enrollment.enrollmentId, push: .apns(token: hex, sandbox: sandbox))
        }
    }

    /// Handles a push's `userInfo` (the whole APNs payload; its `tessera` member is used).
    public func handlePush(_ userInfo: [AnyHashable: Any]) async throws -> PushResult {
        try await handlePush(payload: TesseraPush.json(userInfo))
    }

    /// Handles a push payload (JSON, or the signed request itself).
    public func handlePush(payload: String) async throws -> PushResult {
        switch try await sdk.handlePush(payload: payload) {
        case .request(let raw):
            return TesseraRequest(raw).map(PushResult.show) ?? .nothingPending
        case .silentVerificationAnswered(let requestId, let enrollmentId):
            return .answeredSilently(requestId: requestId, enrollmentId: enrollmentId)
        case .nothingPending:
            return .nothingPending
        }
    }

    /// The requests waiting for an answer (pull: after a missed push, or without push). An
    /// enrollment the server no longer knows (a user of a shared device unpaired by the backend)
    /// does not hide the others' requests: the SDK marks it `removed` and skips it.
    public func pendingRequests() async throws -> [TesseraRequest] {
        try await sdk.pendingRequests().compactMap(TesseraRequest.init)
    }

    /// One pending request by id, for a tapped notification (`enrollmentId` and `requestId` from
    /// its payload), checked exactly as pulled requests are. Throws `TesseraError.Server` with
    /// code `authentication_not_found`, `authentication_expired` or `already_answered` when it
    /// cannot be answered any more.
    public func request(enrollmentId: String, requestId: String) async throws -> TesseraRequest? {
        TesseraRequest(try await sdk.request(enrollmentId: enrollmentId, requestId: requestId))
    }

    /// The incoming requests while iterated: long-polls every active enrollment at once, yields
    /// each request once, and retries after network errors. An enrollment the server no longer
    /// knows stops being polled (the SDK marks it `removed`) while the others go on; other errors
    /// end the stream.
    public func requests(waitSeconds: UInt32 = 25) -> AsyncThrowingStream<TesseraRequest, Error> {
        let sdk = self.sdk
        return AsyncThrowingStream { continuation in
            let seen = SeenRequests()
            let task = Task {
                do {
                    let enrollments = await sdk.enrollments().filter { $0.status == .active && !$0.removed }
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for enrollment in enrollments {
                            group.addTask {
                                while !Task.isCancelled {
                                    let batch: [IncomingRequest]
                                    do {
                                        batch = try await sdk.waitForRequests(
                                            enrollmentId: enrollment.enrollmentId, waitSeconds: waitSeconds)
                                    } catch TesseraError.Network {
                                        try await Task.sleep(nanoseconds: 2_000_000_000)
                                        continue
                                    } catch TesseraError.NotFound {
                                        // Unpaired by the backend (`enrollment_removed`) or
                                        // removed on this device: the others go on.
                                        return
                                    }
                                    for request in batch.compactMap(TesseraRequest.init) where seen.insert(request.id) {
                                        continuation.yield(request)
                                    }
                                    // A request stays pending until answered: do not spin on it.
                                    if !batch.isEmpty { try await Task.sleep(nanoseconds: 2_000_000_000) }
                                }
                            }
                        }
                        try await group.waitForAll()
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Approves: asks the user-verification prompt first when the request requires it, then
    /// signs with the matching key. `selectedNumber`: the number the user picked.
    public func approve(_ request: TesseraRequest, selectedNumber: UInt32? = nil) async throws -> ResponseRecorded {
        try await sdk.approve(request: request.raw, selectedNumber: selectedNumber)
    }

    /// Denies; `reportFraud` when the user did not start it.
    public func deny(_ request: TesseraRequest, reportFraud: Bool = false) async throws -> ResponseRecorded {
        try await sdk.deny(request: request.raw, reportFraud: reportFraud)
    }

    /// QR login: checks a scanned code and returns who may answer.
    public func scanQr(_ scanned: String) async throws -> QrAuthentication {
        try await sdk.authenticateWithQr(scanned: scanned)
    }

    /// QR login: `userId` (one of the QR authentication's users) approves.
    public func approveQr(_ qr: QrAuthentication, userId: String) async throws -> QrAnswerRecorded {
        try await sdk.approveQr(qr: qr, userId: userId)
    }

    /// QR login: `userId` denies.
    public func denyQr(_ qr: QrAuthentication, userId: String, reportFraud: Bool = false) async throws -> QrAnswerRecorded {
        try await sdk.denyQr(qr: qr, userId: userId, reportFraud: reportFraud)
    }
}

/// The ids already yielded by `requests()`.
private final class SeenRequests: @unchecked Sendable {
    private let lock = NSLock()
    private var ids = Set<String>()

    func insert(_ id: String) -> Bool {
        lock.lock(); defer { lock.unlock() }
        return ids.insert(id).inserted
    }
}

/// Adapts a closure to the SDK's `Logger` protocol.
private final class ClosureLogger: Logger, @unchecked Sendable {
    private let body: @Sendable (LogRecord) -> Void

    init(_ body: @escaping @Sendable (LogRecord) -> Void) { self.body = body }

    func log(record: LogRecord) { body(record) }
}
