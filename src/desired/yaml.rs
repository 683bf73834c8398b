//! Positioned YAML: turns the bytes of one file into a tree in which every node and key remembers its
//! line and column. Enforces the input limits (size, UTF-8, nesting depth, alias expansion, one
//! document) and reports duplicate keys. Knows nothing of kube-free's format.
//!
//! Memory is bounded whatever the file: an alias copies the node it names, so the tree is limited
//! both in nodes ([`MAX_NODES`]) and in the bytes of scalar text (keys included) it holds once every
//! alias is expanded ([`MAX_EXPANDED_BYTES`], 16 MiB; the copies kept for anchors count too). A file
//! within [`MAX_FILE_BYTES`] therefore never makes a tree of more than 16 MiB of text and 100000
//! nodes, whatever its anchors and aliases.

use super::diag::{Mark, Seg, YamlPath};
use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Largest file accepted, in bytes.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Deepest nesting of mappings and sequences accepted.
pub const MAX_DEPTH: usize = 64;
/// Most nodes a document may hold once every alias is expanded (a guard against "billion laughs").
pub const MAX_NODES: usize = 100_000;
/// Most bytes of scalar text (keys and values) a document may hold once every alias is expanded,
/// the copies kept for anchors included: 16 MiB (a guard against a large anchored scalar named by
/// many aliases, which takes few nodes).
pub const MAX_EXPANDED_BYTES: usize = 16 * 1024 * 1024;

#[derive(Clone, Debug, PartialEq)]
pub enum Scalar {
    /// A plain (unquoted) scalar: its meaning (null, bool, number, string) depends on its text.
    Plain(String),
    /// A quoted or block scalar, or one tagged `!!str`: always a string.
    Str(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_mark: Mark,
    pub value: Node,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub kind: Kind,
    pub mark: Mark,
    /// Number of nodes in this subtree, itself included.
    size: usize,
    /// Bytes of scalar text in this subtree, mapping keys included.
    bytes: usize,
}

impl Node {
    fn new(kind: Kind, mark: Mark) -> Self {
        let size = 1 + match &kind {
            Kind::Scalar(_) => 0,
            Kind::Seq(items) => items.iter().map(|n| n.size).sum(),
            Kind::Map(entries) => entries.iter().map(|e| e.value.size).sum(),
        };
        let bytes = match &kind {
            Kind::Scalar(Scalar::Plain(s) | Scalar::Str(s)) => s.len(),
            Kind::Seq(items) => items.iter().map(|n| n.bytes).sum(),
            Kind::Map(entries) => entries.iter().map(|e| e.key.len() + e.value.bytes).sum(),
        };
        Node {
            kind,
            mark,
            size,
            bytes,
        }
    }

    /// An empty plain scalar (YAML null) at `mark`.
    pub const fn null(mark: Mark) -> Self {
        Node {
            kind: Kind::Scalar(Scalar::Plain(String::new())),
            mark,
            size: 1,
            bytes: 0,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar(Scalar::Plain(s)) if is_null(s))
    }

    /// A short description for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Scalar(Scalar::Plain(s)) if is_null(s) => "null".into(),
            Kind::Scalar(Scalar::Plain(s)) | Kind::Scalar(Scalar::Str(s)) => {
                format!("{:?}", truncate(s, 60))
            }
            Kind::Seq(_) => "a sequence".into(),
            Kind::Map(_) => "a mapping".into(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// The node at `path` below this one, if there is one.
    pub fn at(&self, path: &YamlPath) -> Option<&Node> {
        let mut node = self;
        for seg in &path.0 {
            node = match (seg, &node.kind) {
                (Seg::Key(k), Kind::Map(_)) => &node.get(k)?.value,
                (Seg::Index(i), Kind::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// Where to point for a problem at `path`: the node there, or the nearest ancestor that exists
    /// (a missing key is reported at the mapping that should hold it).
    pub fn mark_for(&self, path: &YamlPath) -> Mark {
        let mut node = self;
        let mut mark = self.mark;
        for seg in &path.0 {
            let next = match (seg, &node.kind) {
                (Seg::Key(k), Kind::Map(_)) => node.get(k).map(|e| &e.value),
                (Seg::Index(i), Kind::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => {
                    node = n;
                    mark = n.mark;
                }
                None => break,
            }
        }
        mark
    }

    /// Where the key that ends `path` is written (for problems with the key itself).
    pub fn key_mark(&self, path: &YamlPath) -> Mark {
        if let Some((Seg::Key(k), parent)) = path.0.split_last() {
            let parent = YamlPath(parent.to_vec());
            if let Some(entry) = self.at(&parent).and_then(|p| p.get(k)) {
                return entry.key_mark;
            }
        }
        self.mark_for(path)
    }
}

pub fn is_null(plain: &str) -> bool {
    matches!(plain, "" | "~" | "null" | "Null" | "NULL")
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// A problem that stops parsing of the file, with where it is.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseProblem {
    pub mark: Mark,
    pub path: YamlPath,
    pub message: String,
}

/// Parse result: the tree (absent when the file could not be parsed at all) and every problem found.
#[derive(Debug, Default)]
pub struct Parsed {
    pub root: Option<Node>,
    pub problems: Vec<ParseProblem>,
}

fn mark(m: &Marker) -> Mark {
    Mark {
        line: m.line(),
        column: m.col() + 1,
    }
}

/// Location of byte offset `index` in `text`, 1-based.
fn position_of(bytes: &[u8], index: usize) -> Mark {
    let before = &bytes[..index.min(bytes.len())];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    Mark { line, column }
}

/// The problem with a file of `len` bytes, if it is too large to read.
pub fn size_problem(len: u64) -> Option<ParseProblem> {
    (len > MAX_FILE_BYTES).then(|| ParseProblem {
        mark: Mark { line: 1, column: 1 },
        path: YamlPath::root(),
        message: format!(
            "file is {len} bytes, more than the limit of {MAX_FILE_BYTES} bytes (1 MiB)"
        ),
    })
}

/// Parse one file. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let problem = |mark: Mark, message: String| ParseProblem {
        mark,
        path: YamlPath::root(),
        message,
    };
    if let Some(p) = size_problem(bytes.len() as u64) {
        out.problems.push(p);
        return out;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            out.problems.push(problem(
                position_of(bytes, e.valid_up_to()),
                format!(
                    "file is not valid UTF-8 (invalid byte at offset {})",
                    e.valid_up_to()
                ),
            ));
            return out;
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut builder = Builder::default();
    match builder.run(text) {
        Ok(root) => out.root = root,
        Err(p) => out.problems.push(p),
    }
    // Duplicate keys are reported in addition to (never instead of) a fatal problem.
    let mut problems = builder.duplicates;
    problems.append(&mut out.problems);
    out.problems = problems;
    out
}

enum Frame {
    Seq {
        mark: Mark,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        mark: Mark,
        anchor: usize,
        entries: Vec<Entry>,
        merges: Vec<Node>,
        pending_key: Option<(String, Mark, bool)>,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    bytes: usize,
    duplicates: Vec<ParseProblem>,
}

impl Builder {
    fn path(&self) -> YamlPath {
        let mut path = YamlPath::root();
        for frame in &self.stack {
            match frame {
                Frame::Seq { items, .. } => path = path.index(items.len()),
                Frame::Map {
                    pending_key: Some((k, _, _)),
                    ..
                } => path = path.key(k),
                Frame::Map { .. } => {}
            }
        }
        path
    }

    fn fail(&self, mark: Mark, message: impl Into<String>) -> ParseProblem {
        ParseProblem {
            mark,
            path: self.path(),
            message: message.into(),
        }
    }

    fn count(&mut self, n: usize, at: Mark) -> Result<(), ParseProblem> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(self.fail(
                at,
                format!("document expands to more than {MAX_NODES} nodes (alias expansion bomb?)"),
            ));
        }
        Ok(())
    }

    /// Counts `n` more bytes of scalar text held in memory.
    fn count_bytes(&mut self, n: usize, at: Mark) -> Result<(), ParseProblem> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > MAX_EXPANDED_BYTES {
            return Err(self.fail(
                at,
                format!(
                    "document expands to more than {MAX_EXPANDED_BYTES} bytes (16 MiB) of text (alias expansion bomb?)"
                ),
            ));
        }
        Ok(())
    }

    fn run(&mut self, text: &str) -> Result<Option<Node>, ParseProblem> {
        let mut parser = Parser::new_from_str(text);
        let mut root = None;
        let mut documents = 0;
        loop {
            let (event, marker) = parser.next_token().map_err(|e| ParseProblem {
                mark: mark(e.marker()),
                path: self.path(),
                message: format!("invalid YAML: {}", e.info()),
            })?;
            let at = mark(&marker);
            match event {
                Event::StreamEnd => return Ok(root),
                Event::StreamStart | Event::Nothing | Event::DocumentEnd => {}
                Event::DocumentStart => {
                    documents += 1;
                    if documents > 1 {
                        return Err(self.fail(
                            at,
                            "more than one YAML document in the file (remove the extra `---`)",
                        ));
                    }
                }
                Event::Alias(id) => {
                    let (size, bytes) = self
                        .anchors
                        .get(&id)
                        .map(|n| (n.size, n.bytes))
                        .ok_or_else(|| self.fail(at, "alias to an unknown anchor"))?;
                    // Counted before the copy is made.
                    self.count(size, at)?;
                    self.count_bytes(bytes, at)?;
                    let node = Node {
                        mark: at,
                        ..self.anchors[&id].clone()
                    };
                    if let Some(done) = self.add(node, 0, false)? {
                        root = Some(done);
                    }
                }
                Event::Scalar(text, style, anchor, tag) => {
                    self.count(1, at)?;
                    self.count_bytes(text.len(), at)?;
                    let scalar = match (style, tag) {
                        (_, Some(tag)) => {
                            tagged_scalar(text, &tag).map_err(|m| self.fail(at, m))?
                        }
                        (TScalarStyle::Plain, None) => Scalar::Plain(text),
                        (_, None) => Scalar::Str(text),
                    };
                    let merge_key = scalar == Scalar::Plain("<<".into());
                    let node = Node::new(Kind::Scalar(scalar), at);
                    if let Some(done) = self.add(node, anchor, merge_key)? {
                        root = Some(done);
                    }
                }
                Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                    if let Some(tag) = tag {
                        check_collection_tag(tag).map_err(|m| self.fail(at, m))?;
                    }
                    self.count(1, at)?;
                    if self.stack.len() >= MAX_DEPTH {
                        return Err(self.fail(
                            at,
                            format!("nesting is deeper than the limit of {MAX_DEPTH} levels"),
                        ));
                    }
                    if let Some(Frame::Map {
                        pending_key: None, ..
                    }) = self.stack.last()
                    {
                        return Err(self.fail(
                            at,
                            "a mapping or sequence cannot be used as a key; keys must be scalars",
                        ));
                    }
                    let frame = if matches!(event, Event::SequenceStart(..)) {
                        Frame::Seq {
                            mark: at,
                            anchor,
                            items: Vec::new(),
                        }
                    } else {
                        Frame::Map {
                            mark: at,
                            anchor,
                            entries: Vec::new(),
                            merges: Vec::new(),
                            pending_key: None,
                        }
                    };
                    self.stack.push(frame);
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let (node, anchor) = match self.stack.pop() {
                        Some(Frame::Seq {
                            mark,
                            anchor,
                            items,
                        }) => (Node::new(Kind::Seq(items), mark), anchor),
                        Some(Frame::Map {
                            mark,
                            anchor,
                            mut entries,
                            merges,
                            ..
                        }) => {
                            let mark = entries.first().map_or(mark, |e| e.key_mark);
                            self.merge(&mut entries, merges, mark)?;
                            (Node::new(Kind::Map(entries), mark), anchor)
                        }
                        None => return Err(self.fail(at, "unbalanced YAML structure")),
                    };
                    if let Some(done) = self.add(node, anchor, false)? {
                        root = Some(done);
                    }
                }
            }
        }
    }

    /// Applies `<<` merge keys: keys written in the mapping win over merged ones, earlier merge
    /// sources win over later ones.
    fn merge(
        &mut self,
        entries: &mut Vec<Entry>,
        merges: Vec<Node>,
        at: Mark,
    ) -> Result<(), ParseProblem> {
        for source in merges {
            let maps = match source.kind {
                Kind::Map(_) => vec![source],
                Kind::Seq(items) if items.iter().all(|n| matches!(n.kind, Kind::Map(_))) => items,
                _ => {
                    return Err(self.fail(
                        source.mark,
                        "the merge key `<<` takes a mapping or a sequence of mappings",
                    ))
                }
            };
            for map in maps {
                if let Kind::Map(merged) = map.kind {
                    for entry in merged {
                        if !entries.iter().any(|e| e.key == entry.key) {
                            self.count(entry.value.size, at)?;
                            entries.push(entry);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Adds a finished node to its parent; returns it when it is the document root.
    fn add(
        &mut self,
        node: Node,
        anchor: usize,
        is_merge_key: bool,
    ) -> Result<Option<Node>, ParseProblem> {
        if anchor != 0 {
            // The copy kept for aliases is memory too.
            self.count_bytes(node.bytes, node.mark)?;
            self.anchors.insert(anchor, node.clone());
        }
        let path = self.path();
        match self.stack.last_mut() {
            None => Ok(Some(node)),
            Some(Frame::Seq { items, .. }) => {
                items.push(node);
                Ok(None)
            }
            Some(Frame::Map {
                entries,
                merges,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => {
                    let key = match node.kind {
                        Kind::Scalar(Scalar::Plain(k)) | Kind::Scalar(Scalar::Str(k)) => k,
                        _ => unreachable!("collections as keys are rejected at their start"),
                    };
                    *pending_key = Some((key, node.mark, is_merge_key));
                    Ok(None)
                }
                Some((_, _, true)) => {
                    merges.push(node);
                    Ok(None)
                }
                Some((key, key_mark, false)) => {
                    if let Some(first) = entries.iter().find(|e| e.key == key) {
                        let first_line = first.key_mark.line;
                        self.duplicates.push(ParseProblem {
                            mark: key_mark,
                            path,
                            message: format!(
                                "duplicate key {key:?} (first defined on line {first_line})"
                            ),
                        });
                    } else {
                        entries.push(Entry {
                            key,
                            key_mark,
                            value: node,
                        });
                    }
                    Ok(None)
                }
            },
        }
    }
}

fn is_core_tag(tag: &Tag) -> bool {
    tag.handle == "tag:yaml.org,2002:" || tag.handle == "!!"
}

fn tagged_scalar(text: String, tag: &Tag) -> Result<Scalar, String> {
    if is_core_tag(tag) {
        match tag.suffix.as_str() {
            "str" => return Ok(Scalar::Str(text)),
            "int" | "float" | "bool" | "null" => return Ok(Scalar::Plain(text)),
            _ => {}
        }
    }
    Err(format!(
        "unsupported YAML tag `{}{}`",
        tag.handle.replace("tag:yaml.org,2002:", "!!"),
        tag.suffix
    ))
}

fn check_collection_tag(tag: &Tag) -> Result<(), String> {
    if is_core_tag(tag) && matches!(tag.suffix.as_str(), "map" | "seq") {
        Ok(())
    } else {
        Err(format!(
            "unsupported YAML tag `{}{}`",
            tag.handle.replace("tag:yaml.org,2002:", "!!"),
            tag.suffix
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(src: &str) -> Node {
        let parsed = parse(src.as_bytes());
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        parsed.root.unwrap()
    }

    fn problems(src: &[u8]) -> Vec<ParseProblem> {
        parse(src).problems
    }

    #[test]
    fn marks_are_one_based_and_point_at_values_and_keys() {
        let r = root("a: 1\nb:\n  c: 'x'\n");
        let b = r.get("b").unwrap();
        assert_eq!(b.key_mark, Mark { line: 2, column: 1 });
        let c = b.value.get("c").unwrap();
        assert_eq!(c.key_mark, Mark { line: 3, column: 3 });
        assert_eq!(c.value.mark, Mark { line: 3, column: 6 });
        assert_eq!(c.value.kind, Kind::Scalar(Scalar::Str("x".into())));
        assert_eq!(b.value.mark, Mark { line: 3, column: 3 });
    }

    #[test]
    fn duplicate_keys_are_reported_with_both_lines_and_the_first_wins() {
        let parsed = parse(b"a: 1\nb: 2\na: 3\n");
        assert_eq!(parsed.problems.len(), 1);
        let p = &parsed.problems[0];
        assert_eq!(p.mark, Mark { line: 3, column: 1 });
        assert_eq!(p.path.to_string(), "a");
        assert!(
            p.message.contains("first defined on line 1"),
            "{}",
            p.message
        );
        let r = parsed.root.unwrap();
        assert_eq!(
            r.get("a").unwrap().value.kind,
            Kind::Scalar(Scalar::Plain("1".into()))
        );
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let p = problems(b"a: 1\n  b: [\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].mark.line, 2);
        assert!(p[0].message.starts_with("invalid YAML"), "{}", p[0].message);
    }

    #[test]
    fn non_utf8_is_located_at_the_bad_byte() {
        let p = problems(b"a: 1\nb: \xff\n");
        assert_eq!(p[0].mark, Mark { line: 2, column: 4 });
        assert!(p[0].message.contains("UTF-8"));
    }

    #[test]
    fn oversized_files_are_refused_before_parsing() {
        let big = vec![b'#'; (MAX_FILE_BYTES + 1) as usize];
        assert!(problems(&big)[0].message.contains("1 MiB"));
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut src = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            src.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let p = problems(src.as_bytes());
        assert!(p[0].message.contains("alias expansion"), "{:?}", p);
    }

    /// A 700 KB anchored scalar named by 1000 aliases: 1002 nodes (far below `MAX_NODES`), but 700 MB
    /// of text once expanded. Refused at the alias that passes 16 MiB, before its copy is made.
    #[test]
    fn a_large_scalar_named_by_many_aliases_is_refused_by_its_bytes() {
        let mut src = format!("big: &big {}\nrefs:\n", "x".repeat(700_000));
        for _ in 0..1000 {
            src.push_str("  - *big\n");
        }
        assert!(src.len() < MAX_FILE_BYTES as usize);
        let started = std::time::Instant::now();
        let p = problems(src.as_bytes());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            p[0].message,
            "document expands to more than 16777216 bytes (16 MiB) of text (alias expansion bomb?)"
        );
        // 700 KB for the scalar, 700 KB for its anchor's copy, then 21 aliases fit in 16 MiB.
        assert_eq!(p[0].path.to_string(), "refs[21]");
        assert_eq!(
            p[0].mark,
            Mark {
                line: 24,
                column: 5
            }
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn aliases_within_the_byte_limit_are_expanded() {
        let mut src = format!("big: &big {}\nrefs:\n", "x".repeat(700_000));
        for _ in 0..20 {
            src.push_str("  - *big\n");
        }
        let r = root(&src);
        let Kind::Seq(refs) = &r.get("refs").unwrap().value.kind else {
            panic!("refs is a sequence");
        };
        assert_eq!(refs.len(), 20);
        assert_eq!(refs[19].bytes, 700_000);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let src = "[".repeat(200) + &"]".repeat(200);
        assert!(problems(src.as_bytes())[0].message.contains("deeper"));
    }

    #[test]
    fn merge_keys_fill_in_without_overriding() {
        let r = root("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\n");
        let c = &r.get("c").unwrap().value;
        assert_eq!(
            c.get("x").unwrap().value.kind,
            Kind::Scalar(Scalar::Plain("1".into()))
        );
        assert_eq!(
            c.get("y").unwrap().value.kind,
            Kind::Scalar(Scalar::Plain("3".into()))
        );
    }

    #[test]
    fn multiple_documents_and_odd_tags_are_refused() {
        assert!(problems(b"a: 1\n---\nb: 2\n")[0]
            .message
            .contains("more than one"));
        assert!(problems(b"a: !custom 1\n")[0].message.contains("tag"));
        assert_eq!(
            root("a: !!str 12\n").get("a").unwrap().value.kind,
            Kind::Scalar(Scalar::Str("12".into()))
        );
    }

    #[test]
    fn empty_file_has_no_root_and_no_problem() {
        let parsed = parse(b"");
        assert!(parsed.problems.is_empty());
        assert!(parsed.root.is_none());
    }

    #[test]
    fn paths_display_like_yaml_paths() {
        let p = YamlPath::root()
            .key("apps")
            .key("api")
            .key("steps")
            .index(2)
            .key("a.b");
        assert_eq!(p.to_string(), "apps.api.steps[2][\"a.b\"]");
    }
}
