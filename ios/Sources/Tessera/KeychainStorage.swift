import Foundation
import Security

/// The SDK's storage on iOS: one keychain item per blob (generic passwords of one service),
/// readable after the first unlock and never leaving this device (`ThisDeviceOnly`: not in
/// backups, not synced). A keychain write replaces the item whole, so it is atomic. The SDK
/// encrypts its state itself; `accessGroup` shares it with a Notification Service Extension.
public final class KeychainStorage: PlatformStorage, @unchecked Sendable {
    private let service: String
    private let accessGroup: String?

    public init(service: String = "dev.tessera.storage", accessGroup: String? = nil) {
        self.service = service
        self.accessGroup = accessGroup
    }

    private func query(_ name: String) -> [String: Any] {
        var query: [String: Any] = [
            kSecClass as String: kSecClassGenericPassword,
            kSecAttrService as String: service,
            kSecAttrAccount as String: name,
        ]
        if let accessGroup { query[kSecAttrAccessGroup as String] = accessGroup }
        return query
    }

    public func read(name: String) throws -> Data? {
        var q = query(name)
        q[kSecReturnData as String] = true
        var item: CFTypeRef?
        let status = SecItemCopyMatching(q as CFDictionary, &item)
        switch status {
        case errSecSuccess: return item as? Data
        case errSecItemNotFound: return nil
        default: throw PlatformError.Failed(detail: "keychain read failed (\(status))")
        }
    }

    public func write(name: String, bytes: Data) throws {
        let attributes: [String: Any] = [
            kSecValueData as String: bytes,
            kSecAttrAccessible as String: kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly,
        ]
        var status = SecItemUpdate(query(name) as CFDictionary, attributes as CFDictionary)
        if status == errSecItemNotFound {
            status = SecItemAdd(query(name).merging(attributes) { $1 } as CFDictionary, nil)
        }
        guard status == errSecSuccess else { throw PlatformError.Failed(detail: "keychain write failed (\(status))") }
    }

    public func delete(name: String) throws {
        let status = SecItemDelete(query(name) as CFDictionary)
        guard status == errSecSuccess || status == errSecItemNotFound else {
            throw PlatformError.Failed(detail: "keychain delete failed (\(status))")
        }
    }
}
