package dev.tessera.android

import dev.tessera.ffi.DeviceSignals

/**
 * What the Android probe ([AndroidSignals]) observed on the phone: facts only, no judgement.
 * The rules ([AndroidSignalRules]) decide what they mean, and are plain Kotlin so they are
 * tested on the JVM. A `null` means "could not be observed".
 */
data class AndroidObservations(
    /** `Build.TAGS`, e.g. `release-keys` (`test-keys` on builds signed with the test keys). */
    val buildTags: String?,
    /** The paths of [AndroidSignalRules.SU_PATHS] that exist. */
    val suPathsFound: List<String>,
    /** The paths of [AndroidSignalRules.SYSTEM_PATHS] this app may write to. */
    val writableSystemPaths: List<String>,
    /** The packages of [AndroidSignalRules.ROOT_PACKAGES] that are installed. */
    val rootPackagesInstalled: List<String>,
    /** `Build.FINGERPRINT`, `MODEL`, `MANUFACTURER`, `BRAND`, `DEVICE`, `PRODUCT`, `HARDWARE`. */
    val fingerprint: String?,
    val model: String?,
    val manufacturer: String?,
    val brand: String?,
    val device: String?,
    val product: String?,
    val hardware: String?,
    /** `KeyguardManager.isDeviceSecure`: a PIN, pattern or password is set. */
    val deviceSecure: Boolean?,
    /** `DevicePolicyManager`: an MDM is this device's owner (fully managed device). */
    val deviceOwnerApp: Boolean?,
    /** `DevicePolicyManager`: this app runs in a managed (work) profile. */
    val managedProfile: Boolean?,
    /** `RestrictionsManager.applicationRestrictions`: the MDM pushed a managed configuration. */
    val managedConfiguration: Boolean?,
)

/**
 * The decisions behind [DeviceSignals] on Android. These are **heuristics**: a rooted phone can
 * hide all of them (Magisk's DenyList, Zygisk modules), and an emulator can be made to look like
 * a phone. They tell a relying party about careless or ordinary set-ups; key attestation is the
 * proof of the key and the boot state.
 */
object AndroidSignalRules {
    /** Where `su` binaries (and root managers' files) are usually found. */
    val SU_PATHS = listOf(
        "/system/bin/su", "/system/xbin/su", "/sbin/su", "/su/bin/su", "/system/su",
        "/system/bin/.ext/su", "/system/bin/failsafe/su", "/system/sd/xbin/su",
        "/system/usr/we-need-root/su", "/data/local/su", "/data/local/bin/su", "/data/local/xbin/su",
        "/cache/su", "/dev/su", "/system/app/Superuser.apk", "/sbin/.magisk", "/data/adb/magisk",
        "/data/adb/ksu", "/data/adb/ap",
    )

    /** Paths that are read-only on an unmodified phone. */
    val SYSTEM_PATHS = listOf("/system", "/system/bin", "/system/sbin", "/system/xbin", "/vendor/bin", "/sbin", "/etc")

    /** Root managers and one-click rooting apps. */
    val ROOT_PACKAGES = listOf(
        "com.topjohnwu.magisk", "io.github.huskydg.magisk", "io.github.vvb2060.magisk",
        "me.weishu.kernelsu", "me.bmax.apatch", "eu.chainfire.supersu", "com.noshufou.android.su",
        "com.noshufou.android.su.elite", "com.koushikdutta.superuser", "com.thirdparty.superuser",
        "com.yellowes.su", "com.kingroot.kinguser", "com.kingo.root", "com.smedialink.oneclickroot",
        "com.zhiqupk.root.global", "com.alephzain.framaroot",
    )

    /** Why the phone looks rooted, one reason per indicator found; empty when none. */
    fun rootIndicators(o: AndroidObservations): List<String> = buildList {
        if (o.buildTags?.split(',')?.any { it.trim() == "test-keys" } == true) add("test-keys build")
        o.suPathsFound.filter { it in SU_PATHS }.forEach { add("su at $it") }
        o.writableSystemPaths.filter { it in SYSTEM_PATHS }.forEach { add("writable $it") }
        o.rootPackagesInstalled.filter { it in ROOT_PACKAGES }.forEach { add("root manager $it") }
    }

    /** Rooted: any root indicator. */
    fun isRooted(o: AndroidObservations): Boolean = rootIndicators(o).isNotEmpty()

    /** Why the phone looks like an emulator; empty when nothing does. */
    fun emulatorIndicators(o: AndroidObservations): List<String> = buildList {
        val fingerprint = o.fingerprint.orEmpty()
        if (fingerprint.startsWith("generic") || fingerprint.startsWith("unknown") ||
            fingerprint.contains("emulator") || fingerprint.contains("/sdk_gphone")
        ) add("fingerprint $fingerprint")
        val model = o.model.orEmpty()
        if (model.contains("google_sdk") || model.contains("Emulator") ||
            model.contains("Android SDK built for") || model.startsWith("sdk_gphone")
        ) add("model $model")
        if (o.manufacturer.orEmpty().contains("Genymotion")) add("manufacturer ${o.manufacturer}")
        if (o.brand.orEmpty().startsWith("generic") && o.device.orEmpty().startsWith("generic")) {
            add("generic brand and device")
        }
        val product = o.product.orEmpty()
        if (product == "google_sdk" || product.startsWith("sdk_") || product.contains("emulator") ||
            product.contains("simulator") || product.startsWith("vbox")
        ) add("product $product")
        val hardware = o.hardware.orEmpty()
        if (hardware == "goldfish" || hardware == "ranchu" || hardware.startsWith("vbox")) add("hardware $hardware")
    }

    /** Emulator: any emulator indicator. */
    fun isEmulator(o: AndroidObservations): Boolean = emulatorIndicators(o).isNotEmpty()

    /**
     * Managed by an MDM: the device owner is an MDM, the app runs in a work profile, or it was
     * given a managed configuration. `null` when none of the three could be observed.
     */
    fun isManaged(o: AndroidObservations): Boolean? {
        val facts = listOf(o.deviceOwnerApp, o.managedProfile, o.managedConfiguration)
        if (facts.all { it == null }) return null
        return facts.any { it == true }
    }

    /** The signals every answer carries. */
    fun signals(o: AndroidObservations): DeviceSignals = DeviceSignals(
        rooted = isRooted(o),
        screenLock = o.deviceSecure,
        mdm = isManaged(o),
        emulator = isEmulator(o),
    )
}

/**
 * Which authenticators the user-verification prompt allows on an Android version, and whether
 * it needs a negative ("Cancel") button. `BiometricPrompt` refuses `BIOMETRIC_STRONG |
 * DEVICE_CREDENTIAL` before Android 11 (API 30), and before Android 11 the device credential
 * cannot authorize a `CryptoObject`:
 * - API 30 and later: a strong biometric or the device credential, with or without a CryptoObject;
 * - API 28–29 with a CryptoObject (the per-signature key): a strong biometric only, with a
 *   Cancel button (the key itself accepts nothing else there);
 * - API 28–29 without one (a time-bound key of an earlier version): a biometric or the device
 *   credential (`BIOMETRIC_WEAK | DEVICE_CREDENTIAL`, the combination those versions accept);
 *   the key store then checks that the authentication was strong enough for the key.
 */
data class PromptAuthenticators(val authenticators: Int, val negativeButton: Boolean) {
    companion object {
        /** `BiometricManager.Authenticators.BIOMETRIC_STRONG`. */
        const val BIOMETRIC_STRONG = 0x000F
        /** `BiometricManager.Authenticators.BIOMETRIC_WEAK`. */
        const val BIOMETRIC_WEAK = 0x00FF
        /** `BiometricManager.Authenticators.DEVICE_CREDENTIAL`. */
        const val DEVICE_CREDENTIAL = 0x8000
        /** Android 11. */
        const val API_R = 30

        /** The prompt's authenticators on API level [sdkInt]. */
        fun forApi(sdkInt: Int, withCryptoObject: Boolean): PromptAuthenticators = when {
            sdkInt >= API_R -> PromptAuthenticators(BIOMETRIC_STRONG or DEVICE_CREDENTIAL, false)
            withCryptoObject -> PromptAuthenticators(BIOMETRIC_STRONG, true)
            else -> PromptAuthenticators(BIOMETRIC_WEAK or DEVICE_CREDENTIAL, false)
        }
    }
}
