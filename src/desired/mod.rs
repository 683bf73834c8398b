//! The desired state: reads `kube-free.yaml` and `environments/*.yaml` from a desired-state directory
//! (through [`Files`], so it never touches Git or disks itself), parses them in two stages (raw serde
//! types, then validation into [`DesiredState`]) and reports every problem with file, line, column and
//! YAML path. Nothing here talks to a host.

pub mod de;
pub mod diag;
pub mod duration;
pub mod model;
pub mod query;
pub mod raw;
pub mod secrets;
pub mod spec;
pub mod template;
pub mod validate;
pub mod yaml;

pub use diag::{Diagnostic, YamlPath};
pub use model::*;

use diag::Diagnostics;
use raw::{RawConfig, RawEnvironment};
use validate::{EnvSource, FileDoc};

pub const ROOT_FILE: &str = "kube-free.yaml";
pub const ENV_DIR: &str = "environments";

/// Read access to the files of one desired-state directory at one commit.
pub trait Files {
    /// Size in bytes of the file at `path` (relative to the directory), or `None` if there is none.
    fn size(&self, path: &str) -> Result<Option<u64>, FilesError>;
    /// Content of the file at `path`.
    fn read(&self, path: &str) -> Result<Vec<u8>, FilesError>;
    /// Names of the entries directly in `dir` that are not directories (files, and links or
    /// submodules, which [`Files::special`] tells apart), sorted.
    fn list(&self, dir: &str) -> Result<Vec<String>, FilesError>;
    /// What is at `path` when it is neither a file nor a directory, which kube-free does not
    /// read: a symbolic link or a submodule. `None` for a file, a directory or nothing.
    fn special(&self, _path: &str) -> Result<Option<Special>, FilesError> {
        Ok(None)
    }
}

/// An entry of the desired-state directory that is neither a file nor a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    Symlink,
    Submodule,
}

impl Special {
    fn describe(self) -> &'static str {
        match self {
            Special::Symlink => "a symbolic link",
            Special::Submodule => "a submodule",
        }
    }
}

/// The files could not be read (not: they are invalid).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FilesError(pub String);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no {ROOT_FILE} in the desired-state directory")]
    NoRootFile,
    #[error("the desired state has {} problem{}", .0.len(), if .0.len() == 1 { "" } else { "s" })]
    Invalid(Vec<Diagnostic>),
    #[error("cannot read the desired state")]
    Files(#[from] FilesError),
}

/// Reads, parses and validates the desired state.
pub fn load(files: &dyn Files) -> Result<DesiredState, LoadError> {
    let mut diags = Diagnostics::default();
    if files.size(ROOT_FILE)?.is_none() {
        return Err(LoadError::NoRootFile);
    }
    let root = parse_file::<RawConfig>(files, ROOT_FILE, &mut diags)?;

    let mut env_files = Vec::new();
    if let Some(special) = files.special(ENV_DIR)? {
        diags.push(Diagnostic {
            file: ENV_DIR.into(),
            line: 1,
            column: 1,
            path: YamlPath::root(),
            message: format!(
                "{ENV_DIR}/ is {}, which kube-free does not follow: commit the environment files themselves in a directory {ENV_DIR}/ (none is read)",
                special.describe()
            ),
        });
    }
    for name in files.list(ENV_DIR)? {
        let file = format!("{ENV_DIR}/{name}");
        let special = files.special(&file)?;
        if let (Some(special), true) = (special, name.ends_with(".yaml")) {
            diags.push(Diagnostic {
                file,
                line: 1,
                column: 1,
                path: YamlPath::root(),
                message: format!(
                    "this is {}, which kube-free does not follow: commit the file itself (it is not read)",
                    special.describe()
                ),
            });
        } else if let Some(stem) = name.strip_suffix(".yaml") {
            env_files.push((
                stem.to_owned(),
                parse_file::<RawEnvironment>(files, &file, &mut diags)?,
            ));
        } else if name.ends_with(".yml") {
            diags.push(Diagnostic {
                file,
                line: 1,
                column: 1,
                path: YamlPath::root(),
                message: "environment files end in .yaml; rename this file (it is not read)".into(),
            });
        }
    }

    let (Some((root_doc, Some(raw))), true) = (
        root,
        env_files
            .iter()
            .all(|(_, f)| f.as_ref().is_some_and(|f| f.1.is_some())),
    ) else {
        return Err(LoadError::Invalid(diags.into_sorted()));
    };
    let mut envs: Vec<EnvSource> = Vec::new();
    for (name, env) in &raw.environments {
        envs.push(EnvSource {
            name: name.clone(),
            raw: env,
            doc: &root_doc,
            base: YamlPath::root().key("environments").key(name),
        });
    }
    for (name, parsed) in &env_files {
        let (doc, raw_env) = parsed.as_ref().expect("checked above");
        let raw_env = raw_env.as_ref().expect("checked above");
        if raw.environments.contains_key(name) {
            let line = root_doc
                .root
                .key_mark(&YamlPath::root().key("environments").key(name))
                .line;
            diags.push(Diagnostic {
                file: doc.file.clone(),
                line: 1,
                column: 1,
                path: YamlPath::root(),
                message: format!(
                    "environment {name:?} is defined both here and inline in {ROOT_FILE} (line {line}); keep one"
                ),
            });
            continue;
        }
        envs.push(EnvSource {
            name: name.clone(),
            raw: raw_env,
            doc,
            base: YamlPath::root(),
        });
    }
    let exists = |p: &str| matches!(files.size(p), Ok(Some(_)));
    let state = validate::validate(&root_doc, &raw, &envs, &exists, &mut diags);
    match state {
        Some(state) if diags.is_empty() => Ok(state),
        _ => Err(LoadError::Invalid(diags.into_sorted())),
    }
}

/// Parses one file into its tree and raw value; `None` when the file is not YAML at all.
#[allow(clippy::type_complexity)]
fn parse_file<T: serde::de::DeserializeOwned + Default>(
    files: &dyn Files,
    file: &str,
    diags: &mut Diagnostics,
) -> Result<Option<(FileDoc, Option<T>)>, FilesError> {
    // An oversized file is refused from its size alone, before it is loaded.
    let size = files.size(file)?.unwrap_or(0);
    let parsed = match yaml::size_problem(size) {
        Some(problem) => yaml::Parsed {
            root: None,
            problems: vec![problem],
        },
        None => yaml::parse(&files.read(file)?),
    };
    let fatal = parsed.root.is_none() && !parsed.problems.is_empty();
    for p in parsed.problems {
        diags.push(Diagnostic {
            file: file.to_owned(),
            line: p.mark.line,
            column: p.mark.column,
            path: p.path,
            message: p.message,
        });
    }
    if fatal {
        return Ok(None);
    }
    let root = parsed
        .root
        .unwrap_or_else(|| yaml::Node::null(diag::Mark { line: 1, column: 1 }));
    if !matches!(root.kind, yaml::Kind::Map(_)) && !root.is_null() {
        diags.push(Diagnostic {
            file: file.to_owned(),
            line: root.mark.line,
            column: root.mark.column,
            path: YamlPath::root(),
            message: format!(
                "expected a mapping at the top of the file, found {}",
                root.describe()
            ),
        });
        return Ok(Some((
            FileDoc {
                file: file.to_owned(),
                root,
            },
            None,
        )));
    }
    let (value, problems) = de::from_node::<T>(&root);
    for p in problems {
        diags.push(Diagnostic {
            file: file.to_owned(),
            line: p.mark.line,
            column: p.mark.column,
            path: p.path,
            message: p.message,
        });
    }
    Ok(Some((
        FileDoc {
            file: file.to_owned(),
            root,
        },
        value,
    )))
}

/// The JSON Schema of `kube-free.yaml`.
pub fn root_schema() -> schemars::Schema {
    schemars::schema_for!(RawConfig)
}

/// The JSON Schema of one `environments/<name>.yaml` file.
pub fn environment_schema() -> schemars::Schema {
    schemars::schema_for!(RawEnvironment)
}

/// An in-memory [`Files`], for tests and tools that already hold the files.
#[derive(Debug, Default, Clone)]
pub struct MemFiles(pub std::collections::BTreeMap<String, Vec<u8>>);

impl MemFiles {
    pub fn with(mut self, path: &str, content: impl Into<Vec<u8>>) -> Self {
        self.0.insert(path.to_owned(), content.into());
        self
    }
}

impl Files for MemFiles {
    fn size(&self, path: &str) -> Result<Option<u64>, FilesError> {
        Ok(self.0.get(path).map(|c| c.len() as u64))
    }
    fn read(&self, path: &str) -> Result<Vec<u8>, FilesError> {
        self.0
            .get(path)
            .cloned()
            .ok_or_else(|| FilesError(format!("no file {path:?}")))
    }
    fn list(&self, dir: &str) -> Result<Vec<String>, FilesError> {
        let prefix = format!("{dir}/");
        Ok(self
            .0
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect())
    }
}
