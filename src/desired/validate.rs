//! Validation: from raw types (plus the positioned YAML, for locations and for keys that take several
//! shapes) to the model. Checks names, versions, durations, references between sections, ports and
//! strategies, and reports every problem at the file, line, column and YAML path it comes from.
//!
//! Input values never overflow what is computed from them: every duration is at most
//! [`MAX_DURATION`] (so the deadlines later stages add up from a few of them, and the instants they
//! set, stay far from any overflow), and products of input values are computed with checked
//! arithmetic and reported when too large. No string with a control character other than a tab
//! reaches a command line, an instance's environment or a file name.

use super::diag::{Diagnostic, Diagnostics, Mark, Seg, YamlPath};
use super::duration;
use super::model::*;
use super::raw::*;
use super::template::{is_control, parse_command, split_words, Placeholder, Template};
use super::yaml::{Kind, Node, Scalar};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;
use std::time::Duration;

static NAME: LazyLock<regex_lite::Regex> =
    LazyLock::new(|| regex_lite::Regex::new(NAME_PATTERN).unwrap());
static VERSION: LazyLock<regex_lite::Regex> =
    LazyLock::new(|| regex_lite::Regex::new(VERSION_PATTERN).unwrap());
static ENV_VAR: LazyLock<regex_lite::Regex> =
    LazyLock::new(|| regex_lite::Regex::new("^[A-Za-z_][A-Za-z0-9_]*$").unwrap());
static USER: LazyLock<regex_lite::Regex> =
    LazyLock::new(|| regex_lite::Regex::new("^[a-z_][a-z0-9_-]{0,31}$").unwrap());
static HOSTNAME: LazyLock<regex_lite::Regex> = LazyLock::new(|| {
    regex_lite::Regex::new(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
        .unwrap()
});
static ABS_PATH: LazyLock<regex_lite::Regex> =
    LazyLock::new(|| regex_lite::Regex::new(r"^/[A-Za-z0-9._/+@-]*$").unwrap());
static URL_PATH: LazyLock<regex_lite::Regex> =
    LazyLock::new(|| regex_lite::Regex::new(r"^/[A-Za-z0-9._~!&()*+,;=:@%/?-]*$").unwrap());

/// Directories under a host's `state_dir` that hold kube-free's own files, not environments.
const RESERVED_DIRS: [&str; 2] = ["rollouts", "haproxy"];

/// Longest duration the desired state may give anything: 8760h (365 days).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration as the desired state may give it: parsed, and at most [`MAX_DURATION`].
fn bounded_duration(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text)?;
    if d > MAX_DURATION {
        return Err(format!(
            "duration {text:?} is longer than the limit of {} (365 days)",
            duration::format(MAX_DURATION)
        ));
    }
    Ok(d)
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/kube-free";
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/haproxy/admin.sock";
pub const DEFAULT_CONFIG_FILE: &str = "/etc/haproxy/kube-free.cfg";
pub const DEFAULT_RELOAD_COMMAND: &str = "systemctl reload haproxy";
pub const DEFAULT_NGINX_ADMIN_SOCKET: &str = "/run/kube-free/nginx-admin.sock";
pub const DEFAULT_NGINX_CONFIG_FILE: &str = "/etc/nginx/conf.d/kube-free.conf";
pub const DEFAULT_NGINX_RELOAD_COMMAND: &str = "systemctl reload nginx";
pub const DEFAULT_NGINX_TEST_COMMAND: &str = "nginx -t";

/// One parsed file: its path in the desired-state directory and its YAML tree.
pub struct FileDoc {
    pub file: String,
    pub root: Node,
}

/// An environment to validate, with the file it comes from and where in that file its body is.
pub struct EnvSource<'a> {
    pub name: String,
    pub raw: &'a RawEnvironment,
    pub doc: &'a FileDoc,
    pub base: YamlPath,
}

/// Where problems are reported: one file, below one path in it.
#[derive(Clone, Copy)]
struct At<'a> {
    doc: &'a FileDoc,
}

struct Checker<'d> {
    diags: &'d mut Diagnostics,
}

impl Checker<'_> {
    fn push(&mut self, at: At, mark: Mark, path: &YamlPath, message: String) {
        self.diags.push(Diagnostic {
            file: at.doc.file.clone(),
            line: mark.line,
            column: mark.column,
            path: path.clone(),
            message,
        });
    }

    /// A problem with the value at `path` (or, when the key is missing, with the mapping that lacks it).
    fn value(&mut self, at: At, path: &YamlPath, message: String) {
        let mark = at.doc.root.mark_for(path);
        self.push(at, mark, path, message);
    }

    /// A problem with the key that ends `path` (its name).
    fn key(&mut self, at: At, path: &YamlPath, message: String) {
        let mark = at.doc.root.key_mark(path);
        self.push(at, mark, path, message);
    }

    /// Reports a missing required key at the key of the mapping that lacks it.
    fn required<'v, T>(&mut self, at: At, path: &YamlPath, value: &'v Option<T>) -> Option<&'v T> {
        if value.is_none() {
            if let Some((Seg::Key(key), parent)) = path.0.split_last() {
                let parent = YamlPath(parent.to_vec());
                let mark = if parent.0.is_empty() {
                    at.doc.root.mark
                } else {
                    at.doc.root.key_mark(&parent)
                };
                self.push(at, mark, path, format!("missing required key `{key}`"));
            }
        }
        value.as_ref()
    }

    fn name(&mut self, at: At, path: &YamlPath, what: &str, name: &str) -> bool {
        let ok = NAME.is_match(name);
        if !ok {
            self.key(
                at,
                path,
                format!(
                    "invalid {what} name {name:?} (lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters)"
                ),
            );
        }
        ok
    }

    fn duration(
        &mut self,
        at: At,
        path: &YamlPath,
        value: &Option<String>,
        default: Duration,
    ) -> Duration {
        match value {
            None => default,
            Some(text) => bounded_duration(text).unwrap_or_else(|e| {
                self.value(at, path, e);
                default
            }),
        }
    }

    fn abs_path(
        &mut self,
        at: At,
        path: &YamlPath,
        value: &Option<String>,
        default: &str,
    ) -> String {
        match value {
            None => default.to_owned(),
            Some(p) if ABS_PATH.is_match(p) && !p.split('/').any(|s| s == "..") => p.clone(),
            Some(p) => {
                self.value(
                    at,
                    path,
                    format!("invalid path {p:?} (an absolute path of letters, digits and ._/+@-, without ..)"),
                );
                default.to_owned()
            }
        }
    }

    /// Whether `name`, written as the value at `path`, is one of `known`; reported there if not.
    fn reference(
        &mut self,
        at: At,
        path: &YamlPath,
        what: &str,
        name: &str,
        known: &BTreeSet<&String>,
    ) -> bool {
        let unknown = unknown_name(what, name, known);
        if let Some(message) = &unknown {
            self.value(at, path, message.clone());
        }
        unknown.is_none()
    }

    /// Whether `name`, written as the key that ends `path`, is one of `known`; reported at the key
    /// if not (not at its value, which may start on the next line).
    fn key_reference(
        &mut self,
        at: At,
        path: &YamlPath,
        what: &str,
        name: &str,
        known: &BTreeSet<&String>,
    ) -> bool {
        let unknown = unknown_name(what, name, known);
        if let Some(message) = &unknown {
            self.key(at, path, message.clone());
        }
        unknown.is_none()
    }
}

/// The problem with a reference to `name` when it is not one of `known`.
fn unknown_name(what: &str, name: &str, known: &BTreeSet<&String>) -> Option<String> {
    if known.contains(&name.to_owned()) {
        return None;
    }
    let listed = if known.is_empty() {
        format!("no {what}s are declared")
    } else {
        format!(
            "declared: {}",
            known
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Some(format!("unknown {what} {name:?} ({listed})"))
}

/// Validates the root file and the environments into the model. `exists` tells whether a file is in
/// the commit (for `ssh.known_hosts`). Returns `None` when any problem was found.
pub fn validate(
    root: &FileDoc,
    raw: &RawConfig,
    envs: &[EnvSource<'_>],
    exists: &dyn Fn(&str) -> bool,
    diags: &mut Diagnostics,
) -> Option<DesiredState> {
    let before = diags.len();
    let mut c = Checker { diags };
    let at = At { doc: root };
    let top = YamlPath::root();

    if let Some(v) = c.required(at, &top.key("version"), &raw.version) {
        if *v != 1 {
            c.value(
                at,
                &top.key("version"),
                format!("unsupported format version {v} (this kube-free reads version 1)"),
            );
        }
    }

    let hosts: BTreeMap<Name, Host> = raw
        .hosts
        .iter()
        .filter_map(|(name, h)| host(&mut c, at, &top.key("hosts").key(name), name, h))
        .map(|h| (h.name.clone(), h))
        .collect();
    let host_names: BTreeSet<&String> = raw.hosts.keys().collect();

    let ssh = raw.ssh.as_ref().map_or_else(SshSettings::default, |s| {
        let path = top.key("ssh");
        let known_hosts = s
            .known_hosts
            .as_deref()
            .map(|kh| kh.trim_start_matches("./").to_owned());
        if let Some(kh) = &known_hosts {
            let p = path.key("known_hosts");
            if let Some(ch) = kh.chars().find(|ch| is_control(*ch)) {
                c.value(
                    at,
                    &p,
                    format!("the path holds the control character {ch:?}"),
                );
            } else if kh.starts_with('/') || kh.split('/').any(|s| s == "..") {
                c.value(
                    at,
                    &p,
                    format!(
                        "{kh:?} must be a path inside the repository, relative to kube-free.yaml"
                    ),
                );
            } else if !exists(kh) {
                c.value(at, &p, format!("no file {kh:?} in the commit"));
            }
        }
        match s.identity_file.as_deref() {
            Some("") => c.value(at, &path.key("identity_file"), "must not be empty".into()),
            Some(f) => {
                if let Some(ch) = f.chars().find(|ch| is_control(*ch)) {
                    c.value(
                        at,
                        &path.key("identity_file"),
                        format!("the path holds the control character {ch:?}"),
                    );
                }
            }
            None => {}
        }
        SshSettings {
            known_hosts,
            identity_file: s.identity_file.clone(),
        }
    });

    let mut balancers = BTreeMap::new();
    for (name, b) in &raw.balancers {
        let path = top.key("balancers").key(name);
        c.name(at, &path, "balancer", name);
        c.required(at, &path.key("kind"), &b.kind);
        let host = c
            .required(at, &path.key("host"), &b.host)
            .cloned()
            .unwrap_or_default();
        if b.host.is_some() {
            c.reference(at, &path.key("host"), "host", &host, &host_names);
        }
        let kind = match b.kind {
            Some(RawBalancerKind::Nginx) => BalancerKind::Nginx,
            _ => BalancerKind::Haproxy,
        };
        let nginx = kind == BalancerKind::Nginx;
        let mode = match b.mode {
            Some(RawNginxMode::Reload) => NginxMode::Reload,
            _ => NginxMode::Dynamic,
        };
        let only = |c: &mut Checker, key: &str, set: bool, why: &str| {
            if set {
                c.value(at, &path.key(key), format!("`{key}` {why}"));
            }
        };
        only(
            &mut c,
            "mode",
            !nginx && b.mode.is_some(),
            "is only for `kind: nginx`",
        );
        only(
            &mut c,
            "test_command",
            !nginx && b.test_command.is_some(),
            "is only for `kind: nginx` (HAProxy's config is checked with `haproxy -c`)",
        );
        let dynamic = !nginx || mode == NginxMode::Dynamic;
        only(
            &mut c,
            "lua_module",
            b.lua_module.is_some() && !(nginx && dynamic),
            "is only for `kind: nginx` in `mode: dynamic`",
        );
        only(
            &mut c,
            "admin_socket",
            nginx && !dynamic && b.admin_socket.is_some(),
            "is not used in `mode: reload` (plain nginx has no runtime endpoint)",
        );
        let (admin_default, config_default, reload_default) = if nginx {
            (
                DEFAULT_NGINX_ADMIN_SOCKET,
                DEFAULT_NGINX_CONFIG_FILE,
                DEFAULT_NGINX_RELOAD_COMMAND,
            )
        } else {
            (
                DEFAULT_ADMIN_SOCKET,
                DEFAULT_CONFIG_FILE,
                DEFAULT_RELOAD_COMMAND,
            )
        };
        let mut words = |key: &str, value: Option<&str>, default: &str| {
            split_words(value.unwrap_or(default)).unwrap_or_else(|e| {
                c.value(at, &path.key(key), e);
                Vec::new()
            })
        };
        let reload_command = words(
            "reload_command",
            b.reload_command.as_deref(),
            reload_default,
        );
        let test_command = if nginx {
            words(
                "test_command",
                b.test_command.as_deref(),
                DEFAULT_NGINX_TEST_COMMAND,
            )
        } else {
            Vec::new()
        };
        let lua_module = b
            .lua_module
            .is_some()
            .then(|| c.abs_path(at, &path.key("lua_module"), &b.lua_module, ""));
        if nginx {
            if let Some(other) = balancers
                .values()
                .find(|o: &&Balancer| o.kind == BalancerKind::Nginx && o.host == host)
            {
                c.value(
                    at,
                    &path.key("host"),
                    format!(
                        "host {host:?} already has nginx balancer {:?}; one nginx serves every environment of a host through one balancer",
                        other.name
                    ),
                );
            }
        }
        balancers.insert(
            name.clone(),
            Balancer {
                name: name.clone(),
                kind,
                host,
                admin_socket: c.abs_path(
                    at,
                    &path.key("admin_socket"),
                    &b.admin_socket,
                    admin_default,
                ),
                config_file: c.abs_path(
                    at,
                    &path.key("config_file"),
                    &b.config_file,
                    config_default,
                ),
                reload_command,
                mode,
                test_command,
                lua_module,
            },
        );
    }

    let apps: BTreeMap<Name, App> = raw
        .apps
        .iter()
        .filter_map(|(name, a)| app(&mut c, at, &top.key("apps").key(name), name, a))
        .map(|a| (a.name.clone(), a))
        .collect();

    let mut environments = BTreeMap::new();
    for env in envs {
        if let Some(e) = environment(&mut c, env, &raw.apps, &raw.balancers, &host_names, &apps) {
            environments.insert(e.name.clone(), e);
        }
    }
    check_ports(&mut c, envs, &environments, &hosts, &balancers);
    check_nginx_addresses(&mut c, at, &top, &environments, &hosts, &balancers);
    check_local_app_hosts(&mut c, envs, &environments, &hosts, &balancers);
    check_container_names(&mut c, envs, &environments, &hosts, &apps);
    let notifications = notifications(&mut c, at, &top.key("notifications"), &raw.notifications);

    (c.diags.len() == before).then_some(DesiredState {
        hosts,
        ssh,
        balancers,
        apps,
        environments,
        notifications,
        prune: raw.prune.unwrap_or(false),
    })
}

/// Headers a notification target may not set: the transport's own and the signature's.
const RESERVED_HEADERS: [&str; 7] = [
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-kube-free-timestamp",
    "x-kube-free-signature",
];

static HEADER_NAME: LazyLock<regex_lite::Regex> =
    LazyLock::new(|| regex_lite::Regex::new(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$").unwrap());

fn notifications(
    c: &mut Checker,
    at: At,
    path: &YamlPath,
    raw: &[RawNotification],
) -> Vec<Notification> {
    let mut out: Vec<Notification> = Vec::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (i, n) in raw.iter().enumerate() {
        let np = path.index(i);
        let name = match &n.name {
            Some(name) => {
                if !NAME.is_match(name) {
                    c.value(
                        at,
                        &np.key("name"),
                        format!("invalid notification name {name:?} (lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters)"),
                    );
                }
                name.clone()
            }
            None => i.to_string(),
        };
        match names.get(&name) {
            Some(j) => {
                let p = if n.name.is_some() {
                    np.key("name")
                } else {
                    np.clone()
                };
                c.value(
                    at,
                    &p,
                    format!("notification name {name:?} is already used by notifications[{j}]; names must be unique"),
                );
            }
            None => {
                names.insert(name.clone(), i);
            }
        }
        let url = c
            .required(at, &np.key("url"), &n.url)
            .cloned()
            .unwrap_or_default();
        if n.url.is_some() {
            if let Err(e) = notification_url(&url) {
                c.value(at, &np.key("url"), e);
            }
        }
        let format = match n.format {
            None | Some(RawNotifyFormat::Json) => NotifyFormat::Json,
            Some(RawNotifyFormat::Slack) => NotifyFormat::Slack,
        };
        let events = match &n.events {
            None => EventKind::ALL.to_vec(),
            Some(list) => {
                if list.is_empty() {
                    c.value(
                        at,
                        &np.key("events"),
                        "an empty list sends nothing; list the events, or leave `events` out for all of them".into(),
                    );
                }
                let mut seen: Vec<EventKind> = Vec::new();
                for (j, e) in list.iter().enumerate() {
                    let kind = event_kind(e);
                    if seen.contains(&kind) {
                        c.value(
                            at,
                            &np.key("events").index(j),
                            format!("event `{kind}` is listed twice"),
                        );
                    } else {
                        seen.push(kind);
                    }
                }
                EventKind::ALL
                    .into_iter()
                    .filter(|k| seen.contains(k))
                    .collect()
            }
        };
        let header = n.header.as_ref().map(|h| {
            let hp = np.key("header");
            let name = c
                .required(at, &hp.key("name"), &h.name)
                .cloned()
                .unwrap_or_default();
            if h.name.is_some() {
                if !HEADER_NAME.is_match(&name) {
                    c.value(
                        at,
                        &hp.key("name"),
                        format!("invalid header name {name:?} (letters, digits and !#$%&'*+.^_`|~-, at most 64)"),
                    );
                } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                    c.value(
                        at,
                        &hp.key("name"),
                        format!("header {name:?} is set by kube-free itself; choose another"),
                    );
                }
            }
            c.required(at, &hp.key("value_file"), &h.value_file);
            NotifyHeader {
                name,
                value_file: opt_abs_path(c, at, &hp.key("value_file"), &h.value_file)
                    .unwrap_or_default(),
            }
        });
        let secret_file = opt_abs_path(c, at, &np.key("secret_file"), &n.secret_file);
        if secret_file.is_some() && format != NotifyFormat::Json {
            c.key(
                at,
                &np.key("secret_file"),
                "`secret_file` applies to `format: json` only (a Slack webhook is not signed)"
                    .into(),
            );
        }
        let ca_file = opt_abs_path(c, at, &np.key("ca_file"), &n.ca_file);
        if ca_file.is_some() && url.starts_with("http://") {
            c.key(
                at,
                &np.key("ca_file"),
                "`ca_file` applies to `https://` URLs only".into(),
            );
        }
        out.push(Notification {
            name,
            url,
            format,
            events,
            header,
            secret_file,
            ca_file,
        });
    }
    out
}

/// Checks a notification URL: parses, `http` or `https`, names a host, holds no credentials.
fn notification_url(text: &str) -> Result<(), String> {
    // The URL parser would drop line breaks and tabs silently; the text is what is sent.
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!("the URL holds the control character {c:?}"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("invalid URL {text:?} ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "unsupported URL scheme {:?} in {text:?} (http or https)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("URL {text:?} names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "URL {text:?} holds credentials; put them in a `header` whose value is read from a file"
        ));
    }
    Ok(())
}

fn event_kind(raw: &RawEventKind) -> EventKind {
    match raw {
        RawEventKind::Started => EventKind::Started,
        RawEventKind::Step => EventKind::Step,
        RawEventKind::Paused => EventKind::Paused,
        RawEventKind::Promoted => EventKind::Promoted,
        RawEventKind::Succeeded => EventKind::Succeeded,
        RawEventKind::Failed => EventKind::Failed,
        RawEventKind::Quarantined => EventKind::Quarantined,
        RawEventKind::DriftCorrected => EventKind::DriftCorrected,
        RawEventKind::SyncFailing => EventKind::SyncFailing,
        RawEventKind::Recovered => EventKind::Recovered,
    }
}

/// An optional absolute path (same rules as `state_dir`).
fn opt_abs_path(
    c: &mut Checker,
    at: At,
    path: &YamlPath,
    value: &Option<String>,
) -> Option<String> {
    let p = value.as_ref()?;
    if ABS_PATH.is_match(p) && !p.split('/').any(|s| s == "..") {
        Some(p.clone())
    } else {
        c.value(
            at,
            path,
            format!(
                "invalid path {p:?} (an absolute path of letters, digits and ._/+@-, without ..)"
            ),
        );
        None
    }
}

fn host(c: &mut Checker, at: At, path: &YamlPath, name: &str, h: &RawHost) -> Option<Host> {
    c.name(at, path, "host", name);
    let transport = match h.transport {
        Some(RawTransport::Local) => {
            for (key, given) in [
                ("address", h.address.is_some()),
                ("user", h.user.is_some()),
                ("port", h.port.is_some()),
            ] {
                if given {
                    c.key(
                        at,
                        &path.key(key),
                        format!("`{key}` does not apply to `transport: local`"),
                    );
                }
            }
            Transport::Local
        }
        None | Some(RawTransport::Ssh) => {
            let address = c
                .required(at, &path.key("address"), &h.address)
                .cloned()
                .unwrap_or_default();
            if h.address.is_some() && !valid_address(&address) {
                c.value(
                    at,
                    &path.key("address"),
                    format!("invalid address {address:?} (an IP address or a DNS name)"),
                );
            }
            let user = h.user.clone().unwrap_or_else(|| "root".into());
            if !USER.is_match(&user) {
                c.value(at, &path.key("user"), format!("invalid user name {user:?}"));
            }
            let port = h.port.unwrap_or(22);
            if port == 0 {
                c.value(
                    at,
                    &path.key("port"),
                    "port must be between 1 and 65535".into(),
                );
            }
            Transport::Ssh {
                address,
                user,
                port,
            }
        }
    };
    let state_dir = c.abs_path(at, &path.key("state_dir"), &h.state_dir, DEFAULT_STATE_DIR);
    Some(Host {
        name: name.to_owned(),
        transport,
        state_dir,
    })
}

fn valid_address(a: &str) -> bool {
    a.parse::<Ipv4Addr>().is_ok()
        || a.parse::<Ipv6Addr>().is_ok()
        || (a.len() <= 253 && HOSTNAME.is_match(a))
}

fn templates(c: &mut Checker, at: At, path: &YamlPath, line: &str) -> Vec<Template> {
    parse_command(line).unwrap_or_else(|e| {
        c.value(at, path, e);
        Vec::new()
    })
}

/// The value of environment variable `var` at `vp`: a text (a template), or `{ file: PATH }`.
fn env_value(c: &mut Checker, at: At, vp: &YamlPath, var: &str) -> Option<EnvValue> {
    let node = at.doc.root.at(vp)?;
    match &node.kind {
        Kind::Scalar(Scalar::Plain(s) | Scalar::Str(s)) if !node.is_null() => {
            if let Some(ch) = s.chars().find(|ch| is_control(*ch)) {
                // The value is not quoted: it may be a secret.
                c.value(
                    at,
                    vp,
                    format!("the value of {var} holds the control character {ch:?}, which cannot be passed to an instance (one line per variable; a tab is allowed)"),
                );
            }
            Template::parse(s)
                .map_err(|e| c.value(at, vp, e))
                .ok()
                .map(EnvValue::Text)
        }
        Kind::Map(entries) if entries.len() == 1 && entries[0].key == "file" => {
            let fp = vp.key("file");
            let file = match &entries[0].value.kind {
                Kind::Scalar(Scalar::Plain(s) | Scalar::Str(s)) => Some(s.clone()),
                _ => None,
            };
            let file = opt_abs_path(c, at, &fp, &file)?;
            let mark = at.doc.root.mark_for(&fp);
            Some(EnvValue::File {
                file,
                origin: Box::new(Diagnostic {
                    file: at.doc.file.clone(),
                    line: mark.line,
                    column: mark.column,
                    path: fp,
                    message: String::new(),
                }),
                value: None,
            })
        }
        _ => {
            c.value(
                at,
                vp,
                format!(
                    "invalid value of {var}: found {} (a text, or {{ file: /absolute/path }} for a secret read from a file on the machine that runs kube-free)",
                    node.describe()
                ),
            );
            None
        }
    }
}

fn app(c: &mut Checker, at: At, path: &YamlPath, name: &str, a: &RawApp) -> Option<App> {
    c.name(at, path, "app", name);
    let runtime = c.required(at, &path.key("runtime"), &a.runtime).map(|r| {
        let rp = path.key("runtime");
        let mut env = BTreeMap::new();
        for var in r.env.keys() {
            let vp = rp.key("env").key(var);
            if !ENV_VAR.is_match(var) {
                c.key(
                    at,
                    &vp,
                    format!("invalid environment variable name {var:?}"),
                );
            } else if var.starts_with("KUBE_FREE_") {
                c.key(
                    at,
                    &vp,
                    format!("{var}: names that start with KUBE_FREE_ are kube-free's own (it sets KUBE_FREE_ENV, _APP, _SLOT and _VERSION)"),
                );
            }
            if let Some(value) = env_value(c, at, &vp, var) {
                env.insert(var.clone(), value);
            }
        }
        match c.required(at, &rp.key("kind"), &r.kind) {
            None | Some(RawRuntimeKind::Process) => {
                for (key, set) in [
                    ("image", r.image.is_some()),
                    ("cli", r.cli.is_some()),
                    ("network", r.network.is_some()),
                    ("bind", r.bind.is_some()),
                    ("pull", r.pull.is_some()),
                ] {
                    if set {
                        c.key(
                            at,
                            &rp.key(key),
                            format!("`{key}` applies to `kind: docker` only"),
                        );
                    }
                }
                let command = match c.required(at, &rp.key("command"), &r.command) {
                    Some(line) => templates(c, at, &rp.key("command"), line),
                    None => Vec::new(),
                };
                Runtime::Process { command, env }
            }
            Some(RawRuntimeKind::Docker) => {
                let image = c.required(at, &rp.key("image"), &r.image).map(|i| {
                    let ip = rp.key("image");
                    match Template::parse(i) {
                        Ok(t)
                            if i.trim().is_empty()
                                || i.contains(|ch: char| ch.is_whitespace() || ch.is_control()) =>
                        {
                            c.value(at, &ip, format!("invalid image reference {i:?}"));
                            t
                        }
                        Ok(t) => {
                            for p in [Placeholder::Port, Placeholder::Slot] {
                                if t.uses(p) {
                                    c.value(at, &ip, format!("the image cannot use {{{}}}: one image serves both slots (placeholders here: {{version}}, {{app}}, {{env}}, {{host}})", p.name()));
                                }
                            }
                            t
                        }
                        Err(e) => {
                            c.value(at, &ip, e);
                            Template { parts: Vec::new() }
                        }
                    }
                });
                let command = r
                    .command
                    .as_ref()
                    .map(|line| templates(c, at, &rp.key("command"), line));
                let network = match r.network {
                    Some(RawContainerNetwork::Host) => ContainerNetwork::Host,
                    _ => ContainerNetwork::Bridge,
                };
                let bind = r.bind.as_ref().and_then(|b| {
                    let bp = rp.key("bind");
                    if network == ContainerNetwork::Host {
                        c.value(at, &bp, "`bind` applies to `network: bridge` only (with `network: host` the app chooses its own address)".into());
                    }
                    b.parse::<std::net::IpAddr>()
                        .map_err(|_| {
                            c.value(at, &bp, format!("invalid bind address {b:?} (an IPv4 or IPv6 address, no port)"))
                        })
                        .ok()
                });
                Runtime::Docker {
                    image: image.unwrap_or(Template { parts: Vec::new() }),
                    command,
                    env,
                    cli: match r.cli {
                        Some(RawContainerCli::Podman) => ContainerCli::Podman,
                        _ => ContainerCli::Docker,
                    },
                    network,
                    bind,
                    pull: match r.pull {
                        Some(RawPullPolicy::Always) => PullPolicy::Always,
                        _ => PullPolicy::Missing,
                    },
                }
            }
        }
    });
    let slots = slots(c, at, &path.key("slots"), &a.slots);
    let probe = {
        let pp = path.key("probe");
        let p = a.probe.as_ref();
        let get = |f: fn(&RawProbe) -> &Option<String>| p.and_then(|p| f(p).clone());
        let probe_path = get(|p| &p.path).unwrap_or_else(|| "/readyz".into());
        if !URL_PATH.is_match(&probe_path) {
            c.value(
                at,
                &pp.key("path"),
                format!("invalid probe path {probe_path:?} (must start with / and hold no spaces)"),
            );
        }
        // The product below is judged only from durations as written (not from defaults that
        // stand in for bad ones).
        let before = c.diags.len();
        let interval = c.duration(
            at,
            &pp.key("interval"),
            &get(|p| &p.interval),
            Duration::from_secs(1),
        );
        let timeout = c.duration(
            at,
            &pp.key("timeout"),
            &get(|p| &p.timeout),
            Duration::from_secs(2),
        );
        let deadline = c.duration(
            at,
            &pp.key("deadline"),
            &get(|p| &p.deadline),
            Duration::from_secs(60),
        );
        for (key, d) in [("interval", interval), ("timeout", timeout)] {
            if d.is_zero() {
                c.value(at, &pp.key(key), format!("{key} must be more than 0s"));
            }
        }
        let healthy_after = p.and_then(|p| p.healthy_after).unwrap_or(3);
        if healthy_after == 0 {
            c.value(
                at,
                &pp.key("healthy_after"),
                "healthy_after must be at least 1".into(),
            );
        }
        match interval.checked_mul(healthy_after) {
            _ if c.diags.len() != before => {}
            None => c.value(
                at,
                &pp.key("healthy_after"),
                format!(
                    "healthy_after × interval is too large ({} × {})",
                    healthy_after,
                    duration::format(interval)
                ),
            ),
            Some(least) if deadline < least => c.value(
                at,
                &pp.key("deadline"),
                format!(
                    "deadline {} is shorter than healthy_after × interval ({} × {}), so no instance could ever pass",
                    duration::format(deadline),
                    healthy_after,
                    duration::format(interval)
                ),
            ),
            Some(_) => {}
        }
        Probe {
            path: probe_path,
            interval,
            timeout,
            healthy_after,
            deadline,
        }
    };
    let drain = c.duration(at, &path.key("drain"), &a.drain, Duration::from_secs(10));
    let stop_timeout = c.duration(
        at,
        &path.key("stop_timeout"),
        &a.stop_timeout,
        Duration::from_secs(30),
    );
    let bake = c.duration(at, &path.key("bake"), &a.bake, Duration::from_secs(30));
    Some(App {
        name: name.to_owned(),
        runtime: runtime?,
        slots,
        probe,
        drain,
        stop_timeout,
        bake,
        prune: a.prune.unwrap_or(false),
    })
}

fn slots(c: &mut Checker, at: At, path: &YamlPath, raw: &BTreeMap<String, u16>) -> Vec<Slot> {
    let mut out: Vec<Slot> = Vec::new();
    for (name, port) in raw {
        let sp = path.key(name);
        c.name(at, &sp, "slot", name);
        if *port == 0 {
            c.value(at, &sp, "port must be between 1 and 65535".into());
        } else if let Some(other) = out.iter().find(|s| s.port == *port) {
            c.value(
                at,
                &sp,
                format!("port {port} is already used by slot {:?}", other.name),
            );
        }
        out.push(Slot {
            name: name.clone(),
            port: *port,
        });
    }
    if out.len() != 2 {
        c.value(
            at,
            path,
            format!(
                "exactly two slots are needed (one serving, one to start the next version in), found {}",
                out.len()
            ),
        );
    }
    out
}

fn environment(
    c: &mut Checker,
    src: &EnvSource,
    raw_apps: &BTreeMap<String, RawApp>,
    raw_balancers: &BTreeMap<String, RawBalancer>,
    host_names: &BTreeSet<&String>,
    apps: &BTreeMap<Name, App>,
) -> Option<Environment> {
    let at = At { doc: src.doc };
    let base = &src.base;
    let e = src.raw;
    if !NAME.is_match(&src.name) {
        if base.0.is_empty() {
            c.value(
                at,
                base,
                format!(
                    "invalid environment name {:?} taken from the file name (lowercase letters, digits and '-')",
                    src.name
                ),
            );
        } else {
            c.name(at, base, "environment", &src.name);
        }
    } else if RESERVED_DIRS.contains(&src.name.as_str()) {
        let message = format!(
            "environment name {:?} is reserved: kube-free keeps its own files under <state_dir>/{}/",
            src.name, src.name
        );
        if base.0.is_empty() {
            c.value(at, base, message);
        } else {
            c.key(at, base, message);
        }
    }
    let balancer_names: BTreeSet<&String> = raw_balancers.keys().collect();
    let balancer = c
        .required(at, &base.key("balancer"), &e.balancer)
        .cloned()
        .unwrap_or_default();
    if e.balancer.is_some() {
        c.reference(
            at,
            &base.key("balancer"),
            "balancer",
            &balancer,
            &balancer_names,
        );
    }
    let mut hosts: Vec<Name> = Vec::new();
    if let Some(list) = c.required(at, &base.key("hosts"), &e.hosts) {
        if list.is_empty() {
            c.value(
                at,
                &base.key("hosts"),
                "an environment needs at least one host".into(),
            );
        }
        for (i, h) in list.iter().enumerate() {
            let hp = base.key("hosts").index(i);
            if hosts.contains(h) {
                c.value(at, &hp, format!("host {h:?} is listed twice"));
            } else if c.reference(at, &hp, "host", h, host_names) {
                hosts.push(h.clone());
            }
        }
    }
    if e.apps.is_empty() {
        c.value(
            at,
            &base.key("apps"),
            "an environment needs at least one app".into(),
        );
    }
    let app_names: BTreeSet<&String> = raw_apps.keys().collect();
    let mut deployments = BTreeMap::new();
    for (name, d) in &e.apps {
        let dp = base.key("apps").key(name);
        if !c.key_reference(at, &dp, "app", name, &app_names) {
            continue;
        }
        let version = c
            .required(at, &dp.key("version"), &d.version)
            .cloned()
            .unwrap_or_default();
        if d.version.is_some() && !VERSION.is_match(&version) {
            c.value(
                at,
                &dp.key("version"),
                format!("invalid version {version:?} (letters, digits and ._+-, starting with a letter or digit, at most 128)"),
            );
        }
        let listen = c.required(at, &dp.key("listen"), &d.listen).and_then(|l| {
            parse_listen(l).or_else(|| {
                c.value(
                    at,
                    &dp.key("listen"),
                    format!("invalid listen address {l:?} (write ADDR:PORT, e.g. \"0.0.0.0:80\", \"*:80\" or \"[::]:80\")"),
                );
                None
            })
        });
        let strategy = strategy(c, at, &dp.key("strategy"), d.strategy.as_ref());
        let slots = match &d.slots {
            Some(s) => slots(c, at, &dp.key("slots"), s),
            None => apps.get(name).map(|a| a.slots.clone()).unwrap_or_default(),
        };
        deployments.insert(
            name.clone(),
            Deployment {
                app: name.clone(),
                version,
                listen: listen.unwrap_or(Listen {
                    address: String::new(),
                    port: 0,
                }),
                strategy,
                slots,
            },
        );
    }
    Some(Environment {
        name: src.name.clone(),
        file: src.doc.file.clone(),
        balancer,
        hosts,
        apps: deployments,
    })
}

fn parse_listen(text: &str) -> Option<Listen> {
    let (addr, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let address = match addr {
        "" | "*" => "*".to_owned(),
        a if a.starts_with('[') && a.ends_with(']') => {
            a[1..a.len() - 1].parse::<Ipv6Addr>().ok()?;
            a.to_owned()
        }
        a => {
            a.parse::<Ipv4Addr>().ok()?;
            a.to_owned()
        }
    };
    Some(Listen { address, port })
}

fn strategy(c: &mut Checker, at: At, path: &YamlPath, raw: Option<&RawStrategy>) -> Strategy {
    match raw {
        None | Some(RawStrategy::BlueGreenShort) => Strategy::BlueGreen { analysis: None },
        Some(RawStrategy::BlueGreen(b)) => Strategy::BlueGreen {
            analysis: b
                .analysis
                .as_ref()
                .map(|a| analysis(c, at, &path.key("blue_green").key("analysis"), a, false)),
        },
        Some(RawStrategy::Rolling(r)) => {
            let bp = path.key("rolling").key("batch");
            let batch = match (r.batch.as_ref(), at.doc.root.at(&bp)) {
                (Some(_), Some(node)) => batch(node).unwrap_or_else(|| {
                    c.value(
                        at,
                        &bp,
                        format!("invalid batch {} (a number of hosts such as 1, or a share such as \"25%\")", node.describe()),
                    );
                    Batch::Hosts(1)
                }),
                _ => Batch::Hosts(1),
            };
            Strategy::Rolling {
                batch,
                on_failure: match r.on_failure {
                    None | Some(RawOnFailure::Revert) => OnFailure::Revert,
                    Some(RawOnFailure::Hold) => OnFailure::Hold,
                },
                analysis: r
                    .analysis
                    .as_ref()
                    .map(|a| analysis(c, at, &path.key("rolling").key("analysis"), a, false)),
            }
        }
        Some(RawStrategy::Canary(k)) => {
            let cp = path.key("canary");
            let mut steps = Vec::new();
            if let Some(raw_steps) = c.required(at, &cp.key("steps"), &k.steps) {
                if raw_steps.is_empty() {
                    c.value(
                        at,
                        &cp.key("steps"),
                        "a canary needs at least one step".into(),
                    );
                }
                let mut last_weight: Option<(u32, usize)> = None;
                for (i, s) in raw_steps.iter().enumerate() {
                    let sp = cp.key("steps").index(i);
                    if s.weight.is_none() && s.pause.is_none() {
                        c.value(at, &sp, "a step needs `weight`, `pause` or both".into());
                    }
                    if let Some(w) = s.weight {
                        if w > 100 {
                            c.value(
                                at,
                                &sp.key("weight"),
                                format!("weight {w} is outside 0–100"),
                            );
                        } else if let Some((prev, j)) = last_weight.filter(|(prev, _)| w < *prev) {
                            c.value(
                                at,
                                &sp.key("weight"),
                                format!("weight {w} is lower than the {prev} of step {j}; canary weights never decrease"),
                            );
                        }
                        last_weight = Some((w, i));
                    }
                    let pause = s
                        .pause
                        .as_ref()
                        .and(at.doc.root.at(&sp.key("pause")))
                        .and_then(|node| {
                            pause(node)
                                .map_err(|e| c.value(at, &sp.key("pause"), e))
                                .ok()
                        });
                    steps.push(CanaryStep {
                        weight: s.weight.map(|w| w.min(100) as u8),
                        pause,
                    });
                }
            }
            let analysis = k
                .analysis
                .as_ref()
                .map(|a| analysis(c, at, &cp.key("analysis"), a, true));
            let progress_deadline = c.duration(
                at,
                &cp.key("progress_deadline"),
                &k.progress_deadline,
                Duration::from_secs(600),
            );
            Strategy::Canary {
                steps,
                analysis,
                progress_deadline,
            }
        }
    }
}

fn batch(node: &Node) -> Option<Batch> {
    match &node.kind {
        Kind::Scalar(Scalar::Plain(s)) if !s.ends_with('%') => {
            s.parse::<u32>().ok().filter(|n| *n >= 1).map(Batch::Hosts)
        }
        Kind::Scalar(Scalar::Plain(s) | Scalar::Str(s)) => {
            let p: u8 = s.strip_suffix('%')?.parse().ok()?;
            (1..=100).contains(&p).then_some(Batch::Percent(p))
        }
        _ => None,
    }
}

fn pause(node: &Node) -> Result<Pause, String> {
    match &node.kind {
        Kind::Map(entries) if entries.is_empty() => Ok(Pause::UntilPromoted),
        Kind::Scalar(Scalar::Plain(s) | Scalar::Str(s)) => bounded_duration(s).map(Pause::For),
        _ => Err(format!(
            "invalid pause: found {} (a duration such as \"2m\", or {{}} to wait for `kube-free promote`)",
            node.describe()
        )),
    }
}

/// One use of a port on a machine. Small, and its words are written only for a clash: a fleet
/// has one for every slot of every app on every host.
struct Claim<'a> {
    /// Environment, app and host that use it: two slots of one owner never clash here (two slots of
    /// one app with one port are reported with the app's slots).
    owner: (&'a str, &'a str, &'a str),
    /// The slot, or `None` for the app's frontend (on its balancer's host).
    slot: Option<&'a str>,
    /// The host is `transport: local`: this machine, as every other local host is.
    local: bool,
    port: u16,
    /// Bind address, `None` for all addresses (slots, whose bind address kube-free cannot know).
    address: Option<&'a str>,
    /// Where the environment is, and whether the app's slots are its own there (`slots:` under
    /// the app): then a slot is reported at its port, else at the app's entry.
    src: &'a EnvSource<'a>,
    overridden: bool,
}

impl<'a> Claim<'a> {
    fn clashes_with(&self, other: &Claim) -> bool {
        self.machine_key() == other.machine_key()
            && self.port == other.port
            && (self.owner != other.owner || self.slot.is_none() || other.slot.is_none())
            && match (self.address, other.address) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// The machine, as claims on it are found: every local host is this one machine ("").
    fn machine_key(&self) -> &'a str {
        if self.local {
            ""
        } else {
            self.owner.2
        }
    }

    fn machine(&self) -> String {
        if self.local {
            "this machine (transport: local)".to_owned()
        } else {
            format!("host {:?}", self.owner.2)
        }
    }

    /// What uses the port, in words.
    fn what(&self) -> String {
        let (env, app, host) = self.owner;
        match self.slot {
            Some(slot) => {
                let on = if self.local {
                    format!(" (host {host:?})")
                } else {
                    String::new()
                };
                format!("slot {slot:?} of app {app:?} in environment {env:?}{on}")
            }
            None => format!("the frontend of app {app:?} in environment {env:?}"),
        }
    }

    /// Where a clash of this claim is reported, and whether at a key (an app's entry in an
    /// environment) or a value (`listen`, a port under `slots:`).
    fn place(&self) -> (YamlPath, bool) {
        let dp = self.src.base.key("apps").key(self.owner.1);
        match self.slot {
            None => (dp.key("listen"), false),
            Some(slot) if self.overridden => (dp.key("slots").key(slot), false),
            Some(_) => (dp, true),
        }
    }

    /// How to resolve a clash.
    fn hint(&self) -> &'static str {
        match self.slot {
            Some(_) => "give this environment its own ports with `slots:` under the app",
            None => "choose another `listen` port or address",
        }
    }
}

/// nginx reaches the app hosts of the environments it serves by IP address: the Lua balancer sets
/// peers by address, and counters are matched by `$upstream_addr`; a DNS name would be resolved
/// once, when nginx loads its config, or not at all.
fn check_nginx_addresses(
    c: &mut Checker,
    at: At,
    top: &YamlPath,
    environments: &BTreeMap<Name, Environment>,
    hosts: &BTreeMap<Name, Host>,
    balancers: &BTreeMap<Name, Balancer>,
) {
    let mut reported = BTreeSet::new();
    for env in environments.values() {
        let Some(b) = balancers
            .get(&env.balancer)
            .filter(|b| b.kind == BalancerKind::Nginx)
        else {
            continue;
        };
        for h in &env.hosts {
            let Some(Transport::Ssh { address, .. }) = hosts.get(h).map(|h| &h.transport) else {
                continue;
            };
            if address.parse::<std::net::IpAddr>().is_err() && reported.insert(h.clone()) {
                c.value(
                    at,
                    &top.key("hosts").key(h).key("address"),
                    format!(
                        "nginx balancer {:?} reaches host {h:?} by IP address (environment {:?}); give its IP address, not the name {address:?}",
                        b.name, env.name
                    ),
                );
            }
        }
    }
}

/// A balancer reaches a `local` app host at 127.0.0.1 ([`DesiredState::host_address`]), which is
/// that host only when the balancer runs on this machine too (on a `local` host, whatever its name).
/// A balancer on another host would send the traffic to its own loopback: refused at the entry of
/// the environment's `hosts` that names the `local` host.
fn check_local_app_hosts(
    c: &mut Checker,
    envs: &[EnvSource<'_>],
    environments: &BTreeMap<Name, Environment>,
    hosts: &BTreeMap<Name, Host>,
    balancers: &BTreeMap<Name, Balancer>,
) {
    let is_local = |h: &str| matches!(hosts.get(h).map(|h| &h.transport), Some(Transport::Local));
    for src in envs {
        let Some(env) = environments.get(&src.name) else {
            continue;
        };
        // An unknown balancer or balancer host is reported already.
        let Some(b) = balancers
            .get(&env.balancer)
            .filter(|b| hosts.contains_key(&b.host) && !is_local(&b.host))
        else {
            continue;
        };
        let listed = src.raw.hosts.as_deref().unwrap_or_default();
        for h in env.hosts.iter().filter(|h| is_local(h)) {
            let Some(i) = listed.iter().position(|l| l == h) else {
                continue;
            };
            c.value(
                At { doc: src.doc },
                &src.base.key("hosts").index(i),
                format!(
                    "host {h:?} has `transport: local`, so balancer {:?} on host {:?} would reach it at 127.0.0.1, which is {} itself; give {h:?} an ssh transport with an address, or run the balancer on a `transport: local` host",
                    b.name, b.host, b.host
                ),
            );
        }
    }
}

/// Containers are named `kf-<env>-<app>-<slot>` on their host (all `local` hosts share this
/// machine's engine): two apps whose names run together (`a-b` + `c`, `a` + `b-c`) may not meet on
/// one host.
fn check_container_names(
    c: &mut Checker,
    envs: &[EnvSource<'_>],
    environments: &BTreeMap<Name, Environment>,
    hosts: &BTreeMap<Name, Host>,
    apps: &BTreeMap<Name, App>,
) {
    let machine = |h: &str| match hosts.get(h).map(|h| &h.transport) {
        Some(Transport::Local) => String::new(),
        _ => h.to_owned(),
    };
    let mut named: BTreeMap<(String, String), (&str, &str)> = BTreeMap::new();
    for src in envs {
        let Some(env) = environments.get(&src.name) else {
            continue;
        };
        for (app, d) in &env.apps {
            if apps.get(app).is_none_or(|a| a.runtime.image().is_none()) {
                continue;
            }
            for h in &env.hosts {
                for s in &d.slots {
                    let name = crate::names::container_name(&env.name, app, &s.name);
                    let owner = named
                        .entry((machine(h), name.clone()))
                        .or_insert((&env.name, app));
                    if *owner != (env.name.as_str(), app.as_str()) {
                        c.key(
                            At { doc: src.doc },
                            &src.base.key("apps").key(app),
                            format!(
                                "container {name} on host {h:?} would also be that of app {:?} in environment {:?}; rename one of them",
                                owner.1, owner.0
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Two things may not listen on one port of one machine: slots of every app in every environment on
/// each of its hosts, and the frontends on each balancer's host (these may share a port on different
/// addresses).
fn check_ports(
    c: &mut Checker,
    envs: &[EnvSource<'_>],
    environments: &BTreeMap<Name, Environment>,
    hosts: &BTreeMap<Name, Host>,
    balancers: &BTreeMap<Name, Balancer>,
) {
    // All `local` hosts are this one machine.
    let is_local = |h: &str| matches!(hosts.get(h).map(|h| &h.transport), Some(Transport::Local));
    // By machine and port: only claims there can clash, so each claim is compared with those
    // alone (linear in the number of claims, not quadratic). Nearly every list holds one claim.
    let mut claimed: HashMap<(&str, u16), Vec<Claim>> = HashMap::new();
    for src in envs {
        let Some(env) = environments.get(&src.name) else {
            continue;
        };
        let at = At { doc: src.doc };
        for (app, d) in &env.apps {
            let overridden = src.raw.apps.get(app).is_some_and(|a| a.slots.is_some());
            let mut claims = Vec::new();
            for h in &env.hosts {
                for s in &d.slots {
                    claims.push(Claim {
                        owner: (&env.name, app, h),
                        slot: Some(&s.name),
                        local: is_local(h),
                        port: s.port,
                        address: None,
                        src,
                        overridden,
                    });
                }
            }
            if let Some(b) = balancers.get(&env.balancer).filter(|_| d.listen.port != 0) {
                let wildcard = matches!(d.listen.address.as_str(), "*" | "0.0.0.0" | "[::]");
                claims.push(Claim {
                    owner: (&env.name, app, &b.host),
                    slot: None,
                    local: is_local(&b.host),
                    port: d.listen.port,
                    address: (!wildcard).then_some(d.listen.address.as_str()),
                    src,
                    overridden,
                });
            }
            for claim in claims {
                let there = claimed
                    .entry((claim.machine_key(), claim.port))
                    .or_insert_with(|| Vec::with_capacity(1));
                match there.iter().find(|other| claim.clashes_with(other)) {
                    Some(other) => {
                        let message = format!(
                            "port {} on {} is already taken by {}; {}",
                            claim.port,
                            claim.machine(),
                            other.what(),
                            claim.hint()
                        );
                        let (path, at_key) = claim.place();
                        if at_key {
                            c.key(at, &path, message);
                        } else {
                            c.value(at, &path, message);
                        }
                    }
                    None => there.push(claim),
                }
            }
        }
    }
}

/// The error-rate rules of a strategy (`ap` is its `analysis` key); `checks` only for a canary,
/// whose steps run them (a bake judges the error rate alone).
fn analysis(c: &mut Checker, at: At, ap: &YamlPath, a: &RawAnalysis, canary: bool) -> Analysis {
    if !canary && a.checks.as_ref().is_some_and(|c| !c.is_empty()) {
        c.value(
            at,
            &ap.key("checks"),
            "checks run only between canary steps; a bake judges the error rate alone".into(),
        );
    }
    let max_error_rate = c
        .required(at, &ap.key("max_error_rate"), &a.max_error_rate)
        .copied()
        .unwrap_or(0.0);
    if !(0.0..=1.0).contains(&max_error_rate) {
        c.value(
            at,
            &ap.key("max_error_rate"),
            format!("max_error_rate {max_error_rate} is outside 0–1 (0.01 means 1%)"),
        );
    }
    let mut checks = Vec::new();
    for (i, path) in a.checks.iter().flatten().enumerate() {
        if URL_PATH.is_match(path) {
            checks.push(path.clone());
        } else {
            c.value(
                at,
                &ap.key("checks").index(i),
                format!(
                    "invalid check path {path:?} (must start with / and hold no spaces or quotes)"
                ),
            );
        }
    }
    Analysis {
        max_error_rate,
        min_requests: a.min_requests.unwrap_or(100),
        checks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen("0.0.0.0:80").unwrap().to_string(),
            "0.0.0.0:80"
        );
        assert_eq!(parse_listen("*:8080").unwrap().to_string(), "*:8080");
        assert_eq!(parse_listen(":8080").unwrap().to_string(), "*:8080");
        assert_eq!(parse_listen("[::]:443").unwrap().to_string(), "[::]:443");
        for bad in [
            "80",
            "0.0.0.0",
            "0.0.0.0:0",
            "0.0.0.0:70000",
            "example.com:80",
            "[::1:80",
            "1.2.3:80",
        ] {
            assert!(parse_listen(bad).is_none(), "{bad:?} was accepted");
        }
    }

    /// Loads these files (path in the desired-state directory, text); every problem as `validate`
    /// prints it.
    fn load_files(files: &[(&str, &str)]) -> Result<DesiredState, Vec<String>> {
        let files = files
            .iter()
            .fold(crate::desired::MemFiles::default(), |m, (path, text)| {
                m.with(path, *text)
            });
        crate::desired::load(&files).map_err(|e| match e {
            crate::desired::LoadError::Invalid(d) => d.iter().map(|d| d.to_string()).collect(),
            other => vec![other.to_string()],
        })
    }

    fn load(notifications: &str) -> Result<DesiredState, Vec<String>> {
        load_files(&[(
            "kube-free.yaml",
            &format!("version: 1\nnotifications:\n{notifications}"),
        )])
    }

    #[test]
    fn notifications_take_defaults() {
        let state = load(
            "  - url: https://hooks.example.com/kube-free\n  - name: ops-slack\n    url: http://10.0.0.5:9000/hook\n    format: slack\n    events: [failed, started, sync_failing]\n    header: { name: Authorization, value_file: /etc/kube-free/ops-token }\n",
        )
        .unwrap();
        let [first, second] = &state.notifications[..] else {
            panic!("{:?}", state.notifications)
        };
        assert_eq!(first.name, "0");
        assert_eq!(first.format, NotifyFormat::Json);
        assert_eq!(first.events, EventKind::ALL.to_vec());
        assert_eq!(
            (first.header.as_ref(), first.secret_file.as_ref()),
            (None, None)
        );
        assert_eq!(second.name, "ops-slack");
        assert_eq!(second.format, NotifyFormat::Slack);
        assert_eq!(
            second.events,
            vec![
                EventKind::Started,
                EventKind::Failed,
                EventKind::SyncFailing
            ]
        );
        assert_eq!(
            second.header,
            Some(NotifyHeader {
                name: "Authorization".into(),
                value_file: "/etc/kube-free/ops-token".into()
            })
        );
        assert!(load("").unwrap().notifications.is_empty());
    }

    #[test]
    fn every_notification_problem_is_reported_where_it_is() {
        let errors = load(concat!(
            "  - name: ops\n",                                         // 3
            "    url: ftp://example.com/x\n",                          // 4
            "    format: slack\n",                                     // 5
            "    secret_file: /etc/kube-free/secret\n",                // 6
            "  - name: ops\n",                                         // 7
            "    url: \"https://user:pw@example.com/\"\n",             // 8
            "    events: [started, deployed, started]\n",              // 9
            "    header: { name: Content-Type, value_file: token }\n", // 10
            "  - url: not a url\n",                                    // 11
            "    ca_file: ../ca.pem\n",                                // 12
            "    colour: red\n",                                       // 13
            "  - events: []\n",                                        // 14
            "    header: { value_file: /etc/x }\n",                    // 15
        ))
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "kube-free.yaml:4:10: notifications[0].url: unsupported URL scheme \"ftp\" in \"ftp://example.com/x\" (http or https)",
                "kube-free.yaml:6:5: notifications[0].secret_file: `secret_file` applies to `format: json` only (a Slack webhook is not signed)",
                "kube-free.yaml:7:11: notifications[1].name: notification name \"ops\" is already used by notifications[0]; names must be unique",
                "kube-free.yaml:8:10: notifications[1].url: URL \"https://user:pw@example.com/\" holds credentials; put them in a `header` whose value is read from a file",
                "kube-free.yaml:9:23: notifications[1].events[1]: unknown value \"deployed\", expected one of `started`, `step`, `paused`, `promoted`, `succeeded`, `failed`, `quarantined`, `drift_corrected`, `sync_failing`, `recovered`",
                "kube-free.yaml:9:33: notifications[1].events[2]: event `started` is listed twice",
                "kube-free.yaml:10:21: notifications[1].header.name: header \"Content-Type\" is set by kube-free itself; choose another",
                "kube-free.yaml:10:47: notifications[1].header.value_file: invalid path \"token\" (an absolute path of letters, digits and ._/+@-, without ..)",
                "kube-free.yaml:11:10: notifications[2].url: invalid URL \"not a url\" (relative URL without a base)",
                "kube-free.yaml:12:14: notifications[2].ca_file: invalid path \"../ca.pem\" (an absolute path of letters, digits and ._/+@-, without ..)",
                "kube-free.yaml:13:5: notifications[2].colour: unknown key \"colour\", expected one of `name`, `url`, `format`, `events`, `header`, `secret_file`, `ca_file`",
                "kube-free.yaml:14:5: notifications[3].url: missing required key `url`",
                "kube-free.yaml:14:13: notifications[3].events: an empty list sends nothing; list the events, or leave `events` out for all of them",
                "kube-free.yaml:15:5: notifications[3].header.name: missing required key `name`",
            ]
        );
    }

    #[test]
    fn ca_file_needs_https_and_unnamed_targets_are_numbered() {
        let errors = load(
            "  - url: http://example.com/hook\n    ca_file: /etc/ca.pem\n  - name: \"2\"\n    url: https://a.example/\n  - url: https://b.example/\n",
        )
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "kube-free.yaml:4:5: notifications[0].ca_file: `ca_file` applies to `https://` URLs only",
                "kube-free.yaml:7:5: notifications[2]: notification name \"2\" is already used by notifications[1]; names must be unique",
            ]
        );
    }

    #[test]
    fn addresses() {
        for good in ["10.0.0.1", "::1", "web-1.internal", "localhost"] {
            assert!(valid_address(good), "{good}");
        }
        for bad in ["", "a b", "-x", "web_1", "x;rm", "a..b"] {
            assert!(!valid_address(bad), "{bad}");
        }
    }

    /// Hosts `web-1` and `lb-1`, balancer `edge` on `lb-1`, app `api` on ports 8000 and 8001: lines
    /// 1 to 10 of the files below.
    const BASE: &str = concat!(
        "version: 1\n",                                                          // 1
        "hosts:\n",                                                              // 2
        "  web-1: { address: 192.0.2.11 }\n",                                    // 3
        "  lb-1: { address: 192.0.2.10 }\n",                                     // 4
        "balancers:\n",                                                          // 5
        "  edge: { kind: haproxy, host: lb-1 }\n",                               // 6
        "apps:\n",                                                               // 7
        "  api:\n",                                                              // 8
        "    runtime: { kind: process, command: \"/opt/api --port {port}\" }\n", // 9
        "    slots: { blue: 8000, green: 8001 }\n",                              // 10
    );

    // An unknown app is a key of an environment's `apps`: reported where the key is, not where its
    // value starts (the next line for a block mapping, further on the line for a flow mapping).
    #[test]
    fn an_unknown_app_is_reported_at_its_key() {
        let root = format!(
            "{BASE}{}",
            concat!(
                "environments:\n",                                    // 11
                "  prod:\n",                                          // 12
                "    balancer: edge\n",                               // 13
                "    hosts: [web-1]\n",                               // 14
                "    apps:\n",                                        // 15
                "      api: { version: \"1\", listen: \":80\" }\n",   // 16
                "      nosuch:\n",                                    // 17
                "        version: \"1\"\n",                           // 18
                "        listen: \":81\"\n",                          // 19
                "      other: { version: \"1\", listen: \":82\" }\n", // 20
            )
        );
        let errors = load_files(&[
            ("kube-free.yaml", &root),
            (
                "environments/staging.yaml",
                "balancer: edge\nhosts: [web-1]\napps: { web: { version: \"1\", listen: \":83\" } }\n",
            ),
            (
                "environments/test.yaml",
                "balancer: edge\nhosts: [web-1]\napps:\n  nosuch:\n    version: \"1\"\n    listen: \":84\"\n",
            ),
        ])
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "environments/staging.yaml:3:9: apps.web: unknown app \"web\" (declared: api)",
                "environments/test.yaml:4:3: apps.nosuch: unknown app \"nosuch\" (declared: api)",
                "kube-free.yaml:17:7: environments.prod.apps.nosuch: unknown app \"nosuch\" (declared: api)",
                "kube-free.yaml:20:7: environments.prod.apps.other: unknown app \"other\" (declared: api)",
            ]
        );
    }

    #[test]
    fn host_balancer_and_app_names_are_reported_at_their_keys() {
        let errors = load_files(&[(
            "kube-free.yaml",
            concat!(
                "version: 1\n",                              // 1
                "hosts:\n",                                  // 2
                "  Web_1:\n",                                // 3
                "    address: 192.0.2.11\n",                 // 4
                "  Web_2: { address: 192.0.2.12 }\n",        // 5
                "  lb-1: { address: 192.0.2.10 }\n",         // 6
                "balancers:\n",                              // 7
                "  Edge:\n",                                 // 8
                "    kind: haproxy\n",                       // 9
                "    host: lb-1\n",                          // 10
                "  Edge_2: { kind: haproxy, host: lb-1 }\n", // 11
                "apps:\n",                                   // 12
                "  Api:\n",                                  // 13
                "    runtime: { kind: process, command: \"/opt/api --port {port}\" }\n", // 14
                "    slots: { blue: 8000, green: 8001 }\n", // 15
                "  Web: { runtime: { kind: process, command: \"/opt/web --port {port}\" }, slots: { blue: 9000, green: 9001 } }\n", // 16
            ),
        )])
        .unwrap_err();
        let rule = "(lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters)";
        assert_eq!(
            errors,
            vec![
                format!("kube-free.yaml:3:3: hosts.Web_1: invalid host name \"Web_1\" {rule}"),
                format!("kube-free.yaml:5:3: hosts.Web_2: invalid host name \"Web_2\" {rule}"),
                format!("kube-free.yaml:8:3: balancers.Edge: invalid balancer name \"Edge\" {rule}"),
                format!("kube-free.yaml:11:3: balancers.Edge_2: invalid balancer name \"Edge_2\" {rule}"),
                format!("kube-free.yaml:13:3: apps.Api: invalid app name \"Api\" {rule}"),
                format!("kube-free.yaml:16:3: apps.Web: invalid app name \"Web\" {rule}"),
            ]
        );
    }

    #[test]
    fn slot_and_variable_names_are_reported_at_their_keys() {
        let errors = load_files(&[(
            "kube-free.yaml",
            concat!(
                "version: 1\n",                                                          // 1
                "hosts:\n",                                                              // 2
                "  web-1: { address: 192.0.2.11 }\n",                                    // 3
                "  lb-1: { address: 192.0.2.10 }\n",                                     // 4
                "balancers:\n",                                                          // 5
                "  edge: { kind: haproxy, host: lb-1 }\n",                               // 6
                "apps:\n",                                                               // 7
                "  api:\n",                                                              // 8
                "    runtime:\n",                                                        // 9
                "      kind: process\n",                                                 // 10
                "      command: \"/opt/api --port {port}\"\n",                           // 11
                "      env:\n",                                                          // 12
                "        BAD-NAME:\n",                                                   // 13
                "          file: /etc/kube-free/a\n",                                    // 14
                "        KUBE_FREE_MODE: { file: /etc/kube-free/b }\n",                  // 15
                "    slots:\n",                                                          // 16
                "      Blue: 8000\n",                                                    // 17
                "      green: 8001\n",                                                   // 18
                "  web:\n",                                                              // 19
                "    runtime: { kind: process, command: \"/opt/web --port {port}\" }\n", // 20
                "    slots: { blue: 9000, Green: 9001 }\n",                              // 21
                "environments:\n",                                                       // 22
                "  prod:\n",                                                             // 23
                "    balancer: edge\n",                                                  // 24
                "    hosts: [web-1]\n",                                                  // 25
                "    apps:\n",                                                           // 26
                "      web:\n",                                                          // 27
                "        version: \"1\"\n",                                              // 28
                "        listen: \":80\"\n",                                             // 29
                "        slots: { blue: 7000, Green: 7001 }\n",                          // 30
            ),
        )])
        .unwrap_err();
        let rule = "(lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters)";
        assert_eq!(
            errors,
            vec![
                "kube-free.yaml:13:9: apps.api.runtime.env.BAD-NAME: invalid environment variable name \"BAD-NAME\"".to_owned(),
                "kube-free.yaml:15:9: apps.api.runtime.env.KUBE_FREE_MODE: KUBE_FREE_MODE: names that start with KUBE_FREE_ are kube-free's own (it sets KUBE_FREE_ENV, _APP, _SLOT and _VERSION)".to_owned(),
                format!("kube-free.yaml:17:7: apps.api.slots.Blue: invalid slot name \"Blue\" {rule}"),
                format!("kube-free.yaml:21:26: apps.web.slots.Green: invalid slot name \"Green\" {rule}"),
                format!("kube-free.yaml:30:30: environments.prod.apps.web.slots.Green: invalid slot name \"Green\" {rule}"),
            ]
        );
    }

    #[test]
    fn environment_names_are_reported_at_their_keys() {
        let root = format!(
            "{BASE}{}",
            concat!(
                "environments:\n",                                                  // 11
                "  Prod:\n",                                                        // 12
                "    balancer: edge\n",                                             // 13
                "    hosts: [web-1]\n",                                             // 14
                "    apps:\n",                                                      // 15
                "      api: { version: \"1\", listen: \":80\" }\n",                 // 16
                "  rollouts: { balancer: edge, hosts: [web-1], apps: { api: { version: \"1\", listen: \":81\", slots: { blue: 8100, green: 8101 } } } }\n", // 17
                "  haproxy:\n",                                                     // 18
                "    balancer: edge\n",                                             // 19
                "    hosts: [web-1]\n",                                             // 20
                "    apps: { api: { version: \"1\", listen: \":82\", slots: { blue: 8200, green: 8201 } } }\n", // 21
                "  Stage_2: { balancer: edge, hosts: [web-1], apps: { api: { version: \"1\", listen: \":83\", slots: { blue: 8300, green: 8301 } } } }\n", // 22
            )
        );
        let errors = load_files(&[("kube-free.yaml", &root)]).unwrap_err();
        assert_eq!(
            errors,
            vec![
                "kube-free.yaml:12:3: environments.Prod: invalid environment name \"Prod\" (lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters)",
                "kube-free.yaml:17:3: environments.rollouts: environment name \"rollouts\" is reserved: kube-free keeps its own files under <state_dir>/rollouts/",
                "kube-free.yaml:18:3: environments.haproxy: environment name \"haproxy\" is reserved: kube-free keeps its own files under <state_dir>/haproxy/",
                "kube-free.yaml:22:3: environments.Stage_2: invalid environment name \"Stage_2\" (lowercase letters, digits and '-', starting with a letter or digit, at most 63 characters)",
            ]
        );
    }

    #[test]
    fn duplicate_and_unknown_keys_are_reported_at_the_key() {
        let errors = load_files(&[(
            "kube-free.yaml",
            concat!(
                "version: 1\n",                          // 1
                "hosts:\n",                              // 2
                "  web-1: { address: 192.0.2.11 }\n",    // 3
                "  lb-1: { address: 192.0.2.10 }\n",     // 4
                "  web-1:\n",                            // 5
                "    address: 192.0.2.12\n",             // 6
                "balancers: { edge: { kind: haproxy, host: lb-1 }, edge: { kind: haproxy, host: web-1 } }\n", // 7
                "apps:\n",                               // 8
                "  api:\n",                              // 9
                "    runtime: { kind: process, command: \"/opt/api --port {port}\" }\n", // 10
                "    slots: { blue: 8000, green: 8001 }\n", // 11
                "    probes:\n",                         // 12
                "      path: /readyz\n",                 // 13
            ),
        )])
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "kube-free.yaml:5:3: hosts.web-1: duplicate key \"web-1\" (first defined on line 3)",
                "kube-free.yaml:7:51: balancers.edge: duplicate key \"edge\" (first defined on line 7)",
                "kube-free.yaml:12:5: apps.api.probes: unknown key \"probes\" (did you mean `probe`?)",
            ]
        );
    }

    // A port clash of the slots an environment takes from the app is reported at the app's key in
    // the environment (there is no `slots:` to point at); with the environment's own `slots:`, at
    // the port.
    #[test]
    fn a_port_clash_of_an_apps_own_slots_is_reported_at_its_key() {
        let root = format!(
            "{BASE}{}",
            concat!(
                "environments:\n",                                  // 11
                "  prod:\n",                                        // 12
                "    balancer: edge\n",                             // 13
                "    hosts: [web-1]\n",                             // 14
                "    apps:\n",                                      // 15
                "      api: { version: \"1\", listen: \":80\" }\n", // 16
                "  staging:\n",                                     // 17
                "    balancer: edge\n",                             // 18
                "    hosts: [web-1]\n",                             // 19
                "    apps:\n",                                      // 20
                "      api:\n",                                     // 21
                "        version: \"2\"\n",                         // 22
                "        listen: \":81\"\n",                        // 23
            )
        );
        let errors = load_files(&[
            ("kube-free.yaml", &root),
            (
                "environments/qa.yaml",
                "balancer: edge\nhosts: [web-1]\napps:\n  api:\n    version: \"4\"\n    listen: \":83\"\n    slots:\n      blue: 8100\n      green: 8001\n",
            ),
            (
                "environments/test.yaml",
                "balancer: edge\nhosts: [web-1]\napps: { api: { version: \"3\", listen: \":82\" } }\n",
            ),
        ])
        .unwrap_err();
        let hint = "give this environment its own ports with `slots:` under the app";
        assert_eq!(
            errors,
            vec![
                format!("environments/qa.yaml:9:14: apps.api.slots.green: port 8001 on host \"web-1\" is already taken by slot \"green\" of app \"api\" in environment \"prod\"; {hint}"),
                format!("environments/test.yaml:3:9: apps.api: port 8000 on host \"web-1\" is already taken by slot \"blue\" of app \"api\" in environment \"prod\"; {hint}"),
                format!("kube-free.yaml:21:7: environments.staging.apps.api: port 8000 on host \"web-1\" is already taken by slot \"blue\" of app \"api\" in environment \"prod\"; {hint}"),
            ]
        );
    }

    // Names that refer to something declared elsewhere, written as values, are reported at the
    // value.
    #[test]
    fn unknown_names_written_as_values_are_reported_at_the_value() {
        let errors = load_files(&[(
            "kube-free.yaml",
            concat!(
                "version: 1\n",                                   // 1
                "hosts:\n",                                       // 2
                "  web-1: { address: 192.0.2.11 }\n",             // 3
                "  lb-1: { address: 192.0.2.10 }\n",              // 4
                "balancers:\n",                                   // 5
                "  edge: { kind: haproxy, host: lb-1 }\n",        // 6
                "  far:\n",                                       // 7
                "    kind: haproxy\n",                            // 8
                "    host: lb-9\n",                               // 9
                "apps:\n",                                        // 10
                "  api:\n",                                       // 11
                "    runtime: { kind: process, command: \"/opt/api --port {port}\" }\n", // 12
                "    slots: { blue: 8000, green: 8001 }\n",       // 13
                "environments:\n",                                // 14
                "  prod:\n",                                      // 15
                "    balancer: nosuch\n",                         // 16
                "    hosts: [web-1, web-9]\n",                    // 17
                "    apps:\n",                                    // 18
                "      api: { version: \"1\", listen: \":80\" }\n", // 19
                "  staging:\n",                                   // 20
                "    balancer: edge\n",                           // 21
                "    hosts:\n",                                   // 22
                "      - web-1\n",                                // 23
                "      - web-8\n",                                // 24
                "    apps:\n",                                    // 25
                "      api: { version: \"1\", listen: \":81\", slots: { blue: 8100, green: 8101 } }\n", // 26
            ),
        )])
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "kube-free.yaml:9:11: balancers.far.host: unknown host \"lb-9\" (declared: lb-1, web-1)",
                "kube-free.yaml:16:15: environments.prod.balancer: unknown balancer \"nosuch\" (declared: edge, far)",
                "kube-free.yaml:17:20: environments.prod.hosts[1]: unknown host \"web-9\" (declared: lb-1, web-1)",
                "kube-free.yaml:24:9: environments.staging.hosts[1]: unknown host \"web-8\" (declared: lb-1, web-1)",
            ]
        );
    }

    /// A balancer reaches a `local` app host at 127.0.0.1: only a balancer on this machine (a
    /// `local` host, whatever its name) reaches it there.
    #[test]
    fn a_local_app_host_behind_a_balancer_on_another_host_is_refused() {
        let errors = load_files(&[
            (
                "kube-free.yaml",
                concat!(
                    "version: 1\n",                                                  // 1
                    "hosts:\n",                                                      // 2
                    "  here: { transport: local }\n",                                // 3
                    "  box: { transport: local, state_dir: /srv/kube-free }\n",      // 4
                    "  web-1: { address: 192.0.2.11 }\n",                            // 5
                    "  lb-1: { address: 192.0.2.10 }\n",                             // 6
                    "balancers:\n",                                                  // 7
                    "  edge: { kind: haproxy, host: lb-1 }\n",                       // 8
                    "  near: { kind: haproxy, host: box }\n",                        // 9
                    "apps:\n",                                                       // 10
                    "  api:\n",                                                      // 11
                    "    runtime: { kind: process, command: \"/opt/api --port {port}\" }\n", // 12
                    "    slots: { blue: 8000, green: 8001 }\n",                      // 13
                    "environments:\n",                                               // 14
                    "  prod:\n",                                                     // 15
                    "    balancer: edge\n",                                          // 16
                    "    hosts: [web-1, here]\n",                                    // 17
                    "    apps:\n",                                                   // 18
                    "      api: { version: \"1\", listen: \":80\" }\n",              // 19
                    "  local:\n",                                                    // 20
                    "    balancer: near\n",                                          // 21
                    "    hosts: [here, web-1]\n",                                    // 22
                    "    apps:\n",                                                   // 23
                    "      api: { version: \"1\", listen: \":81\", slots: { blue: 8100, green: 8101 } }\n", // 24
                ),
            ),
            (
                "environments/staging.yaml",
                "balancer: edge\nhosts:\n  - box\napps:\n  api: { version: \"1\", listen: \":82\", slots: { blue: 8200, green: 8201 } }\n",
            ),
        ])
        .unwrap_err();
        assert_eq!(
            errors,
            vec![
                "environments/staging.yaml:3:5: hosts[0]: host \"box\" has `transport: local`, so balancer \"edge\" on host \"lb-1\" would reach it at 127.0.0.1, which is lb-1 itself; give \"box\" an ssh transport with an address, or run the balancer on a `transport: local` host",
                "kube-free.yaml:17:20: environments.prod.hosts[1]: host \"here\" has `transport: local`, so balancer \"edge\" on host \"lb-1\" would reach it at 127.0.0.1, which is lb-1 itself; give \"here\" an ssh transport with an address, or run the balancer on a `transport: local` host",
            ]
        );
    }

    #[test]
    fn a_local_app_host_behind_a_balancer_on_a_local_host_is_valid() {
        let state = load_files(&[(
            "kube-free.yaml",
            concat!(
                "version: 1\n",
                "hosts:\n",
                "  here: { transport: local }\n",
                "  box: { transport: local, state_dir: /srv/kube-free }\n",
                "  web-1: { address: 192.0.2.11 }\n",
                "balancers:\n",
                "  edge: { kind: haproxy, host: here }\n",
                "  near: { kind: nginx, host: box }\n",
                "apps:\n",
                "  api:\n",
                "    runtime: { kind: process, command: \"/opt/api --port {port}\" }\n",
                "    slots: { blue: 8000, green: 8001 }\n",
                "environments:\n",
                "  prod: { balancer: edge, hosts: [here, web-1], apps: { api: { version: \"1\", listen: \":80\" } } }\n",
                "  staging: { balancer: near, hosts: [here], apps: { api: { version: \"1\", listen: \":81\", slots: { blue: 8100, green: 8101 } } } }\n",
            ),
        )])
        .unwrap();
        assert_eq!(state.host_address("here"), "127.0.0.1");
        assert_eq!(state.balancer_of("staging").host, "box");
    }
}
