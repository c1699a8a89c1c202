package dev.tessera.android

import android.content.Context
import android.util.Log
import dev.tessera.ffi.LogLevel
import dev.tessera.ffi.AuthenticatorConfig
import dev.tessera.ffi.PlatformKeyStore
import dev.tessera.ffi.PlatformStorage
import dev.tessera.ffi.PushRegistration
import dev.tessera.ffi.UserVerifier

/** Opening the SDK on a phone: TLS set up, the device described and its signals measured. */
object TesseraAndroid {
    /**
     * Opens [Tessera] on Android: initialises the platform TLS verifier ([PlatformTls]), then
     * opens the SDK with the device's model, Android version and app version
     * ([AndroidSignals.deviceInfo]) and the signals measured now ([AndroidSignals.current]).
     * Every answer carries them; call [refreshSignals] when the app comes to the foreground.
     */
    suspend fun open(
        context: Context,
        keyStore: PlatformKeyStore,
        storage: PlatformStorage,
        userVerifier: UserVerifier?,
        push: PushRegistration = PushRegistration.None,
        verifyEveryApproval: Boolean = false,
        httpTimeoutSeconds: UInt = 30u,
    ): Tessera {
        PlatformTls.init(context)
        val config = AuthenticatorConfig(
            device = AndroidSignals.deviceInfo(context),
            signals = AndroidSignals.current(context),
            push = push,
            allowInsecureHttp = false,
            httpTimeoutSeconds = httpTimeoutSeconds,
        )
        return Tessera.open(config, keyStore, storage, userVerifier, verifyEveryApproval)
    }

    /**
     * Sends the SDK's log records at [minLevel] and more severe to Logcat under the tag
     * `Tessera` (the record's target starts the message). Secrets are never in them.
     */
    fun logToLogcat(minLevel: LogLevel = LogLevel.INFO) {
        Tessera.setLogger(minLevel) { record ->
            val priority = when (record.level) {
                LogLevel.ERROR -> Log.ERROR
                LogLevel.WARN -> Log.WARN
                LogLevel.INFO -> Log.INFO
                LogLevel.DEBUG -> Log.DEBUG
                LogLevel.TRACE -> Log.VERBOSE
            }
            Log.println(priority, "Tessera", "${record.target}: ${record.message}")
        }
    }

    /** Measures the signals and versions again (e.g. in `onResume`); later answers carry them. */
    fun refreshSignals(tessera: Tessera, context: Context) {
        tessera.sdk.setSignals(AndroidSignals.current(context))
        val info = AndroidSignals.deviceInfo(context)
        tessera.sdk.setDeviceVersions(info.model, info.osVersion, info.appVersion)
    }
}
