import Foundation
import LocalAuthentication

/// The `LAContext` a successful prompt evaluated, handed to the key store so that signing with
/// the user-verification key right after the prompt does not prompt a second time. It is used
/// for `window` seconds (the SDK signs at once), then invalidated: a later approval prompts again.
public final class AuthenticationContextBox: @unchecked Sendable {
    private let lock = NSLock()
    private let window: TimeInterval
    private var context: LAContext?
    private var evaluatedAt = Date.distantPast

    public init(window: TimeInterval = 10) { self.window = window }

    /// The evaluated context while it is fresh.
    func current() -> LAContext? {
        lock.lock(); defer { lock.unlock() }
        if let context, Date().timeIntervalSince(evaluatedAt) > window {
            context.invalidate()
            self.context = nil
        }
        return context
    }

    func put(_ context: LAContext) {
        lock.lock(); defer { lock.unlock() }
        self.context?.invalidate()
        self.context = context
        evaluatedAt = Date()
    }
}

/// The SDK's user-verification prompt on iOS: Face ID, Touch ID or the device passcode
/// (`.deviceOwnerAuthentication`), with a reason text the app writes from what is being
/// approved. The evaluated context goes to [SecureEnclaveKeyStore], whose user-verification key
/// (access control `.userPresence`) then signs without a second prompt.
///
/// iOS does not tell whether the passcode was used instead of biometry; the method reported
/// (RFC 8176) follows the device's biometry: `face`, `fpt`, or `pin` when it has none.
public final class LocalAuthenticationVerifier: UserVerifier, @unchecked Sendable {
    public let authentication = AuthenticationContextBox()
    private let reasonText: @Sendable (VerificationReason) -> String

    public init(reasonText: @escaping @Sendable (VerificationReason) -> String = { "\($0.applicationName): \($0.message)" }) {
        self.reasonText = reasonText
    }

    public func verifyUser(reason: VerificationReason) async throws -> [String] {
        let context = LAContext()
        var error: NSError?
        guard context.canEvaluatePolicy(.deviceOwnerAuthentication, error: &error) else {
            throw PlatformError.Unavailable
        }
        do {
            try await context.evaluatePolicy(.deviceOwnerAuthentication, localizedReason: reasonText(reason))
        } catch let error as LAError {
            switch error.code {
            case .userCancel, .appCancel, .systemCancel, .userFallback:
                throw PlatformError.UserCancelled
            case .biometryNotAvailable, .biometryNotEnrolled, .passcodeNotSet:
                throw PlatformError.Unavailable
            default:
                throw PlatformError.Failed(detail: "local authentication failed (\(error.code.rawValue))")
            }
        }
        authentication.put(context)
        switch context.biometryType {
        case .faceID: return ["face"]
        case .touchID: return ["fpt"]
        default: return ["pin"]
        }
    }
}
