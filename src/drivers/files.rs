//! Commands on files of a host, for every driver: read (nothing when absent), write atomically (temp
//! file beside it, fsync, rename), write only if unchanged since read (compare-and-swap under a
//! lock), append a line under the same lock, remove, and the end of a log (followed or not, or its
//! last bytes). Pure functions returning [`Cmd`].

use super::Cmd;
use crate::state::Revision;

/// Prints a file; prints nothing (and succeeds) when there is no such file.
pub fn read_file_cmd(path: &str) -> Cmd {
    Cmd::read([
        "sh",
        "-c",
        r#"test ! -e "$1" || cat -- "$1""#,
        "kube-free-read",
        path,
    ])
}

/// Writes a file of kube-free's own atomically: a temp file beside it, fsync, rename. Only its
/// owner may read it (0600).
pub fn write_file_cmd(path: &str, content: &[u8]) -> Cmd {
    write_cmd(path, content, "600", "")
}

/// Writes a record in a directory of its own kind (an app's instances, an environment's
/// rollouts) as [`write_file_cmd`] does, and makes that directory its owner's only (0700).
pub fn write_record_cmd(path: &str, content: &[u8]) -> Cmd {
    write_cmd(path, content, "600", r#"chmod 700 "$d"; "#)
}

/// What [`swap_record_cmd`] printed: whether it wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swap {
    /// The file still had the revision expected, and now holds the new content.
    Written,
    /// The file changed since it was read (another writer came first): nothing was written.
    Changed,
}

/// Writes a record as [`write_record_cmd`] does, but only if it still has the revision `expected`
/// (the SHA-256 digest of the bytes read, or `absent`: no file, or an empty one): the content is
/// first copied to a temp file, then, under `flock` on `mutex` (the lease's, so that every
/// read-check-write on that host is serialized), the digest is compared and the temp file renamed
/// over the record, or removed. Prints `written` or `changed` ([`parse_swap`]).
pub fn swap_record_cmd(path: &str, mutex: &str, expected: &Revision, content: &[u8]) -> Cmd {
    let script = r#"set -e; d=$(dirname "$1"); mkdir -p "$d"; chmod 700 "$d"; tmp=$(mktemp "$1.XXXXXX"); cat >"$tmp"; chmod 600 "$tmp"; sync "$tmp"; exec 9>>"$2"; flock -w 10 9; now=absent; if [ -s "$1" ]; then now=$(sha256sum <"$1"); now=${now%% *}; fi; if [ "$now" != "$3" ]; then rm -f "$tmp"; echo changed; exit 0; fi; mv -f "$tmp" "$1"; echo written"#;
    Cmd::change([
        "sh",
        "-c",
        script,
        "kube-free-swap",
        path,
        mutex,
        expected.as_arg(),
    ])
    .with_stdin(content)
}

/// What [`swap_record_cmd`] said; `None` for anything else.
pub fn parse_swap(stdout: &str) -> Option<Swap> {
    match stdout.trim() {
        "written" => Some(Swap::Written),
        "changed" => Some(Swap::Changed),
        _ => None,
    }
}

/// Appends `line` (one line, without its newline) to the file at `path`, under `flock` on `mutex`
/// (the lease's, as [`swap_record_cmd`] takes it), so that lines of two writers never mix: the
/// line is read from stdin whole into a temp file first, then, holding the lock, a last line left
/// unended (by a writer killed in its write) is ended, and the line appended. A new file is its
/// owner's only (0600), and so is an old one after the append.
pub fn append_line_cmd(path: &str, mutex: &str, line: &[u8]) -> Cmd {
    let script = r#"set -e; umask 077; mkdir -p "$(dirname "$1")"; tmp=$(mktemp "$1.XXXXXX"); trap 'rm -f "$tmp"' EXIT; cat >"$tmp"; exec 9>>"$2"; flock -w 10 9; if [ -s "$1" ] && [ -n "$(tail -c 1 "$1")" ]; then echo >>"$1"; fi; cat "$tmp" >>"$1"; chmod 600 "$1""#;
    let mut content = line.to_vec();
    content.push(b'\n');
    Cmd::change(["sh", "-c", script, "kube-free-append", path, mutex]).with_stdin(content)
}

/// The last `bytes` bytes of a file (the whole file when shorter); prints nothing (and succeeds)
/// when there is no such file.
pub fn tail_bytes_cmd(path: &str, bytes: usize) -> Cmd {
    Cmd::read([
        "sh".to_owned(),
        "-c".to_owned(),
        r#"test ! -e "$1" || tail -c "$2" -- "$1""#.to_owned(),
        "kube-free-read".to_owned(),
        path.to_owned(),
        bytes.to_string(),
    ])
}

/// Writes a file that a server running as another user reads (a balancer's configuration or
/// weights) atomically, readable by all (0644).
pub fn write_readable_file_cmd(path: &str, content: &[u8]) -> Cmd {
    write_cmd(path, content, "644", "")
}

fn write_cmd(path: &str, content: &[u8], mode: &str, dir: &str) -> Cmd {
    let script = format!(
        r#"set -e; d=$(dirname "$1"); mkdir -p "$d"; {dir}tmp=$(mktemp "$1.XXXXXX"); cat >"$tmp"; chmod {mode} "$tmp"; sync "$tmp"; mv -f "$tmp" "$1""#
    );
    Cmd::change(["sh", "-c", &script, "kube-free-write", path]).with_stdin(content)
}

pub fn remove_cmd(path: &str) -> Cmd {
    Cmd::change(["rm", "-f", path])
}

/// The last `lines` lines of a file; with `follow`, then every line appended to it, also across a
/// rotation or before it exists (`-F`), until the command is ended.
pub fn tail_cmd(path: &str, lines: u32, follow: bool) -> Cmd {
    let mut argv = vec!["tail".to_owned(), "-n".to_owned(), lines.to_string()];
    if follow {
        argv.push("-F".to_owned());
    }
    argv.push(path.to_owned());
    Cmd::read(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_exact() {
        assert_eq!(
            read_file_cmd("/s/rollouts/prod/api.json").to_string(),
            r#"sh -c 'test ! -e "$1" || cat -- "$1"' kube-free-read /s/rollouts/prod/api.json"#
        );
        assert!(!read_file_cmd("/x").changes);
        assert_eq!(
            write_record_cmd("/s/x.json", b"{}").to_string(),
            r#"sh -c 'set -e; d=$(dirname "$1"); mkdir -p "$d"; chmod 700 "$d"; tmp=$(mktemp "$1.XXXXXX"); cat >"$tmp"; chmod 600 "$tmp"; sync "$tmp"; mv -f "$tmp" "$1"' kube-free-write /s/x.json"#
        );
        assert!(!write_file_cmd("/s/x", b"")
            .to_string()
            .contains("chmod 700"));
        assert!(write_readable_file_cmd("/s/x.cfg", b"")
            .to_string()
            .contains("chmod 644"));
        assert!(write_file_cmd("/x", b"").changes);
        let rev = Revision::of(Some(b"{}"));
        assert_eq!(
            swap_record_cmd("/s/r/a.json", "/s/lock.mutex", &rev, b"{ }").to_string(),
            format!(
                r#"sh -c 'set -e; d=$(dirname "$1"); mkdir -p "$d"; chmod 700 "$d"; tmp=$(mktemp "$1.XXXXXX"); cat >"$tmp"; chmod 600 "$tmp"; sync "$tmp"; exec 9>>"$2"; flock -w 10 9; now=absent; if [ -s "$1" ]; then now=$(sha256sum <"$1"); now=${{now%% *}}; fi; if [ "$now" != "$3" ]; then rm -f "$tmp"; echo changed; exit 0; fi; mv -f "$tmp" "$1"; echo written' kube-free-swap /s/r/a.json /s/lock.mutex {}"#,
                rev.as_arg()
            )
        );
        assert!(swap_record_cmd("/x", "/m", &Revision::default(), b"")
            .to_string()
            .ends_with(" /x /m absent"));
        assert!(swap_record_cmd("/x", "/m", &rev, b"").changes);
        assert_eq!(parse_swap("written\n"), Some(Swap::Written));
        assert_eq!(parse_swap("changed"), Some(Swap::Changed));
        assert_eq!(parse_swap(""), None);
        assert_eq!(remove_cmd("/s/x").to_string(), "rm -f /s/x");
        assert_eq!(
            tail_cmd("/s/a.log", 20, false).to_string(),
            "tail -n 20 /s/a.log"
        );
        assert_eq!(
            tail_cmd("/s/a.log", 0, true).to_string(),
            "tail -n 0 -F /s/a.log"
        );
        assert!(!tail_cmd("/x", 1, true).changes);
        let append = append_line_cmd("/s/audit.log", "/s/lock.mutex", br#"{"a":1}"#);
        assert_eq!(
            append.to_string(),
            r#"sh -c 'set -e; umask 077; mkdir -p "$(dirname "$1")"; tmp=$(mktemp "$1.XXXXXX"); trap '\''rm -f "$tmp"'\'' EXIT; cat >"$tmp"; exec 9>>"$2"; flock -w 10 9; if [ -s "$1" ] && [ -n "$(tail -c 1 "$1")" ]; then echo >>"$1"; fi; cat "$tmp" >>"$1"; chmod 600 "$1"' kube-free-append /s/audit.log /s/lock.mutex"#
        );
        assert_eq!(append.stdin.as_deref(), Some(&b"{\"a\":1}\n"[..]));
        assert!(append.changes);
        assert_eq!(
            tail_bytes_cmd("/s/audit.log", 4096).to_string(),
            r#"sh -c 'test ! -e "$1" || tail -c "$2" -- "$1"' kube-free-read /s/audit.log 4096"#
        );
        assert!(!tail_bytes_cmd("/x", 1).changes);
    }

    /// Runs `cmd` on this machine's `sh`, its stdin given; panics unless it succeeds.
    fn sh(cmd: &Cmd) -> Vec<u8> {
        let mut child = std::process::Command::new(&cmd.argv[0])
            .args(&cmd.argv[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        let stdin = cmd.stdin.clone().unwrap_or_default();
        child.stdin.take().unwrap().write_all(&stdin).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
        out.stdout
    }

    /// Appends on this machine's `sh`: whole lines from writers at once, a line a killed writer
    /// left unended is ended first, the file is 0600, no temp file stays, and the last bytes read
    /// back are the file's end.
    #[test]
    fn appends_are_whole_lines_under_the_lock() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/audit.log");
        let (path, mutex) = (
            path.to_str().unwrap().to_owned(),
            dir.path()
                .join("state/lock.mutex")
                .to_str()
                .unwrap()
                .to_owned(),
        );
        assert_eq!(sh(&tail_bytes_cmd(&path, 100)), b"");
        let long = "x".repeat(20_000);
        std::thread::scope(|s| {
            for i in 0..8 {
                let (path, mutex, long) = (&path, &mutex, &long);
                s.spawn(move || {
                    for j in 0..5 {
                        let line = format!("{i}-{j} {long}");
                        sh(&append_line_cmd(path, mutex, line.as_bytes()));
                    }
                });
            }
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 40);
        assert!(lines
            .iter()
            .all(|l| l.ends_with(&long) && l.len() < long.len() + 5));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A writer killed half way left a line without its end.
        std::fs::write(&path, "{\"torn").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        sh(&append_line_cmd(&path, &mutex, b"next"));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"torn\nnext\n");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(sh(&tail_bytes_cmd(&path, 5)), b"next\n");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(left, ["audit.log", "lock.mutex"]);
    }

    /// The swap on this machine's `sh`: written while the file is as read, refused once it
    /// changed, and the digest the shell computes is the one [`Revision::of`] computes.
    #[test]
    fn a_swap_writes_only_what_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rollouts/prod/api.json");
        let (path, mutex) = (
            path.to_str().unwrap().to_owned(),
            dir.path().join("lock.mutex").to_str().unwrap().to_owned(),
        );
        let run = |expected: &Revision, content: &[u8]| {
            let cmd = swap_record_cmd(&path, &mutex, expected, content);
            let mut child = std::process::Command::new(&cmd.argv[0])
                .args(&cmd.argv[1..])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child.stdin.take().unwrap().write_all(content).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{out:?}");
            parse_swap(&String::from_utf8_lossy(&out.stdout)).unwrap()
        };
        let none = Revision::default();
        assert_eq!(run(&none, b"one"), Swap::Written);
        // A writer that read no file comes second: refused, the first write stays.
        assert_eq!(run(&none, b"two"), Swap::Changed);
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        let one = Revision::of(Some(b"one"));
        assert_eq!(run(&one, b"three"), Swap::Written);
        assert_eq!(run(&one, b"four"), Swap::Changed);
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        // No temp file is left behind, refused or not.
        let left: Vec<_> = std::fs::read_dir(std::path::Path::new(&path).parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("api.json")]);
    }
}
