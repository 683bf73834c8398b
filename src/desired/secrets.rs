//! Secrets of the desired state that do not live in Git: `env: { NAME: { file: /path } }` values,
//! read from files on the machine that runs kube-free by [`DesiredState::read_secrets`] (the
//! commands that act on hosts call it; `validate` does not, so that it runs anywhere). A file must
//! be accessible by its owner only; its value must fit on one line. Problems are diagnostics at
//! the `file:` key.

use super::model::{DesiredState, EnvValue, SecretValue};
use super::Diagnostic;

impl DesiredState {
    /// Reads every secret file the apps' environments name, keeping each value in the state.
    /// Every problem is reported, each where its file is given.
    pub fn read_secrets(&mut self) -> Result<(), Vec<Diagnostic>> {
        let mut problems = Vec::new();
        for app in self.apps.values_mut() {
            for (name, value) in app.runtime.env_mut() {
                let EnvValue::File {
                    file,
                    origin,
                    value,
                } = value
                else {
                    continue;
                };
                match read(file, name) {
                    Ok(v) => *value = Some(v),
                    Err(message) => problems.push(Diagnostic {
                        message,
                        ..(**origin).clone()
                    }),
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

fn read(file: &str, name: &str) -> Result<SecretValue, String> {
    let bytes = crate::secret::read(std::path::Path::new(file), "secret file")
        .map_err(|e| format!("the value of {name}: {}", crate::error::chain(&e)))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("the value of {name}: secret file {file} is not UTF-8 text"))?;
    if text.chars().any(super::template::is_control) {
        // Never quote the value: it is the secret.
        return Err(format!(
            "the value of {name}: secret file {file} holds a line break or another control character, which cannot be passed to an instance (one line per variable)"
        ));
    }
    Ok(SecretValue(text))
}

#[cfg(test)]
mod tests {
    use crate::desired::{load, EnvValue, MemFiles};
    use std::os::unix::fs::PermissionsExt;

    fn state(file: &std::path::Path) -> crate::desired::DesiredState {
        let yaml = format!(
            "version: 1\nhosts:\n  h: {{ transport: local }}\nbalancers:\n  lb: {{ kind: haproxy, host: h, admin_socket: /tmp/x.sock, config_file: /tmp/x.cfg }}\napps:\n  api:\n    runtime:\n      kind: process\n      command: /bin/api {{port}}\n      env:\n        PLAIN: text\n        DB_PASSWORD: {{ file: {} }}\n    slots: {{ blue: 8001, green: 8002 }}\nenvironments:\n  prod:\n    balancer: lb\n    hosts: [h]\n    apps:\n      api: {{ version: '1', listen: '127.0.0.1:9000' }}\n",
            file.display()
        );
        load(&MemFiles::default().with("kube-free.yaml", yaml)).unwrap()
    }

    fn secret(state: &crate::desired::DesiredState) -> Option<String> {
        match &state.apps["api"].runtime.env()["DB_PASSWORD"] {
            EnvValue::File { value, .. } => value.as_ref().map(|v| v.0.clone()),
            EnvValue::Text(_) => panic!("a file is not a text"),
        }
    }

    #[test]
    fn a_private_file_is_read_and_its_value_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, "s3cr3t value\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut s = state(&path);
        assert_eq!(secret(&s), None, "load reads no file");
        s.read_secrets().unwrap();
        assert_eq!(secret(&s).as_deref(), Some("s3cr3t value"));
        assert!(!format!("{s:?}").contains("s3cr3t"));
        assert!(!serde_json::to_string(&s).unwrap().contains("s3cr3t"));
    }

    #[test]
    fn problems_are_located_at_the_file_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        for (content, mode, expected) in [
            ("x\n", 0o640, "permissions 0640 for secret file"),
            ("two\nlines\n", 0o600, "holds a line break"),
            ("\n", 0o600, "is empty"),
        ] {
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let problems = state(&path).read_secrets().unwrap_err();
            assert_eq!(problems.len(), 1);
            let p = &problems[0];
            assert_eq!(
                (p.file.as_str(), p.line, p.path.to_string().as_str()),
                (
                    "kube-free.yaml",
                    13,
                    "apps.api.runtime.env.DB_PASSWORD.file"
                ),
                "{p:?}"
            );
            assert!(p.message.contains(expected), "{}", p.message);
            assert!(!p.message.contains("lines"), "{}", p.message);
        }
        std::fs::remove_file(&path).unwrap();
        let problems = state(&path).read_secrets().unwrap_err();
        assert!(problems[0].message.contains("cannot read secret file"));
    }
}
