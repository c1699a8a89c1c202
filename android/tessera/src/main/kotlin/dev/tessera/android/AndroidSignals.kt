package dev.tessera.android

import android.app.KeyguardManager
import android.app.admin.DevicePolicyManager
import android.content.Context
import android.content.RestrictionsManager
import android.content.pm.PackageManager
import android.os.Build
import dev.tessera.ffi.DeviceInfo
import dev.tessera.ffi.DeviceSignals
import java.io.File

/**
 * Observes the phone for [AndroidSignalRules]: thin calls to the platform, each one guarded
 * (a failure leaves that fact unknown). The decisions are in [AndroidSignalRules]; these are
 * heuristics, not proof (see docs/android.md, "Device signals").
 *
 * Root-manager packages are looked up by name: on Android 11 and later the app's manifest must
 * declare them in `<queries>` (the library's manifest does, and it is merged into the app's).
 */
object AndroidSignals {
    /** The signals as the phone looks now: call at start and when the app comes to the foreground. */
    fun current(context: Context): DeviceSignals = AndroidSignalRules.signals(observe(context))

    /** The device's description for `AuthenticatorConfig.device` (model, Android version, app version). */
    fun deviceInfo(context: Context, name: String? = null): DeviceInfo = DeviceInfo(
        model = Build.MODEL ?: "",
        osName = "Android",
        osVersion = Build.VERSION.RELEASE ?: "",
        appVersion = appVersion(context),
        name = name,
    )

    /** The app's `versionName`, or "" if unknown. */
    fun appVersion(context: Context): String = guard {
        context.packageManager.getPackageInfo(context.packageName, 0).versionName
    } ?: ""

    /** The facts the rules decide from. */
    fun observe(context: Context): AndroidObservations {
        val policy = guard { context.getSystemService(DevicePolicyManager::class.java) }
        return AndroidObservations(
            buildTags = Build.TAGS,
            suPathsFound = AndroidSignalRules.SU_PATHS.filter { guard { File(it).exists() } == true },
            writableSystemPaths = AndroidSignalRules.SYSTEM_PATHS.filter { guard { File(it).canWrite() } == true },
            rootPackagesInstalled = AndroidSignalRules.ROOT_PACKAGES.filter { installed(context, it) },
            fingerprint = Build.FINGERPRINT,
            model = Build.MODEL,
            manufacturer = Build.MANUFACTURER,
            brand = Build.BRAND,
            device = Build.DEVICE,
            product = Build.PRODUCT,
            hardware = Build.HARDWARE,
            deviceSecure = guard { context.getSystemService(KeyguardManager::class.java)?.isDeviceSecure },
            // The active device administrators, asked whether one of them owns the device (a
            // fully managed phone) or this profile (a work profile).
            deviceOwnerApp = guard {
                policy?.let { p -> p.activeAdmins.orEmpty().any { p.isDeviceOwnerApp(it.packageName) } }
            },
            managedProfile = guard {
                policy?.let { p -> p.activeAdmins.orEmpty().any { p.isProfileOwnerApp(it.packageName) } }
            },
            managedConfiguration = guard {
                context.getSystemService(RestrictionsManager::class.java)?.applicationRestrictions?.isEmpty?.not()
            },
        )
    }

    private fun installed(context: Context, name: String): Boolean = guard {
        context.packageManager.getPackageInfo(name, 0)
        true
    } ?: false

    private inline fun <T> guard(block: () -> T?): T? = try {
        block()
    } catch (e: PackageManager.NameNotFoundException) {
        null
    } catch (e: SecurityException) {
        null
    } catch (e: RuntimeException) {
        null
    }
}
