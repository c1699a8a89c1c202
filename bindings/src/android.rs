//! Android only: hands the app's `Context` to `rustls-platform-verifier`, which verifies the
//! server's certificate with Android's own trust manager (system and user CAs, the app's
//! network security configuration, revocation). Without this the first HTTPS call fails.
//!
//! Called from `dev.tessera.android.PlatformTls.init(context)` (the Android wrapper's `open`
//! does it), a plain JNI method: a `Context` cannot cross uniffi. The verifier's Kotlin part
//! (`org.rustls.platformverifier`) ships with the library (see docs/android.md).

use jni::EnvUnowned;
use jni::objects::{JClass, JObject};

/// `PlatformTls.nativeInit(Context)`: keeps a global reference to the application context and
/// its class loader for the verifier. Idempotent; a JNI failure is thrown as a
/// `RuntimeException` in the caller.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_tessera_android_PlatformTls_nativeInit<'caller>(
    mut env: EnvUnowned<'caller>,
    _class: JClass<'caller>,
    context: JObject<'caller>,
) {
    env.with_env(|env| rustls_platform_verifier::android::init_with_env(env, context))
        .resolve::<jni::errors::ThrowRuntimeExAndDefault>()
}
