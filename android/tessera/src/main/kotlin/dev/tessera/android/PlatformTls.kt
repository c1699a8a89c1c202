package dev.tessera.android

import android.content.Context

/**
 * Hands the app's [Context] to the Rust library's TLS verifier (`rustls-platform-verifier`),
 * which checks server certificates with Android's own trust manager: the system's CAs, the
 * app's network security configuration, revocation. Without it every HTTPS call from the SDK
 * fails. [TesseraAndroid.open] calls it; call it yourself only if you open [Tessera] directly.
 *
 * The verifier's Kotlin component (`org.rustls.platformverifier`, shipped with this library) is
 * what the Rust side calls back through JNI; keep it in release builds (consumer-rules.pro).
 */
object PlatformTls {
    @Volatile private var done = false

    /** Initialises the verifier once per process; later calls do nothing. */
    @Synchronized
    fun init(context: Context) {
        if (done) return
        // JNA opened the library for the bindings; the JVM needs it loaded its own way to find
        // this JNI method. Both load the same libtessera_ffi.so once.
        System.loadLibrary("tessera_ffi")
        nativeInit(context.applicationContext)
        done = true
    }

    @JvmStatic
    private external fun nativeInit(context: Context)
}
