//! An instance's spec: everything the desired state says shapes what runs in a slot besides the
//! version — the rendered command, the environment, the slot's port, the runtime and the image —
//! as one digest per part ([`Spec`]). An instance is what the desired state wants only when both
//! its version and its spec are; a change to any part with the same version is rolled out like a
//! new version, and the parts that differ say why. Kept in the instance's record (a container's
//! label). Secret values never enter it: a secret counts by its file's path.

use super::model::{DesiredState, EnvValue, Runtime};
use super::template::Placeholder;
use crate::names::SlotRef;
use std::fmt;

/// The digest of each part of an instance's spec (12 hex digits of SHA-256 each). Written and
/// read as one line: `command:… env:… port:… runtime:… image:…`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spec {
    pub command: String,
    pub env: String,
    pub port: String,
    pub runtime: String,
    pub image: String,
}

/// The parts of a [`Spec`], as they are written and as `plan` names a change of one.
const PARTS: [(&str, &str); 5] = [
    ("command", "command"),
    ("env", "env"),
    ("port", "slot ports"),
    ("runtime", "runtime"),
    ("image", "image"),
];

impl Spec {
    fn parts(&self) -> [&str; 5] {
        [
            &self.command,
            &self.env,
            &self.port,
            &self.runtime,
            &self.image,
        ]
    }

    /// What differs from `other`, in words (`command changed`, `env changed`, `slot ports
    /// changed`, …), in a fixed order; empty when they are the same.
    pub fn changes(&self, other: &Spec) -> Vec<String> {
        self.parts()
            .iter()
            .zip(other.parts())
            .zip(PARTS)
            .filter(|((a, b), _)| *a != b)
            .map(|(_, (_, words))| format!("{words} changed"))
            .collect()
    }
}

#[cfg(test)]
impl Spec {
    /// A spec for tests of what only carries one.
    pub fn example() -> Spec {
        "command:1 env:2 port:3 runtime:4 image:5".parse().unwrap()
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ((key, _), value)) in PARTS.iter().zip(self.parts()).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{key}:{value}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Spec {
    type Err = String;

    fn from_str(s: &str) -> Result<Spec, String> {
        let mut values = Vec::new();
        let mut words = s.split(' ');
        for (key, _) in PARTS {
            let value = words
                .next()
                .and_then(|w| w.strip_prefix(key)?.strip_prefix(':'))
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| format!("a spec is `command:… env:… port:… runtime:… image:…` (hex digests), not {s:?}"))?;
            values.push(value.to_owned());
        }
        if words.next().is_some() {
            return Err(format!("a spec has five parts, not {s:?}"));
        }
        let [command, env, port, runtime, image] =
            <[String; 5]>::try_from(values).expect("five parts");
        Ok(Spec {
            command,
            env,
            port,
            runtime,
            image,
        })
    }
}

impl serde::Serialize for Spec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Spec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Spec, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The value of each placeholder for an instance of `version` in slot `at` on `port`.
pub fn placeholders<'a>(
    at: &'a SlotRef,
    version: &'a str,
    port: u16,
) -> impl Fn(Placeholder) -> String + Copy + 'a {
    move |p| match p {
        Placeholder::Version => version.to_owned(),
        Placeholder::Port => port.to_string(),
        Placeholder::Slot => at.slot.clone(),
        Placeholder::App => at.app.clone(),
        Placeholder::Env => at.env.clone(),
        Placeholder::Host => at.host.clone(),
    }
}

/// 12 hex digits of the SHA-256 of `words`, each length-prefixed (so no two lists share one).
fn digest<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for w in words {
        h.update((w.len() as u64).to_le_bytes());
        h.update(w.as_bytes());
    }
    hex::encode(h.finalize())[..12].to_owned()
}

impl DesiredState {
    /// Whether the spec of `app` can differ from host to host: one of its templates names the host
    /// (`{host}`). When none does, a slot's spec is the same on every host, and who asks it of
    /// many hosts renders it once. An app the state does not have names nothing.
    pub fn spec_names_host(&self, app: &str) -> bool {
        let Some(app) = self.apps.get(app) else {
            return false;
        };
        let (command, env, image): (&[_], _, _) = match &app.runtime {
            Runtime::Process { command, env } => (command, env, None),
            Runtime::Docker {
                image,
                command,
                env,
                ..
            } => (command.as_deref().unwrap_or_default(), env, Some(image)),
        };
        let texts = env.values().filter_map(|v| match v {
            EnvValue::Text(t) => Some(t),
            EnvValue::File { .. } => None,
        });
        command
            .iter()
            .chain(texts)
            .chain(image)
            .any(|t| t.uses(Placeholder::Host))
    }

    /// The spec of an instance of `version` in slot `at`, as this desired state renders it.
    /// Panics if `at` names an app the state does not have (callers name deployed slots).
    pub fn spec(&self, at: &SlotRef, version: &str) -> Spec {
        let port = self.slot_port(&at.env, &at.app, &at.slot).unwrap_or(0);
        let value = placeholders(at, version, port);
        let (command, env, runtime, image): (Vec<String>, _, Vec<String>, _) =
            match &self.apps[&at.app].runtime {
                Runtime::Process { command, env } => (
                    command.iter().map(|w| w.render(value)).collect(),
                    env,
                    vec!["process".to_owned()],
                    String::new(),
                ),
                Runtime::Docker {
                    image,
                    command,
                    env,
                    cli,
                    network,
                    bind,
                    ..
                } => (
                    command.iter().flatten().map(|w| w.render(value)).collect(),
                    env,
                    vec![
                        "docker".to_owned(),
                        cli.program().to_owned(),
                        format!("{network:?}"),
                        bind.map(|b| b.to_string()).unwrap_or_default(),
                    ],
                    image.render(value),
                ),
            };
        // A secret by its file's path only: its value is never part of a digest.
        let env: Vec<String> = env
            .iter()
            .flat_map(|(name, v)| {
                let v = match v {
                    EnvValue::Text(t) => format!("={}", t.render(value)),
                    EnvValue::File { file, .. } => format!("file:{file}"),
                };
                [name.clone(), v]
            })
            .collect();
        Spec {
            command: digest(command.iter().map(String::as_str)),
            env: digest(env.iter().map(String::as_str)),
            port: digest([port.to_string().as_str()]),
            runtime: digest(runtime.iter().map(String::as_str)),
            image: digest([image.as_str()]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{load, MemFiles};

    fn state(runtime: &str, slots: &str) -> DesiredState {
        let yaml = format!(
            "version: 1\nhosts:\n  h: {{ transport: local }}\nbalancers:\n  lb: {{ kind: haproxy, host: h, admin_socket: /tmp/x.sock, config_file: /tmp/x.cfg }}\napps:\n  api:\n    runtime:\n{runtime}\n    slots: {slots}\nenvironments:\n  prod:\n    balancer: lb\n    hosts: [h]\n    apps:\n      api: {{ version: '1', listen: '127.0.0.1:9000' }}\n"
        );
        load(&MemFiles::default().with("kube-free.yaml", yaml)).unwrap()
    }

    const PROCESS: &str = "      kind: process\n      command: /bin/api --port {port}\n      env:\n        MODE: fast\n        DB_PASSWORD: { file: /etc/api/db }";
    const SLOTS: &str = "{ blue: 8001, green: 8002 }";

    fn blue() -> SlotRef {
        SlotRef::new("prod", "api", "h", "blue")
    }

    #[test]
    fn each_part_follows_what_shapes_it_and_names_itself_when_it_changes() {
        let base = state(PROCESS, SLOTS).spec(&blue(), "1");
        assert_eq!(base, state(PROCESS, SLOTS).spec(&blue(), "1"), "stable");
        let cases = [
            (
                PROCESS.replace("--port {port}", "--port {port} --fast"),
                SLOTS,
                vec!["command changed"],
            ),
            (
                PROCESS.replace("MODE: fast", "MODE: slow"),
                SLOTS,
                vec!["env changed"],
            ),
            (
                PROCESS.replace("/etc/api/db", "/etc/api/db2"),
                SLOTS,
                vec!["env changed"],
            ),
            (
                PROCESS.to_owned(),
                "{ blue: 8011, green: 8002 }",
                // {port} is in the command too.
                vec!["command changed", "slot ports changed"],
            ),
            (
                "      kind: docker\n      image: reg/api:{version}\n      command: /bin/api --port {port}\n      env:\n        MODE: fast\n        DB_PASSWORD: { file: /etc/api/db }".to_owned(),
                SLOTS,
                vec!["runtime changed", "image changed"],
            ),
        ];
        for (runtime, slots, expected) in cases {
            let other = state(&runtime, slots).spec(&blue(), "1");
            assert_eq!(other.changes(&base), expected, "{runtime} {slots}");
        }
        // Another version renders the same spec here: the version is compared on its own.
        assert_eq!(state(PROCESS, SLOTS).spec(&blue(), "2"), base);
    }

    #[test]
    fn a_secret_counts_by_its_path_never_by_its_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let with = |value: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&path, value).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let runtime = PROCESS.replace("/etc/api/db", &path.display().to_string());
            let mut s = state(&runtime, SLOTS);
            s.read_secrets().unwrap();
            s.spec(&blue(), "1")
        };
        let one = with("hunter2\n");
        assert_eq!(one, with("another secret\n"));
        assert!(!one.to_string().contains("hunter2"));
    }

    #[test]
    fn it_is_written_and_read_as_one_line() {
        let spec = state(PROCESS, SLOTS).spec(&blue(), "1");
        let line = spec.to_string();
        assert!(line.starts_with("command:"), "{line}");
        assert_eq!(line.parse::<Spec>().unwrap(), spec);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(json, format!("\"{line}\""));
        assert_eq!(serde_json::from_str::<Spec>(&json).unwrap(), spec);
        for bad in [
            "",
            "command:abc",
            "env:1 command:2 port:3 runtime:4 image:5",
            "command:xyz env:1 port:3 runtime:4 image:5",
            "command:1 env:1 port:3 runtime:4 image:5 more:6",
        ] {
            assert!(bad.parse::<Spec>().is_err(), "{bad}");
        }
    }
}
