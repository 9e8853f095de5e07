//! Where things are in a TOML file: a tree of byte spans built from the same source the typed
//! structs come from, so that any error (toml's own or a semantic one found later) can name the
//! dotted field (`stage[1].pref.beta`) and the 1-based line and column of the offending text.
//!
//! `toml` 0.8 hands out spans only through `toml::Spanned`, and `Spanned<T>` itself fails on
//! tables that have no span (tables made implicitly by dotted keys, `pref.beta = 0.1`). The tree
//! below therefore speaks the same serde protocol as `Spanned` (a struct with three private
//! field names) but falls back to an unspanned node wherever the deserializer has no span.

use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

// The names `serde_spanned` (toml's span carrier) uses to ask a deserializer for a span. They are
// fixed for `toml` 0.8 (serde_spanned 0.6); the round-trip tests below fail loudly if they change.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];
// toml presents a datetime as a one-entry map under this key.
const DATETIME_KEY: &str = "$__toml_private_datetime";

/// One segment of a field path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// `name` in `a.name`.
    Key(String),
    /// `1` in `stage[1]`.
    Index(usize),
}

/// A dotted field path such as `stage[1].pref.beta`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(pub(crate) Vec<Segment>);

impl FieldPath {
    /// The path one key further down.
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut out = self.clone();
        out.0.push(Segment::Key(key.to_owned()));
        out
    }

    /// The path one array index further down.
    pub(crate) fn index(&self, index: usize) -> Self {
        let mut out = self.clone();
        out.0.push(Segment::Index(index));
        out
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A value of the document with its byte span where toml knows it.
#[derive(Debug, Default)]
pub(crate) struct Node {
    span: Option<Range<usize>>,
    kind: Kind,
}

#[derive(Debug, Default)]
enum Kind {
    Table(Vec<(Key, Node)>),
    Array(Vec<Node>),
    #[default]
    Leaf,
}

/// A table key with its byte span where toml knows it.
#[derive(Debug)]
struct Key {
    name: String,
    span: Option<Range<usize>>,
}

impl Node {
    /// Builds the tree of `source`; `None` when it is not valid TOML (the typed parse reports that).
    pub(crate) fn parse(source: &str) -> Option<Node> {
        toml::from_str(source).ok()
    }

    /// The field an error's byte range `range` points at: the one whose key or value spans
    /// exactly that range (toml reports unknown keys at the key, wrong values at the value and
    /// missing fields at the enclosing table), else the deepest one covering it.
    pub(crate) fn path_within(&self, range: &Range<usize>) -> Option<FieldPath> {
        let exact = |span: &Range<usize>| span == range;
        let covers = |span: &Range<usize>| span.start <= range.start && range.end <= span.end;
        let mut segments = Vec::new();
        if self.find(&exact, &mut segments) {
            return Some(FieldPath(segments));
        }
        (!range.is_empty() && self.find(&covers, &mut segments)).then_some(FieldPath(segments))
    }

    /// Pushes onto `out` the path of the deepest field whose key or value span satisfies `hit`.
    fn find(&self, hit: &dyn Fn(&Range<usize>) -> bool, out: &mut Vec<Segment>) -> bool {
        let hits = |span: &Option<Range<usize>>| span.as_ref().is_some_and(hit);
        match &self.kind {
            Kind::Table(entries) => {
                for (key, child) in entries {
                    out.push(Segment::Key(key.name.clone()));
                    if child.find(hit, out) || hits(&key.span) || hits(&child.span) {
                        return true;
                    }
                    out.pop();
                }
            }
            Kind::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    out.push(Segment::Index(i));
                    if child.find(hit, out) || hits(&child.span) {
                        return true;
                    }
                    out.pop();
                }
            }
            Kind::Leaf => {}
        }
        false
    }

    /// The byte offset that best locates `path`: the value's start when known, else its key's,
    /// else (for a field the file leaves out) that of the nearest enclosing field toml has a
    /// span for.
    pub(crate) fn offset_of(&self, path: &FieldPath) -> Option<usize> {
        let mut node = self;
        let mut best = self.span.as_ref().map(|s| s.start);
        for segment in &path.0 {
            let next = match (segment, &node.kind) {
                (Segment::Key(name), Kind::Table(entries)) => {
                    entries.iter().find(|(key, _)| &key.name == name).map(|(key, child)| {
                        if let Some(span) = &key.span {
                            best = Some(span.start);
                        }
                        child
                    })
                }
                (Segment::Index(i), Kind::Array(items)) => items.get(*i),
                _ => None,
            };
            let Some(next) = next else { break };
            node = next;
            if let Some(span) = &node.span {
                best = Some(span.start);
            }
        }
        best
    }
}

/// 1-based line and column (in characters) of byte `offset` in `source`.
pub(crate) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, NodeVisitor)
    }
}

/// A node deserialized without asking for a span (the inside of a spanned value).
struct Inner(Node);

impl<'de> Deserialize<'de> for Inner {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor).map(Inner)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::default())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node { span: None, kind: Kind::Array(items) })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        let (mut start, mut end, mut inner) = (None, None, None);
        while let Some(key) = map.next_key::<Key>()? {
            // The span protocol's keys come without spans of their own; real keys have spans.
            match key.name.as_str() {
                SPANNED_START if key.span.is_none() => start = Some(map.next_value::<usize>()?),
                SPANNED_END if key.span.is_none() => end = Some(map.next_value::<usize>()?),
                SPANNED_VALUE if key.span.is_none() => inner = Some(map.next_value::<Inner>()?.0),
                DATETIME_KEY if key.span.is_none() => {
                    map.next_value::<IgnoredAny>()?;
                    return Ok(Node::default());
                }
                _ => {
                    let value = map.next_value::<Node>()?;
                    entries.push((key, value));
                }
            }
        }
        if let Some(mut node) = inner {
            if let (Some(start), Some(end)) = (start, end) {
                node.span = Some(start..end);
            }
            return Ok(node);
        }
        Ok(Node { span: None, kind: Kind::Table(entries) })
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML key")
    }

    fn visit_str<E>(self, name: &str) -> Result<Key, E> {
        Ok(Key { name: name.to_owned(), span: None })
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
        let (mut start, mut end, mut name) = (None, None, None);
        while let Some(field) = map.next_key::<String>()? {
            match field.as_str() {
                SPANNED_START => start = Some(map.next_value::<usize>()?),
                SPANNED_END => end = Some(map.next_value::<usize>()?),
                _ => name = Some(map.next_value::<String>()?),
            }
        }
        let span = start.zip(end).map(|(start, end)| start..end);
        Ok(Key { name: name.unwrap_or_default(), span })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "[run]\nname = \"x\"\nwhen = 1979-05-27\n\n[model]\npath = \"m\"\n\n[[stage]]\nname = \"a\"\npref.beta = 0.1\npref.data = [\"a\", \"b\"]\n\n[[stage]]\nname = \"b\"\n[stage.sft]\ndata = [\"x\"]\n";

    fn offset(needle: &str) -> usize {
        SOURCE.find(needle).expect("needle is in the test source")
    }

    #[test]
    fn finds_paths_of_keys_and_values() {
        let tree = Node::parse(SOURCE).expect("valid TOML");
        let at = |needle: &str| {
            let start = offset(needle);
            tree.path_within(&(start..start + 1)).map(|p| p.to_string())
        };
        assert_eq!(at("name = \"x\"").as_deref(), Some("run.name"));
        assert_eq!(at("1979").as_deref(), Some("run.when"));
        assert_eq!(at("beta").as_deref(), Some("stage[0].pref.beta"));
        assert_eq!(at("\"b\"]").as_deref(), Some("stage[0].pref.data[1]"));
        assert_eq!(at("\"x\"]").as_deref(), Some("stage[1].sft.data[0]"));
    }

    #[test]
    fn locates_paths_and_falls_back_to_parents() {
        let tree = Node::parse(SOURCE).expect("valid TOML");
        let path = FieldPath::default().key("stage").index(0).key("pref").key("data").index(1);
        assert_eq!(tree.offset_of(&path), Some(offset("\"b\"]")));
        let missing = FieldPath::default().key("stage").index(1).key("sft").key("weight");
        let got = tree.offset_of(&missing).expect("some parent has a span");
        assert_eq!(line_column(SOURCE, got).0, 15, "the [stage.sft] header");
    }

    #[test]
    fn line_columns_count_characters() {
        assert_eq!(line_column("a\nbé = 1", 5), (2, 3), "after b and é");
        assert_eq!(line_column("ab", 0), (1, 1));
    }
}
