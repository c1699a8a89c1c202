//! Device-side time to generate one TOTP code: the bare computation (HMAC and dynamic
//! truncation) for each hash, and through `Authenticator::one_time_passcode_at` (state lock and
//! account lookup included; a TOTP code writes nothing).
//!
//! `cargo bench -p tessera-core --bench otp`

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use tessera_core::{
    Authenticator, AuthenticatorConfig, FileStorage, KeyStore, OtpAlgorithm, OtpDigits, OtpSeed,
    SecureStorage, SoftwareKeyStore, totp,
};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("otp (device CPU)");
    for (algorithm, secret) in [
        (OtpAlgorithm::Sha1, &b"12345678901234567890"[..]),
        (
            OtpAlgorithm::Sha256,
            &b"12345678901234567890123456789012"[..],
        ),
        (
            OtpAlgorithm::Sha512,
            &b"1234567890123456789012345678901234567890123456789012345678901234"[..],
        ),
    ] {
        let seed = OtpSeed::new(secret.to_vec()).unwrap();
        group.bench_function(format!("TOTP code, {algorithm:?}, 6 digits"), |b| {
            b.iter(|| totp(&seed, algorithm, OtpDigits::SIX, 30, 1_111_111_109).unwrap())
        });
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_store: Arc<dyn KeyStore> = Arc::new(SoftwareKeyStore::in_memory());
    let storage: Arc<dyn SecureStorage> = Arc::new(FileStorage::new(dir.path()).unwrap());
    let device = runtime
        .block_on(Authenticator::open(
            AuthenticatorConfig::default(),
            key_store,
            storage,
        ))
        .unwrap();
    let account = runtime
        .block_on(device.import_otp_account(
            "otpauth://totp/Example:alice?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Example",
        ))
        .unwrap();
    group.bench_function("Authenticator::one_time_passcode_at (TOTP, SHA1)", |b| {
        b.iter(|| {
            runtime
                .block_on(device.one_time_passcode_at(&account.id, 1_111_111_109))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
