//! Test attestations: Android Key Attestation chains and Apple App Attest objects built under a
//! TEST root, so the server's real parsing and verification run and only the trust anchor
//! differs (the server is given the root with `--attestation-root`). The KeyDescription and the
//! App Attest nonce extension are encoded with `yasna` (a DER encoder), certificates with
//! `rcgen`. The server's unit tests include this file too.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData, SerialNumber, SignatureAlgorithm,
};
use sha2::{Digest, Sha256};
use yasna::{DERWriter, Tag};

const KEY_DESCRIPTION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 1, 17];
const APP_ATTEST_NONCE_OID: &[u64] = &[1, 2, 840, 113635, 100, 8, 2];

/// A test certificate authority (EC P-256).
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, DER.
    pub der: Vec<u8>,
    /// Its certificate, PEM.
    pub pem: String,
}

impl TestCa {
    /// A self-signed root named `name`.
    pub fn root(name: &str) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params = ca_params(name, 1);
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA under this one.
    pub fn intermediate(&self, name: &str, serial: u64) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let params = ca_params(name, serial);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Self {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf certificate for the P-256 public point `point` (uncompressed SEC1) with a custom
    /// extension.
    pub fn leaf(&self, point: &[u8], serial: u64, extension: CustomExtension) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Android Keystore Key");
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from(serial));
        params.custom_extensions.push(extension);
        params
            .signed_by(&RawP256(point.to_vec()), &self.issuer)
            .unwrap()
            .der()
            .to_vec()
    }
}

fn ca_params(name: &str, serial: u64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.serial_number = Some(SerialNumber::from(serial));
    params
}

/// A public key given by its point.
struct RawP256(Vec<u8>);

impl PublicKeyData for RawP256 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// What a test KeyDescription says (Android's schema; the defaults are a genuine TEE key of
/// `com.example.tessera` with user authentication and a verified boot).
#[derive(Debug, Clone)]
pub struct KeySpec {
    /// 0 software, 1 TEE, 2 StrongBox.
    pub security_level: u32,
    pub challenge: Vec<u8>,
    pub purposes: Vec<u32>,
    pub algorithm: u32,
    pub ec_curve: u32,
    pub no_auth_required: bool,
    pub user_auth_type: Option<u32>,
    /// (deviceLocked, verifiedBootState).
    pub root_of_trust: Option<(bool, u32)>,
    pub package: String,
    pub signature_digests: Vec<Vec<u8>>,
}

/// The signing certificate digest of the test app.
pub fn test_signing_digest() -> Vec<u8> {
    Sha256::digest(b"tessera test signing certificate").to_vec()
}

/// The test app's package name.
pub const TEST_PACKAGE: &str = "com.example.tessera";

impl KeySpec {
    /// A TEE-backed key of the test app, bound to user authentication when `user_verification`.
    pub fn hardware(challenge: &[u8], user_verification: bool) -> Self {
        Self {
            security_level: 1,
            challenge: challenge.to_vec(),
            purposes: vec![2],
            algorithm: 3,
            ec_curve: 1,
            no_auth_required: !user_verification,
            user_auth_type: user_verification.then_some(3),
            root_of_trust: Some((true, 0)),
            package: TEST_PACKAGE.to_string(),
            signature_digests: vec![test_signing_digest()],
        }
    }

    /// The KeyDescription, DER.
    pub fn key_description(&self) -> Vec<u8> {
        let hardware = self.security_level != 0;
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_u32(4); // attestationVersion
                w.next().write_enum(i64::from(self.security_level));
                w.next().write_u32(4); // keymasterVersion
                w.next().write_enum(i64::from(self.security_level));
                w.next().write_bytes(&self.challenge);
                w.next().write_bytes(b""); // uniqueId
                // softwareEnforced: the application id (and everything, for a software key).
                w.next().write_sequence(|w| {
                    if !hardware {
                        self.write_key_properties(w);
                    }
                    w.next()
                        .write_tagged(Tag::context(709), |w| w.write_bytes(&self.application_id()));
                });
                // hardwareEnforced.
                w.next().write_sequence(|w| {
                    if hardware {
                        self.write_key_properties(w);
                    }
                });
            })
        })
    }

    fn write_key_properties(&self, w: &mut yasna::DERWriterSeq<'_>) {
        w.next().write_tagged(Tag::context(1), |w| {
            w.write_set(|w| {
                for p in &self.purposes {
                    w.next().write_u32(*p);
                }
            })
        });
        w.next()
            .write_tagged(Tag::context(2), |w| w.write_u32(self.algorithm));
        w.next()
            .write_tagged(Tag::context(10), |w| w.write_u32(self.ec_curve));
        if self.no_auth_required {
            w.next().write_tagged(Tag::context(503), |w| w.write_null());
        }
        if let Some(t) = self.user_auth_type {
            w.next().write_tagged(Tag::context(504), |w| w.write_u32(t));
        }
        if let Some((locked, state)) = self.root_of_trust {
            w.next().write_tagged(Tag::context(704), |w| {
                w.write_sequence(|w| {
                    w.next().write_bytes(&[7u8; 32]);
                    w.next().write_bool(locked);
                    w.next().write_enum(i64::from(state));
                    w.next().write_bytes(&[9u8; 32]);
                })
            });
        }
    }

    fn application_id(&self) -> Vec<u8> {
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_set(|w| {
                    w.next().write_sequence(|w| {
                        w.next().write_bytes(self.package.as_bytes());
                        w.next().write_u32(1);
                    })
                });
                w.next().write_set(|w| {
                    for d in &self.signature_digests {
                        w.next().write_bytes(d);
                    }
                });
            })
        })
    }
}

/// An Android attestation chain (leaf first: leaf, intermediate, root) for the key `point`
/// under `root`; the leaf's serial number is `leaf_serial`.
pub fn android_chain(
    root: &TestCa,
    point: &[u8],
    spec: &KeySpec,
    leaf_serial: u64,
) -> Vec<Vec<u8>> {
    let intermediate = root.intermediate("Test Attestation Intermediate", 2);
    let extension = CustomExtension::from_oid_content(KEY_DESCRIPTION_OID, spec.key_description());
    let leaf = intermediate.leaf(point, leaf_serial, extension);
    vec![leaf, intermediate.der.clone(), root.der.clone()]
}

/// The App Attest aaguid of production.
pub const AAGUID_PRODUCTION: &[u8; 16] = b"appattest\0\0\0\0\0\0\0";
/// The App Attest aaguid of development.
pub const AAGUID_DEVELOPMENT: &[u8; 16] = b"appattestdevelop";

/// What a test App Attest attestation says.
#[derive(Debug, Clone)]
pub struct AppAttestSpec {
    /// `teamId.bundleId`.
    pub app_id: String,
    pub aaguid: [u8; 16],
    pub counter: u32,
    pub client_data_hash: Vec<u8>,
}

/// An App Attest attestation object (CBOR) of a fresh P-256 key under `root`: returns the key
/// id and the object.
pub fn app_attest_object(root: &TestCa, spec: &AppAttestSpec) -> (Vec<u8>, Vec<u8>) {
    AppAttestKey::new().attestation_object(root, spec)
}

/// A test App Attest key (P-256, like the Secure Enclave's): it attests itself under a test
/// root and makes assertions as `DCAppAttestService.generateAssertion` does.
pub struct AppAttestKey {
    key: KeyPair,
}

impl Default for AppAttestKey {
    fn default() -> Self {
        Self::new()
    }
}

impl AppAttestKey {
    /// A fresh key.
    pub fn new() -> Self {
        Self {
            key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    /// Its public key (uncompressed SEC1).
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key_raw().to_vec()
    }

    /// An assertion (its CBOR) for the app `app_id` (`teamId.bundleId`) with
    /// `counter`, over `client_data_hash`: the signature is over
    /// `SHA-256(authenticatorData || clientDataHash)`.
    pub fn assertion(&self, app_id: &str, counter: u32, client_data_hash: &[u8]) -> Vec<u8> {
        use ciborium::Value;
        use rcgen::SigningKey;
        let mut auth_data = Vec::new();
        auth_data.extend_from_slice(&Sha256::digest(app_id.as_bytes()));
        auth_data.push(0x40);
        auth_data.extend_from_slice(&counter.to_be_bytes());
        let mut hasher = Sha256::new();
        hasher.update(&auth_data);
        hasher.update(client_data_hash);
        let nonce = hasher.finalize();
        let signature = self.key.sign(&nonce).unwrap();
        let object = Value::Map(vec![
            (Value::Text("signature".into()), Value::Bytes(signature)),
            (
                Value::Text("authenticatorData".into()),
                Value::Bytes(auth_data),
            ),
        ]);
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&object, &mut bytes).unwrap();
        bytes
    }

    /// An attestation object (CBOR) of this key under `root`: returns the key id and the
    /// object.
    pub fn attestation_object(&self, root: &TestCa, spec: &AppAttestSpec) -> (Vec<u8>, Vec<u8>) {
        let point = self.public_key();
        let key_id = Sha256::digest(&point).to_vec();
        let mut auth_data = Vec::new();
        auth_data.extend_from_slice(&Sha256::digest(spec.app_id.as_bytes()));
        auth_data.push(0x40);
        auth_data.extend_from_slice(&spec.counter.to_be_bytes());
        auth_data.extend_from_slice(&spec.aaguid);
        auth_data.extend_from_slice(&(key_id.len() as u16).to_be_bytes());
        auth_data.extend_from_slice(&key_id);
        let mut hasher = Sha256::new();
        hasher.update(&auth_data);
        hasher.update(&spec.client_data_hash);
        let nonce = hasher.finalize().to_vec();
        let extension_value = yasna::construct_der(|w: DERWriter<'_>| {
            w.write_sequence(|w| {
                w.next()
                    .write_tagged(Tag::context(1), |w| w.write_bytes(&nonce));
            })
        });
        let intermediate = root.intermediate("Test App Attestation CA 1", 3);
        let leaf = intermediate.leaf(
            &point,
            99,
            CustomExtension::from_oid_content(APP_ATTEST_NONCE_OID, extension_value),
        );
        use ciborium::Value;
        let object = Value::Map(vec![
            (
                Value::Text("fmt".into()),
                Value::Text("apple-appattest".into()),
            ),
            (
                Value::Text("attStmt".into()),
                Value::Map(vec![
                    (
                        Value::Text("x5c".into()),
                        Value::Array(vec![
                            Value::Bytes(leaf),
                            Value::Bytes(intermediate.der.clone()),
                        ]),
                    ),
                    (Value::Text("receipt".into()), Value::Bytes(vec![1, 2, 3])),
                ]),
            ),
            (Value::Text("authData".into()), Value::Bytes(auth_data)),
        ]);
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&object, &mut bytes).unwrap();
        (key_id, bytes)
    }
}
