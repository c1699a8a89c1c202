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
    }
}
rootProject.name = "tessera-android"
include(":tessera")
