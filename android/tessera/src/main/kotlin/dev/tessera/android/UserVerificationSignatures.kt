package dev.tessera.android

import android.os.SystemClock
import java.security.Signature

/**
 * Hands a signature that one [BiometricPrompt.CryptoObject][androidx.biometric.BiometricPrompt.CryptoObject]
 * prompt authorized from the [BiometricUserVerifier] to the [AndroidKeystoreKeyStore], which
 * signs the answer with it. Each authorized signature signs once: it is taken out when used,
 * and one not used within [maxAgeMillis] (the SDK signs at once after the prompt) is dropped.
 * Keystore itself enforces the rest: a user-verification key created with
 * `setUserAuthenticationParameters(0, …)` signs nothing without a signature authorized this way.
 */
class UserVerificationSignatures(private val maxAgeMillis: Long = 30_000) {
    private class Authorized(val alias: String, val signature: Signature, val at: Long)

    private var authorized: Authorized? = null

    /** Keeps [signature], authorized by a prompt just now, for the next signature with [alias]. */
    @Synchronized
    fun put(alias: String, signature: Signature) {
        authorized = Authorized(alias, signature, SystemClock.elapsedRealtime())
    }

    /** The signature authorized for [alias], once; null if there is none or it is too old. */
    @Synchronized
    fun take(alias: String): Signature? {
        val current = authorized ?: return null
        if (current.alias != alias) return null
        authorized = null
        return current.signature.takeIf { SystemClock.elapsedRealtime() - current.at <= maxAgeMillis }
    }

    /** Drops any authorized signature (a cancelled or failed approval). */
    @Synchronized
    fun clear() {
        authorized = null
    }
}
