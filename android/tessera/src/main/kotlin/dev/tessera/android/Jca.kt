package dev.tessera.android

import dev.tessera.ffi.PlatformException
import java.math.BigInteger
import java.security.GeneralSecurityException
import java.security.interfaces.ECPublicKey
import javax.crypto.AEADBadTagException
import javax.crypto.Cipher
import javax.crypto.SecretKey
import javax.crypto.spec.GCMParameterSpec

/**
 * The Java-cryptography parts of the Android key store and storage that do not depend on
 * Android: the public key's wire form and AES-GCM sealing. Tested on the JVM.
 */
object Jca {
    private const val IV_BYTES = 12
    private const val TAG_BITS = 128

    /** A P-256 public key as an uncompressed SEC1 point: `04 || x || y`, 65 bytes. */
    fun uncompressedPoint(key: ECPublicKey): ByteArray =
        byteArrayOf(4) + fixed32(key.w.affineX) + fixed32(key.w.affineY)

    private fun fixed32(n: BigInteger): ByteArray {
        val raw = n.toByteArray()
        return when {
            raw.size == 32 -> raw
            raw.size == 33 && raw[0] == 0.toByte() -> raw.copyOfRange(1, 33)
            raw.size < 32 -> ByteArray(32 - raw.size) + raw
            else -> throw PlatformException.Failed("not a P-256 public key")
        }
    }

    /**
     * AES-GCM with a fresh IV (chosen by the provider, as Android Keystore requires): `iv || ciphertext`.
     * `aad` binds the sealed bytes to what they are for.
     */
    fun seal(key: SecretKey, plaintext: ByteArray, aad: ByteArray): ByteArray = guard {
        val cipher = Cipher.getInstance("AES/GCM/NoPadding")
        cipher.init(Cipher.ENCRYPT_MODE, key)
        cipher.updateAAD(aad)
        val sealed = cipher.doFinal(plaintext)
        check(cipher.iv.size == IV_BYTES)
        cipher.iv + sealed
    }

    /** Opens what [seal] produced; [PlatformException.OpenFailed] if it was altered or sealed by another key. */
    fun open(key: SecretKey, sealed: ByteArray, aad: ByteArray): ByteArray {
        if (sealed.size < IV_BYTES + TAG_BITS / 8) throw PlatformException.OpenFailed()
        return try {
            val cipher = Cipher.getInstance("AES/GCM/NoPadding")
            cipher.init(Cipher.DECRYPT_MODE, key, GCMParameterSpec(TAG_BITS, sealed, 0, IV_BYTES))
            cipher.updateAAD(aad)
            cipher.doFinal(sealed, IV_BYTES, sealed.size - IV_BYTES)
        } catch (e: AEADBadTagException) {
            throw PlatformException.OpenFailed()
        } catch (e: GeneralSecurityException) {
            throw PlatformException.Failed("decryption failed: ${e.javaClass.simpleName}")
        }
    }

    /** Runs [block], turning cryptography failures into [PlatformException.Failed] without their text. */
    inline fun <T> guard(block: () -> T): T = try {
        block()
    } catch (e: PlatformException) {
        throw e
    } catch (e: GeneralSecurityException) {
        throw PlatformException.Failed("key store: ${e.javaClass.simpleName}")
    }
}
