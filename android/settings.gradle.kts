// The Tessera Android library. Build: ./gradlew :tessera:assembleRelease (Android SDK + NDK,
// cargo-ndk and the Rust Android targets; see docs/android.md).
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
        // rustls-platform-verifier's Kotlin component (see tessera/build.gradle.kts).
        maven {
            url = uri("https://github.com/rustls/rustls-platform-verifier/raw/maven-archive/android-release-support/maven/")
        }
    }
}
rootProject.name = "tessera-android"
include(":tessera")
