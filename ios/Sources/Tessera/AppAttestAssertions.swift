import Foundation
#if canImport(DeviceCheck)
import DeviceCheck
#endif

/// App Attest assertions for the SDK's answers: `DCAppAttestService.generateAssertion(keyId,
/// clientDataHash:)` with the App Attest key the pairing attested ([SecureEnclaveKeyStore.attestApp]).
/// The SDK calls it off the main thread with that key's id and the answer's client data hash
/// (SHA-256 of the answer's canonical JSON without the assertion); the returned CBOR goes into
/// the answer, which is then signed. Set it with [Tessera.setAppAttestAsserter]; the SDK only
/// asks for enrollments whose pairing was App Attested.
public final class AppAttestService: AppAttestAsserter, @unchecked Sendable {
    public init() {}

    public func generateAssertion(keyId: Data, clientDataHash: Data) throws -> Data {
        #if canImport(DeviceCheck)
        if #available(iOS 14.0, macOS 11.0, *) {
            let service = DCAppAttestService.shared
            guard service.isSupported else {
                throw PlatformError.Failed(detail: "App Attest is not supported on this device")
            }
            // The key id as `generateKey` returned it: standard base64 of the raw id.
            let keyIdText = keyId.base64EncodedString()
            let done = DispatchSemaphore(value: 0)
            var assertion: Data?
            var failureText = "no result"
            service.generateAssertion(keyIdText, clientDataHash: clientDataHash) { result, error in
                assertion = result
                if let error { failureText = error.localizedDescription }
                done.signal()
            }
            done.wait()
            guard let assertion else {
                throw PlatformError.Failed(detail: "App Attest assertion failed: \(failureText)")
            }
            return assertion
        }
        #endif
        throw PlatformError.Failed(detail: "App Attest is not available")
    }
}
