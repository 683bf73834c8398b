//! The local registry of the tests (`common::Registry`: Debian's `docker-registry`) with the
//! machine's main Docker engine: the demo image goes there and back over plain HTTP (an engine
//! trusts 127.0.0.0/8 registries without TLS by itself), and what `docker pull` says when the tag,
//! the repository or the registry is missing, which the Docker runtime tells apart (the version's
//! fault, or the registry's). The strings are printed on stderr.

mod common;

use common::*;
use std::process::Command;
use std::time::Instant;

/// The tag built in the main engine; test-specific, so that no one else's `kf-demo:1` is retagged.
const LOCAL: &str = "kf-demo-registry-test:1";

/// `docker pull NAME`: exit code and stderr (trimmed), printed.
fn pull(name: &str) -> (Option<i32>, String) {
    let t = Instant::now();
    let out = docker(&["pull", name]);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    eprintln!(
        "docker pull {name}: exit {:?} in {:?}, stderr: {stderr}",
        out.status.code(),
        t.elapsed()
    );
    (out.status.code(), stderr)
}

#[test]
fn registry_round_trip_and_pull_errors_with_the_main_engine() {
    require_tools(&["docker"]);
    let top = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(top.join("examples/quickstart-docker/build-image.sh"))
        .arg(LOCAL)
        .env("DEMO_BIN", demo_binary())
        .env_remove("DOCKER_HOST")
        .env_remove("BROKEN")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "build-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let mut registry = Registry::start();
    let reg = registry.address().to_string();
    let remote = format!("{reg}/kf-demo:1");
    docker_ok(&["tag", LOCAL, &remote]);
    let t = Instant::now();
    docker_ok(&["push", &remote]);
    eprintln!("docker push {remote}: {:?}", t.elapsed());
    // Only the registry has it now.
    docker_ok(&["rmi", &remote]);
    assert!(!docker(&["image", "inspect", &remote]).status.success());
    let (code, err) = pull(&remote);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        docker_ok(&["image", "inspect", "--format", "{{.Id}}", &remote]),
        id
    );

    let (code, err) = pull(&format!("{reg}/kf-demo:missing"));
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!("Error response from daemon: manifest for {reg}/kf-demo:missing not found: manifest unknown: manifest unknown")
    );
    let (code, err) = pull(&format!("{reg}/nothere:1"));
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!("Error response from daemon: manifest for {reg}/nothere:1 not found: manifest unknown: manifest unknown")
    );

    registry.stop();
    assert!(!registry.running());
    // Refused even though the image is here: a pull always asks the registry.
    let (code, err) = pull(&remote);
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        format!("Error response from daemon: Get \"http://{reg}/v2/\": dial tcp {reg}: connect: connection refused")
    );
    docker_ok(&["rmi", &remote]);
    let (code, err2) = pull(&remote);
    assert_eq!((code, err2), (Some(1), err));
    let _ = docker(&["rmi", LOCAL]);
}
