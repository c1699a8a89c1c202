import Foundation
import LocalAuthentication
import Security
#if canImport(DeviceCheck)
import DeviceCheck
#endif

/// The SDK's key store on iOS: P-256 keys created inside the Secure Enclave (private keys never
/// leave it), found by alias (the keychain application tag).
///
/// - The possession key is usable after the first unlock, without the user: silent verification
///   and device-signed calls work from a Notification Service Extension or in the background.
/// - The user-verification key's access control requires `.userPresence` (biometry or the
///   passcode) and a passcode set on the device (`WhenPasscodeSetThisDeviceOnly`): deleting the
///   passcode deletes it. It signs with the context [LocalAuthenticationVerifier] just evaluated.
/// - Sealing uses ECIES (`eciesEncryptionCofactorVariableIVX963SHA256AESGCM`) to a Secure Enclave
///   key.
///
/// On the simulator (no Secure Enclave) keys are ordinary keychain keys.
public final class SecureEnclaveKeyStore: PlatformKeyStore, @unchecked Sendable {
    private let accessGroup: String?
    private let authentication: AuthenticationContextBox?

    public init(accessGroup: String? = nil, authentication: AuthenticationContextBox? = nil) {
        self.accessGroup = accessGroup
        self.authentication = authentication
    }

    public func generateSigningKey(alias: String, kind: KeyKind) throws -> Data {
        try deleteKey(alias: alias)
        let key = try createKey(tag: alias, userPresence: kind == .userVerification)
        return try publicPoint(of: key)
    }

    public func publicKey(alias: String) throws -> Data? {
        guard let key = try findKey(tag: alias, context: nil) else { return nil }
        return try publicPoint(of: key)
    }

    public func sign(alias: String, data: Data) throws -> Data {
        guard let key = try findKey(tag: alias, context: authentication?.current()) else {
            throw PlatformError.NotFound
        }
        var error: Unmanaged<CFError>?
        guard let signature = SecKeyCreateSignature(key, .ecdsaSignatureMessageX962SHA256, data as CFData, &error) else {
            throw failure(error?.takeRetainedValue(), "sign")
        }
        return signature as Data // ASN.1 DER
    }

    public func deleteKey(alias: String) throws {
        var query = baseQuery(tag: alias)
        query[kSecClass as String] = kSecClassKey
        let status = SecItemDelete(query as CFDictionary)
        guard status == errSecSuccess || status == errSecItemNotFound else {
            throw PlatformError.Failed(detail: "delete failed (\(status))")
        }
    }

    public func seal(alias: String, plaintext: Data) throws -> Data {
        let tag = alias + ".seal"
        let key = try findKey(tag: tag, context: nil) ?? createKey(tag: tag, userPresence: false)
        guard let publicKey = SecKeyCopyPublicKey(key) else { throw PlatformError.Failed(detail: "no public key") }
        var error: Unmanaged<CFError>?
        guard let sealed = SecKeyCreateEncryptedData(publicKey, .eciesEncryptionCofactorVariableIVX963SHA256AESGCM, plaintext as CFData, &error) else {
            throw failure(error?.takeRetainedValue(), "seal")
        }
        return sealed as Data
    }

    public func open(alias: String, sealed: Data) throws -> Data {
        guard let key = try findKey(tag: alias + ".seal", context: nil) else { throw PlatformError.NotFound }
        var error: Unmanaged<CFError>?
        guard let plain = SecKeyCreateDecryptedData(key, .eciesEncryptionCofactorVariableIVX963SHA256AESGCM, sealed as CFData, &error) else {
            throw PlatformError.OpenFailed
        }
        return plain as Data
    }

    // MARK: - Attestation

    /// Secure Enclave keys have no per-key attestation on iOS: the app is attested instead, with
    /// App Attest ([attestApp]).
    public func generateAttestedSigningKey(alias: String, kind: KeyKind, challenge: Data) throws -> [Data] {
        return []
    }

    /// Attests the app with App Attest: a new App Attest key, attested over `clientDataHash`
    /// (the registration's attestation challenge). None where App Attest is unavailable (the
    /// simulator, iOS before 14). Called by the SDK off the main thread; it waits for Apple's
    /// answer.
    public func attestApp(clientDataHash: Data) throws -> AppAttestationResult? {
        #if canImport(DeviceCheck)
        if #available(iOS 14.0, macOS 11.0, *) {
            let service = DCAppAttestService.shared
            guard service.isSupported else { return nil }
            let keyId: String = try waitFor { service.generateKey(completionHandler: $0) }
            let object: Data = try waitFor {
                service.attestKey(keyId, clientDataHash: clientDataHash, completionHandler: $0)
            }
            guard let rawKeyId = Data(base64Encoded: keyId) else {
                throw PlatformError.Failed(detail: "the App Attest key id is not base64")
            }
            return AppAttestationResult(keyId: rawKeyId, attestationObject: object)
        }
        #endif
        return nil
    }

    private func waitFor<T>(_ call: (@escaping (T?, Error?) -> Void) -> Void) throws -> T {
        let done = DispatchSemaphore(value: 0)
        var value: T?
        var failureText = "no result"
        call { result, error in
            value = result
            if let error { failureText = error.localizedDescription }
            done.signal()
        }
        done.wait()
        guard let value else { throw PlatformError.Failed(detail: "App Attest failed: \(failureText)") }
        return value
    }

    // MARK: - Keychain

    private func baseQuery(tag: String) -> [String: Any] {
        var query: [String: Any] = [
            kSecAttrApplicationTag as String: Data(tag.utf8),
            kSecAttrKeyType as String: kSecAttrKeyTypeECSECPrimeRandom,
        ]
        if let accessGroup { query[kSecAttrAccessGroup as String] = accessGroup }
        return query
    }

    private func createKey(tag: String, userPresence: Bool) throws -> SecKey {
        let protection = userPresence ? kSecAttrAccessibleWhenPasscodeSetThisDeviceOnly : kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly
        var flags: SecAccessControlCreateFlags = []
        #if !targetEnvironment(simulator)
        flags.insert(.privateKeyUsage)
        #endif
        if userPresence { flags.insert(.userPresence) }
        var error: Unmanaged<CFError>?
        guard let access = SecAccessControlCreateWithFlags(nil, protection, flags, &error) else {
            throw failure(error?.takeRetainedValue(), "access control")
        }
        var privateAttributes = baseQuery(tag: tag)
        privateAttributes.removeValue(forKey: kSecAttrKeyType as String)
        privateAttributes[kSecAttrIsPermanent as String] = true
        privateAttributes[kSecAttrAccessControl as String] = access
        var attributes: [String: Any] = [
            kSecAttrKeyType as String: kSecAttrKeyTypeECSECPrimeRandom,
            kSecAttrKeySizeInBits as String: 256,
            kSecPrivateKeyAttrs as String: privateAttributes,
        ]
        #if !targetEnvironment(simulator)
        attributes[kSecAttrTokenID as String] = kSecAttrTokenIDSecureEnclave
        #endif
        guard let key = SecKeyCreateRandomKey(attributes as CFDictionary, &error) else {
            throw failure(error?.takeRetainedValue(), "create key")
        }
        return key
    }

    private func findKey(tag: String, context: LAContext?) throws -> SecKey? {
        var query = baseQuery(tag: tag)
        query[kSecClass as String] = kSecClassKey
        query[kSecAttrKeyClass as String] = kSecAttrKeyClassPrivate
        query[kSecReturnRef as String] = true
        if let context { query[kSecUseAuthenticationContext as String] = context }
        var item: CFTypeRef?
        let status = SecItemCopyMatching(query as CFDictionary, &item)
        switch status {
        case errSecSuccess: return (item as! SecKey) // swiftlint:disable:this force_cast (kSecReturnRef of a key)
        case errSecItemNotFound: return nil
        default: throw PlatformError.Failed(detail: "key lookup failed (\(status))")
        }
    }

    private func publicPoint(of key: SecKey) throws -> Data {
        guard let publicKey = SecKeyCopyPublicKey(key) else { throw PlatformError.Failed(detail: "no public key") }
        var error: Unmanaged<CFError>?
        guard let point = SecKeyCopyExternalRepresentation(publicKey, &error) else {
            throw failure(error?.takeRetainedValue(), "export public key")
        }
        return point as Data // 04 || x || y
    }

    private func failure(_ error: CFError?, _ what: String) -> PlatformError {
        let code = error.map { CFErrorGetCode($0) } ?? 0
        if code == Int(errSecUserCanceled) || code == LAError.userCancel.rawValue { return .UserCancelled }
        return .Failed(detail: "\(what) failed (\(code))")
    }
}
