//! The workspace's pinned `uniffi-bindgen`: same uniffi version as `tessera-bindings`, so the
//! generated Kotlin, Swift and Python always match the library's scaffolding.
//! Run through `bindings/generate.sh`.

fn main() {
    uniffi::uniffi_bindgen_main()
}
