//! Diagnostics for the desired state: one problem, where it is (file, line, column, YAML path) and what
//! is wrong. Owns the path type and the collection that keeps follow-on errors quiet; knows nothing of
//! YAML parsing or of the model.

use serde::Serialize;
use std::fmt;

/// One step of a YAML path: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A YAML path such as `apps.api.strategy.canary.steps[1].weight`, relative to one file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct YamlPath(pub Vec<Seg>);

impl YamlPath {
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path with one more key.
    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_owned()));
        Self(segs)
    }

    /// This path with one more sequence index.
    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }

    /// Whether `self` is `other` or one of its ancestors.
    pub fn contains(&self, other: &YamlPath) -> bool {
        other.0.starts_with(&self.0)
    }
}

fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl fmt::Display for YamlPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(root)");
        }
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if is_plain_key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Key(k) => write!(f, "[{k:?}]")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A location in a file: 1-based line and column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Mark {
    pub line: usize,
    pub column: usize,
}

/// One problem found in the desired state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Path of the file inside the desired-state directory, e.g. `environments/production.yaml`.
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// YAML path inside that file, e.g. `apps.api.version`.
    #[serde(serialize_with = "serialize_display")]
    pub path: YamlPath,
    pub message: String,
}

fn serialize_display<S: serde::Serializer, T: fmt::Display>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.path, self.message
        )
    }
}

/// Every problem found so far, in the order found. An error at a path silences later errors at the
/// same path or below it, so one bad value is reported once and not again by each check that uses it.
#[derive(Debug, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn push(&mut self, diag: Diagnostic) {
        let silenced = self
            .items
            .iter()
            .any(|d| d.file == diag.file && d.path.contains(&diag.path));
        if !silenced {
            self.items.push(diag);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// The problems sorted by file and position, which is how a reader walks the files.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.items
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        self.items
    }
}
