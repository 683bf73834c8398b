//! A lenient serde `Deserializer` over the positioned YAML tree. It fills the raw types and, instead of
//! stopping at the first problem, records each wrong type, unknown key and unknown variant with its
//! path and location, substitutes a neutral value and goes on, so that one run reports every problem.
//! It owns YAML's scalar rules (what is null, a bool, a number). It knows nothing of kube-free's types.

use super::diag::{Mark, YamlPath};
use super::yaml::{is_null, truncate, Entry, Kind, Node, Scalar};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use std::cell::RefCell;
use std::fmt;

/// A problem found while filling the raw types.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub path: YamlPath,
    pub mark: Mark,
    pub message: String,
}

/// Name of the serde struct that raw types use for "keep this value as YAML, validation reads it":
/// the deserializer checks nothing there, so that a key taking several shapes is judged once, later.
pub const LOOSE: &str = "$kube_free::Loose";

/// An error that stopped deserialization (rare: only from custom visitors). Carries where it happened.
#[derive(Debug)]
pub struct Error {
    message: String,
    at: Option<(YamlPath, Mark)>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error {
            message: msg.to_string(),
            at: None,
        }
    }
}

/// Fills `T` from `node`; returns the value (absent only when a custom visitor gave up) and every
/// problem found, in document order.
pub fn from_node<'de, T: de::Deserialize<'de>>(node: &Node) -> (Option<T>, Vec<Problem>) {
    let sink = RefCell::new(Vec::new());
    let de = De {
        node,
        mark: node.mark,
        path: YamlPath::root(),
        sink: &sink,
    };
    let result = T::deserialize(de);
    let mut problems = sink.into_inner();
    let value = match result {
        Ok(v) => Some(v),
        Err(e) => {
            let (path, mark) = e.at.unwrap_or((YamlPath::root(), node.mark));
            problems.push(Problem {
                path,
                mark,
                message: e.message,
            });
            None
        }
    };
    problems.sort_by_key(|p| p.mark);
    (value, problems)
}

struct De<'a> {
    node: &'a Node,
    /// Where problems with this value are reported: the node's own mark, or for a value that is not
    /// written (an enum's missing payload), the mark of what stands for it.
    mark: Mark,
    path: YamlPath,
    sink: &'a RefCell<Vec<Problem>>,
}

/// The meaning of a plain scalar under YAML's core schema.
enum Plain<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(&'a str),
}

fn resolve(text: &str) -> Plain<'_> {
    if is_null(text) {
        return Plain::Null;
    }
    match text {
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse::<i128>() {
            return Plain::Int(n);
        }
    }
    let looks_numeric = digits
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if looks_numeric {
        if let Ok(f) = text.parse::<f64>() {
            return Plain::Float(f);
        }
    }
    Plain::Str(text)
}

impl<'a> De<'a> {
    fn child(&self, node: &'a Node, path: YamlPath) -> De<'a> {
        De {
            node,
            mark: node.mark,
            path,
            sink: self.sink,
        }
    }

    /// The missing payload of the enum written at this node.
    fn absent(&self) -> De<'a> {
        De {
            node: &NULL,
            mark: self.mark,
            path: self.path.clone(),
            sink: self.sink,
        }
    }

    fn record(&self, mark: Mark, path: YamlPath, message: String) {
        self.sink.borrow_mut().push(Problem {
            path,
            mark,
            message,
        });
    }

    fn wrong_type(&self, expected: &str) {
        self.record(
            self.mark,
            self.path.clone(),
            format!("expected {expected}, found {}", self.node.describe()),
        );
    }

    /// Gives a visitor error the location of this node unless it already has one.
    fn locate(&self, mut e: Error) -> Error {
        if e.at.is_none() {
            e.at = Some((self.path.clone(), self.mark));
        }
        e
    }

    fn plain(&self) -> Option<Plain<'a>> {
        match &self.node.kind {
            Kind::Scalar(Scalar::Plain(s)) => Some(resolve(s)),
            _ => None,
        }
    }

    fn integer(&self, expected: &str, min: i128, max: i128) -> i128 {
        match self.plain() {
            Some(Plain::Int(n)) if (min..=max).contains(&n) => n,
            Some(Plain::Int(n)) => {
                self.record(
                    self.mark,
                    self.path.clone(),
                    format!("{n} is out of range for {expected} ({min} to {max})"),
                );
                0
            }
            _ => {
                self.wrong_type(expected);
                0
            }
        }
    }

    fn string(&self) -> &'a str {
        match &self.node.kind {
            Kind::Scalar(Scalar::Str(s)) => s,
            Kind::Scalar(Scalar::Plain(s)) if !is_null(s) => s,
            _ => {
                self.wrong_type("a string");
                ""
            }
        }
    }

    fn entries(&self, expected: &str) -> &'a [Entry] {
        match &self.node.kind {
            Kind::Map(entries) => entries,
            _ if self.node.is_null() => &[],
            _ => {
                self.wrong_type(expected);
                &[]
            }
        }
    }
}

macro_rules! integers {
    ($($method:ident $visit:ident $ty:ty, $name:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let n = self.integer($name, <$ty>::MIN as i128, <$ty>::MAX as i128);
            visitor.$visit(n as $ty).map_err(|e| self.locate(e))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for De<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.node.kind {
            Kind::Scalar(Scalar::Str(s)) => visitor.visit_str(s),
            Kind::Scalar(Scalar::Plain(s)) => match resolve(s) {
                Plain::Null => visitor.visit_unit(),
                Plain::Bool(b) => visitor.visit_bool(b),
                Plain::Int(n) => match i64::try_from(n) {
                    Ok(n) => visitor.visit_i64(n),
                    Err(_) => visitor.visit_str(s),
                },
                Plain::Float(f) => visitor.visit_f64(f),
                Plain::Str(s) => visitor.visit_str(s),
            },
            Kind::Seq(_) => return self.deserialize_seq(visitor),
            Kind::Map(_) => return self.deserialize_map(visitor),
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let b = match self.plain() {
            Some(Plain::Bool(b)) => b,
            _ => {
                self.wrong_type("true or false");
                false
            }
        };
        visitor.visit_bool(b).map_err(|e| self.locate(e))
    }

    integers! {
        deserialize_i8 visit_i8 i8, "an integer";
        deserialize_i16 visit_i16 i16, "an integer";
        deserialize_i32 visit_i32 i32, "an integer";
        deserialize_i64 visit_i64 i64, "an integer";
        deserialize_u8 visit_u8 u8, "a whole number";
        deserialize_u16 visit_u16 u16, "a whole number";
        deserialize_u32 visit_u32 u32, "a whole number";
        deserialize_u64 visit_u64 u64, "a whole number";
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let f = match self.plain() {
            Some(Plain::Float(f)) if f.is_finite() => f,
            Some(Plain::Int(n)) => n as f64,
            _ => {
                self.wrong_type("a number");
                0.0
            }
        };
        visitor.visit_f64(f).map_err(|e| self.locate(e))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let s = self.string();
        visitor.visit_str(s).map_err(|e| self.locate(e))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if !self.node.is_null() {
            self.wrong_type("null");
        }
        visitor.visit_unit().map_err(|e| self.locate(e))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let items: &[Node] = match &self.node.kind {
            Kind::Seq(items) => items,
            _ if self.node.is_null() => &[],
            _ => {
                self.wrong_type("a sequence");
                &[]
            }
        };
        let access = SeqAccess {
            de: &self,
            items: items.iter().enumerate(),
        };
        visitor.visit_seq(access).map_err(|e| self.locate(e))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let entries = self.entries("a mapping");
        let access = MapAccess {
            de: &self,
            entries: entries.iter().collect::<Vec<_>>().into_iter(),
            value: None,
        };
        visitor.visit_map(access).map_err(|e| self.locate(e))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == LOOSE {
            return visitor.visit_unit().map_err(|e| self.locate(e));
        }
        let entries = self.entries("a mapping");
        let mut known = Vec::with_capacity(entries.len());
        for entry in entries {
            if fields.contains(&entry.key.as_str()) {
                known.push(entry);
            } else {
                self.record(
                    entry.key_mark,
                    self.path.key(&entry.key),
                    unknown_key_message(&entry.key, fields),
                );
            }
        }
        let access = MapAccess {
            de: &self,
            entries: known.into_iter(),
            value: None,
        };
        visitor.visit_map(access).map_err(|e| self.locate(e))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // `name` alone, or `{ name: payload }`.
        let (written, payload) = match &self.node.kind {
            Kind::Scalar(Scalar::Plain(s) | Scalar::Str(s)) if !is_null(s) => (s.as_str(), None),
            Kind::Map(entries) if entries.len() == 1 => (
                entries[0].key.as_str(),
                Some(self.child(&entries[0].value, self.path.key(&entries[0].key))),
            ),
            _ => {
                self.wrong_type(&format!("one of {}", list(variants)));
                ("", None)
            }
        };
        let variant = match variants.iter().find(|v| **v == written) {
            Some(v) => v,
            None => {
                if !written.is_empty() {
                    self.record(
                        self.mark,
                        self.path.clone(),
                        format!(
                            "unknown value {:?}, expected one of {}",
                            truncate(written, 60),
                            list(variants)
                        ),
                    );
                }
                // Go on with the first variant and no payload: this path is reported, so nothing
                // below it will be reported again.
                return visitor
                    .visit_enum(EnumAccess {
                        variant: variants[0],
                        written_with_payload: false,
                        de: self.absent(),
                        quiet: true,
                    })
                    .map_err(|e| self.locate(e));
            }
        };
        let written_with_payload = payload.is_some();
        let de = payload.unwrap_or_else(|| self.absent());
        visitor
            .visit_enum(EnumAccess {
                variant,
                written_with_payload,
                de,
                quiet: false,
            })
            .map_err(|e| self.locate(e))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

/// Stands in for a missing payload; problems with it are reported at the enum's mark.
static NULL: Node = Node::null(Mark { line: 0, column: 0 });

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_key_message(key: &str, fields: &[&str]) -> String {
    let suggestion = fields
        .iter()
        .map(|f| (edit_distance(key, f), f))
        .filter(|(d, f)| *d <= 2 && *d < f.len())
        .min();
    match suggestion {
        Some((_, f)) => format!("unknown key {key:?} (did you mean `{f}`?)"),
        None if fields.is_empty() => format!("unknown key {key:?} (no keys are allowed here)"),
        None => format!("unknown key {key:?}, expected one of {}", list(fields)),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

struct SeqAccess<'a, 'b> {
    de: &'b De<'a>,
    items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
}

impl<'de> de::SeqAccess<'de> for SeqAccess<'_, '_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.items.next() {
            Some((i, node)) => seed
                .deserialize(self.de.child(node, self.de.path.index(i)))
                .map(Some),
            None => Ok(None),
        }
    }
}

struct MapAccess<'a, 'b> {
    de: &'b De<'a>,
    entries: std::vec::IntoIter<&'a Entry>,
    value: Option<&'a Entry>,
}

impl<'de> de::MapAccess<'de> for MapAccess<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some(entry) => {
                self.value = Some(entry);
                let key: de::value::StrDeserializer<'_, Error> =
                    entry.key.as_str().into_deserializer();
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let entry = self
            .value
            .take()
            .expect("serde calls next_value after next_key");
        seed.deserialize(self.de.child(&entry.value, self.de.path.key(&entry.key)))
    }
}

struct EnumAccess<'a> {
    variant: &'static str,
    /// Whether the variant was written with a payload (`{ name: payload }`).
    written_with_payload: bool,
    de: De<'a>,
    /// Problems at this path are reported already.
    quiet: bool,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = Error;
    type Variant = VariantAccess<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, VariantAccess<'a>), Error> {
        let key: de::value::StrDeserializer<'_, Error> = self.variant.into_deserializer();
        let access = VariantAccess {
            variant: self.variant,
            written_with_payload: self.written_with_payload,
            de: self.de,
            quiet: self.quiet,
        };
        Ok((seed.deserialize(key)?, access))
    }
}

struct VariantAccess<'a> {
    variant: &'static str,
    written_with_payload: bool,
    de: De<'a>,
    quiet: bool,
}

impl<'de> de::VariantAccess<'de> for VariantAccess<'_> {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        if self.written_with_payload && !self.quiet {
            self.de.record(
                self.de.mark,
                self.de.path.clone(),
                format!("`{}` takes no settings; write it alone", self.variant),
            );
        }
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        if !self.written_with_payload && !self.quiet {
            self.de.record(
                self.de.mark,
                self.de.path.clone(),
                format!(
                    "`{v}` takes settings; write it as a mapping: `{{ {v}: {{ ... }} }}`",
                    v = self.variant
                ),
            );
        }
        seed.deserialize(self.de)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_seq(self.de, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_struct(self.de, "", fields, visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        port: Option<u16>,
        name: Option<String>,
        on: Option<bool>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        items: BTreeMap<String, Inner>,
        mode: Option<Mode>,
        list: Option<Vec<u8>>,
        ratio: Option<f64>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum Mode {
        #[serde(rename = "fast")]
        Fast,
        #[serde(rename = "slow")]
        Slow(Inner),
    }

    fn load(src: &str) -> (Option<Outer>, Vec<String>) {
        let root = crate::desired::yaml::parse(src.as_bytes()).root.unwrap();
        let (v, problems) = from_node::<Outer>(&root);
        let msgs = problems
            .iter()
            .map(|p| {
                format!(
                    "{}:{}: {}: {}",
                    p.mark.line, p.mark.column, p.path, p.message
                )
            })
            .collect();
        (v, msgs)
    }

    #[test]
    fn collects_every_problem_and_goes_on() {
        let (v, msgs) = load(
            "items:\n  a: {port: 70000, nmae: x}\n  b: {port: http, on: yes}\nmode: medium\nlist: [1, x]\nextra: 1\n",
        );
        assert_eq!(
            msgs,
            vec![
                "2:13: items.a.port: 70000 is out of range for a whole number (0 to 65535)",
                "2:20: items.a.nmae: unknown key \"nmae\" (did you mean `name`?)",
                "3:13: items.b.port: expected a whole number, found \"http\"",
                "3:23: items.b.on: expected true or false, found \"yes\"",
                "4:7: mode: unknown value \"medium\", expected one of `fast`, `slow`",
                "5:11: list[1]: expected a whole number, found \"x\"",
                "6:1: extra: unknown key \"extra\", expected one of `items`, `mode`, `list`, `ratio`",
            ]
        );
        assert!(v.is_some());
    }

    #[test]
    fn enums_take_a_name_or_a_single_key_mapping() {
        let (v, msgs) = load("mode: {slow: {port: 1}}\nratio: 0.5\n");
        assert!(msgs.is_empty(), "{msgs:?}");
        let v = v.unwrap();
        assert_eq!(
            v.mode,
            Some(Mode::Slow(Inner {
                port: Some(1),
                name: None,
                on: None
            }))
        );
        assert_eq!(v.ratio, Some(0.5));
        let (_, msgs) = load("mode: fast\n");
        assert!(msgs.is_empty(), "{msgs:?}");
    }

    #[test]
    fn quoted_numbers_are_strings_and_plain_text_is_a_string() {
        let (_, msgs) = load("items:\n  a: {port: \"80\", name: 1.10}\n");
        assert_eq!(
            msgs,
            vec!["2:13: items.a.port: expected a whole number, found \"80\""]
        );
        let (v, _) = load("items:\n  a: {name: 1.10}\n");
        assert_eq!(v.unwrap().items["a"].name.as_deref(), Some("1.10"));
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("nmae", "name"), 2);
        assert_eq!(edit_distance("port", "port"), 0);
        assert_eq!(edit_distance("ports", "port"), 1);
    }
}
