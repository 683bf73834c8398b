//! Commands on files of a host, for every driver: read (nothing when absent), write atomically (temp
//! file beside it, fsync, rename), remove, and the end of a log (followed or not). Pure functions returning [`Cmd`].

use super::Cmd;

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
    }
}
