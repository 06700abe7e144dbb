//! HTTPS at the balancer: TLS is terminated here, and the backends are
//! spoken to in plain HTTP, as an AWS ALB with an HTTPS listener does.
//!
//! `lb --tls` generates a self-signed certificate at start for `localhost`,
//! `127.0.0.1` and `::1`, and prints its SHA-256 fingerprint (the one a
//! browser shows under "certificate details") so the learner can check that
//! the certificate the browser warns about is really this balancer's.
//! `lb --tls-cert chain.pem --tls-key key.pem` serves a real one instead
//! (from Let's Encrypt, a company CA, or `mkcert`). `--tls-cert-out FILE`
//! writes the certificate the balancer serves, for `curl --cacert FILE`.
//!
//! ## Why terminate at the balancer
//!
//! * One place holds the private key and renews the certificate, not every
//!   instance; instances come and go, the balancer's name stays.
//! * The balancer must read the request to route it (the sticky cookie, the
//!   path, `?room=`); it can only do so in the clear.
//! * The handshake is the expensive part of TLS (`scripts/bench-tls`
//!   measures it); keep-alive connections from the shoppers and pooled
//!   connections to the backends pay it once, not per request.
//!
//! The price: the hop from the balancer to the instances is plain HTTP, so
//! it must stay on a network nobody else reads (the same machine here; a
//! private subnet behind security groups on AWS). And the instances no
//! longer see that the shopper used HTTPS, so the balancer tells them:
//! `X-Forwarded-Proto: https`. An instance must believe that header only
//! from its balancer (`serve --trusted-proxy`), or anyone could claim it.
//!
//! ## What happens to a connection
//!
//! 1. The first byte is peeked (read without consuming it), with a deadline.
//!    A TLS connection starts with a handshake record, byte `0x16`; a plain
//!    HTTP request starts with a method's letter. A plain request on the TLS
//!    port gets a plain-HTTP `400` that says to use `https://` (nginx: "The
//!    plain HTTP request was sent to HTTPS port"), not a TLS alert that a
//!    browser shows as gibberish or "connection reset".
//! 2. The handshake, under the same deadline: a client that opens a
//!    connection and sends nothing must not hold it (and its memory) forever.
//! 3. The decrypted stream is served by the very same hyper code as a plain
//!    one (`proxy` is generic over the connection type), WebSocket upgrades
//!    included: the tunnel splices the decrypted stream to the backend.
//!
//! ALPN offers `http/1.1` only: the proxy speaks HTTP/1.1 to both sides, and
//! a client that was told `h2` would send HTTP/2 frames it cannot read.
//! Session resumption is on (tickets, and rustls' in-memory session cache):
//! a returning client skips the certificate signature, the costly part of a
//! full handshake, as nginx's default `ssl_session_tickets on` allows.
//!
//! ## Choices, and what was rejected
//!
//! * rustls with the *ring* crypto provider. OpenSSL (via `native-tls`)
//!   would need the system's headers and behave differently per distro;
//!   rustls' default provider, aws-lc-rs, needs cmake and a long C build.
//!   The provider is given explicitly (`builder_with_provider`) rather than
//!   installed process-wide, so a crate elsewhere in the build that enables
//!   another provider cannot make it ambiguous.
//! * HSTS (`Strict-Transport-Security`) is off unless asked (`--hsts 1y`):
//!   it tells a browser to refuse plain HTTP to this host for that long, and
//!   on a learner's `localhost` that would break every plain-HTTP stage
//!   served there afterwards.
//! * `--redirect-http ADDR` ([`crate::redirect`]) answers plain HTTP with a
//!   redirect to HTTPS, as an ALB's port-80 listener with a redirect action.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The names a generated certificate is valid for: this machine, by every
/// name a learner types.
pub const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Time a new connection on the TLS port gets to send its first byte and
/// finish the handshake. A browser needs a few milliseconds; a client that
/// connects and says nothing is dropped (nginx's `ssl_handshake_timeout`
/// is 60 s; a teaching balancer on one machine needs no such patience).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The first byte of every TLS connection: a handshake record (RFC 8446
/// §5.1, `ContentType.handshake`). No HTTP method starts with it.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Where the balancer's certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsSettings {
    /// A PEM certificate chain (the site's certificate first, then the
    /// intermediates) and its PEM private key (PKCS#8, PKCS#1 or SEC1).
    Files { certificate: PathBuf, key: PathBuf },
    /// A certificate made at start and signed by its own key, valid for
    /// these names (DNS names or IP addresses). Browsers warn about it,
    /// since no authority they know vouches for it.
    SelfSigned { names: Vec<String> },
}

impl TlsSettings {
    /// A self-signed certificate for [`LOCAL_NAMES`].
    pub fn self_signed_for_localhost() -> Self {
        Self::SelfSigned {
            names: LOCAL_NAMES.iter().map(|&name| name.to_owned()).collect(),
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read a certificate chain from {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("cannot read a private key from {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error("the certificate and key cannot be served: {0}")]
    Config(#[from] rustls::Error),
}

/// A running balancer's TLS: the acceptor and what to say about its
/// certificate.
pub(crate) struct Tls {
    acceptor: TlsAcceptor,
    fingerprint: String,
    certificate_pem: String,
    description: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs: only what the certificate says.
        f.debug_struct("Tls")
            .field("certificate", &self.description)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// What the first bytes of a connection on the TLS port turned out to be.
pub(crate) enum Opened {
    /// A finished handshake: the decrypted stream.
    Tls(Box<TlsStream<TcpStream>>),
    /// Plain HTTP sent to the TLS port, not yet read.
    PlainHttp(TcpStream),
}

impl Tls {
    pub(crate) fn new(settings: &TlsSettings) -> Result<Self, TlsError> {
        let (chain, key, description) = match settings {
            TlsSettings::Files { certificate, key } => {
                let chain = read_chain(certificate)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
                    path: key.clone(),
                    reason: e.to_string(),
                })?;
                (
                    chain,
                    key,
                    format!("certificate from {}", certificate.display()),
                )
            }
            TlsSettings::SelfSigned { names } => {
                let (chain, key) = self_signed(names)?;
                (
                    chain,
                    key,
                    format!("self-signed certificate for {}", names.join(", ")),
                )
            }
        };
        let fingerprint = chain
            .first()
            .map(|leaf| fingerprint(leaf))
            .unwrap_or_default();
        let certificate_pem = chain.iter().map(|der| pem("CERTIFICATE", der)).collect();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // `with_single_cert` also checks that the key is the certificate's:
        // a mismatched pair fails here, at start, not at the first client.
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            fingerprint,
            certificate_pem,
            description,
        })
    }

    /// The SHA-256 fingerprint of the served certificate, as browsers and
    /// `openssl x509 -fingerprint -sha256` show it: `AB:CD:…`.
    pub(crate) fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The served certificate chain, PEM: what a client trusts to talk to a
    /// self-signed balancer (`curl --cacert`).
    pub(crate) fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Where the certificate came from, for the start-up log.
    pub(crate) fn description(&self) -> &str {
        &self.description
    }

    /// Tells TLS from plain HTTP and, for TLS, does the handshake; both
    /// within [`HANDSHAKE_TIMEOUT`].
    pub(crate) async fn open(&self, stream: TcpStream) -> io::Result<Opened> {
        self.open_within(stream, HANDSHAKE_TIMEOUT).await
    }

    async fn open_within(&self, stream: TcpStream, deadline: Duration) -> io::Result<Opened> {
        let opening = async {
            let mut first = [0u8; 1];
            if stream.peek(&mut first).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed before sending anything",
                ));
            }
            if first[0] != TLS_HANDSHAKE_RECORD {
                return Ok(Opened::PlainHttp(stream));
            }
            let stream = self.acceptor.accept(stream).await?;
            Ok(Opened::Tls(Box::new(stream)))
        };
        tokio::time::timeout(deadline, opening)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    }
}

/// Every certificate in a PEM file, in order.
fn read_chain(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |reason: String| TlsError::Certificate {
        path: path.clone(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| failed(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))?;
    if chain.is_empty() {
        return Err(failed("it holds no CERTIFICATE section".to_owned()));
    }
    Ok(chain)
}

/// A fresh key pair (ECDSA P-256, rcgen's default: quick to sign with) and
/// a certificate for `names`, signed by that key.
fn self_signed(
    names: &[String],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let key = PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
    Ok((vec![generated.cert.der().clone()], key.into()))
}

/// A certificate and its private key, PEM, for `names`: what `lb
/// --tls-cert`/`--tls-key` (or nginx, in `scripts/bench-tls`) can load.
/// Tests make their own certificates with it.
pub fn generate_self_signed_pem(names: &[String]) -> Result<(String, String), TlsError> {
    let generated = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((generated.cert.pem(), generated.signing_key.serialize_pem()))
}

/// A client's TLS configuration that trusts the certificates in `pem` and
/// nothing else: how a test (or a script) talks to a balancer with a
/// self-signed certificate, as `curl --cacert` does. ALPN offers HTTP/1.1.
pub fn client_config_trusting(pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    let invalid = |reason: String| TlsError::Certificate {
        path: PathBuf::from("(PEM text)"),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let certificate = certificate.map_err(|e| invalid(e.to_string()))?;
        roots.add(certificate)?;
    }
    if roots.is_empty() {
        return Err(invalid("no certificate in it".to_owned()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The SHA-256 of a certificate's DER bytes, colon-separated uppercase hex.
pub fn fingerprint(certificate: &[u8]) -> String {
    Sha256::digest(certificate)
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// DER bytes as a PEM section, 64 characters a line (RFC 7468).
fn pem(label: &str, der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to a fresh listener: the client's end and the
    /// balancer's.
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listening");
        let address = listener.local_addr().expect("address");
        let client = TcpStream::connect(address).await.expect("connected");
        let (accepted, _) = listener.accept().await.expect("accepted");
        (client, accepted)
    }

    /// What `open_within` answered, as an error kind (`None`: it opened).
    async fn opening_fails_with(client_sends: &[u8]) -> Option<io::ErrorKind> {
        use tokio::io::AsyncWriteExt;
        let tls = Tls::new(&TlsSettings::self_signed_for_localhost()).expect("TLS");
        let (mut client, accepted) = connection().await;
        client.write_all(client_sends).await.expect("sent");
        // The test's own deadline, far past the balancer's: a regression
        // fails here instead of hanging.
        let opened = tokio::time::timeout(
            Duration::from_secs(5),
            tls.open_within(accepted, Duration::from_millis(200)),
        )
        .await
        .expect("the balancer gave up by its own deadline");
        // Connected and silent until then.
        drop(client);
        opened.err().map(|error| error.kind())
    }

    #[tokio::test]
    async fn a_client_that_connects_and_says_nothing_is_dropped_at_the_deadline() {
        assert_eq!(opening_fails_with(b"").await, Some(io::ErrorKind::TimedOut));
    }

    #[tokio::test]
    async fn a_client_that_stalls_inside_the_handshake_is_dropped_at_the_deadline() {
        // A TLS record header announcing a 512-byte ClientHello, and then
        // nothing: the slowloris of TLS.
        let stalled = [TLS_HANDSHAKE_RECORD, 0x03, 0x01, 0x02, 0x00, 0x01];
        assert_eq!(
            opening_fails_with(&stalled).await,
            Some(io::ErrorKind::TimedOut)
        );
    }

    #[tokio::test]
    async fn plain_http_is_told_apart_without_waiting() {
        assert_eq!(opening_fails_with(b"GET / HTTP/1.1\r\n").await, None);
    }

    #[test]
    fn fingerprints_look_like_what_browsers_show() {
        let print = fingerprint(b"not really a certificate");
        assert_eq!(print.len(), 32 * 3 - 1);
        assert!(
            print
                .split(':')
                .all(|pair| pair.len() == 2 && pair.chars().all(|c| c.is_ascii_hexdigit()))
        );
        assert_eq!(print, print.to_uppercase());
    }

    #[test]
    fn a_generated_certificate_reads_back_from_its_pem() {
        let names = vec!["localhost".to_owned()];
        let (certificate, key) = generate_self_signed_pem(&names).expect("generated");
        let der = CertificateDer::from_pem_slice(certificate.as_bytes()).expect("a certificate");
        assert!(PrivateKeyDer::from_pem_slice(key.as_bytes()).is_ok());
        assert_eq!(pem("CERTIFICATE", &der), certificate.replace("\r\n", "\n"));
    }

    #[test]
    fn self_signed_settings_serve_and_describe_themselves() {
        let tls = Tls::new(&TlsSettings::self_signed_for_localhost()).expect("TLS");
        assert!(
            tls.certificate_pem()
                .starts_with("-----BEGIN CERTIFICATE-----\n")
        );
        let der = CertificateDer::from_pem_slice(tls.certificate_pem().as_bytes()).expect("PEM");
        assert_eq!(tls.fingerprint(), fingerprint(&der));
        assert!(tls.description().contains("localhost, 127.0.0.1, ::1"));
    }

    #[test]
    fn missing_files_are_named_in_the_error() {
        let settings = TlsSettings::Files {
            certificate: "/nonexistent/chain.pem".into(),
            key: "/nonexistent/key.pem".into(),
        };
        let error = Tls::new(&settings).expect_err("no such file").to_string();
        assert!(error.contains("/nonexistent/chain.pem"), "{error}");
    }
}
