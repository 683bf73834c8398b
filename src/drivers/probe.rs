//! The HTTP prober: asks an instance's readiness endpoint (`probe.path`) from the machine running
//! kube-free. Ready means a 2xx answer within `probe.timeout`.

use std::time::Duration;

#[derive(Clone)]
pub struct Prober {
    client: reqwest::Client,
}

impl Default for Prober {
    fn default() -> Self {
        Prober {
            client: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()
                .expect("an HTTP client without TLS builds"),
        }
    }
}

impl Prober {
    /// One probe: `Ok(())` when ready, else why not.
    pub async fn probe(
        &self,
        address: &str,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let url = format!("http://{address}:{port}{path}");
        match self.client.get(&url).timeout(timeout).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("{url} answered {}", r.status())),
            Err(e) if e.is_timeout() => Err(format!(
                "{url} did not answer within {}",
                crate::desired::duration::format(timeout)
            )),
            Err(e) if e.is_connect() => Err(format!("{url}: connection refused or unreachable")),
            Err(e) => Err(format!("{url}: {e}")),
        }
    }
}
