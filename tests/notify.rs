//! Notifications over real HTTP: local receivers (plain HTTP with hyper, HTTPS with a CA this test
//! makes, and one that accepts connections and never answers) and the library's `Notifier`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kube_free::desired::{EventKind, Notification, NotifyFormat, NotifyHeader};
use kube_free::notify::{Event, Notifier};
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request as the receiver got it.
#[derive(Debug)]
struct Received {
    path: String,
    headers: hyper::HeaderMap,
    body: String,
}

/// Serves HTTP/1 on `io`, reporting every request on `tx` and answering 200.
async fn serve<I>(io: I, tx: mpsc::UnboundedSender<Received>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let tx = tx.clone();
        async move {
            let path = req.uri().path().to_owned();
            let headers = req.headers().clone();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let _ = tx.send(Received {
                path,
                headers,
                body: String::from_utf8(body.to_vec()).unwrap(),
            });
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// A plain HTTP receiver on 127.0.0.1; returns its address and what it receives.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(stream, tx.clone()));
        }
    });
    (format!("127.0.0.1:{}", addr.port()), rx)
}

/// Accepts connections and never reads from or answers them.
async fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            held.push(stream);
        }
    });
    format!("127.0.0.1:{}", addr.port())
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification within 10 s")
        .unwrap()
}

fn private_file(path: &Path, content: &str) -> String {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn target(name: &str, url: String) -> Notification {
    Notification {
        name: name.into(),
        url,
        format: NotifyFormat::Json,
        events: EventKind::ALL.to_vec(),
        header: None,
        secret_file: None,
        ca_file: None,
    }
}

fn event(kind: EventKind, commit: &str) -> Event {
    Event {
        kind,
        env: "production".into(),
        app: "api".into(),
        commit: commit.into(),
        version: Some("1.4.2".into()),
        message: format!("{kind} for {commit}"),
    }
}

fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn events_arrive_signed_with_the_header_and_a_repeat_is_not_sent() {
    let (addr, mut rx) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let mut t = target("ops", format!("http://{addr}/hook"));
    t.secret_file = Some(private_file(&dir.path().join("secret"), "hook-secret\n"));
    t.header = Some(NotifyHeader {
        name: "Authorization".into(),
        value_file: private_file(&dir.path().join("token"), "Bearer t0ken\n"),
    });
    t.events = vec![EventKind::Started, EventKind::Succeeded];
    let notifier = Notifier::new(&[t]).unwrap();

    notifier.send(event(EventKind::Started, "c1"));
    notifier.send(event(EventKind::Started, "c1"));
    notifier.send(event(EventKind::Failed, "c1")); // not wanted by this target
    notifier.send(event(EventKind::Succeeded, "c1"));
    notifier.flush(Duration::from_secs(10)).await;

    let mut got = Vec::new();
    while let Ok(r) = rx.try_recv() {
        got.push(r);
    }
    let kinds: Vec<String> = got
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            v["event"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(kinds, vec!["started", "succeeded"], "{got:#?}");

    let first = &got[0];
    assert_eq!(first.path, "/hook");
    assert_eq!(first.headers["content-type"], "application/json");
    assert_eq!(first.headers["authorization"], "Bearer t0ken");
    let body: serde_json::Value = serde_json::from_str(&first.body).unwrap();
    assert_eq!(body["env"], "production");
    assert_eq!(body["app"], "api");
    assert_eq!(body["commit"], "c1");
    assert_eq!(body["version"], "1.4.2");
    assert_eq!(body["message"], "started for c1");
    assert!(
        body["time"].as_str().unwrap().ends_with('Z'),
        "{}",
        first.body
    );
    let timestamp = first.headers["x-kube-free-timestamp"].to_str().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(timestamp.parse().unwrap()) < 60);
    assert_eq!(
        first.headers["x-kube-free-signature"],
        format!(
            "sha256={}",
            hmac_hex(
                b"hook-secret",
                format!("{timestamp}.{}", first.body).as_bytes()
            )
        )
    );

    // The repeat was dropped, not delayed.
    notifier.send(event(EventKind::Started, "c1"));
    notifier.flush(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn a_persisting_failure_is_sent_once_and_recovers_once_in_slack_format() {
    let (addr, mut rx) = receiver().await;
    let mut t = target("slack", format!("http://{addr}/services/x"));
    t.format = NotifyFormat::Slack;
    let notifier = Notifier::new(&[t]).unwrap();
    for _ in 0..5 {
        notifier.failing(Event {
            message: "cannot fetch the repository".into(),
            ..event(EventKind::SyncFailing, "c1")
        });
    }
    notifier.clear(EventKind::SyncFailing, "production", "api");
    notifier.clear(EventKind::SyncFailing, "production", "api");
    notifier.flush(Duration::from_secs(10)).await;
    let texts: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            v["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert!(
        texts[0].starts_with(":warning: *api in production*: sync_failing (version 1.4.2, commit `c1`)\ncannot fetch"),
        "{}",
        texts[0]
    );
    assert!(
        texts[1].starts_with(":large_green_circle: *api in production*: recovered"),
        "{}",
        texts[1]
    );
}

#[tokio::test]
async fn a_receiver_that_never_answers_delays_neither_the_caller_nor_other_targets() {
    let hole = black_hole().await;
    let (addr, mut rx) = receiver().await;
    let notifier = Notifier::new(&[
        target("stuck", format!("http://{hole}/hook")),
        target("fine", format!("http://{addr}/hook")),
    ])
    .unwrap();

    let started = Instant::now();
    for i in 0..200 {
        notifier.send(event(EventKind::Started, &format!("c{i}")));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(100), "200 sends took {took:?}");

    // The working target gets its events while the other one hangs (and its queue overflows).
    let first = next(&mut rx).await;
    assert!(first.body.contains(r#""commit":"c0""#), "{}", first.body);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // flush keeps to its timeout even with a hanging target.
    let flushing = Instant::now();
    notifier.flush(Duration::from_millis(300)).await;
    let waited = flushing.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(800),
        "flush waited {waited:?}"
    );
}

/// A CA and a certificate it signs for 127.0.0.1 and localhost: (CA PEM, server config).
fn test_pki() -> (String, Arc<tokio_rustls::rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use tokio_rustls::rustls;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kube-free test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        leaf_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone()], key)
    .unwrap();
    (ca.pem(), Arc::new(config))
}

#[tokio::test]
async fn an_https_receiver_with_a_private_ca_is_reached_with_ca_file() {
    let (ca_pem, config) = test_pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve(tls, tx).await;
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let mut with_ca = target("with-ca", format!("https://127.0.0.1:{port}/with-ca"));
    with_ca.ca_file = Some(ca_file.to_str().unwrap().to_owned());
    let without_ca = target("without-ca", format!("https://127.0.0.1:{port}/without-ca"));
    let notifier = Notifier::new(&[with_ca, without_ca]).unwrap();

    notifier.send(event(EventKind::Succeeded, "c1"));
    let got = next(&mut rx).await;
    assert_eq!(got.path, "/with-ca");
    assert!(got.body.contains(r#""event":"succeeded""#), "{}", got.body);
    // The certificate is trusted through ca_file only: the other target's first try was refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.try_recv().is_err());
}
