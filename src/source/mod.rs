//! Where the desired state comes from: a Git repository (a local path, possibly a subdirectory of a
//! work tree, or a URL cloned and fetched into a cache directory), one resolved commit, and the files
//! of the desired-state directory read from that commit's tree with git2, never from the work tree.
//! Knows nothing of the desired-state format.

mod credentials;
mod known_hosts;
pub mod verify;

pub use credentials::{CredentialError, GitCredentials};
pub use verify::{Trust, VerifyError};

use crate::desired::{Files, FilesError, Special};
use git2::{AutotagOption, FetchOptions, ObjectType, Oid, Repository, Status, StatusOptions};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: no such directory")]
    NotFound { path: String },
    #[error(
        "{path}: not inside a Git repository (kube-free reads the desired state from commits)"
    )]
    NotARepository { path: String },
    #[error("{path}: the desired-state directory must be inside the work tree of {repo}")]
    OutsideWorkTree { path: String, repo: String },
    #[error("revision {rev:?} not found in {origin}: {tried}")]
    UnknownRevision {
        rev: String,
        origin: String,
        /// What was looked for, and a hint when the name is something else there.
        tried: String,
    },
    #[error("{origin} has no commits yet")]
    NoCommits { origin: String },
    #[error("directory {dir:?} is not in commit {commit} of {origin}")]
    NoSuchDirectory {
        dir: String,
        commit: String,
        origin: String,
    },
    #[error("cannot fetch {url} into {cache}")]
    Fetch {
        url: String,
        cache: String,
        #[source]
        source: git2::Error,
    },
    #[error("cannot fetch {url}")]
    Credentials {
        url: String,
        #[source]
        source: CredentialError,
    },
    #[error("cannot use cache directory {path}")]
    Cache {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing commit {commit} of {origin}")]
    Untrusted {
        commit: String,
        origin: String,
        #[source]
        source: VerifyError,
    },
    #[error("cannot read {origin}")]
    Git {
        origin: String,
        #[source]
        source: git2::Error,
    },
}

impl SourceError {
    /// Whether the problem is in what the user gave (a path, URL or revision), as opposed to the
    /// machine or the network.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            SourceError::NotFound { .. }
                | SourceError::NotARepository { .. }
                | SourceError::OutsideWorkTree { .. }
                | SourceError::UnknownRevision { .. }
                | SourceError::NoCommits { .. }
                | SourceError::NoSuchDirectory { .. }
        ) || matches!(self, SourceError::Credentials { source, .. } if source.is_bad_input())
            || matches!(self, SourceError::Untrusted { source, .. } if source.is_bad_input())
    }
}

/// Where to read the desired state from, as given on the command line.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    /// A local path or a Git URL (`file://`, `ssh://`, `https://`, or `user@host:path`).
    pub repo: String,
    /// A branch, `tags/NAME`, `refs/heads/NAME`, `refs/tags/NAME`, a full commit id or `HEAD` (see
    /// [`open`]); default: HEAD (local) or the remote's default branch (URL).
    pub rev: Option<String>,
    /// Where URLs are cloned; default `$XDG_CACHE_HOME/kube-free/repos`.
    pub cache_dir: Option<PathBuf>,
    /// Explicit credentials for URLs; the default uses the SSH agent, ~/.ssh and git's helpers.
    pub credentials: GitCredentials,
    /// The keys the commit must be signed with (none: signatures are not checked).
    pub trust: Trust,
}

/// Where a commit stands relative to another one (rewind protection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// The same commit.
    Same,
    /// It descends from the other one (the other one is in its history).
    Descends,
    /// The other one is not in its history (a force-push went back, or elsewhere).
    Diverged,
    /// The repository does not have the other commit, so which it is cannot be told.
    Unknown,
}

/// A commit and the repository it was read from, reopened to answer questions about its history
/// after the [`Snapshot`] is gone.
#[derive(Clone, Debug)]
pub struct History {
    git_dir: PathBuf,
    /// The commit read.
    pub commit: Oid,
}

impl History {
    /// Where [`Self::commit`] stands relative to `other` (a full commit id).
    pub fn relation(&self, other: &str) -> Result<Relation, git2::Error> {
        let Ok(other) = Oid::from_str(other) else {
            return Ok(Relation::Unknown);
        };
        if other == self.commit {
            return Ok(Relation::Same);
        }
        let repo = Repository::open(&self.git_dir)?;
        if repo.find_commit(other).is_err() {
            return Ok(Relation::Unknown);
        }
        Ok(if repo.graph_descendant_of(self.commit, other)? {
            Relation::Descends
        } else {
            Relation::Diverged
        })
    }
}

/// What a person reads about a commit.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CommitInfo {
    /// The first line of its message.
    pub subject: String,
    /// `Name <email>`.
    pub author: String,
    /// When it was committed (seconds since the Unix epoch).
    pub time: i64,
}

/// The desired-state directory at one commit.
pub struct Snapshot {
    repo: Repository,
    /// The repository as the user named it (path or URL), for messages.
    pub origin: String,
    /// The commit read.
    pub commit: Oid,
    /// The desired-state directory inside the repository ("" for its root).
    pub dir: String,
    tree: Oid,
    /// Uncommitted changes under the directory (local work trees only), as `git status --short` lines;
    /// they are ignored.
    pub uncommitted: Vec<String>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("origin", &self.origin)
            .field("commit", &self.commit)
            .field("dir", &self.dir)
            .finish()
    }
}

pub fn is_url(repo: &str) -> bool {
    repo.contains("://") || {
        // scp-like `user@host:path`, as git takes it (a path with a slash before the colon is local).
        let colon = repo.find(':');
        let slash = repo.find('/');
        repo.contains('@') && colon.is_some_and(|c| slash.is_none_or(|s| c < s))
    }
}

/// Bounds libgit2's network waits (connecting: 10 s; a server that stops sending: 60 s), so that a
/// stalled Git server fails a fetch instead of freezing a run or a watcher. Call once, before any
/// thread is started (libgit2 keeps these in globals).
pub fn set_network_timeouts() {
    // SAFETY: called by `main` before the async runtime or any other thread exists, as
    // `git2::opts` requires for these globals.
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(10_000);
        let _ = git2::opts::set_server_timeout_in_milliseconds(60_000);
    }
}

/// Opens the repository, fetching it first when it is a URL, and resolves the commit; when
/// `spec.trust` is set, refuses a commit that is not signed by one of its keys.
pub fn open(spec: &SourceSpec) -> Result<Snapshot, SourceError> {
    let (repo, dir, origin) = if is_url(&spec.repo) {
        let cache = match &spec.cache_dir {
            Some(d) => d.clone(),
            None => default_cache_dir(),
        };
        let (repo, _) = fetch(&spec.repo, &cache, &spec.credentials)?;
        (repo, String::new(), spec.repo.clone())
    } else {
        let (repo, dir) = open_local(&spec.repo)?;
        (repo, dir, spec.repo.clone())
    };
    let (commit, tree) = resolve(&repo, &origin, &dir, spec.rev.as_deref())?;
    if spec.trust.is_set() {
        verify::check(&repo, commit, &spec.trust).map_err(|source| SourceError::Untrusted {
            commit: commit.to_string(),
            origin: origin.clone(),
            source,
        })?;
    }
    let uncommitted = uncommitted(&repo, &dir).map_err(|source| SourceError::Git {
        origin: origin.clone(),
        source,
    })?;
    Ok(Snapshot {
        repo,
        origin,
        commit,
        dir,
        tree,
        uncommitted,
    })
}

/// The commit `rev` names (default HEAD) and the id of the tree of `dir` in it.
fn resolve(
    repo: &Repository,
    origin: &str,
    dir: &str,
    rev: Option<&str>,
) -> Result<(Oid, Oid), SourceError> {
    let git = |source| SourceError::Git {
        origin: origin.into(),
        source,
    };
    let commit = match rev {
        Some(rev) if rev != "HEAD" => {
            let id = revision(repo, origin, rev)?;
            repo.find_commit(id).map_err(git)?
        }
        _ => match repo.head() {
            Ok(head) => head.peel_to_commit().map_err(git)?,
            Err(e)
                if matches!(
                    e.code(),
                    git2::ErrorCode::UnbornBranch | git2::ErrorCode::NotFound
                ) =>
            {
                return Err(SourceError::NoCommits {
                    origin: origin.into(),
                })
            }
            Err(e) => return Err(git(e)),
        },
    };
    let root = commit.tree().map_err(git)?;
    if dir.is_empty() {
        return Ok((commit.id(), root.id()));
    }
    match root.get_path(Path::new(dir)) {
        Ok(entry) if entry.kind() == Some(ObjectType::Tree) => Ok((commit.id(), entry.id())),
        _ => Err(SourceError::NoSuchDirectory {
            dir: dir.into(),
            commit: commit.id().to_string(),
            origin: origin.into(),
        }),
    }
}

/// The commit `rev` names, by these rules (no other revision syntax, so that a name means one
/// thing whatever else the repository holds):
///
/// - `refs/heads/NAME`, `refs/tags/NAME` or `refs/remotes/REMOTE/NAME`, spelled out: that branch,
///   tag or remote-tracking branch (a local clone's `origin/main` is `refs/remotes/origin/main`);
/// - `tags/NAME`: the tag `NAME` (an annotated tag is peeled to its commit);
/// - `NAME`: the branch `NAME` (for a URL, the remote's branch as fetched into the cache, whose
///   mirror keeps it at `refs/heads/NAME`); a tag of the same name is never taken for it;
/// - 40 hexadecimal digits: that commit, when the repository has it.
///
/// Abbreviated commit ids and expressions such as `HEAD~1` are refused: an abbreviation can
/// become ambiguous, or name another commit, as the repository grows. `HEAD` is handled by the
/// caller.
fn revision(repo: &Repository, origin: &str, rev: &str) -> Result<Oid, SourceError> {
    let unknown = |tried: String| SourceError::UnknownRevision {
        rev: rev.into(),
        origin: origin.into(),
        tried,
    };
    let peel = |name: &str| -> Option<Oid> {
        let reference = repo.find_reference(name).ok()?;
        reference.peel_to_commit().ok().map(|c| c.id())
    };
    let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(rest) = rev.strip_prefix("refs/") {
        let kind = if rest.starts_with("heads/") {
            "branch"
        } else if rest.starts_with("tags/") {
            "tag"
        } else if rest.starts_with("remotes/") {
            "remote-tracking branch"
        } else {
            return Err(unknown(
                "only refs/heads/, refs/tags/ and refs/remotes/ names are spelled out this way"
                    .into(),
            ));
        };
        return peel(rev).ok_or_else(|| unknown(format!("no {kind} {rev}")));
    }
    if let Some(tag) = rev.strip_prefix("tags/") {
        let name = format!("refs/tags/{tag}");
        return peel(&name).ok_or_else(|| unknown(format!("no tag {name}")));
    }
    let branch = format!("refs/heads/{rev}");
    if let Some(id) = peel(&branch) {
        return Ok(id);
    }
    if rev.len() == 40 && is_hex(rev) {
        let id = Oid::from_str(rev).map_err(|e| unknown(e.to_string()))?;
        return match repo.find_commit(id) {
            Ok(c) => Ok(c.id()),
            Err(_) => Err(unknown(format!("no branch {branch} and no commit {rev}"))),
        };
    }
    let mut tried = format!("no branch {branch}, and it is not a full 40-digit commit id");
    if peel(&format!("refs/tags/{rev}")).is_some() {
        tried.push_str(&format!(
            "; there is a tag {rev:?}: name it --rev tags/{rev}"
        ));
    } else if peel(&format!("refs/remotes/{rev}")).is_some() {
        tried.push_str(&format!(
            "; there is a remote-tracking branch {rev:?}: name it --rev refs/remotes/{rev}"
        ));
    } else if (4..40).contains(&rev.len()) && is_hex(rev) {
        tried.push_str("; abbreviated commit ids are not accepted: give all 40 digits");
    } else if rev.contains(['~', '^', '@', ':']) {
        tried.push_str(
            "; revision expressions are not accepted: give a branch, tags/NAME or a commit id",
        );
    }
    Err(unknown(tried))
}

fn open_local(path: &str) -> Result<(Repository, String), SourceError> {
    let abs =
        std::fs::canonicalize(path).map_err(|_| SourceError::NotFound { path: path.into() })?;
    if !abs.is_dir() {
        return Err(SourceError::NotFound { path: path.into() });
    }
    let repo = Repository::discover(&abs)
        .map_err(|_| SourceError::NotARepository { path: path.into() })?;
    let dir = match repo.workdir() {
        None => String::new(),
        Some(workdir) => {
            let workdir = std::fs::canonicalize(workdir).unwrap_or_else(|_| workdir.to_path_buf());
            let rel = abs
                .strip_prefix(&workdir)
                .map_err(|_| SourceError::OutsideWorkTree {
                    path: path.into(),
                    repo: workdir.display().to_string(),
                })?;
            rel.to_string_lossy().into_owned()
        }
    };
    Ok((repo, dir))
}

fn uncommitted(repo: &Repository, dir: &str) -> Result<Vec<String>, git2::Error> {
    if repo.is_bare() {
        return Ok(Vec::new());
    }
    let mut opts = StatusOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_ignored(false);
    if !dir.is_empty() {
        opts.pathspec(format!("{dir}/"));
    }
    let statuses = repo.statuses(Some(&mut opts))?;
    Ok(statuses
        .iter()
        .filter_map(|s| {
            let code = match s.status() {
                st if st.contains(Status::WT_NEW) && !st.intersects(Status::INDEX_NEW) => "??",
                st if st.intersects(Status::INDEX_NEW | Status::WT_NEW) => "A",
                st if st.intersects(Status::INDEX_DELETED | Status::WT_DELETED) => "D",
                st if st.intersects(Status::INDEX_RENAMED | Status::WT_RENAMED) => "R",
                st if st.is_empty() || st.contains(Status::IGNORED) => return None,
                _ => "M",
            };
            Some(format!("{code} {}", s.path().unwrap_or("(non-UTF-8 path)")))
        })
        .collect())
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("kube-free").join("repos")
}

/// Directory in the cache for `url`: readable, and unique per URL.
pub fn cache_entry(cache: &Path, url: &str) -> PathBuf {
    // FNV-1a: stable across Rust releases, unlike std's hasher.
    let hash = url.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let tail = url.trim_end_matches('/').trim_end_matches(".git");
    let name: String = tail
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("repo")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    cache.join(format!("{name}-{hash:016x}"))
}

/// Clones or updates a bare mirror of `url`'s branches and tags in the cache, with HEAD at the remote's
/// default branch; also returns how many objects were received (none when nothing changed: the
/// negotiation finds every wanted commit already in the cache).
///
/// A failed fetch leaves the cache as it was: libgit2 writes a pack under a temporary name and
/// moves refs only once the pack is complete, so the next fetch starts from what is there. Fetches
/// into one entry take turns (an `flock` on `<entry>.flock`), so any `*.lock` file in the entry
/// when a fetch starts was left by a process killed while updating a ref: it is removed.
fn fetch(
    url: &str,
    cache: &Path,
    credentials: &GitCredentials,
) -> Result<(Repository, usize), SourceError> {
    let path = cache_entry(cache, url);
    std::fs::create_dir_all(cache).map_err(|source| SourceError::Cache {
        path: cache.display().to_string(),
        source,
    })?;
    let err = |source| SourceError::Fetch {
        url: url.into(),
        cache: path.display().to_string(),
        source,
    };
    let session =
        credentials::Session::new(credentials, url).map_err(|source| SourceError::Credentials {
            url: url.into(),
            source,
        })?;
    let _turn = take_turn(cache, &path)?;
    remove_stale_locks(&path);
    let repo = match Repository::open_bare(&path) {
        Ok(r) => r,
        Err(_) => Repository::init_bare(&path).map_err(err)?,
    };
    let received = {
        let mut remote = repo.remote_anonymous(url).map_err(err)?;
        let mut opts = FetchOptions::new();
        opts.remote_callbacks(session.callbacks())
            .download_tags(AutotagOption::All);
        tracing::debug!(url, cache = %path.display(), "fetching desired-state repository");
        let fetched = remote.fetch(
            &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
            Some(&mut opts),
            None,
        );
        drop(opts);
        if let Err(e) = fetched {
            return Err(match session.into_failure() {
                Some(source) => SourceError::Credentials {
                    url: url.into(),
                    source,
                },
                None => err(e),
            });
        }
        let stats = remote.stats();
        let received = stats.received_objects();
        if received > 0 {
            tracing::info!(
                url,
                objects = received,
                bytes = stats.received_bytes(),
                "fetched desired-state repository"
            );
        }
        if let Ok(default) = remote.default_branch() {
            if let Ok(name) = default.as_str() {
                repo.set_head(name).map_err(err)?;
            }
        }
        received
    };
    Ok((repo, received))
}

/// Waits for, then holds until dropped, the exclusive `flock` of the cache entry `path`.
fn take_turn(cache: &Path, path: &Path) -> Result<std::fs::File, SourceError> {
    use std::os::unix::io::AsRawFd;
    let cache_err = |source| SourceError::Cache {
        path: cache.display().to_string(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("flock"))
        .map_err(cache_err)?;
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(cache_err(e));
        }
    }
}

/// Removes the `*.lock` files under `dir` (refs, HEAD, config, packed-refs) but not in `objects/`.
fn remove_stale_locks(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && entry.file_name() != "objects" {
            remove_stale_locks(&path);
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "lock") {
            tracing::warn!(file = %path.display(), "removing a lock file left by a killed fetch");
            let _ = std::fs::remove_file(&path);
        }
    }
}

impl Snapshot {
    fn tree(&self) -> Result<git2::Tree<'_>, FilesError> {
        self.repo
            .find_tree(self.tree)
            .map_err(|e| FilesError(e.to_string()))
    }

    /// The commit and its repository, for questions about its history (see [`History`]).
    pub fn history(&self) -> History {
        History {
            git_dir: self.repo.path().to_owned(),
            commit: self.commit,
        }
    }

    /// The commit id, shortened the way `git log --oneline` does.
    pub fn short_commit(&self) -> String {
        self.commit.to_string()[..12].to_owned()
    }

    /// `origin` with the directory, for messages.
    pub fn describe(&self) -> String {
        self.origin.clone()
    }

    /// The commit's subject line, author and time, as the watcher shows them.
    pub fn commit_info(&self) -> CommitInfo {
        let commit = self.repo.find_commit(self.commit).ok();
        CommitInfo {
            subject: commit
                .as_ref()
                .and_then(|c| c.summary().ok().flatten().map(str::to_owned))
                .unwrap_or_default(),
            author: commit
                .as_ref()
                .map(|c| c.author().to_string())
                .unwrap_or_default(),
            time: commit.as_ref().map_or(0, |c| c.time().seconds()),
        }
    }

    fn blob_entry(&self, path: &str) -> Result<Option<Oid>, FilesError> {
        let tree = self.tree()?;
        let entry = match tree.get_path(Path::new(path)) {
            Ok(e) => e,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(FilesError(e.to_string())),
        };
        // Regular and executable files only; symlinks and submodules are not files here.
        let is_file = entry.kind() == Some(ObjectType::Blob)
            && matches!(entry.filemode(), 0o100644 | 0o100755);
        Ok(is_file.then(|| entry.id()))
    }
}

impl Files for Snapshot {
    fn size(&self, path: &str) -> Result<Option<u64>, FilesError> {
        let Some(oid) = self.blob_entry(path)? else {
            return Ok(None);
        };
        let odb = self.repo.odb().map_err(|e| FilesError(e.to_string()))?;
        let (size, _) = odb
            .read_header(oid)
            .map_err(|e| FilesError(e.to_string()))?;
        Ok(Some(size as u64))
    }

    fn read(&self, path: &str) -> Result<Vec<u8>, FilesError> {
        let oid = self
            .blob_entry(path)?
            .ok_or_else(|| FilesError(format!("no file {path:?}")))?;
        let blob = self
            .repo
            .find_blob(oid)
            .map_err(|e| FilesError(e.to_string()))?;
        Ok(blob.content().to_vec())
    }

    fn list(&self, dir: &str) -> Result<Vec<String>, FilesError> {
        let tree = self.tree()?;
        let sub = match tree.get_path(Path::new(dir)) {
            Ok(e) if e.kind() == Some(ObjectType::Tree) => self
                .repo
                .find_tree(e.id())
                .map_err(|e| FilesError(e.to_string()))?,
            Ok(_) => return Ok(Vec::new()),
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(FilesError(e.to_string())),
        };
        Ok(sub
            .iter()
            .filter(|e| matches!(e.kind(), Some(ObjectType::Blob | ObjectType::Commit)))
            .filter_map(|e| e.name().ok().map(str::to_owned))
            .collect())
    }

    fn special(&self, path: &str) -> Result<Option<Special>, FilesError> {
        let tree = self.tree()?;
        let entry = match tree.get_path(Path::new(path)) {
            Ok(e) => e,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(FilesError(e.to_string())),
        };
        Ok(match (entry.kind(), entry.filemode()) {
            (Some(ObjectType::Blob), 0o120000) => Some(Special::Symlink),
            (Some(ObjectType::Commit), _) => Some(Special::Submodule),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_are_told_apart_like_git_does() {
        for url in [
            "file:///srv/repo.git",
            "ssh://git@host/repo",
            "https://host/repo.git",
            "git@host:org/repo.git",
        ] {
            assert!(is_url(url), "{url}");
        }
        for path in [
            ".",
            "examples/quickstart",
            "/srv/repo",
            "./a@b:c/../x",
            "dir/user@host:x",
        ] {
            assert!(!is_url(path), "{path}");
        }
    }

    #[test]
    fn cache_entries_are_readable_and_distinct() {
        let a = cache_entry(Path::new("/c"), "https://host/org/deploy.git");
        let b = cache_entry(Path::new("/c"), "ssh://git@other/org/deploy.git");
        assert!(a
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("deploy-"));
        assert_ne!(a, b);
        assert_eq!(
            a,
            cache_entry(Path::new("/c"), "https://host/org/deploy.git")
        );
    }

    /// A repository with one commit per message, made with git2 (no `git` needed).
    fn origin(dir: &Path, messages: &[&str]) -> Repository {
        let repo = Repository::init(dir).unwrap();
        let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
        for (n, message) in messages.iter().enumerate() {
            std::fs::write(dir.join("f"), format!("{n}")).unwrap();
            let mut index = repo.index().unwrap();
            index.add_path(Path::new("f")).unwrap();
            let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
            index.write().unwrap();
            let parent = repo.head().ok().map(|h| h.peel_to_commit().unwrap());
            let parents: Vec<&git2::Commit> = parent.iter().collect();
            repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
                .unwrap();
        }
        repo
    }

    #[test]
    fn fetching_an_unchanged_remote_receives_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let origin_dir = tmp.path().join("origin");
        std::fs::create_dir(&origin_dir).unwrap();
        let upstream = origin(&origin_dir, &["one", "two"]);
        let url = format!("file://{}", origin_dir.display());
        let cache = tmp.path().join("cache");
        let creds = GitCredentials::default();

        let (repo, received) = fetch(&url, &cache, &creds).unwrap();
        assert!(received >= 6, "first fetch received {received} objects");
        let head = upstream.head().unwrap().target().unwrap();
        assert_eq!(repo.head().unwrap().target(), Some(head));

        let (_, received) = fetch(&url, &cache, &creds).unwrap();
        assert_eq!(received, 0, "an unchanged remote is fetched again");

        drop(upstream);
        let upstream = origin(&origin_dir, &["three"]);
        let (repo, received) = fetch(&url, &cache, &creds).unwrap();
        assert!(
            (1..=3).contains(&received),
            "one new commit, tree and blob; got {received} objects"
        );
        assert_eq!(
            repo.head().unwrap().target(),
            upstream.head().unwrap().target()
        );
    }

    #[test]
    fn a_fetch_killed_half_way_does_not_lock_the_cache_for_good() {
        let tmp = tempfile::tempdir().unwrap();
        let origin_dir = tmp.path().join("origin");
        std::fs::create_dir(&origin_dir).unwrap();
        let upstream = origin(&origin_dir, &["one"]);
        let url = format!("file://{}", origin_dir.display());
        let cache = tmp.path().join("cache");
        let creds = GitCredentials::default();
        fetch(&url, &cache, &creds).unwrap();

        // What a process killed while updating refs leaves behind.
        let entry = cache_entry(&cache, &url);
        let branch = upstream.head().unwrap().name().unwrap().to_owned();
        let ref_lock = entry.join(format!("{branch}.lock"));
        std::fs::write(&ref_lock, "").unwrap();
        std::fs::write(entry.join("HEAD.lock"), "").unwrap();
        drop(upstream);
        let upstream = origin(&origin_dir, &["two"]);
        let (repo, _) = fetch(&url, &cache, &creds).expect("fetch after a killed one");
        assert_eq!(
            repo.find_reference(&branch).unwrap().target(),
            upstream.head().unwrap().target()
        );
        assert!(!ref_lock.exists());
    }
}
