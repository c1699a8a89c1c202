package dev.tessera.android

import android.content.Context
import android.security.keystore.KeyGenParameterSpec
import android.security.keystore.KeyProperties
import android.util.AtomicFile
import dev.tessera.ffi.PlatformException
import dev.tessera.ffi.PlatformStorage
import java.io.File
import java.io.FileNotFoundException
import java.io.IOException
import java.security.KeyStore
import javax.crypto.KeyGenerator
import javax.crypto.SecretKey

/**
 * The SDK's storage on Android: one file per blob in the app's no-backup files directory (never
 * copied to cloud backups or a new phone: the keys it needs stay in this phone's Keystore),
 * written atomically through [AtomicFile], and encrypted once more with an AES-256-GCM Android
 * Keystore key bound to the blob's name (the SDK already encrypts its state; this layer keeps
 * even the state's envelope unreadable outside the app).
 */
class EncryptedFileStorage(context: Context, folder: String = "tessera") : PlatformStorage {
    private val dir = File(context.noBackupFilesDir, folder).apply { mkdirs() }
    private val key: SecretKey by lazy { storageKey() }

    override fun read(name: String): ByteArray? {
        val file = AtomicFile(file(name))
        val sealed = try {
            file.readFully()
        } catch (e: FileNotFoundException) {
            return null
        } catch (e: IOException) {
            throw PlatformException.Failed("read failed")
        }
        return Jca.open(key, sealed, name.encodeToByteArray())
    }

    override fun write(name: String, bytes: ByteArray) {
        val sealed = Jca.seal(key, bytes, name.encodeToByteArray())
        val file = AtomicFile(file(name))
        val out = try {
            file.startWrite()
        } catch (e: IOException) {
            throw PlatformException.Failed("write failed")
        }
        try {
            out.write(sealed)
            file.finishWrite(out) // fsync, then rename over the old file
        } catch (e: IOException) {
            file.failWrite(out)
            throw PlatformException.Failed("write failed")
        }
    }

    override fun delete(name: String) {
        AtomicFile(file(name)).delete()
    }

    private fun file(name: String): File {
        if (!NAME.matches(name)) throw PlatformException.Failed("invalid storage name")
        return File(dir, name)
    }

    private fun storageKey(): SecretKey = Jca.guard {
        val keyStore = KeyStore.getInstance("AndroidKeyStore").apply { load(null) }
        (keyStore.getKey(KEY_ALIAS, null) as? SecretKey) ?: KeyGenerator
            .getInstance(KeyProperties.KEY_ALGORITHM_AES, "AndroidKeyStore").run {
                init(
                    KeyGenParameterSpec.Builder(KEY_ALIAS, KeyProperties.PURPOSE_ENCRYPT or KeyProperties.PURPOSE_DECRYPT)
                        .setBlockModes(KeyProperties.BLOCK_MODE_GCM)
                        .setEncryptionPaddings(KeyProperties.ENCRYPTION_PADDING_NONE)
                        .setKeySize(256)
                        .build(),
                )
                generateKey()
            }
    }

    private companion object {
        const val KEY_ALIAS = "tessera.storage"
        val NAME = Regex("[a-z0-9._-]{1,64}")
    }
}
