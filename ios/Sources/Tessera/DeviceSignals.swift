import Foundation
import LocalAuthentication
import MachO
#if canImport(UIKit)
import UIKit
#endif

/// What the iOS probe (`IOSSignals`) observed: facts only. `IOSSignalRules` decides what they
/// mean. `nil` means "could not be observed".
public struct IOSObservations: Equatable {
    /// Paths of `IOSSignalRules.jailbreakPaths` that exist.
    public var jailbreakPathsFound: [String]
    /// Whether the app could write outside its sandbox (`/private/…`).
    public var canWriteOutsideSandbox: Bool?
    /// URL schemes of jailbreak stores (`cydia://`, `sileo://`, `zbra://`) that can be opened.
    public var jailbreakSchemesOpenable: [String]
    /// Dynamic libraries loaded into the app whose names match `IOSSignalRules.injectedLibraries`.
    public var injectedLibrariesLoaded: [String]
    /// `LAContext.canEvaluatePolicy(.deviceOwnerAuthentication)`: a passcode is set.
    public var passcodeSet: Bool?
    /// `UserDefaults["com.apple.configuration.managed"]` is present: an MDM pushed a managed
    /// app configuration.
    public var managedConfiguration: Bool?
    /// Built for the simulator (`targetEnvironment(simulator)`).
    public var simulator: Bool

    public init(jailbreakPathsFound: [String] = [], canWriteOutsideSandbox: Bool? = false,
                jailbreakSchemesOpenable: [String] = [], injectedLibrariesLoaded: [String] = [],
                passcodeSet: Bool? = nil, managedConfiguration: Bool? = nil, simulator: Bool = false) {
        self.jailbreakPathsFound = jailbreakPathsFound
        self.canWriteOutsideSandbox = canWriteOutsideSandbox
        self.jailbreakSchemesOpenable = jailbreakSchemesOpenable
        self.injectedLibrariesLoaded = injectedLibrariesLoaded
        self.passcodeSet = passcodeSet
        self.managedConfiguration = managedConfiguration
        self.simulator = simulator
    }
}

/// The decisions behind `DeviceSignals` on iOS. These are **heuristics**: a jailbreak can hide
/// from all of them (rootless jailbreaks, tweak-hiding tools). App Attest is the proof of the
/// app and the key; these tell a relying party about ordinary set-ups.
public enum IOSSignalRules {
    /// Files and folders a jailbreak leaves (rootful and rootless).
    public static let jailbreakPaths = [
        "/Applications/Cydia.app", "/Applications/Sileo.app", "/Applications/Zebra.app",
        "/Library/MobileSubstrate/MobileSubstrate.dylib", "/usr/sbin/sshd", "/usr/bin/ssh",
        "/bin/bash", "/etc/apt", "/private/var/lib/apt/", "/private/var/lib/cydia",
        "/var/jb", "/private/preboot/jb", "/usr/lib/TweakInject", "/var/binpack",
    ]
    /// URL schemes of jailbreak package managers (declare them in `LSApplicationQueriesSchemes`).
    public static let jailbreakSchemes = ["cydia", "sileo", "zbra", "filza"]
    /// Substrings of injected tweak libraries.
    public static let injectedLibraries = ["MobileSubstrate", "substrate", "TweakInject", "libhooker", "SubstrateLoader", "ellekit", "frida"]

    /// Why the phone looks jailbroken, one reason per indicator; empty when none.
    public static func jailbreakIndicators(_ o: IOSObservations) -> [String] {
        var reasons: [String] = []
        reasons += o.jailbreakPathsFound.filter(jailbreakPaths.contains).map { "file \($0)" }
        if o.canWriteOutsideSandbox == true { reasons.append("writable outside the sandbox") }
        reasons += o.jailbreakSchemesOpenable.filter(jailbreakSchemes.contains).map { "scheme \($0)" }
        reasons += o.injectedLibrariesLoaded.map { "library \($0)" }
        return reasons
    }

    /// The signals every answer carries (jailbroken is reported as `rooted`).
    public static func signals(_ o: IOSObservations) -> DeviceSignals {
        DeviceSignals(
            rooted: o.simulator ? nil : !jailbreakIndicators(o).isEmpty,
            screenLock: o.passcodeSet,
            mdm: o.managedConfiguration,
            emulator: o.simulator)
    }
}

/// Observes the phone for `IOSSignalRules`: thin calls, each one guarded.
public enum IOSSignals {
    /// The signals as the phone looks now: call at start and when the app becomes active.
    @MainActor
    public static func current() -> DeviceSignals { IOSSignalRules.signals(observe()) }

    /// The device's description for `AuthenticatorConfig.device` (model, iOS version, app version).
    @MainActor
    public static func deviceInfo(name: String? = nil) -> DeviceInfo {
        var system = utsname()
        uname(&system)
        let model = withUnsafeBytes(of: &system.machine) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        let app = Bundle.main.infoDictionary?["CFBundleShortVersionString"] as? String ?? ""
        return DeviceInfo(model: model, osName: "iOS",
                          osVersion: ProcessInfo.processInfo.operatingSystemVersionString
                              .replacingOccurrences(of: "Version ", with: ""),
                          appVersion: app, name: name)
    }

    /// The facts the rules decide from.
    @MainActor
    public static func observe() -> IOSObservations {
        let files = FileManager.default
        var passcode: Bool? = nil
        var error: NSError?
        let context = LAContext()
        if context.canEvaluatePolicy(.deviceOwnerAuthentication, error: &error) {
            passcode = true
        } else if let code = error?.code, code == LAError.passcodeNotSet.rawValue {
            passcode = false
        }
        var simulator = false
        #if targetEnvironment(simulator)
        simulator = true
        #endif
        var schemes: [String] = []
        #if canImport(UIKit)
        schemes = IOSSignalRules.jailbreakSchemes.filter { scheme in
            guard let url = URL(string: "\(scheme)://") else { return false }
            return UIApplication.shared.canOpenURL(url)
        }
        #endif
        return IOSObservations(
            jailbreakPathsFound: IOSSignalRules.jailbreakPaths.filter { files.fileExists(atPath: $0) },
            canWriteOutsideSandbox: canWriteOutsideSandbox(),
            jailbreakSchemesOpenable: schemes,
            injectedLibrariesLoaded: loadedLibraries().filter { name in
                IOSSignalRules.injectedLibraries.contains { name.localizedCaseInsensitiveContains($0) }
            },
            passcodeSet: passcode,
            managedConfiguration: UserDefaults.standard.dictionary(forKey: "com.apple.configuration.managed")
                .map { !$0.isEmpty } ?? false,
            simulator: simulator)
    }

    private static func canWriteOutsideSandbox() -> Bool? {
        let path = "/private/tessera-\(UUID().uuidString)"
        do {
            try "x".write(toFile: path, atomically: false, encoding: .utf8)
            try? FileManager.default.removeItem(atPath: path)
            return true
        } catch {
            return false
        }
    }

    private static func loadedLibraries() -> [String] {
        (0..<_dyld_image_count()).compactMap { i in
            _dyld_get_image_name(i).map { String(cString: $0) }
        }
    }
}

extension Tessera {
    /// Measures the signals and versions again (e.g. when the app becomes active); later
    /// answers carry them.
    @MainActor
    public func refreshSignals() {
        sdk.setSignals(signals: IOSSignals.current())
        let info = IOSSignals.deviceInfo()
        sdk.setDeviceVersions(model: info.model, osVersion: info.osVersion, appVersion: info.appVersion)
    }
}
