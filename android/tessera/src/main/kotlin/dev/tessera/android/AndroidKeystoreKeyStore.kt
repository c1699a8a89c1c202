package dev.tessera.android

import android.content.Context
import android.content.pm.PackageManager
import android.os.Build
import android.security.keystore.KeyGenParameterSpec
import android.security.keystore.KeyPermanentlyInvalidatedException
import android.security.keystore.KeyProperties
import android.security.keystore.StrongBoxUnavailableException
import android.security.keystore.UserNotAuthenticatedException
import dev.tessera.ffi.AppAttestationResult
import dev.tessera.ffi.KeyKind
import dev.tessera.ffi.PlatformException
import dev.tessera.ffi.PlatformKeyStore
import java.security.KeyPairGenerator
import java.security.KeyStore
import java.security.PrivateKey
import java.security.Signature
import java.security.interfaces.ECPublicKey
import java.security.spec.ECGenParameterSpec
import javax.crypto.KeyGenerator
import javax.crypto.SecretKey

/**
 * The SDK's key store on Android Keystore: P-256 signing keys that never leave secure hardware
 * (StrongBox when the device has it, the TEE otherwise), and an AES-256-GCM key that seals the
 * SDK's state key.
 *
 * The user-verification key requires user authentication **for every signature**: it is created
 * with `setUserAuthenticationParameters(0, BIOMETRIC_STRONG or DEVICE_CREDENTIAL)` (Android 11
 * and later; before, `setUserAuthenticationValidityDurationSeconds(-1)`, strong biometrics
 * only), so no time window exists in which other code could sign with it. Each approval's
 * [BiometricUserVerifier] prompt authorizes one [Signature] through a
 * `BiometricPrompt.CryptoObject` ([prepareSignature]) and hands it over in [signatures]; [sign]
 * signs the answer with exactly that signature, as the iOS key with `.userPresence` does. The key
 * is invalidated when a new biometric is enrolled; the user then pairs again.
 *
 * Keys created by earlier versions with a validity window keep working (the prompt opens their
 * window) until the enrollment is paired again.
 */
class AndroidKeystoreKeyStore(
    private val context: Context,
    /** Where the prompt hands the authorized signature over; share it with the verifier. */
    val signatures: UserVerificationSignatures = UserVerificationSignatures(),
) : PlatformKeyStore {
    private val keyStore: KeyStore = KeyStore.getInstance(PROVIDER).apply { load(null) }
    private val hasStrongBox: Boolean =
        context.packageManager.hasSystemFeature(PackageManager.FEATURE_STRONGBOX_KEYSTORE)

    override fun generateSigningKey(alias: String, kind: KeyKind): ByteArray = Jca.guard {
        val pair = try {
            generate(alias, kind, hasStrongBox)
        } catch (e: StrongBoxUnavailableException) {
            generate(alias, kind, false)
        }
        Jca.uncompressedPoint(pair.public as ECPublicKey)
    }

    /**
     * Creates the key with Android Key Attestation over [challenge] (the registration's
     * attestation challenge) and returns its certificate chain, leaf first, DER. Empty (and no
     * key left behind) when the device cannot attest: the SDK then creates a plain key.
     */
    override fun generateAttestedSigningKey(alias: String, kind: KeyKind, challenge: ByteArray): List<ByteArray> =
        Jca.guard {
            try {
                try {
                    generate(alias, kind, hasStrongBox, challenge)
                } catch (e: StrongBoxUnavailableException) {
                    generate(alias, kind, false, challenge)
                }
                keyStore.getCertificateChain(alias)?.map { it.encoded } ?: emptyList()
            } catch (e: java.security.ProviderException) {
                // Some devices fail to produce an attestation chain: pair without one.
                if (keyStore.containsAlias(alias)) keyStore.deleteEntry(alias)
                emptyList()
            }
        }

    /** App Attest is Apple's: nothing to attest on Android. */
    override fun attestApp(clientDataHash: ByteArray): AppAttestationResult? = null

    private fun generate(
        alias: String,
        kind: KeyKind,
        strongBox: Boolean,
        attestationChallenge: ByteArray? = null,
    ): java.security.KeyPair {
        val spec = KeyGenParameterSpec.Builder(alias, KeyProperties.PURPOSE_SIGN)
            .setAlgorithmParameterSpec(ECGenParameterSpec("secp256r1"))
            .setDigests(KeyProperties.DIGEST_SHA256)
            .setIsStrongBoxBacked(strongBox)
        if (attestationChallenge != null) spec.setAttestationChallenge(attestationChallenge)
        if (kind == KeyKind.USER_VERIFICATION) {
            spec.setUserAuthenticationRequired(true)
            spec.setInvalidatedByBiometricEnrollment(true)
            if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.R) {
                // 0: every use needs its own authentication, through a CryptoObject.
                spec.setUserAuthenticationParameters(
                    0,
                    KeyProperties.AUTH_BIOMETRIC_STRONG or KeyProperties.AUTH_DEVICE_CREDENTIAL,
                )
            } else {
                // -1: every use needs its own strong-biometric authentication (the device
                // credential cannot authorize a CryptoObject before Android 11).
                @Suppress("DEPRECATION")
                spec.setUserAuthenticationValidityDurationSeconds(-1)
            }
        }
        val generator = KeyPairGenerator.getInstance(KeyProperties.KEY_ALGORITHM_EC, PROVIDER)
        generator.initialize(spec.build())
        return generator.generateKeyPair()
    }

    override fun publicKey(alias: String): ByteArray? = Jca.guard {
        (keyStore.getCertificate(alias)?.publicKey as? ECPublicKey)?.let(Jca::uncompressedPoint)
    }

    /**
     * A signature with the key [alias] for a `BiometricPrompt.CryptoObject`: the prompt
     * authorizes it, and the next [sign] with [alias] uses it. Null when the key needs no
     * per-use authorization (a key created with a validity window by an earlier version: the
     * prompt alone opens its window).
     */
    fun prepareSignature(alias: String): Signature? = Jca.guard {
        val key = keyStore.getKey(alias, null) as? PrivateKey ?: throw PlatformException.NotFound()
        try {
            Signature.getInstance(SIGNATURE_ALGORITHM).apply { initSign(key) }
        } catch (e: UserNotAuthenticatedException) {
            null // time-bound key of an earlier version: authorized by the prompt's window
        } catch (e: KeyPermanentlyInvalidatedException) {
            throw PlatformException.Failed("the user-verification key was invalidated by a biometric change; pair again")
        }
    }

    override fun sign(alias: String, data: ByteArray): ByteArray = Jca.guard {
        // A signature a prompt authorized for this alias (per-use keys), else a fresh one.
        val authorized = signatures.take(alias)
        try {
            val signature = authorized ?: Signature.getInstance(SIGNATURE_ALGORITHM).apply {
                initSign(keyStore.getKey(alias, null) as? PrivateKey ?: throw PlatformException.NotFound())
            }
            signature.run {
                update(data)
                sign() // ASN.1 DER, as the SDK expects
            }
        } catch (e: UserNotAuthenticatedException) {
            throw PlatformException.Failed("the user-verification key needs a fresh biometric or PIN check")
        } catch (e: KeyPermanentlyInvalidatedException) {
            throw PlatformException.Failed("the user-verification key was invalidated by a biometric change; pair again")
        }
    }

    override fun deleteKey(alias: String) = Jca.guard {
        if (keyStore.containsAlias(alias)) keyStore.deleteEntry(alias)
    }

    override fun seal(alias: String, plaintext: ByteArray): ByteArray =
        Jca.seal(
            sealingKey(alias, create = true) ?: throw PlatformException.Failed("no sealing key"),
            plaintext,
            alias.encodeToByteArray(),
        )

    override fun open(alias: String, sealed: ByteArray): ByteArray {
        val key = sealingKey(alias, create = false) ?: throw PlatformException.NotFound()
        return Jca.open(key, sealed, alias.encodeToByteArray())
    }

    private fun sealingKey(alias: String, create: Boolean): SecretKey? = Jca.guard {
        val name = "$alias.aes"
        (keyStore.getKey(name, null) as? SecretKey)?.let { return@guard it }
        if (!create) return@guard null
        fun make(strongBox: Boolean): SecretKey {
            val spec = KeyGenParameterSpec.Builder(name, KeyProperties.PURPOSE_ENCRYPT or KeyProperties.PURPOSE_DECRYPT)
                .setBlockModes(KeyProperties.BLOCK_MODE_GCM)
                .setEncryptionPaddings(KeyProperties.ENCRYPTION_PADDING_NONE)
                .setKeySize(256)
                .setIsStrongBoxBacked(strongBox)
                .build()
            return KeyGenerator.getInstance(KeyProperties.KEY_ALGORITHM_AES, PROVIDER).run {
                init(spec)
                generateKey()
            }
        }
        try {
            make(hasStrongBox)
        } catch (e: StrongBoxUnavailableException) {
            make(false)
        }
    }

    private companion object {
        const val PROVIDER = "AndroidKeyStore"
        const val SIGNATURE_ALGORITHM = "SHA256withECDSA"
    }
}
