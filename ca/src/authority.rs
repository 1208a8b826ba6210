//! Issuing certificates.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::store::{CaStore, PlugInFiles, RetiredRoot, RetiredRoots, StagedRoot, StoredRoot, read};
use crate::{Error, PrivateKey, Result, SpiffeId};

/// The shortest workload certificate lifetime meshd issues.
pub const MIN_WORKLOAD_TTL: Duration = Duration::from_secs(60);
/// Leaves start a little in the past, so a peer whose clock runs behind
/// does not reject a certificate issued a moment ago.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// How long a generated root lasts.
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long meshd's own servers keep accepting client certificates from a
/// root after a rotation retired it: the lifetime of the bootstrap
/// identities `meshd bootstrap` issues, so every one issued before the
/// rotation expires before its root stops being accepted, and a proxy
/// whose identity nobody refreshed is not locked out at its next reconnect.
pub const DEFAULT_RETIRED_ROOT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// A certificate as issued: the leaf, the chain Envoy presents (leaf and
/// any intermediates) and facts for scheduling rotation.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub leaf_pem: String,
    /// Leaf followed by intermediates, up to (not including) the root.
    pub chain_pem: String,
    pub serial_hex: String,
    /// When it was issued (`not_before` is earlier: backdated for skew).
    pub issued_at: OffsetDateTime,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl IssuedCert {
    /// How long it is useful from issuance: what rotation is scheduled on.
    pub fn lifetime(&self) -> Duration {
        (self.not_after - self.issued_at)
            .try_into()
            .unwrap_or_default()
    }
}

/// Whether the authority can sign, and how long its certificates last.
#[derive(Clone, Debug, PartialEq)]
pub struct Status {
    /// `None` when signing works; otherwise why not.
    pub unready: Option<String>,
    pub issuer_expiry_seconds: i64,
    /// The soonest-expiring trusted root.
    pub root_expiry_seconds: i64,
}

/// A parsed certificate with the facts the CA checks.
struct Parsed {
    der: CertificateDer<'static>,
    pem: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    is_ca: bool,
    public_key: Vec<u8>,
}

fn to_time(t: x509_parser::time::ASN1Time) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.timestamp()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn pem_of(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der))
}

fn parse_der(der: CertificateDer<'static>) -> std::result::Result<Parsed, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let validity = cert.validity();
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    let parsed = Parsed {
        pem: pem_of(&der),
        not_before: to_time(validity.not_before),
        not_after: to_time(validity.not_after),
        is_ca,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        der: CertificateDer::from(der.to_vec()),
    };
    Ok(parsed)
}

/// Every certificate in a PEM text, parsed; errors name `what`.
fn parse_certs(pem: &str, what: &std::path::Path) -> Result<Vec<Parsed>> {
    let problem = |problem: String| Error::File {
        path: what.to_path_buf(),
        problem,
    };
    let ders: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| problem(format!("not valid PEM: {e}")))?;
    if ders.is_empty() {
        return Err(problem("holds no PEM certificate".into()));
    }
    ders.into_iter()
        .map(|d| parse_der(d).map_err(&problem))
        .collect()
}

fn parse_key(pem: &PrivateKey, what: &std::path::Path) -> Result<KeyPair> {
    // rcgen's own message may quote key material; say only what failed.
    KeyPair::from_pem(pem.expose_pem()).map_err(|_| Error::File {
        path: what.to_path_buf(),
        problem: "is not a PEM private key meshd can use (accepted: a PKCS#8 ECDSA P-256/P-384, Ed25519 or RSA key)".into(),
    })
}

fn check_validity(cert: &Parsed, what: &std::path::Path, now: OffsetDateTime) -> Result<()> {
    let problem = |problem: String| Error::File {
        path: what.to_path_buf(),
        problem,
    };
    if now < cert.not_before {
        return Err(problem(format!("is not valid until {}", cert.not_before)));
    }
    if now >= cert.not_after {
        return Err(problem(format!("expired at {}", cert.not_after)));
    }
    Ok(())
}

/// The certificate the authority signs with, and its key.
struct Signer {
    cert: Parsed,
    key: KeyPair,
    /// PEM of the signer and the intermediates above it, excluding the
    /// root: what follows a leaf in its chain. Empty when the signer is
    /// itself the root.
    intermediates_pem: String,
}

struct State {
    signer: Arc<Signer>,
    /// Trusted roots, current first.
    roots: Vec<Arc<Parsed>>,
    /// A root that is trusted but not yet signing (root rotation, step 1).
    staged: Option<(Arc<Signer>, PrivateKey)>,
    /// Whether roots are generated (and so may be rotated) or plugged in.
    self_signed: bool,
    /// Roots a rotation retired, that meshd's own servers still accept
    /// client certificates (bootstrap identities) from, each until its
    /// time. Never in the trust bundle workloads are sent.
    retired: Vec<(Arc<Parsed>, OffsetDateTime)>,
    /// Each root made current by a rotation, certified by the root before
    /// it (newest first). meshd's servers append them to their chain, so a
    /// client whose trust bundle predates the rotation (a bootstrap trust
    /// bundle nobody refreshed) can still verify them.
    cross_signed: Vec<Arc<Parsed>>,
}

impl State {
    /// Whether `root` is trusted, or retired but still accepted, at `now`.
    fn accepts(&self, root: &Parsed, now: OffsetDateTime) -> bool {
        self.roots.iter().any(|r| r.der == root.der)
            || self
                .retired
                .iter()
                .any(|(r, until)| r.der == root.der && now < *until)
    }

    /// The cross-signed certificates still of use: those issued by a root
    /// that is trusted or still accepted.
    fn live_cross_signed(&self, now: OffsetDateTime) -> impl Iterator<Item = &Arc<Parsed>> {
        self.cross_signed.iter().filter(move |cross| {
            now < cross.not_after
                && self
                    .roots
                    .iter()
                    .chain(self.retired.iter().map(|(r, _)| r))
                    .any(|r| self.accepts(r, now) && signed_by(cross, r))
        })
    }
}

/// The mesh CA.
pub struct Authority {
    trust_domain: String,
    store: Option<Arc<dyn CaStore>>,
    state: RwLock<State>,
    retired_grace: std::sync::Mutex<Duration>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn new_root(trust_domain: &str) -> Result<(Parsed, KeyPair, PrivateKey)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, "meshd root CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_TTL;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    let parsed = parse_der(cert.der().clone()).map_err(Error::Generate)?;
    let pem = PrivateKey::from_pem(key.serialize_pem());
    Ok((parsed, key, pem))
}

/// `new`'s root certificate again, issued by `old`: the same subject and
/// key, so whatever `new` signs also chains to `old`. It lasts no longer
/// than either.
fn cross_sign(trust_domain: &str, new: &Signer, old: &Signer) -> Result<Parsed> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, "meshd root CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Names the old root's key, so a verifier holding several roots of
    // the same name picks the right one.
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = new.cert.not_before.max(old.cert.not_before);
    params.not_after = new.cert.not_after.min(old.cert.not_after);
    let issuer = Issuer::from_ca_cert_der(&old.cert.der, &old.key)?;
    let cert = params.signed_by(&new.key, &issuer)?;
    parse_der(cert.der().clone()).map_err(Error::Generate)
}

/// Puts back what [`Authority::save_retired`] persisted, less what has
/// expired since.
fn restore_retired(state: &mut State, stored: &RetiredRoots) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let what = std::path::Path::new("stored retired root");
    for root in &stored.roots {
        let until = OffsetDateTime::from_unix_timestamp(root.accepted_until_unix)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        if now < until {
            for cert in parse_certs(&root.cert_pem, what)? {
                state.retired.push((Arc::new(cert), until));
            }
        }
    }
    let what = std::path::Path::new("stored cross-signed root");
    for pem in &stored.cross_signed_pem {
        state
            .cross_signed
            .extend(parse_certs(pem, what)?.into_iter().map(Arc::new));
    }
    Ok(())
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and never a leading zero byte that DER would strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// The CA state a stored root describes, checked: each key matches its
/// certificate.
fn state_of(stored: &StoredRoot) -> Result<State> {
    let signer = |cert_pem: &str, key: &PrivateKey, what: &str| -> Result<Signer> {
        let path = format!("stored {what} certificate");
        let cert = parse_certs(cert_pem, std::path::Path::new(&path))?.remove(0);
        let key = parse_key(key, std::path::Path::new(&format!("stored {what} key")))?;
        if key.public_key_raw() != cert.public_key.as_slice() {
            return Err(Error::File {
                path: path.into(),
                problem: format!("does not match the stored {what} key"),
            });
        }
        Ok(root_signer(cert, key))
    };
    let current = signer(&stored.cert_pem, &stored.key, "root")?;
    let mut roots = vec![Arc::new(
        parse_der(current.cert.der.clone()).map_err(Error::Generate)?,
    )];
    for pem in &stored.previous_certs_pem {
        roots.extend(
            parse_certs(pem, std::path::Path::new("previous root certificate"))?
                .into_iter()
                .map(Arc::new),
        );
    }
    let staged = match &stored.staged {
        Some(s) => Some((
            Arc::new(signer(&s.cert_pem, &s.key, "staged root")?),
            s.key.clone(),
        )),
        None => None,
    };
    Ok(State {
        signer: Arc::new(current),
        roots,
        staged,
        self_signed: true,
        retired: Vec::new(),
        cross_signed: Vec::new(),
    })
}

/// Whether two stored roots describe the same CA state (keys follow from
/// certificates).
fn same_root(a: &StoredRoot, b: &StoredRoot) -> bool {
    a.cert_pem.trim() == b.cert_pem.trim()
        && a.previous_certs_pem.concat().trim() == b.previous_certs_pem.concat().trim()
        && a.staged.as_ref().map(|s| s.cert_pem.trim())
            == b.staged.as_ref().map(|s| s.cert_pem.trim())
}

fn root_signer(cert: Parsed, key: KeyPair) -> Signer {
    Signer {
        cert,
        key,
        intermediates_pem: String::new(),
    }
}

impl Authority {
    /// A self-signed root: loaded from `store`, or generated (ECDSA P-256)
    /// and saved on first start.
    pub fn load_or_generate(trust_domain: &str, store: Arc<dyn CaStore>) -> Result<Self> {
        let state = match store.load()? {
            Some(stored) => {
                let mut state = state_of(&stored)?;
                if let Some(retired) = store.load_retired()? {
                    restore_retired(&mut state, &retired)?;
                }
                tracing::info!(not_after = %state.signer.cert.not_after, "loaded the mesh root CA");
                state
            }
            None => {
                let (cert, key, key_pem) = new_root(trust_domain)?;
                store.save(&StoredRoot {
                    cert_pem: cert.pem.clone(),
                    key: key_pem,
                    previous_certs_pem: vec![],
                    staged: None,
                })?;
                tracing::info!(not_after = %cert.not_after, "generated a new mesh root CA");
                let root = parse_der(cert.der.clone()).map_err(Error::Generate)?;
                State {
                    signer: Arc::new(root_signer(cert, key)),
                    roots: vec![Arc::new(root)],
                    staged: None,
                    self_signed: true,
                    retired: Vec::new(),
                    cross_signed: Vec::new(),
                }
            }
        };
        Ok(Authority {
            trust_domain: trust_domain.to_string(),
            store: Some(store),
            state: RwLock::new(state),
            retired_grace: std::sync::Mutex::new(DEFAULT_RETIRED_ROOT_GRACE),
        })
    }

    /// Takes over the root (and any rotation in progress) that another
    /// replica stored, when it differs from this one's: what a replica that
    /// is not the leader does when the leader rotates the root. Returns
    /// whether anything changed. Nothing is saved: it came from the store.
    pub fn adopt(&self, stored: &StoredRoot) -> Result<bool> {
        if !self.state().self_signed {
            return Err(Error::Rotation(
                "a plug-in CA rotates by replacing its files".into(),
            ));
        }
        if same_root(&self.stored(&self.state()), stored) {
            return Ok(false);
        }
        let mut state = state_of(stored)?;
        // What this replica's own servers still accept is not in the
        // stored root: keep it.
        {
            let current = self.state();
            state.retired = current.retired.clone();
            state.cross_signed = current.cross_signed.clone();
        }
        tracing::info!(
            not_after = %state.signer.cert.not_after,
            staged = state.staged.is_some(),
            trusted = state.roots.len(),
            "adopted the mesh root CA another replica stored"
        );
        *self.state_mut() = state;
        Ok(true)
    }

    /// What the store should hold for `state`.
    fn stored(&self, state: &State) -> StoredRoot {
        StoredRoot {
            cert_pem: state.signer.cert.pem.clone(),
            key: PrivateKey::from_pem(state.signer.key.serialize_pem()),
            previous_certs_pem: state.roots.iter().skip(1).map(|r| r.pem.clone()).collect(),
            staged: state.staged.as_ref().map(|(signer, key)| StagedRoot {
                cert_pem: signer.cert.pem.clone(),
                key: key.clone(),
            }),
        }
    }

    /// A plug-in CA from the operator's files. Every problem is reported
    /// with the file it is in.
    pub fn plug_in(trust_domain: &str, files: &PlugInFiles) -> Result<Self> {
        let now = OffsetDateTime::now_utc();
        let cert = parse_certs(&read(&files.cert)?, &files.cert)?.remove(0);
        let key = parse_key(&PrivateKey::from_pem(read(&files.key)?), &files.key)?;
        let roots = parse_certs(&read(&files.root)?, &files.root)?;
        let chain = parse_certs(&read(&files.chain)?, &files.chain)?;

        if key.public_key_raw() != cert.public_key.as_slice() {
            return Err(Error::File {
                path: files.key.clone(),
                problem: format!("does not match the certificate in {}", files.cert.display()),
            });
        }
        for (parsed, path) in [(&cert, &files.cert)]
            .into_iter()
            .chain(roots.iter().map(|r| (r, &files.root)))
        {
            if !parsed.is_ca {
                return Err(Error::File {
                    path: path.clone(),
                    problem: "is not a CA certificate (basic constraints CA:TRUE is required)"
                        .into(),
                });
            }
            check_validity(parsed, path, now)?;
        }
        // The intermediate must chain to one of the roots through the
        // chain file; otherwise peers could never verify what we issue.
        let mut current = &cert;
        let mut anchored = false;
        for _ in 0..=chain.len() {
            if roots.iter().any(|r| signed_by(current, r)) {
                anchored = true;
                break;
            }
            match chain
                .iter()
                .find(|c| c.der != current.der && signed_by(current, c))
            {
                Some(parent) => current = parent,
                None => break,
            }
        }
        if !anchored {
            return Err(Error::File {
                path: files.cert.clone(),
                problem: format!(
                    "does not chain to {} through {}",
                    files.root.display(),
                    files.chain.display()
                ),
            });
        }
        let intermediates_pem: String = std::iter::once(cert.pem.clone())
            .chain(
                chain
                    .iter()
                    .filter(|c| c.der != cert.der && !roots.iter().any(|r| r.der == c.der))
                    .map(|c| c.pem.clone()),
            )
            .collect();
        tracing::info!(issuer_not_after = %cert.not_after, "loaded the plug-in CA");
        Ok(Authority {
            trust_domain: trust_domain.to_string(),
            store: None,
            retired_grace: std::sync::Mutex::new(DEFAULT_RETIRED_ROOT_GRACE),
            state: RwLock::new(State {
                signer: Arc::new(Signer {
                    cert,
                    key,
                    intermediates_pem,
                }),
                roots: roots.into_iter().map(Arc::new).collect(),
                staged: None,
                self_signed: false,
                retired: Vec::new(),
                cross_signed: Vec::new(),
            }),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every trusted root, as one PEM bundle.
    pub fn trust_bundle_pem(&self) -> String {
        let state = self.state();
        let mut pem: String = state.roots.iter().map(|r| r.pem.as_str()).collect();
        if let Some((staged, _)) = &state.staged {
            pem.push_str(&staged.cert.pem);
        }
        pem
    }

    /// The trusted roots, for building TLS verifiers.
    pub fn trust_anchors(&self) -> Vec<CertificateDer<'static>> {
        let state = self.state();
        let mut roots: Vec<_> = state.roots.iter().map(|r| r.der.clone()).collect();
        if let Some((staged, _)) = &state.staged {
            roots.push(staged.cert.der.clone());
        }
        roots
    }

    /// The roots meshd's own servers accept client certificates from: the
    /// trusted roots, and those a rotation retired less than the grace
    /// ([`Authority::retire_previous_roots`]) ago.
    pub fn client_trust_anchors(&self) -> Vec<CertificateDer<'static>> {
        let now = OffsetDateTime::now_utc();
        let mut roots = self.trust_anchors();
        let state = self.state();
        roots.extend(
            state
                .retired
                .iter()
                .filter(|(_, until)| now < *until)
                .map(|(r, _)| r.der.clone()),
        );
        roots
    }

    /// When the set of [`Authority::client_trust_anchors`] next shrinks
    /// without a rotation step (a retired root's grace ends), if ever.
    pub fn client_trust_changes_at(&self) -> Option<OffsetDateTime> {
        let now = OffsetDateTime::now_utc();
        self.state()
            .retired
            .iter()
            .map(|(_, until)| *until)
            .filter(|until| now < *until)
            .min()
    }

    pub fn status(&self) -> Status {
        let state = self.state();
        let now = OffsetDateTime::now_utc();
        let signer = &state.signer.cert;
        let unready = if now < signer.not_before {
            Some(format!(
                "the issuing certificate is not valid until {}",
                signer.not_before
            ))
        } else if now >= signer.not_after {
            Some(format!(
                "the issuing certificate expired at {}",
                signer.not_after
            ))
        } else {
            None
        };
        Status {
            unready,
            issuer_expiry_seconds: (signer.not_after - now).whole_seconds(),
            root_expiry_seconds: state
                .roots
                .iter()
                .map(|r| (r.not_after - now).whole_seconds())
                .min()
                .unwrap_or(0),
        }
    }

    /// Issues a workload certificate for `id` over `public_key`.
    pub fn issue(
        &self,
        id: &SpiffeId,
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        self.issue_with_sans(vec![SanType::URI(ia5(&id.to_string())?)], public_key, ttl)
    }

    /// Issues a certificate for `id` together with a fresh ECDSA P-256 key.
    pub fn issue_with_key(&self, id: &SpiffeId, ttl: Duration) -> Result<(IssuedCert, PrivateKey)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = self.issue(id, &key, ttl)?;
        Ok((cert, PrivateKey::from_pem(key.serialize_pem())))
    }

    /// A serving certificate: the identity plus DNS names and IPs clients
    /// dial (the control plane's own xDS certificate).
    pub fn issue_server(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ips: &[std::net::IpAddr],
        ttl: Duration,
    ) -> Result<(IssuedCert, PrivateKey)> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut sans = vec![SanType::URI(ia5(&id.to_string())?)];
        for name in dns_names {
            sans.push(SanType::DnsName(ia5(name)?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let mut cert = self.issue_with_sans(sans, &key, ttl)?;
        // A client that trusts only a root a rotation replaced (a
        // bootstrap trust bundle written before it) verifies this server
        // through the current root certified by the one before.
        let state = self.state();
        for cross in state.live_cross_signed(OffsetDateTime::now_utc()) {
            cert.chain_pem.push_str(&cross.pem);
        }
        Ok((cert, PrivateKey::from_pem(key.serialize_pem())))
    }

    /// Signs a PEM CSR for `caller`. The CSR may name no identity (the
    /// caller's is used) or exactly the caller's; anything else is refused.
    pub fn sign_csr(&self, csr_pem: &str, caller: &SpiffeId, ttl: Duration) -> Result<IssuedCert> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| Error::InvalidCsr(e.to_string()))?;
        let caller_uri = caller.to_string();
        for san in &csr.params.subject_alt_names {
            let requested = match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            };
            if requested != caller_uri {
                return Err(Error::IdentityMismatch {
                    requested,
                    caller: caller_uri,
                });
            }
        }
        self.issue(caller, &csr.public_key, ttl)
    }

    fn issue_with_sans(
        &self,
        sans: Vec<SanType>,
        public_key: &impl PublicKeyData,
        ttl: Duration,
    ) -> Result<IssuedCert> {
        let signer = self.state().signer.clone();
        let now = OffsetDateTime::now_utc();
        if now < signer.cert.not_before {
            return Err(Error::IssuerNotYetValid {
                not_before: signer.cert.not_before.to_string(),
            });
        }
        if now >= signer.cert.not_after {
            return Err(Error::IssuerExpired {
                not_after: signer.cert.not_after.to_string(),
            });
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.trust_domain.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = (now - BACKDATE).max(signer.cert.not_before);
        // A leaf never outlives its issuer.
        params.not_after = (now + ttl).min(signer.cert.not_after);
        let issuer = Issuer::from_ca_cert_der(&signer.cert.der, &signer.key)?;
        let cert = params.signed_by(public_key, &issuer)?;
        let leaf_pem = cert.pem();
        let serial_hex = params
            .serial_number
            .as_ref()
            .map(|s| s.to_bytes().iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default();
        Ok(IssuedCert {
            chain_pem: format!("{leaf_pem}{}", signer.intermediates_pem),
            leaf_pem,
            serial_hex,
            issued_at: now,
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }

    /// How far a root rotation has come: 0 none under way, 1 a new root
    /// is staged (trusted, not signing), 2 the new root signs and the old
    /// one is still trusted. A rotation interrupted (a proxy that did not
    /// acknowledge, a restart) resumes from here.
    pub fn rotation_step(&self) -> usize {
        let state = self.state();
        if state.staged.is_some() {
            1
        } else if state.roots.len() > 1 {
            2
        } else {
            0
        }
    }

    /// Root rotation, step 1: a new root joins the trust bundle, but does
    /// not sign yet. Push the bundle to every proxy before step 2.
    pub fn stage_new_root(&self) -> Result<()> {
        let mut state = self.state_mut();
        if !state.self_signed {
            return Err(Error::Rotation(
                "a plug-in CA rotates by replacing its files".into(),
            ));
        }
        if state.staged.is_some() {
            return Err(Error::Rotation("a new root is already staged".into()));
        }
        let (cert, key, key_pem) = new_root(&self.trust_domain)?;
        tracing::info!(not_after = %cert.not_after, "staged a new root CA");
        state.staged = Some((Arc::new(root_signer(cert, key)), key_pem));
        if let Some(store) = &self.store {
            // Other replicas trust it from the store before it signs.
            store.save(&self.stored(&state))?;
        }
        Ok(())
    }

    /// Step 2: the staged root signs from now on; every workload should be
    /// re-issued. The old root stays trusted. The new root is persisted.
    pub fn activate_staged_root(&self) -> Result<()> {
        let mut state = self.state_mut();
        let Some((signer, key_pem)) = state.staged.take() else {
            return Err(Error::Rotation("no new root is staged".into()));
        };
        let previous: Vec<String> = state.roots.iter().map(|r| r.pem.clone()).collect();
        if let Some(store) = &self.store {
            store.save(&StoredRoot {
                cert_pem: signer.cert.pem.clone(),
                key: key_pem,
                previous_certs_pem: previous,
                staged: None,
            })?;
        }
        let root = parse_der(signer.cert.der.clone()).map_err(Error::Generate)?;
        let cross = cross_sign(&self.trust_domain, &signer, &state.signer)?;
        state.roots.insert(0, Arc::new(root));
        state.signer = signer;
        state.cross_signed.insert(0, Arc::new(cross));
        self.save_retired(&state)?;
        tracing::info!("the new root CA now signs");
        Ok(())
    }

    /// Step 3: only the current root stays trusted. Do this once every
    /// workload holds a certificate from it. The old root leaves the trust
    /// bundle, but meshd's own servers keep accepting client certificates
    /// from it for the retired-root grace ([`Authority::client_trust_anchors`]):
    /// bootstrap identities issued before the rotation live that long, and
    /// a proxy reconnecting with one must not be locked out.
    pub fn retire_previous_roots(&self) -> Result<()> {
        let mut state = self.state_mut();
        if state.roots.len() < 2 {
            return Err(Error::Rotation(
                "there is no previous root to retire".into(),
            ));
        }
        let until = OffsetDateTime::now_utc() + self.retired_root_grace();
        let retired: Vec<_> = state.roots.drain(1..).map(|r| (r, until)).collect();
        state.retired.extend(retired);
        if let Some(store) = &self.store {
            store.save(&self.stored(&state))?;
        }
        self.save_retired(&state)?;
        tracing::info!(
            accepted_until = %until,
            "retired the previous root CA; meshd's own servers accept client certificates from it until then"
        );
        Ok(())
    }

    /// How long client certificates from a retired root stay accepted
    /// by meshd's own servers (default [`DEFAULT_RETIRED_ROOT_GRACE`]).
    pub fn set_retired_root_grace(&self, grace: Duration) {
        *self.retired_grace.lock().unwrap_or_else(|p| p.into_inner()) = grace;
    }

    fn retired_root_grace(&self) -> Duration {
        *self.retired_grace.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Persists the retired roots and cross-signed certificates still of
    /// use, so a restart does not lock out proxies a rotation left with a
    /// previous root's bootstrap identity.
    fn save_retired(&self, state: &State) -> Result<()> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let now = OffsetDateTime::now_utc();
        store.save_retired(&RetiredRoots {
            roots: state
                .retired
                .iter()
                .filter(|(_, until)| now < *until)
                .map(|(root, until)| RetiredRoot {
                    cert_pem: root.pem.clone(),
                    accepted_until_unix: until.unix_timestamp(),
                })
                .collect(),
            cross_signed_pem: state
                .live_cross_signed(now)
                .map(|c| c.pem.clone())
                .collect(),
        })
    }
}

/// When the first certificate of a PEM chain expires; `None` if the text
/// holds no certificate.
pub fn leaf_expiry(chain_pem: &str) -> Option<OffsetDateTime> {
    let der = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()?;
    parse_der(der).ok().map(|p| p.not_after)
}

fn signed_by(child: &Parsed, parent: &Parsed) -> bool {
    let (Ok((_, child)), Ok((_, parent))) = (
        x509_parser::parse_x509_certificate(&child.der),
        x509_parser::parse_x509_certificate(&parent.der),
    ) else {
        return false;
    };
    child.verify_signature(Some(parent.public_key())).is_ok()
}

fn ia5(value: &str) -> Result<rcgen::string::Ia5String> {
    rcgen::string::Ia5String::try_from(value)
        .map_err(|e| Error::Generate(format!("`{value}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DirStore;

    fn authority() -> (tempfile::TempDir, Authority) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_generate("cluster.local", Arc::new(DirStore::new(dir.path())))
            .unwrap();
        (dir, ca)
    }

    fn parse(pem: &str) -> x509_parser::pem::Pem {
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1
    }

    #[test]
    fn workload_certificates_carry_the_spiffe_id_and_usages() {
        let (_dir, ca) = authority();
        let id = SpiffeId::new("cluster.local", "shop", "web");
        let (issued, key) = ca.issue_with_key(&id, Duration::from_secs(3600)).unwrap();
        assert!(
            !format!("{key:?}").contains("PRIVATE"),
            "keys are redacted in Debug"
        );
        let pem = parse(&issued.leaf_pem);
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            "[URI(\"spiffe://cluster.local/ns/shop/sa/web\")]"
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && ku.key_encipherment());
        assert!(!cert.is_ca());
        // Backdated a little for skew; lives for the TTL.
        let lifetime = issued.not_after - issued.not_before;
        assert_eq!(lifetime.whole_seconds(), 3600 + BACKDATE.as_secs() as i64);
        // Chains to the root in the bundle.
        let root = parse(&ca.trust_bundle_pem());
        assert!(
            cert.verify_signature(Some(root.parse_x509().unwrap().public_key()))
                .is_ok()
        );
    }

    #[test]
    fn the_root_is_persisted_and_reloaded() {
        let (dir, ca) = authority();
        let again =
            Authority::load_or_generate("cluster.local", Arc::new(DirStore::new(dir.path())))
                .unwrap();
        assert_eq!(ca.trust_bundle_pem(), again.trust_bundle_pem());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("root-key.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn leaves_never_outlive_their_issuer() {
        let (_dir, ca) = authority();
        let id = SpiffeId::new("cluster.local", "a", "b");
        let (issued, _) = ca
            .issue_with_key(&id, Duration::from_secs(100 * 365 * 24 * 3600))
            .unwrap();
        let root_not_after = ca.state().signer.cert.not_after;
        assert_eq!(issued.not_after, root_not_after);
    }

    #[test]
    fn csr_may_only_ask_for_the_callers_identity() {
        let (_dir, ca) = authority();
        let caller = SpiffeId::new("cluster.local", "shop", "web");
        let csr = |uri: &str| {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = CertificateParams::default();
            params.subject_alt_names = vec![SanType::URI(ia5(uri).unwrap())];
            params.serialize_request(&key).unwrap().pem().unwrap()
        };
        let ok = ca
            .sign_csr(&csr(&caller.to_string()), &caller, Duration::from_secs(600))
            .unwrap();
        assert!(ok.leaf_pem.contains("BEGIN CERTIFICATE"));
        let err = ca
            .sign_csr(
                &csr("spiffe://cluster.local/ns/shop/sa/admin"),
                &caller,
                Duration::from_secs(600),
            )
            .unwrap_err();
        assert!(matches!(err, Error::IdentityMismatch { .. }), "{err}");
        assert!(matches!(
            ca.sign_csr("garbage", &caller, Duration::from_secs(60)),
            Err(Error::InvalidCsr(_))
        ));
    }

    /// Issue #11 C.4: after a rotation, meshd's own servers still accept
    /// client certificates from the retired root for the grace (across a
    /// restart), and present a chain a client trusting only the old root
    /// can verify: the new root, certified by the old.
    #[test]
    fn a_retired_root_stays_accepted_by_meshd_servers_for_the_grace() {
        let (dir, ca) = authority();
        let old_bundle = ca.trust_bundle_pem();
        ca.stage_new_root().unwrap();
        ca.activate_staged_root().unwrap();
        ca.retire_previous_roots().unwrap();
        assert_eq!(
            ca.trust_anchors().len(),
            1,
            "workloads trust the new root only"
        );
        let accepted = ca.client_trust_anchors();
        assert_eq!(accepted.len(), 2);
        let old_der = parse(&old_bundle).contents;
        assert!(accepted.iter().any(|a| a.as_ref() == old_der.as_slice()));
        assert!(ca.client_trust_changes_at().is_some());

        let id = SpiffeId::new("cluster.local", "meshd", "meshd");
        let (server, _) = ca
            .issue_server(&id, &[], &[], Duration::from_secs(60))
            .unwrap();
        let chain: Vec<_> = CertificateDer::pem_slice_iter(server.chain_pem.as_bytes())
            .map(|c| parse_der(c.unwrap()).unwrap())
            .collect();
        assert_eq!(chain.len(), 2, "the leaf and the cross-signed root");
        let old_root = parse_der(CertificateDer::from(old_der.clone())).unwrap();
        let new_root = parse_der(ca.trust_anchors().remove(0)).unwrap();
        assert!(signed_by(&chain[0], &new_root));
        assert!(
            signed_by(&chain[1], &old_root),
            "the new key, certified by the old root"
        );
        assert_eq!(chain[1].public_key, new_root.public_key);
        // Workload certificates carry no cross-signed root: their peers
        // have the new bundle.
        let (workload, _) = ca.issue_with_key(&id, Duration::from_secs(60)).unwrap();
        assert_eq!(workload.chain_pem, workload.leaf_pem);

        // A restart keeps both.
        let reloaded =
            Authority::load_or_generate("cluster.local", Arc::new(DirStore::new(dir.path())))
                .unwrap();
        assert_eq!(reloaded.client_trust_anchors().len(), 2);
        let (server, _) = reloaded
            .issue_server(&id, &[], &[], Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            CertificateDer::pem_slice_iter(server.chain_pem.as_bytes()).count(),
            2
        );
    }

    #[test]
    fn a_retired_root_is_not_accepted_once_its_grace_is_over() {
        let (dir, ca) = authority();
        ca.set_retired_root_grace(Duration::ZERO);
        ca.stage_new_root().unwrap();
        ca.activate_staged_root().unwrap();
        ca.retire_previous_roots().unwrap();
        assert_eq!(ca.client_trust_anchors().len(), 1);
        let id = SpiffeId::new("cluster.local", "meshd", "meshd");
        let (server, _) = ca
            .issue_server(&id, &[], &[], Duration::from_secs(60))
            .unwrap();
        assert_eq!(server.chain_pem, server.leaf_pem, "no cross-signed root");
        assert!(!dir.path().join("retired-roots.pem").exists());
    }

    #[test]
    fn root_rotation_keeps_both_roots_trusted_until_retired() {
        let (dir, ca) = authority();
        let old_bundle = ca.trust_bundle_pem();
        ca.stage_new_root().unwrap();
        assert_eq!(ca.trust_anchors().len(), 2);
        // Staged roots do not sign yet.
        let id = SpiffeId::new("cluster.local", "a", "b");
        let (before, _) = ca.issue_with_key(&id, Duration::from_secs(60)).unwrap();
        let old_pem = parse(&old_bundle);
        let old_cert = old_pem.parse_x509().unwrap();
        let old_root = old_cert.public_key();
        assert!(
            parse(&before.leaf_pem)
                .parse_x509()
                .unwrap()
                .verify_signature(Some(old_root))
                .is_ok()
        );

        ca.activate_staged_root().unwrap();
        let (after, _) = ca.issue_with_key(&id, Duration::from_secs(60)).unwrap();
        assert!(
            parse(&after.leaf_pem)
                .parse_x509()
                .unwrap()
                .verify_signature(Some(old_root))
                .is_err()
        );
        assert_eq!(ca.trust_anchors().len(), 2);
        assert!(dir.path().join("previous-root-cert.pem").exists());

        ca.retire_previous_roots().unwrap();
        assert_eq!(ca.trust_anchors().len(), 1);
        assert!(!ca.trust_bundle_pem().contains(old_bundle.trim()));
        assert!(!dir.path().join("previous-root-cert.pem").exists());
    }

    /// A second replica on the same store follows each step of a rotation
    /// the first one takes: same trust bundle, same signing root.
    #[test]
    fn a_replica_adopts_every_rotation_step_from_the_store() {
        let (dir, leader) = authority();
        let store = DirStore::new(dir.path());
        let follower =
            Authority::load_or_generate("cluster.local", Arc::new(store.clone())).unwrap();
        assert!(!follower.adopt(&store.load().unwrap().unwrap()).unwrap());
        let id = SpiffeId::new("cluster.local", "a", "b");
        let steps: [fn(&Authority) -> Result<()>; 3] = [
            Authority::stage_new_root,
            Authority::activate_staged_root,
            Authority::retire_previous_roots,
        ];
        for (i, step) in steps.into_iter().enumerate() {
            assert_eq!(
                leader.rotation_step(),
                i,
                "an interrupted rotation resumes here"
            );
            step(&leader).unwrap();
            assert_ne!(follower.trust_bundle_pem(), leader.trust_bundle_pem());
            let stored = store.load().unwrap().unwrap();
            assert_eq!(stored.staged.is_some(), i == 0, "step {i}");
            assert!(follower.adopt(&stored).unwrap(), "step {i}");
            assert!(
                !follower.adopt(&stored).unwrap(),
                "adopting twice changes nothing"
            );
            assert_eq!(
                follower.trust_bundle_pem(),
                leader.trust_bundle_pem(),
                "step {i}"
            );
            // Both sign with the same root: the leader's current root
            // verifies the follower's certificate.
            let (issued, _) = follower
                .issue_with_key(&id, Duration::from_secs(60))
                .unwrap();
            let current = parse(&leader.trust_bundle_pem());
            let current = current.parse_x509().unwrap();
            if i > 0 {
                assert!(
                    parse(&issued.leaf_pem)
                        .parse_x509()
                        .unwrap()
                        .verify_signature(Some(current.public_key()))
                        .is_ok(),
                    "step {i}"
                );
            }
        }
        assert_eq!(leader.rotation_step(), 0);
        // A restart mid-rotation keeps the staged root.
        leader.stage_new_root().unwrap();
        let restarted = Authority::load_or_generate("cluster.local", Arc::new(store)).unwrap();
        assert_eq!(restarted.trust_bundle_pem(), leader.trust_bundle_pem());
        assert_eq!(restarted.trust_anchors().len(), 2);
        assert_eq!(restarted.rotation_step(), 1);
    }

    #[test]
    fn a_stored_root_whose_key_does_not_match_is_refused() {
        let (dir, ca) = authority();
        let store = DirStore::new(dir.path());
        let mut stored = store.load().unwrap().unwrap();
        // Another CA's root certificate with this CA's key.
        let (_other_dir, other) = authority();
        stored.cert_pem = other.trust_bundle_pem();
        let err = ca.adopt(&stored).unwrap_err().to_string();
        assert!(err.contains("does not match the stored root key"), "{err}");
        // The CA keeps what it had.
        assert_eq!(ca.trust_anchors().len(), 1);
    }

    /// Writes a plug-in CA (root → intermediate) into `dir`, with the root
    /// valid from/to the given days relative to now.
    fn plug_in_files(
        dir: &std::path::Path,
        intermediate_is_ca: bool,
        root_days: (i64, i64),
    ) -> PlugInFiles {
        let now = OffsetDateTime::now_utc();
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut root = CertificateParams::default();
        root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        root.not_before = now + time::Duration::days(root_days.0);
        root.not_after = now + time::Duration::days(root_days.1);
        let root_cert = root.self_signed(&root_key).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut inter = CertificateParams::default();
        inter.is_ca = if intermediate_is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        inter.not_before = now - time::Duration::days(1);
        inter.not_after = now + time::Duration::days(30);
        let issuer = Issuer::from_params(&root, &root_key);
        let inter_cert = inter.signed_by(&key, &issuer).unwrap();
        let files = PlugInFiles::in_dir(dir);
        std::fs::write(&files.cert, inter_cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        std::fs::write(&files.root, root_cert.pem()).unwrap();
        std::fs::write(
            &files.chain,
            format!("{}{}", inter_cert.pem(), root_cert.pem()),
        )
        .unwrap();
        files
    }

    #[test]
    fn plug_in_ca_issues_from_the_intermediate() {
        let dir = tempfile::tempdir().unwrap();
        let files = plug_in_files(dir.path(), true, (-1, 365));
        let ca = Authority::plug_in("cluster.local", &files).unwrap();
        let (issued, _) = ca
            .issue_with_key(
                &SpiffeId::new("cluster.local", "a", "b"),
                Duration::from_secs(3600 * 24 * 365),
            )
            .unwrap();
        // The chain carries the intermediate; the leaf ends with it.
        assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
        let inter = parse(&std::fs::read_to_string(&files.cert).unwrap())
            .parse_x509()
            .unwrap()
            .validity()
            .not_after
            .timestamp();
        assert_eq!(
            issued.not_after.unix_timestamp(),
            inter,
            "clamped to the intermediate"
        );
        assert!(
            ca.stage_new_root().is_err(),
            "plug-in roots are the operator's to rotate"
        );
    }

    #[test]
    fn bad_plug_in_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let msg = |files: &PlugInFiles| {
            Authority::plug_in("cluster.local", files)
                .unwrap_err()
                .to_string()
        };

        let files = plug_in_files(dir.path(), false, (-1, 365));
        let m = msg(&files);
        assert!(
            m.contains("ca-cert.pem") && m.contains("not a CA certificate"),
            "{m}"
        );

        let files = plug_in_files(dir.path(), true, (-30, -1));
        let m = msg(&files);
        assert!(m.contains("root-cert.pem") && m.contains("expired"), "{m}");

        let files = plug_in_files(dir.path(), true, (2, 365));
        let m = msg(&files);
        assert!(
            m.contains("root-cert.pem") && m.contains("not valid until"),
            "{m}"
        );

        let files = plug_in_files(dir.path(), true, (-1, 365));
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(&files.key, other.serialize_pem()).unwrap();
        let m = msg(&files);
        assert!(
            m.contains("ca-key.pem") && m.contains("does not match"),
            "{m}"
        );
        assert!(!m.contains("PRIVATE KEY"), "{m}");

        std::fs::write(
            &files.key,
            "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let m = msg(&files);
        assert!(m.contains("ca-key.pem") && !m.contains("not a key"), "{m}");

        std::fs::write(&files.cert, "hello").unwrap();
        let m = msg(&files);
        assert!(
            m.contains("ca-cert.pem") && m.contains("no PEM certificate"),
            "{m}"
        );
    }
}
