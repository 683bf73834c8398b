//! Command templates: a command line from the desired state split into words (POSIX shell quoting
//! rules, no expansion of any kind) with `{placeholder}`s in them. Rendering fills placeholders with
//! validated values and yields argv, so nothing from the repository ever reaches a shell unquoted.

use serde::Serialize;
use std::fmt;

/// The values a template may refer to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placeholder {
    Version,
    Port,
    Slot,
    App,
    Env,
    Host,
}

impl Placeholder {
    pub const ALL: [Placeholder; 6] = [
        Placeholder::Version,
        Placeholder::Port,
        Placeholder::Slot,
        Placeholder::App,
        Placeholder::Env,
        Placeholder::Host,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Placeholder::Version => "version",
            Placeholder::Port => "port",
            Placeholder::Slot => "slot",
            Placeholder::App => "app",
            Placeholder::Env => "env",
            Placeholder::Host => "host",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Part {
    Text(String),
    Placeholder(Placeholder),
}

/// One word (or one value) with placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

impl Serialize for Template {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(t) => f.write_str(&t.replace('{', "{{").replace('}', "}}"))?,
                Part::Placeholder(p) => write!(f, "{{{}}}", p.name())?,
            }
        }
        Ok(())
    }
}

impl Template {
    /// Parses placeholders in one value; `{{` and `}}` stand for literal braces.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => {
                                return Err(format!(
                                    "unterminated `{{` in {text:?} (write {{{{ for a literal brace)"
                                ))
                            }
                        }
                    }
                    let placeholder = Placeholder::ALL
                        .into_iter()
                        .find(|p| p.name() == name)
                        .ok_or_else(|| {
                            format!(
                                "unknown placeholder {{{name}}} in {text:?} (known: {}; write {{{{ for a literal brace)",
                                Placeholder::ALL.map(|p| format!("{{{}}}", p.name())).join(", ")
                            )
                        })?;
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Placeholder(placeholder));
                }
                '}' => {
                    return Err(format!(
                        "unmatched `}}` in {text:?} (write }}}} for a literal brace)"
                    ))
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    pub fn uses(&self, p: Placeholder) -> bool {
        self.parts.contains(&Part::Placeholder(p))
    }

    /// Fills the placeholders.
    pub fn render(&self, value: impl Fn(Placeholder) -> String) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(t) => t.clone(),
                Part::Placeholder(p) => value(*p),
            })
            .collect()
    }
}

/// Splits a command line into words by POSIX shell quoting rules: whitespace separates words,
/// '...' is literal, "..." allows \" \\ \$ \` escapes, and \ escapes one character outside quotes.
/// Shell syntax that would need a shell (`|`, `;`, `&`, `>`, `<`, `$`, backquote, globs) is refused, so
/// that what runs is exactly the words written; so is a control character in a word (a tab is
/// allowed; a line break between words only separates them).
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated ' quote in {line:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated \" quote in {line:?}")),
                        },
                        Some(c @ ('$' | '`')) => {
                            return Err(format!(
                                "{c:?} in {line:?} needs a shell; kube-free runs commands without one (quote it with '...')"
                            ))
                        }
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated \" quote in {line:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("trailing backslash in {line:?}")),
                }
            }
            '#' if !in_word => {
                return Err(format!(
                    "{c:?} in {line:?} would start a comment in a shell; kube-free runs commands without one (remove the comment, or quote it with '...')"
                ))
            }
            '|' | ';' | '&' | '>' | '<' | '$' | '`' | '*' | '?' | '(' | ')' => {
                return Err(format!(
                    "{c:?} in {line:?} needs a shell; kube-free runs commands without one (quote it with '...')"
                ))
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err("empty command".into());
    }
    if let Some(c) = words
        .iter()
        .flat_map(|w| w.chars())
        .find(|c| is_control(*c))
    {
        return Err(format!(
            "control character {c:?} in {line:?}: a command line holds none (a tab is allowed)"
        ));
    }
    Ok(words)
}

/// Whether `c` is a control character that kube-free never passes on (every one but a tab).
pub fn is_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// A command line as argv of templates.
pub fn parse_command(line: &str) -> Result<Vec<Template>, String> {
    split_words(line)?
        .iter()
        .map(|w| Template::parse(w))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell_without_expanding() {
        assert_eq!(
            split_words(r#"/opt/api/bin/api --name 'a b' "c \"d\"" e\ f"#).unwrap(),
            vec!["/opt/api/bin/api", "--name", "a b", "c \"d\"", "e f"]
        );
        assert_eq!(split_words("a '' b").unwrap(), vec!["a", "", "b"]);
        assert_eq!(
            split_words("echo '$HOME; x'").unwrap(),
            vec!["echo", "$HOME; x"]
        );
    }

    #[test]
    fn refuses_shell_syntax_and_bad_quoting() {
        for bad in [
            "a | b",
            "a; b",
            "a && b",
            "a > f",
            "echo $HOME",
            "echo \"$HOME\"",
            "a 'b",
            "a \"b",
            "a \\",
            "",
            "  ",
            "ls *",
            "reload # hitless",
        ] {
            assert!(split_words(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn templates_parse_render_and_display() {
        let t = Template::parse("/opt/{app}/{version}/bin:{port}{{x}}").unwrap();
        assert!(t.uses(Placeholder::Version) && !t.uses(Placeholder::Host));
        let out = t.render(|p| match p {
            Placeholder::App => "api".into(),
            Placeholder::Version => "1.2.3".into(),
            Placeholder::Port => "8000".into(),
            _ => unreachable!(),
        });
        assert_eq!(out, "/opt/api/1.2.3/bin:8000{x}");
        assert_eq!(t.to_string(), "/opt/{app}/{version}/bin:{port}{{x}}");
    }

    #[test]
    fn templates_refuse_unknown_placeholders_and_stray_braces() {
        assert!(Template::parse("{vesion}")
            .unwrap_err()
            .contains("unknown placeholder {vesion}"));
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("{port").is_err());
    }
}
