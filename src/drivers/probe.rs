//! The [`Prober`] trait and the HTTP prober ([`HttpProber`]): asks an instance's readiness endpoint
//! (`probe.path`, or an analysis check path) from the machine running kube-free. Ready means a 2xx
//! answer within `probe.timeout`; a redirect is not followed (it is not ready: the instance itself
//! must answer, and a probe must not be sent elsewhere).

use std::time::Duration;

/// A way to ask an instance whether it is ready.
///
/// Promise: `Ok` only for an answer that says ready (HTTP: 2xx) within `timeout`; every other
/// outcome is an error that names the address asked.
#[async_trait::async_trait]
pub trait Prober: Send + Sync {
    async fn probe(
        &self,
        address: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<(), ProbeError>;
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{url} answered {status}")]
    Answered { url: String, status: String },
    #[error("{url} did not answer within {}", crate::desired::duration::format(*.timeout))]
    Timeout { url: String, timeout: Duration },
    #[error("{url}: connection refused or unreachable")]
    Connect { url: String },
    #[error("{url}")]
    Other {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// The HTTP prober: plain HTTP, no proxy, no redirects, a new connection per probe.
#[derive(Clone)]
pub struct HttpProber {
    client: reqwest::Client,
}

impl Default for HttpProber {
    fn default() -> Self {
        crate::install_tls_provider();
        HttpProber {
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(0)
                .build()
                .expect("an HTTP client with default settings builds"),
        }
    }
}

#[async_trait::async_trait]
impl Prober for HttpProber {
    async fn probe(
        &self,
        address: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<(), ProbeError> {
        let url = format!("http://{address}:{port}{path}");
        match self.client.get(&url).timeout(timeout).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(ProbeError::Answered {
                url,
                status: r.status().to_string(),
            }),
            Err(e) if e.is_timeout() => Err(ProbeError::Timeout { url, timeout }),
            Err(e) if e.is_connect() => Err(ProbeError::Connect { url }),
            Err(e) => Err(ProbeError::Other {
                url,
                source: e.without_url(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let prober = super::HttpProber::default();
        let err = super::Prober::probe(
            &prober,
            "127.0.0.1",
            port,
            "/readyz",
            std::time::Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, super::ProbeError::Connect { .. }), "{err:?}");
    }

    /// An instance that redirects is not ready, and the place it points to is never asked.
    #[tokio::test]
    async fn a_redirect_is_not_followed() {
        use std::io::{Read, Write};
        let ready = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        ready.set_nonblocking(true).unwrap();
        let redirecting = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = redirecting.local_addr().unwrap().port();
        let target = format!("http://{}/readyz", ready.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = redirecting.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).unwrap();
            write!(
                s,
                "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
        });
        let prober = super::HttpProber::default();
        let err = super::Prober::probe(
            &prober,
            "127.0.0.1",
            port,
            "/readyz",
            std::time::Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        server.join().unwrap();
        assert!(err.to_string().ends_with("answered 302 Found"), "{err}");
        assert!(ready.accept().is_err(), "the redirect was followed");
    }
}
