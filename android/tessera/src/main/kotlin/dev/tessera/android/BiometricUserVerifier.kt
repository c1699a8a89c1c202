package dev.tessera.android

import android.os.Build
import androidx.biometric.BiometricPrompt
import androidx.core.content.ContextCompat
import androidx.fragment.app.FragmentActivity
import dev.tessera.ffi.PlatformException
import dev.tessera.ffi.UserVerifier
import dev.tessera.ffi.VerificationReason
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.suspendCancellableCoroutine
import kotlinx.coroutines.withContext
import java.security.Signature
import kotlin.coroutines.resume
import kotlin.coroutines.resumeWithException

/** The prompt's texts, written by the app from what is being approved. */
data class PromptText(
    val title: String,
    val subtitle: String? = null,
    val description: String? = null,
    /** The cancel button, shown before Android 11 (where only a biometric can authorize a key). */
    val cancel: String = "Cancel",
)

/**
 * The SDK's user-verification prompt on Android: a [BiometricPrompt] bound to the one signature
 * the approval will make. Before prompting it prepares, in [keyStore], a [Signature] with the
 * request's user-verification key ([VerificationReason.keyAlias]) and shows the prompt with it
 * as a [BiometricPrompt.CryptoObject]; the authorized signature goes to
 * [AndroidKeystoreKeyStore.signatures], and the SDK signs the answer with it right after. The
 * key (created with `setUserAuthenticationParameters(0, …)`) signs nothing otherwise, so no
 * window is left open for anything else. Share the key store with the SDK:
 * `BiometricUserVerifier(activity, keyStore)`.
 *
 * Android 11 and later accept a strong biometric or the device credential; Android 9 and 10 a
 * strong biometric only for the per-signature key (the device credential cannot authorize a
 * CryptoObject there), and a biometric or the device credential for a time-bound key of an
 * earlier version ([PromptAuthenticators]). Android
 * does not say which biometric was used: a biometric is reported as [biometricAmr] (RFC 8176,
 * default `fpt`), the device credential as `pin`. The app writes the texts ([text]) from the
 * request, e.g. "Approve payment" / "120.00 EUR to ACME GmbH".
 */
class BiometricUserVerifier(
    private val activity: () -> FragmentActivity?,
    private val keyStore: AndroidKeystoreKeyStore,
    private val biometricAmr: String = "fpt",
    private val text: (VerificationReason) -> PromptText = { PromptText("Confirm it's you", it.applicationName, it.message) },
) : UserVerifier {
    override suspend fun verifyUser(reason: VerificationReason): List<String> = withContext(Dispatchers.Main) {
        val host = activity() ?: throw PlatformException.Unavailable()
        val texts = text(reason)
        keyStore.signatures.clear()
        // Null only for a key of an earlier version with a validity window: the prompt opens it.
        val signature: Signature? = keyStore.prepareSignature(reason.keyAlias)
        suspendCancellableCoroutine { continuation ->
            val prompt = BiometricPrompt(
                host,
                ContextCompat.getMainExecutor(host),
                object : BiometricPrompt.AuthenticationCallback() {
                    override fun onAuthenticationSucceeded(result: BiometricPrompt.AuthenticationResult) {
                        if (signature != null) {
                            val authorized = result.cryptoObject?.signature
                            if (authorized == null) {
                                continuation.resumeWithException(
                                    PlatformException.Failed("the prompt did not authorize the signature"),
                                )
                                return
                            }
                            keyStore.signatures.put(reason.keyAlias, authorized)
                        }
                        val amr = if (result.authenticationType == BiometricPrompt.AUTHENTICATION_RESULT_TYPE_DEVICE_CREDENTIAL) {
                            "pin"
                        } else {
                            biometricAmr
                        }
                        continuation.resume(listOf(amr))
                    }

                    override fun onAuthenticationError(errorCode: Int, errString: CharSequence) {
                        val error = when (errorCode) {
                            BiometricPrompt.ERROR_USER_CANCELED, BiometricPrompt.ERROR_NEGATIVE_BUTTON,
                            BiometricPrompt.ERROR_CANCELED, BiometricPrompt.ERROR_TIMEOUT,
                            -> PlatformException.UserCancelled()
                            BiometricPrompt.ERROR_NO_BIOMETRICS, BiometricPrompt.ERROR_HW_NOT_PRESENT,
                            BiometricPrompt.ERROR_HW_UNAVAILABLE, BiometricPrompt.ERROR_NO_DEVICE_CREDENTIAL,
                            -> PlatformException.Unavailable()
                            else -> PlatformException.Failed("biometric prompt error $errorCode")
                        }
                        continuation.resumeWithException(error)
                    }
                    // onAuthenticationFailed (a finger not recognised) keeps the prompt open.
                },
            )
            val info = BiometricPrompt.PromptInfo.Builder()
                .setTitle(texts.title)
                .setSubtitle(texts.subtitle)
                .setDescription(texts.description)
            // By API level (PromptAuthenticators, tested on the JVM): BIOMETRIC_STRONG |
            // DEVICE_CREDENTIAL is refused before Android 11.
            val allowed = PromptAuthenticators.forApi(Build.VERSION.SDK_INT, withCryptoObject = signature != null)
            info.setAllowedAuthenticators(allowed.authenticators)
            if (allowed.negativeButton) info.setNegativeButtonText(texts.cancel)
            if (signature != null) {
                prompt.authenticate(info.build(), BiometricPrompt.CryptoObject(signature))
            } else {
                prompt.authenticate(info.build())
            }
            continuation.invokeOnCancellation {
                prompt.cancelAuthentication()
                keyStore.signatures.clear()
            }
        }
    }
}
