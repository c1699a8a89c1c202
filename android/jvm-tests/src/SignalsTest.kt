// The Android wrapper's measured signals and prompt choices, decided by plain Kotlin
// (dev.tessera.android.AndroidSignalRules, PromptAuthenticators) and tested here on the JVM with
// observed facts; the device's current versions in every answer; and the SDK's TLS path (the
// devices of every test talk to the server through a TLS proxy with a test CA).
package dev.tessera.jvmtests

import dev.tessera.android.AndroidObservations
import dev.tessera.android.AndroidSignalRules
import dev.tessera.android.PromptAuthenticators
import dev.tessera.ffi.TesseraException

fun observations(
    buildTags: String? = "release-keys",
    suPathsFound: List<String> = emptyList(),
    writableSystemPaths: List<String> = emptyList(),
    rootPackagesInstalled: List<String> = emptyList(),
    fingerprint: String? = "google/husky/husky:15/AP4A.250105.002/12701944:user/release-keys",
    model: String? = "Pixel 8 Pro",
    manufacturer: String? = "Google",
    brand: String? = "google",
    device: String? = "husky",
    product: String? = "husky",
    hardware: String? = "husky",
    deviceSecure: Boolean? = true,
    deviceOwnerApp: Boolean? = false,
    managedProfile: Boolean? = false,
    managedConfiguration: Boolean? = false,
) = AndroidObservations(
    buildTags, suPathsFound, writableSystemPaths, rootPackagesInstalled, fingerprint, model, manufacturer,
    brand, device, product, hardware, deviceSecure, deviceOwnerApp, managedProfile, managedConfiguration,
)

val signalTests: List<Pair<String, suspend Env.() -> Unit>> = listOf(
    "signals: an ordinary phone is not rooted, not an emulator, not managed" to {
        val phone = observations()
        expectEqual(emptyList<String>(), AndroidSignalRules.rootIndicators(phone), "root indicators")
        expectEqual(emptyList<String>(), AndroidSignalRules.emulatorIndicators(phone), "emulator indicators")
        val signals = AndroidSignalRules.signals(phone)
        expectEqual(false, signals.rooted, "rooted")
        expectEqual(true, signals.screenLock, "screen lock")
        expectEqual(false, signals.mdm, "mdm")
        expectEqual(false, signals.emulator, "emulator")
        expectEqual(false, AndroidSignalRules.signals(observations(deviceSecure = false)).screenLock, "no lock")
        expectEqual(null, AndroidSignalRules.signals(observations(deviceSecure = null)).screenLock, "unknown lock")
    },
    "signals: each root indicator alone means rooted" to {
        val rooted = listOf(
            observations(buildTags = "dev-keys,test-keys"),
            observations(suPathsFound = listOf("/system/xbin/su")),
            observations(suPathsFound = listOf("/data/adb/magisk")),
            observations(writableSystemPaths = listOf("/system")),
            observations(rootPackagesInstalled = listOf("com.topjohnwu.magisk")),
            observations(rootPackagesInstalled = listOf("me.weishu.kernelsu")),
        )
        for (o in rooted) {
            expectEqual(true, AndroidSignalRules.signals(o).rooted, "rooted: $o")
            expectEqual(1, AndroidSignalRules.rootIndicators(o).size, "one reason: $o")
        }
        // Facts outside the known lists are not indicators (the probe only reports known ones).
        val unrelated = observations(
            buildTags = "release-keys,test-keysish",
            suPathsFound = listOf("/home/su"),
            writableSystemPaths = listOf("/data/local/tmp"),
            rootPackagesInstalled = listOf("com.example.bank"),
        )
        expectEqual(false, AndroidSignalRules.isRooted(unrelated), "unrelated facts")
    },
    "signals: emulators are recognised by build properties" to {
        val emulators = listOf(
            observations(fingerprint = "google/sdk_gphone64_x86_64/emu64xa:14/UE1A/1:userdebug/dev-keys",
                model = "sdk_gphone64_x86_64", product = "sdk_gphone64_x86_64", hardware = "ranchu"),
            observations(hardware = "goldfish"),
            observations(fingerprint = "generic/sdk/generic:8.0/OSR1/1:eng/test-keys"),
            observations(manufacturer = "Genymotion", model = "Samsung Galaxy S10"),
            observations(model = "Android SDK built for x86"),
        )
        for (o in emulators) expectEqual(true, AndroidSignalRules.signals(o).emulator, "emulator: $o")
    },
    "signals: MDM from a device owner, a work profile or a managed configuration" to {
        expectEqual(true, AndroidSignalRules.isManaged(observations(deviceOwnerApp = true)), "device owner")
        expectEqual(true, AndroidSignalRules.isManaged(observations(managedProfile = true)), "work profile")
        expectEqual(true, AndroidSignalRules.isManaged(observations(managedConfiguration = true)), "managed config")
        expectEqual(false, AndroidSignalRules.isManaged(observations()), "none")
        expectEqual(
            null,
            AndroidSignalRules.isManaged(observations(deviceOwnerApp = null, managedProfile = null, managedConfiguration = null)),
            "nothing observed",
        )
        expectEqual(
            true,
            AndroidSignalRules.isManaged(observations(deviceOwnerApp = null, managedProfile = true, managedConfiguration = null)),
            "one fact is enough",
        )
    },
    "biometric prompt: authenticators by API level, per-signature binding kept" to {
        val strong = PromptAuthenticators.BIOMETRIC_STRONG
        val credential = PromptAuthenticators.DEVICE_CREDENTIAL
        for (api in listOf(28, 29)) {
            val perSignature = PromptAuthenticators.forApi(api, withCryptoObject = true)
            expectEqual(PromptAuthenticators(strong, true), perSignature, "API $api, CryptoObject")
            val timeBound = PromptAuthenticators.forApi(api, withCryptoObject = false)
            expect(timeBound.authenticators != (strong or credential)) { "API $api: STRONG|CREDENTIAL is refused there" }
            expectEqual(PromptAuthenticators(PromptAuthenticators.BIOMETRIC_WEAK or credential, false), timeBound, "API $api")
        }
        for (api in listOf(30, 34, 35)) {
            for (crypto in listOf(true, false)) {
                expectEqual(PromptAuthenticators(strong or credential, false), PromptAuthenticators.forApi(api, crypto), "API $api")
            }
        }
        // androidx.biometric's values.
        expectEqual(15, strong, "BIOMETRIC_STRONG")
        expectEqual(255, PromptAuthenticators.BIOMETRIC_WEAK, "BIOMETRIC_WEAK")
        expectEqual(32768, credential, "DEVICE_CREDENTIAL")
    },
    "every answer carries the device's current versions and signals" to {
        val phone = device()
        val alice = user("alice")
        pair(phone, alice)
        phone.sdk.setDeviceVersions("Pixel 8", "16", "1.1")
        phone.sdk.setSignals(AndroidSignalRules.signals(observations(rootPackagesInstalled = listOf("com.topjohnwu.magisk"))))
        val id = server.authenticate(alice, mapOf("kind" to "approval"))["authentication_id"] as String
        phone.approve(phone.pendingRequests().single())
        val attributes = server.authentication(id)["attributes"].obj()
        val d = "pingid.authentication.authenticating.device."
        expectEqual("16", attributes["${d}os.version"], "OS version")
        expectEqual("1.1", attributes["${d}app.version"], "app version")
        expectEqual(true, attributes["${d}is.rooted"], "rooted")
        expectEqual(false, attributes["${d}is.emulator"], "emulator")
    },
    "TLS: devices reach the server over HTTPS, verified against the test CA; an untrusted certificate is refused" to {
        val tls = server.tls
        if (testTlsDir == null || tls == null) throw Failure("TESSERA_TEST_TLS_DIR is not set: the TLS path is not exercised")
        expect(server.publicUrl.startsWith("https://")) { "public URL ${server.publicUrl}" }
        expect(server.pairingUri(user("carol")).contains("https%3A%2F%2Flocalhost")) { "the pairing URI names the https URL" }
        val before = tls.handshakes.get()
        pair(device(), user("dave"))
        expect(tls.handshakes.get() > before) { "no TLS handshake at the proxy" }

        // The same server behind a certificate the device does not trust (self-signed).
        TlsProxy(java.net.URI(server.url).port, java.io.File(testTlsDir, "untrusted.p12")).use { untrusted ->
            val code = server.call("POST", "/v1/users/${user("erin")}/pairings", emptyMap())["pairing_code"] as String
            val refused = expectThrows<TesseraException.Network> {
                device().pair(code, "https://localhost:${untrusted.port}")
            }
            expectEqual("network", refused.code, "refused")
            expectEqual(0, untrusted.handshakes.get(), "no handshake completed with an untrusted certificate")
        }
    },
)
