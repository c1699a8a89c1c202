package dev.tessera.android

import androidx.biometric.BiometricManager.Authenticators.BIOMETRIC_STRONG
import androidx.biometric.BiometricManager.Authenticators.DEVICE_CREDENTIAL
import androidx.biometric.BiometricPrompt
import androidx.core.content.ContextCompat
import androidx.fragment.app.FragmentActivity
import dev.tessera.ffi.PlatformException
import dev.tessera.ffi.UserVerifier
import dev.tessera.ffi.VerificationReason
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.suspendCancellableCoroutine
import kotlinx.coroutines.withContext
import kotlin.coroutines.resume
import kotlin.coroutines.resumeWithException

/** The prompt's texts, written by the app from what is being approved. */
data class PromptText(val title: String, val subtitle: String? = null, val description: String? = null)

/**
 * The SDK's user-verification prompt on Android: a [BiometricPrompt] accepting a strong biometric
 * or the device credential, shown over the activity [activity] returns. The app writes the texts
 * ([text]) from the request, e.g. "Approve payment" / "120.00 EUR to ACME GmbH".
 *
 * On success the user-verification key may sign for its validity window (see
 * [AndroidKeystoreKeyStore]); the SDK signs right away. Android does not say which biometric was
 * used: a biometric is reported as [biometricAmr] (RFC 8176, default `fpt`), the device
 * credential as `pin`.
 */
class BiometricUserVerifier(
    private val activity: () -> FragmentActivity?,
    private val biometricAmr: String = "fpt",
    private val text: (VerificationReason) -> PromptText = { PromptText("Confirm it's you", it.applicationName, it.message) },
) : UserVerifier {
    override suspend fun verifyUser(reason: VerificationReason): List<String> = withContext(Dispatchers.Main) {
        val host = activity() ?: throw PlatformException.Unavailable()
        val texts = text(reason)
        suspendCancellableCoroutine { continuation ->
            val prompt = BiometricPrompt(
                host,
                ContextCompat.getMainExecutor(host),
                object : BiometricPrompt.AuthenticationCallback() {
                    override fun onAuthenticationSucceeded(result: BiometricPrompt.AuthenticationResult) {
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
                .setAllowedAuthenticators(BIOMETRIC_STRONG or DEVICE_CREDENTIAL)
                .build()
            prompt.authenticate(info)
            continuation.invokeOnCancellation { prompt.cancelAuthentication() }
        }
    }
}
