import Foundation
#if canImport(UserNotifications)
import UserNotifications
#endif

/// APNs helpers: recognising Tessera's pushes and turning `userInfo` into what the SDK reads.
public enum TesseraPush {
    /// Whether a push's `userInfo` is Tessera's (it has a `tessera` member).
    public static func isTesseraPush(_ userInfo: [AnyHashable: Any]) -> Bool {
        userInfo["tessera"] is [String: Any]
    }

    /// The `userInfo` as JSON (the SDK uses its `tessera` member).
    public static func json(_ userInfo: [AnyHashable: Any]) throws -> String {
        var plain: [String: Any] = [:]
        for (key, value) in userInfo { if let key = key as? String { plain[key] = value } }
        guard JSONSerialization.isValidJSONObject(plain),
              let text = String(data: try JSONSerialization.data(withJSONObject: plain), encoding: .utf8) else {
            throw TesseraError.InvalidInput(code: "invalid_input", detail: "the push payload is not JSON")
        }
        return text
    }
}

#if canImport(UserNotifications) && os(iOS)
/// A Notification Service Extension that checks Tessera's alert pushes before they are shown:
/// the notification shows the request as the server signed it (message and fields), or is
/// replaced by "no longer pending". Subclass it in the extension target and return the SDK
/// opened with the keychain access group shared with the app.
open class TesseraNotificationService: UNNotificationServiceExtension {
    private var contentHandler: ((UNNotificationContent) -> Void)?
    private var content: UNMutableNotificationContent?

    /// The SDK, opened with the app's shared keychain access group.
    open func tessera() async throws -> Tessera {
        fatalError("override tessera() to open the SDK with the app's keychain access group")
    }

    /// The notification for a checked request; by default the message and the fields.
    open func decorate(_ content: UNMutableNotificationContent, with request: TesseraRequest) {
        content.title = request.applicationName
        content.body = ([request.message] + request.fields.map { "\($0.label): \($0.value)" }).joined(separator: "\n")
        content.userInfo["tessera_request_id"] = request.id
    }

    open override func didReceive(_ request: UNNotificationRequest, withContentHandler contentHandler: @escaping (UNNotificationContent) -> Void) {
        self.contentHandler = contentHandler
        guard let content = request.content.mutableCopy() as? UNMutableNotificationContent,
              TesseraPush.isTesseraPush(request.content.userInfo) else {
            contentHandler(request.content)
            return
        }
        self.content = content
        Task {
            do {
                switch try await tessera().handlePush(request.content.userInfo) {
                case .show(let incoming): decorate(content, with: incoming)
                case .answeredSilently, .nothingPending: content.body = "This request is no longer pending."
                }
            } catch {
                // Shown as the server's alert text; the app checks the request when opened.
            }
            contentHandler(content)
        }
    }

    open override func serviceExtensionTimeWillExpire() {
        if let content { contentHandler?(content) }
    }
}
#endif
