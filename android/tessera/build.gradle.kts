// The Tessera Android library: the generated Kotlin bindings (bindings/generate.sh), the Rust
// library for each Android ABI (cargo-ndk), and the thin Android parts in src/main/kotlin.
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

val repo = rootDir.parentFile
val rustJniLibs = layout.buildDirectory.dir("rustJniLibs")

android {
    namespace = "dev.tessera.android"
    compileSdk = 35
    defaultConfig {
        minSdk = 28
        consumerProguardFiles("consumer-rules.pro")
    }
    sourceSets["main"].java.srcDir(File(repo, "bindings/generated/kotlin"))
    sourceSets["main"].jniLibs.srcDir(rustJniLibs)
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
}

// The Kotlin side of the bindings, generated from a host (debug) build of the library: the
// generated code is the same for every target and profile.
val generateBindings by tasks.registering(Exec::class) {
    workingDir = repo
    commandLine("bindings/generate.sh")
}

// libtessera_ffi.so for each ABI (cargo install cargo-ndk; rustup target add aarch64-linux-android
// armv7-linux-androideabi x86_64-linux-android; ANDROID_NDK_HOME set).
val cargoNdk by tasks.registering(Exec::class) {
    workingDir = repo
    commandLine(
        "cargo", "ndk",
        "-t", "arm64-v8a", "-t", "armeabi-v7a", "-t", "x86_64",
        "--platform", "28",
        "-o", rustJniLibs.get().asFile.path,
        // The size profile (Cargo.toml `[profile.ffi]`, docs/benchmarks.md "Library size").
        "build", "--profile", "ffi", "--locked", "-p", "tessera-bindings",
    )
}

tasks.named("preBuild") {
    dependsOn(generateBindings, cargoNdk)
}

// The Kotlin component of rustls-platform-verifier (org.rustls.platformverifier), which the Rust
// library's TLS verifier calls through JNI (PlatformTls initialises it); its Maven repository is
// declared in settings.gradle.kts. Its version must be the one of the
// rustls-platform-verifier-android crate in Cargo.lock: read from there.

val rustlsPlatformVerifierVersion: String = File(repo, "Cargo.lock").readLines().let { lines ->
    val at = lines.indexOfFirst { it.trim() == "name = \"rustls-platform-verifier-android\"" }
    check(at >= 0) { "rustls-platform-verifier-android not found in Cargo.lock" }
    lines[at + 1].substringAfter('"').substringBefore('"')
}

dependencies {
    implementation("rustls:rustls-platform-verifier:$rustlsPlatformVerifierVersion")
    implementation("net.java.dev.jna:jna:5.15.0@aar")
    implementation("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.8.1")
    implementation("androidx.biometric:biometric:1.1.0")
    implementation("androidx.fragment:fragment-ktx:1.8.5")
    implementation("androidx.core:core-ktx:1.13.1")
    // Apps that receive pushes through FCM bring Firebase themselves.
    compileOnly("com.google.firebase:firebase-messaging:24.1.0")
}
