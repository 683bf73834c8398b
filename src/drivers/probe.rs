//! The [`Prober`] trait and the HTTP prober ([`HttpProber`]): asks an instance's readiness endpoint
//! (`probe.path`, or an analysis check path) from the machine running kube-free. Ready means a 2xx
//! answer within `probe.timeout`.

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

/// The HTTP prober: plain HTTP, no proxy, a new connection per probe.
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
}
