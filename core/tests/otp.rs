//! Offline OTP accounts through the `Authenticator`, on a `SoftwareKeyStore` and `FileStorage` in
//! a temporary folder: import, codes, persistence across reopening, HOTP counters, refusals.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::{
    Authenticator, AuthenticatorConfig, CoreError, FileStorage, KeyStore, OtpAccountSource,
    OtpAlgorithm, OtpKind, OtpUriError, SecureStorage, SoftwareKeyStore,
};

/// "12345678901234567890", the RFC 4226 / RFC 6238 SHA-1 test secret, in base32.
const SECRET: &str = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ";

async fn open(dir: &Path) -> Authenticator {
    let key_store: Arc<dyn KeyStore> = Arc::new(SoftwareKeyStore::open(dir.join("keys")).unwrap());
    let storage: Arc<dyn SecureStorage> = Arc::new(FileStorage::new(dir.join("state")).unwrap());
    Authenticator::open(AuthenticatorConfig::default(), key_store, storage)
        .await
        .unwrap()
}

#[tokio::test]
async fn totp_accounts_survive_reopening_and_give_the_same_codes() {
    let dir = tempfile::tempdir().unwrap();
    let device = open(dir.path()).await;
    let account = device
        .import_otp_account(&format!(
            "otpauth://totp/Example%20Co:alice%40example.com?secret={SECRET}&issuer=Example%20Co&digits=8"
        ))
        .await
        .unwrap();
    assert_eq!(account.issuer.as_deref(), Some("Example Co"));
    assert_eq!(account.account_name, "alice@example.com");
    assert_eq!(account.kind, OtpKind::Totp { period: 30 });
    assert_eq!(account.digits.get(), 8);
    assert_eq!(account.algorithm, OtpAlgorithm::Sha1);
    assert_eq!(account.source, OtpAccountSource::Imported);
    assert!(!account.short_secret);

    // RFC 6238 Appendix B, SHA-1 at 59 and 1111111109.
    let at_59 = device.one_time_passcode_at(&account.id, 59).await.unwrap();
    assert_eq!(at_59.code, "94287082");
    assert_eq!(at_59.valid_for, Some(Duration::from_secs(1)));
    let later = device
        .one_time_passcode_at(&account.id, 1111111109)
        .await
        .unwrap();
    assert_eq!(later.code, "07081804");
    // The device clock: a code of the right length, valid for part of a period.
    let now = device.one_time_passcode(&account.id).await.unwrap();
    assert_eq!(now.code.len(), 8);
    assert!(
        now.valid_for
            .is_some_and(|d| d > Duration::ZERO && d <= Duration::from_secs(30))
    );
    drop(device);

    let device = open(dir.path()).await;
    assert_eq!(device.otp_accounts().await, vec![account.clone()]);
    let again = device.one_time_passcode_at(&account.id, 59).await.unwrap();
    assert_eq!(again, at_59);

    // The seed is only inside the encrypted state.
    for entry in std::fs::read_dir(dir.path().join("state")).unwrap() {
        let raw = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(!text.contains(SECRET) && !text.contains("1234567890"));
        assert!(!text.contains("alice"));
    }
}

#[tokio::test]
async fn hotp_counters_are_persisted_before_the_code_and_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let device = open(dir.path()).await;
    let account = device
        .import_otp_account(&format!(
            "otpauth://hotp/Example:alice?secret={SECRET}&issuer=Example&counter=0"
        ))
        .await
        .unwrap();
    assert_eq!(account.kind, OtpKind::Hotp { counter: 0 });

    // RFC 4226 Appendix D, counters 0, 1, 2.
    for expected in ["755224", "287082", "359152"] {
        let otp = device.one_time_passcode(&account.id).await.unwrap();
        assert_eq!(otp.code, expected);
        assert_eq!(otp.valid_for, None);
    }
    // Dropped without any further save: the counter was written with each code.
    drop(device);
    let device = open(dir.path()).await;
    assert_eq!(
        device.otp_accounts().await[0].kind,
        OtpKind::Hotp { counter: 3 }
    );
    assert_eq!(
        device.one_time_passcode(&account.id).await.unwrap().code,
        "969429"
    );

    // Concurrent callers each get their own counter value.
    let device = Arc::new(device);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let device = Arc::clone(&device);
        let id = account.id.clone();
        tasks.push(tokio::spawn(async move {
            device.one_time_passcode(&id).await.unwrap().code
        }));
    }
    let mut codes = HashSet::new();
    for t in tasks {
        codes.insert(t.await.unwrap());
    }
    let expected: HashSet<String> = ["338314", "254676", "287922", "162583", "399871", "520489"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(codes, expected, "counters 4 to 9, each once");
    drop(device);
    let device = open(dir.path()).await;
    assert_eq!(
        device.otp_accounts().await[0].kind,
        OtpKind::Hotp { counter: 10 }
    );
}

#[tokio::test]
async fn duplicates_are_refused_and_removal_works() {
    let dir = tempfile::tempdir().unwrap();
    let device = open(dir.path()).await;
    let uri = format!("otpauth://totp/ACME:bob?secret={SECRET}&issuer=ACME");
    let first = device.import_otp_account(&uri).await.unwrap();
    // Same issuer and account, even with other parameters: refused, the first kept.
    let other = "otpauth://totp/ACME:bob?secret=JBSWY3DPEHPK3PXP&digits=8";
    let err = device.import_otp_account(other).await.unwrap_err();
    assert_eq!(err, CoreError::OtpAccountExists);
    assert_eq!(err.code(), "otp_account_exists");
    assert_eq!(device.otp_accounts().await, vec![first.clone()]);
    // Another account at the same issuer, and the same account name without an issuer, are
    // distinct accounts.
    let second = device
        .import_otp_account(&format!("otpauth://totp/ACME:carol?secret={SECRET}"))
        .await
        .unwrap();
    let third = device
        .import_otp_account(&format!("otpauth://totp/bob?secret={SECRET}"))
        .await
        .unwrap();
    assert!(!third.short_secret && third.issuer.is_none());
    assert_eq!(device.otp_accounts().await.len(), 3);

    device.remove_otp_account(&first.id).await.unwrap();
    let err = device.remove_otp_account(&first.id).await.unwrap_err();
    assert_eq!(err, CoreError::OtpAccountNotFound);
    assert_eq!(err.code(), "otp_account_not_found");
    assert_eq!(
        device.one_time_passcode(&first.id).await.unwrap_err(),
        CoreError::OtpAccountNotFound
    );
    // Removed, the account may be imported again (the way to replace it), and an 80-bit secret
    // is accepted but flagged.
    let replaced = device.import_otp_account(other).await.unwrap();
    assert_ne!(replaced.id, first.id);
    assert!(replaced.short_secret);

    drop(device);
    let device = open(dir.path()).await;
    let ids: Vec<_> = device
        .otp_accounts()
        .await
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, vec![second.id, third.id, replaced.id]);
}

#[tokio::test]
async fn refusals_and_debug_output_never_show_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let device = open(dir.path()).await;
    for (uri, reason) in [
        (
            format!("otpauth://totp/A:b?secret={SECRET}&issuer=B"),
            OtpUriError::IssuerMismatch,
        ),
        (
            format!("otpauth://totp/A:b?secret={SECRET}&digits=10"),
            OtpUriError::InvalidDigits,
        ),
        (
            format!("otpauth://totp/A:b?secret={SECRET}1"),
            OtpUriError::InvalidSecret,
        ),
        (
            format!("otpauth://xotp/A:b?secret={SECRET}"),
            OtpUriError::UnknownType,
        ),
        (
            format!("otpauth://totp/A:b?secret={SECRET}&secret={SECRET}"),
            OtpUriError::DuplicateParameter { name: "secret" },
        ),
    ] {
        let err = device.import_otp_account(&uri).await.unwrap_err();
        assert_eq!(err, CoreError::InvalidOtpUri(reason), "{uri}");
        assert_eq!(err.code(), "invalid_otp_uri");
        let text = format!("{err} {err:?}");
        assert!(!text.contains(SECRET) && !text.contains("GEZD"), "{text}");
    }
    assert!(device.otp_accounts().await.is_empty());

    let account = device
        .import_otp_account(&format!("otpauth://totp/A:b?secret={SECRET}"))
        .await
        .unwrap();
    let code = device.one_time_passcode_at(&account.id, 59).await.unwrap();
    let text = format!("{account:?} {code:?} {device:?}");
    assert!(
        !text.contains(SECRET) && !text.contains("1234567890"),
        "{text}"
    );
    assert!(!text.contains(&code.code), "{text}");
}
