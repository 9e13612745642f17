//! The cluster's certificate authority and the mutual-TLS configurations built on it.
//!
//! Every tandem connection is TLS. `tandem init` makes a cluster CA; each node holds a
//! certificate signed by it whose identity (DNS SAN `<name>.tandem`, URI SAN
//! `tandem://<cluster-id>/<name>`) is set by the CA, never taken from the request. A node of
//! another cluster therefore fails the handshake with "unknown issuer" before a single frame
//! is read, and a joining node, which has no certificate yet, pins the cluster by the CA
//! fingerprint carried in its join token. This module holds all of that so the daemon only
//! asks for configs and the identity of the peer.

use std::fmt;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, Ia5String, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring as ring_provider, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
};
use tandem_core::{hex, ClusterId};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

/// The DNS suffix of every node certificate: node `a` is `a.tandem`.
pub const DNS_SUFFIX: &str = ".tandem";
/// The scheme of the URI SAN that carries a node's cluster and name.
pub const URI_PREFIX: &str = "tandem://";
/// How long the CA and node certificates are valid.
const VALIDITY_DAYS: i64 = 3650;
/// Certificates start an hour in the past so a peer whose clock lags a little accepts them.
const BACKDATE_HOURS: i64 = 1;

/// The cluster CA: its certificate and private key, both PEM.
#[derive(Clone)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A node's certificate (signed by the cluster CA) and private key, both PEM.
#[derive(Clone)]
pub struct NodeMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

// Private keys must not end up in logs through a stray `{:?}`.
impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial").finish_non_exhaustive()
    }
}

impl fmt::Debug for NodeMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeMaterial").finish_non_exhaustive()
    }
}

/// Who is at the other end of a connection, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub cluster: ClusterId,
    pub node_name: String,
}

/// Why a certificate, key or TLS configuration could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid node name {name:?}: {reason}")]
    InvalidNodeName { name: String, reason: String },
    #[error("cannot {action}: {source}")]
    Certificate {
        action: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what} is not valid PEM: {reason}")]
    Pem { what: &'static str, reason: String },
    #[error("the CA private key does not belong to the CA certificate")]
    CaKeyMismatch,
    #[error("certificate carries no valid tandem identity: {reason}")]
    Identity { reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(String),
}

fn rcgen_error(action: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Certificate { action, source }
}

/// The crypto provider of every config: ring, chosen explicitly (never a process default).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring_provider::default_provider())
}

/// Checks a node name is one DNS label: 1-63 characters of `a-z`, `0-9` and `-`, not
/// starting or ending with `-`. The error says which rule is broken.
pub fn validate_node_name(name: &str) -> Result<(), PkiError> {
    let fail = |reason: String| {
        Err(PkiError::InvalidNodeName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("it is empty".into());
    }
    if name.len() > 63 {
        return fail(format!(
            "it has {} characters, at most 63 are allowed",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return fail(format!(
            "character {bad:?} is not allowed (use lower-case letters, digits and '-')"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return fail("it must not start or end with '-'".into());
    }
    Ok(())
}

/// The TLS server name under which node `node_name` is dialled: `<name>.tandem`.
pub fn server_name(node_name: &str) -> ServerName<'static> {
    ServerName::try_from(format!("{node_name}{DNS_SUFFIX}")).unwrap_or_else(|_| {
        // Only a name that validate_node_name refuses gets here. 0.0.0.0 matches no node
        // certificate, so the handshake fails with "not valid for name" rather than a panic.
        ServerName::IpAddress(std::net::IpAddr::from([0u8, 0, 0, 0]).into())
    })
}

fn validity() -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (
        now - Duration::hours(BACKDATE_HOURS),
        now + Duration::days(VALIDITY_DAYS),
    )
}

/// A random positive serial number (16 bytes, top bit clear, first byte non-zero).
fn random_serial() -> SerialNumber {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from(bytes.to_vec())
}

fn ia5(text: String) -> Result<Ia5String, PkiError> {
    Ia5String::try_from(text).map_err(|source| PkiError::Certificate {
        action: "encode a subject alternative name",
        source,
    })
}

/// Makes a new cluster CA (ECDSA P-256, 10-year validity, may sign node certificates only).
pub fn new_cluster_ca(cluster: ClusterId) -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate().map_err(rcgen_error("generate the CA key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("tandem cluster {}", cluster.short()),
    );
    dn.push(DnType::OrganizationName, "tandem");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI(ia5(format!("{URI_PREFIX}{cluster}"))?)];
    (params.not_before, params.not_after) = validity();
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_error("self-sign the CA certificate"))?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Makes a node key and a certificate signing request for it. Returns `(key_pem, csr_pem)`.
/// The names in the request are informative only: the CA sets the identity when it signs.
pub fn new_node_key_and_csr(node_name: &str) -> Result<(String, String), PkiError> {
    validate_node_name(node_name)?;
    let key = KeyPair::generate().map_err(rcgen_error("generate the node key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::DnsName(ia5(format!("{node_name}{DNS_SUFFIX}"))?)];
    let csr = params
        .serialize_request(&key)
        .map_err(rcgen_error("make the certificate signing request"))?;
    let csr_pem = csr
        .pem()
        .map_err(rcgen_error("encode the certificate signing request"))?;
    Ok((key.serialize_pem(), csr_pem))
}

/// The CA's certificate re-created from its PEM and key, ready to sign; refuses a key that
/// does not belong to the certificate (every certificate it signed would fail to verify).
fn load_issuer(ca: &CaMaterial) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
    let ca_der = cert_der(&ca.cert_pem, "the CA certificate")?;
    let key = KeyPair::from_pem(&ca.key_pem).map_err(rcgen_error("read the CA private key"))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&ca_der).map_err(|err| PkiError::Pem {
            what: "the CA certificate",
            reason: format!("not an X.509 certificate: {err}"),
        })?;
    if parsed.tbs_certificate.subject_pki.raw != key.public_key_der().as_slice() {
        return Err(PkiError::CaKeyMismatch);
    }
    let params = CertificateParams::from_ca_cert_der(&ca_der)
        .map_err(rcgen_error("read the CA certificate"))?;
    // Re-signing only rebuilds rcgen's issuer view (name, key id); the PEM stays the CA's.
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_error("load the CA certificate"))?;
    Ok((cert, key))
}

/// Signs a node's CSR with the cluster CA. Only the CSR's public key is used: subject, SANs,
/// usages and validity are set here, so a CSR cannot claim another node or cluster.
pub fn sign_node_csr(
    ca: &CaMaterial,
    cluster: ClusterId,
    node_name: &str,
    csr_pem: &str,
) -> Result<String, PkiError> {
    validate_node_name(node_name)?;
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(rcgen_error("read the certificate signing request"))?;
    let (issuer, issuer_key) = load_issuer(ca)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_name);
    dn.push(
        DnType::OrganizationName,
        format!("tandem cluster {}", cluster.short()),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::DnsName(ia5(format!("{node_name}{DNS_SUFFIX}"))?),
        SanType::URI(ia5(format!("{URI_PREFIX}{cluster}/{node_name}"))?),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let (not_before, not_after) = validity();
    params.not_before = not_before;
    params.not_after = not_after.min(issuer.params().not_after);
    params.serial_number = Some(random_serial());
    let cert = params
        .signed_by(&csr.public_key, &issuer, &issuer_key)
        .map_err(rcgen_error("sign the node certificate"))?;
    Ok(cert.pem())
}

/// Makes a node key and certificate in one step (`init`, tests): key + CSR + sign.
pub fn issue_node_cert(
    ca: &CaMaterial,
    cluster: ClusterId,
    node_name: &str,
) -> Result<NodeMaterial, PkiError> {
    let (key_pem, csr_pem) = new_node_key_and_csr(node_name)?;
    let cert_pem = sign_node_csr(ca, cluster, node_name, &csr_pem)?;
    Ok(NodeMaterial { cert_pem, key_pem })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// SHA-256 of the CA certificate's DER: what a join token pins.
pub fn ca_fingerprint(ca_cert_pem: &str) -> Result<[u8; 32], PkiError> {
    Ok(sha256(&cert_der(ca_cert_pem, "the CA certificate")?))
}

fn cert_der(pem: &str, what: &'static str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|err| PkiError::Pem {
        what,
        reason: err.to_string(),
    })
}

fn key_der(pem: &str, what: &'static str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|err| PkiError::Pem {
        what,
        reason: err.to_string(),
    })
}

fn root_store(ca: CertificateDer<'static>) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    Ok(Arc::new(roots))
}

/// The chain a node presents, `[node cert, CA cert]`, and its key.
fn node_chain(
    ca: CertificateDer<'static>,
    node: &NodeMaterial,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let cert = cert_der(&node.cert_pem, "the node certificate")?;
    let key = key_der(&node.key_pem, "the node private key")?;
    Ok((vec![cert, ca], key))
}

/// The listening side. Client certificates are verified against the cluster CA when
/// presented, but optional: a joining node has none yet, and the daemon lets such a
/// connection send nothing but a join request.
pub fn server_config(
    ca_cert_pem: &str,
    node: &NodeMaterial,
) -> Result<Arc<ServerConfig>, PkiError> {
    let provider = provider();
    let ca = cert_der(ca_cert_pem, "the CA certificate")?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(ca.clone())?, provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|err| PkiError::Verifier(err.to_string()))?;
    let (chain, key) = node_chain(ca, node)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The dialling side between members: verifies the server against the cluster CA and the
/// name `<peer>.tandem` passed at connect time, and presents this node's certificate.
pub fn client_config(
    ca_cert_pem: &str,
    node: &NodeMaterial,
) -> Result<Arc<ClientConfig>, PkiError> {
    let ca = cert_der(ca_cert_pem, "the CA certificate")?;
    let roots = root_store(ca.clone())?;
    let (chain, key) = node_chain(ca, node)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The dialling side of `tandem join`: no client certificate; the server is accepted only
/// if the last certificate of its chain is the CA whose SHA-256 the join token carries and
/// its node certificate verifies against that CA. The joiner does not know the name of the
/// node it dials, so the name checked is the one the certificate's URI SAN claims (any node
/// of the pinned cluster will do); the server name passed at connect time is not used.
pub fn join_client_config(
    expected_ca_fingerprint: [u8; 32],
) -> Result<Arc<ClientConfig>, PkiError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: expected_ca_fingerprint,
        provider: provider.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Why the join verifier refused a server; shown through [`explain_tls_error`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct JoinRefusal(String);

fn join_refusal(text: String) -> TlsError {
    TlsError::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(JoinRefusal(
        text,
    )))))
}

/// Accepts a server whose chain ends with the CA pinned by a join token.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        let Some((ca, rest)) = intermediates.split_last() else {
            return Err(join_refusal(
                "the server presented no CA certificate, so it cannot be matched with the join \
                 token (is that address a tandem node?)"
                    .into(),
            ));
        };
        let found = sha256(ca);
        if found != self.fingerprint {
            return Err(join_refusal(format!(
                "the server's cluster CA has fingerprint {}, but the join token expects {} \
                 (wrong token, or another cluster listens at that address)",
                hex::encode(&found),
                hex::encode(&self.fingerprint)
            )));
        }
        let roots = root_store(ca.clone().into_owned()).map_err(|err| {
            join_refusal(format!("the server's CA certificate is unusable: {err}"))
        })?;
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, self.provider.clone())
            .build()
            .map_err(|err| TlsError::General(err.to_string()))?;
        let identity = peer_identity(end_entity).map_err(|err| join_refusal(err.to_string()))?;
        let name = server_name(&identity.node_name);
        webpki.verify_server_cert(end_entity, rest, &name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Reads the cluster and node name from a node certificate's `tandem://` URI SAN.
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let identity_error = |reason: String| PkiError::Identity { reason };
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|err| identity_error(format!("not an X.509 certificate: {err}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|err| identity_error(format!("unreadable subject alternative names: {err}")))?
        .ok_or_else(|| identity_error("it has no subject alternative names".into()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => parse_identity_uri(uri),
        [] => Err(identity_error(format!("it has no {URI_PREFIX} name"))),
        _ => Err(identity_error(format!("it has several {URI_PREFIX} names"))),
    }
}

fn parse_identity_uri(uri: &str) -> Result<PeerIdentity, PkiError> {
    let identity_error = |reason: String| PkiError::Identity { reason };
    let rest = uri.strip_prefix(URI_PREFIX).unwrap_or(uri);
    let (cluster, name) = rest
        .split_once('/')
        .ok_or_else(|| identity_error(format!("{uri:?} has no node name")))?;
    let cluster = cluster
        .parse::<ClusterId>()
        .map_err(|err| identity_error(format!("{uri:?}: {err}")))?;
    validate_node_name(name).map_err(|err| identity_error(format!("{uri:?}: {err}")))?;
    Ok(PeerIdentity {
        cluster,
        node_name: name.to_string(),
    })
}

/// Says in plain words what a TLS failure means for a tandem operator.
pub fn explain_tls_error(err: &TlsError) -> String {
    match err {
        TlsError::InvalidCertificate(cert) => explain_certificate_error(cert),
        TlsError::NoCertificatesPresented => {
            "the peer presented no certificate (a node that has not joined the cluster yet?)".into()
        }
        TlsError::AlertReceived(alert) => explain_alert(*alert),
        TlsError::InvalidMessage(_)
        | TlsError::InappropriateMessage { .. }
        | TlsError::InappropriateHandshakeMessage { .. } => {
            "the peer does not speak tandem's TLS (is another program listening on that port?)"
                .into()
        }
        TlsError::PeerIncompatible(why) => {
            format!("the peer's TLS is incompatible with ours ({why:?}); is it a tandem node?")
        }
        other => format!("TLS failure: {other}"),
    }
}

fn explain_certificate_error(err: &CertificateError) -> String {
    match err {
        CertificateError::UnknownIssuer => {
            "certificate is not signed by this cluster's CA (a node of another cluster?)".into()
        }
        CertificateError::BadSignature => {
            "certificate signature is invalid (a corrupt or forged certificate)".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate has expired (or this machine's clock is wrong)".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate is not valid yet (check the clocks of both machines)".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "certificate belongs to another node than the one dialled (peer address list stale?)"
                .into()
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "certificate is not a tandem node certificate (wrong key usage)".into()
        }
        CertificateError::Revoked => "certificate has been revoked".into(),
        CertificateError::Other(other) => format!("certificate refused: {other}"),
        other => format!("certificate refused: {other}"),
    }
}

fn explain_alert(alert: AlertDescription) -> String {
    match alert {
        AlertDescription::UnknownCA => "the peer refused our certificate: it is not signed by the \
                                        peer's cluster CA (are the nodes in different clusters?)"
            .into(),
        AlertDescription::BadCertificate | AlertDescription::UnsupportedCertificate => {
            "the peer refused our certificate".into()
        }
        AlertDescription::CertificateExpired => {
            "the peer says our certificate has expired (or its clock is wrong)".into()
        }
        AlertDescription::CertificateRequired => {
            "the peer requires a certificate and we have none (has this node joined?)".into()
        }
        AlertDescription::HandshakeFailure | AlertDescription::ProtocolVersion => {
            "no common TLS version or cipher suite with the peer".into()
        }
        other => format!("the peer aborted the TLS handshake ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    fn cluster(byte: u8) -> ClusterId {
        ClusterId([byte; 16])
    }

    /// Which side of an in-memory handshake failed, and how.
    #[derive(Debug)]
    enum Failure {
        Client(TlsError),
        Server(TlsError),
    }

    /// Moves every pending TLS record from one side to the other; `true` if any moved.
    fn pump(from: &mut dyn FnMut(&mut Vec<u8>), to: &mut dyn FnMut(&[u8])) -> bool {
        let mut buf = Vec::new();
        from(&mut buf);
        if buf.is_empty() {
            return false;
        }
        to(&buf);
        true
    }

    /// Runs a full handshake over in-memory buffers, then one application byte each way
    /// (a TLS 1.3 server rejects a client certificate only after the client thinks it is done).
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), Failure> {
        use std::io::Write;
        client
            .writer()
            .write_all(b"c")
            .map_err(|e| Failure::Client(TlsError::General(e.to_string())))?;
        server
            .writer()
            .write_all(b"s")
            .map_err(|e| Failure::Server(TlsError::General(e.to_string())))?;
        // The first failure is the cause; the other side then only sees the alert it sent.
        let mut first: Option<Failure> = None;
        for _ in 0..20 {
            let moved_to_server = pump(
                &mut |buf| {
                    while client.wants_write() {
                        client.write_tls(buf).unwrap();
                    }
                },
                &mut |bytes| {
                    server.read_tls(&mut &bytes[..]).unwrap();
                    if let Err(err) = server.process_new_packets() {
                        first.get_or_insert(Failure::Server(err));
                    }
                },
            );
            let moved_to_client = pump(
                &mut |buf| {
                    while server.wants_write() {
                        server.write_tls(buf).unwrap();
                    }
                },
                &mut |bytes| {
                    client.read_tls(&mut &bytes[..]).unwrap();
                    if let Err(err) = client.process_new_packets() {
                        first.get_or_insert(Failure::Client(err));
                    }
                },
            );
            if !moved_to_server && !moved_to_client {
                break;
            }
        }
        if let Some(failure) = first {
            return Err(failure);
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        Ok(())
    }

    struct Node {
        ca: CaMaterial,
        material: NodeMaterial,
    }

    fn node(ca: &CaMaterial, id: ClusterId, name: &str) -> Node {
        Node {
            ca: ca.clone(),
            material: issue_node_cert(ca, id, name).unwrap(),
        }
    }

    fn connect(
        client: &Node,
        server: &Node,
        dial: &str,
    ) -> (ClientConnection, ServerConnection, Result<(), Failure>) {
        let client_config = client_config(&client.ca.cert_pem, &client.material).unwrap();
        let server_config = server_config(&server.ca.cert_pem, &server.material).unwrap();
        let mut c = ClientConnection::new(client_config, server_name(dial)).unwrap();
        let mut s = ServerConnection::new(server_config).unwrap();
        let result = handshake(&mut c, &mut s);
        (c, s, result)
    }

    #[test]
    fn node_names_follow_dns_label_rules() {
        for good in ["a", "node-1", "0", &"x".repeat(63)] {
            validate_node_name(good).unwrap();
        }
        let cases = [
            ("", "empty"),
            (&"x".repeat(64) as &str, "at most 63"),
            ("Node", "'N' is not allowed"),
            ("a.b", "'.' is not allowed"),
            ("a_b", "'_' is not allowed"),
            ("-a", "start or end with '-'"),
            ("a-", "start or end with '-'"),
        ];
        for (bad, words) in cases {
            let text = validate_node_name(bad).unwrap_err().to_string();
            assert!(text.contains(words), "{bad:?}: {text}");
        }
    }

    #[test]
    fn issued_certificate_carries_cluster_and_name() {
        let id = cluster(7);
        let ca = new_cluster_ca(id).unwrap();
        let material = issue_node_cert(&ca, id, "alpha").unwrap();
        let der = cert_der(&material.cert_pem, "test").unwrap();
        let identity = peer_identity(&der).unwrap();
        assert_eq!(
            identity,
            PeerIdentity {
                cluster: id,
                node_name: "alpha".into()
            }
        );
        let ca_der = cert_der(&ca.cert_pem, "test").unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(
            parsed.subject().to_string(),
            format!("CN=tandem cluster {}, O=tandem", id.short())
        );
        assert_eq!(ca_fingerprint(&ca.cert_pem).unwrap(), sha256(&ca_der));
    }

    #[test]
    fn signing_ignores_names_claimed_in_the_csr() {
        let id = cluster(1);
        let ca = new_cluster_ca(id).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::DnsName(ia5("evil.tandem".into()).unwrap()),
            SanType::URI(ia5(format!("{URI_PREFIX}{}/evil", cluster(2))).unwrap()),
        ];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let pem = sign_node_csr(&ca, id, "honest", &csr).unwrap();
        let der = cert_der(&pem, "test").unwrap();
        assert_eq!(
            peer_identity(&der).unwrap(),
            PeerIdentity {
                cluster: id,
                node_name: "honest".into()
            }
        );
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 2);
        assert!(!format!("{:?}", san.value.general_names).contains("evil"));
    }

    #[test]
    fn bad_inputs_are_refused_with_reasons() {
        let id = cluster(1);
        let ca = new_cluster_ca(id).unwrap();
        let other = new_cluster_ca(cluster(2)).unwrap();
        let mixed = CaMaterial {
            cert_pem: ca.cert_pem.clone(),
            key_pem: other.key_pem.clone(),
        };
        assert!(matches!(
            issue_node_cert(&mixed, id, "a"),
            Err(PkiError::CaKeyMismatch)
        ));
        let text = sign_node_csr(&ca, id, "a", "not a csr")
            .unwrap_err()
            .to_string();
        assert!(text.contains("certificate signing request"), "{text}");
        let text = ca_fingerprint("garbage").unwrap_err().to_string();
        assert!(
            text.contains("the CA certificate is not valid PEM"),
            "{text}"
        );
        assert!(matches!(
            issue_node_cert(&ca, id, "Bad"),
            Err(PkiError::InvalidNodeName { .. })
        ));
        // The CA certificate has a tandem URI but no node name: not a node identity.
        let ca_der = cert_der(&ca.cert_pem, "test").unwrap();
        assert!(peer_identity(&ca_der)
            .unwrap_err()
            .to_string()
            .contains("has no node name"));
        assert!(peer_identity(b"junk")
            .unwrap_err()
            .to_string()
            .contains("not an X.509"));
    }

    #[test]
    fn same_cluster_mutual_tls_succeeds_and_names_the_client() {
        let id = cluster(3);
        let ca = new_cluster_ca(id).unwrap();
        let (a, b) = (node(&ca, id, "a"), node(&ca, id, "b"));
        let (_c, s, result) = connect(&a, &b, "b");
        result.unwrap();
        let client_cert = &s.peer_certificates().unwrap()[0];
        assert_eq!(
            peer_identity(client_cert).unwrap(),
            PeerIdentity {
                cluster: id,
                node_name: "a".into()
            }
        );
    }

    #[test]
    fn client_of_another_cluster_is_refused_by_the_server() {
        let (home, away) = (cluster(4), cluster(5));
        let home_ca = new_cluster_ca(home).unwrap();
        let away_ca = new_cluster_ca(away).unwrap();
        let server = node(&home_ca, home, "b");
        // The intruder trusts the home CA (so it accepts the server) but its own cert is foreign.
        let intruder = Node {
            ca: home_ca.clone(),
            material: issue_node_cert(&away_ca, away, "a").unwrap(),
        };
        let (_c, _s, result) = connect(&intruder, &server, "b");
        let Err(Failure::Server(err)) = result else {
            panic!("expected a server refusal: {result:?}")
        };
        assert_eq!(
            err,
            TlsError::InvalidCertificate(CertificateError::UnknownIssuer)
        );
        assert_eq!(
            explain_tls_error(&err),
            "certificate is not signed by this cluster's CA (a node of another cluster?)"
        );
    }

    #[test]
    fn server_of_another_cluster_is_refused_by_the_client() {
        let (home, away) = (cluster(4), cluster(5));
        let client = node(&new_cluster_ca(home).unwrap(), home, "a");
        let server = node(&new_cluster_ca(away).unwrap(), away, "b");
        let (_c, _s, result) = connect(&client, &server, "b");
        let Err(Failure::Client(err)) = result else {
            panic!("expected a client refusal: {result:?}")
        };
        assert!(explain_tls_error(&err).contains("another cluster"), "{err}");
    }

    #[test]
    fn dialling_the_wrong_node_name_is_refused() {
        let id = cluster(6);
        let ca = new_cluster_ca(id).unwrap();
        let (a, b) = (node(&ca, id, "a"), node(&ca, id, "b"));
        let (_c, _s, result) = connect(&a, &b, "c");
        let Err(Failure::Client(err)) = result else {
            panic!("expected a client refusal: {result:?}")
        };
        assert!(explain_tls_error(&err).contains("another node"), "{err}");
    }

    fn join(fingerprint: [u8; 32], server: &Node) -> (ServerConnection, Result<(), Failure>) {
        let config = join_client_config(fingerprint).unwrap();
        let mut c = ClientConnection::new(config, server_name("anything")).unwrap();
        let mut s =
            ServerConnection::new(server_config(&server.ca.cert_pem, &server.material).unwrap())
                .unwrap();
        let result = handshake(&mut c, &mut s);
        (s, result)
    }

    #[test]
    fn join_client_with_the_right_fingerprint_connects_without_a_certificate() {
        let id = cluster(8);
        let ca = new_cluster_ca(id).unwrap();
        let server = node(&ca, id, "b");
        let (s, result) = join(ca_fingerprint(&ca.cert_pem).unwrap(), &server);
        result.unwrap();
        assert!(s.peer_certificates().is_none());
    }

    #[test]
    fn join_client_with_a_wrong_fingerprint_is_refused() {
        let id = cluster(8);
        let ca = new_cluster_ca(id).unwrap();
        let server = node(&ca, id, "b");
        let (_s, result) = join([0xee; 32], &server);
        let Err(Failure::Client(err)) = result else {
            panic!("expected a client refusal: {result:?}")
        };
        let text = explain_tls_error(&err);
        assert!(text.contains("join token expects eeee"), "{text}");
    }

    #[test]
    fn join_client_refuses_a_node_whose_cert_is_not_from_the_presented_ca() {
        // A server presenting the genuine CA certificate but a node certificate of its own
        // making (another CA) must not pass on the fingerprint alone.
        let id = cluster(9);
        let ca = new_cluster_ca(id).unwrap();
        let rogue_ca = new_cluster_ca(id).unwrap();
        let rogue = Node {
            ca: ca.clone(),
            material: issue_node_cert(&rogue_ca, id, "b").unwrap(),
        };
        let (_s, result) = join(ca_fingerprint(&ca.cert_pem).unwrap(), &rogue);
        let Err(Failure::Client(err)) = result else {
            panic!("expected a client refusal: {result:?}")
        };
        assert_eq!(
            err,
            TlsError::InvalidCertificate(CertificateError::BadSignature)
        );
    }
}
