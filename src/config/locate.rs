//! Where things are in a TOML file: a tree of byte spans built from the same source the typed
//! structs come from, so that any error (toml's own or a semantic one found later) can name the
//! dotted field (`stage[1].pref.beta`) and the 1-based line and column of the offending text.
//!
//! The tree is built from `toml_edit`'s parsed document, which keeps every key's and value's
//! byte span (the `toml` crate parses with the same `toml_edit`, so its error spans are the same
//! ranges). Tables made implicitly by dotted keys (`pref.beta = 0.1`) have no span of their own;
//! their keys do.

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, TableLike, Value};

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
        let document = ImDocument::parse(source).ok()?;
        Some(Node::table(document.as_table(), document.as_table().span()))
    }

    fn table(table: &dyn TableLike, span: Option<Range<usize>>) -> Node {
        let entries = table
            .iter()
            .map(|(name, item)| {
                let span = table.key(name).and_then(toml_edit::Key::span);
                (Key { name: name.to_owned(), span }, Node::item(item))
            })
            .collect();
        Node { span, kind: Kind::Table(entries) }
    }

    fn item(item: &Item) -> Node {
        match item {
            Item::None => Node::default(),
            Item::Value(value) => Node::value(value),
            Item::Table(table) => Node::table(table, Table::span(table)),
            Item::ArrayOfTables(tables) => Node {
                span: tables.span(),
                kind: Kind::Array(tables.iter().map(|t| Node::table(t, t.span())).collect()),
            },
        }
    }

    fn value(value: &Value) -> Node {
        match value {
            Value::Array(array) => {
                Node { span: array.span(), kind: Kind::Array(array.iter().map(Node::value).collect()) }
            }
            Value::InlineTable(table) => Node::table(table, table.span()),
            leaf => Node { span: leaf.span(), kind: Kind::Leaf },
        }
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
