// swift-tools-version:5.9
// Tessera's device SDK for iOS. Run ./build-xcframework.sh first (on a Mac with Xcode and Rust):
// it builds TesseraFFIC.xcframework (the Rust library for devices and simulators, with its C
// header) and generates Sources/TesseraFFI/TesseraFFI.swift.
import PackageDescription

let package = Package(
    name: "Tessera",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Tessera", targets: ["Tessera"]),
    ],
    targets: [
        // The Rust library and its C interface (generated, built by build-xcframework.sh).
        .binaryTarget(name: "TesseraFFIC", path: "TesseraFFIC.xcframework"),
        // The generated Swift bindings.
        .target(name: "TesseraFFI", dependencies: ["TesseraFFIC"], path: "Sources/TesseraFFI"),
        // The idiomatic wrapper and the iOS parts: Secure Enclave key store, keychain storage,
        // the LocalAuthentication prompt, push helpers.
        .target(
            name: "Tessera",
            dependencies: ["TesseraFFI"],
            path: "Sources/Tessera",
            linkerSettings: [
                .linkedFramework("LocalAuthentication"),
                .linkedFramework("Security"),
                .linkedFramework("SystemConfiguration"),
            ]
        ),
    ]
)
