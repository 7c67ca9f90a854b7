//! pipeline.toml as a tree of values that remember where in the file they came from, so every
//! problem can point at its line and column, even after defaults and environment overrides were
//! merged into a service.

use std::ops::Range;
use toml::de::{DeTable, DeValue};

/// A value and its place in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Range<usize>,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Node>),
    Table(Table),
}

/// A key and where it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub span: Range<usize>,
}

/// A table keeps the order of its keys as written.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub entries: Vec<(Key, Node)>,
}

impl Table {
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }

    pub fn key(&self, name: &str) -> Option<&Key> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, _)| k)
    }

    /// Sets `key` to `node`, replacing an existing value; tables are merged key by key.
    pub fn merge_entry(&mut self, key: Key, node: Node) {
        match self.entries.iter_mut().find(|(k, _)| k.name == key.name) {
            Some((_, existing)) => match (&mut existing.value, node.value) {
                (Value::Table(base), Value::Table(over)) => {
                    for (k, v) in over.entries {
                        base.merge_entry(k, v);
                    }
                }
                (slot, value) => {
                    *slot = value;
                    existing.span = node.span;
                }
            },
            None => self.entries.push((key, node)),
        }
    }

    /// `self` with every entry of `over` merged on top.
    pub fn merged(&self, over: &Table) -> Table {
        let mut out = self.clone();
        for (k, v) in &over.entries {
            out.merge_entry(k.clone(), v.clone());
        }
        out
    }
}

impl Node {
    /// The span of the value at a JSON pointer (`/steps/2`) below this node, or of the deepest
    /// part of the path that exists.
    pub fn span_at(&self, pointer: &str) -> Range<usize> {
        self.at(pointer).span.clone()
    }

    /// The node at a JSON pointer below this one, or the deepest part of the path that exists.
    pub fn at(&self, pointer: &str) -> &Node {
        let mut node = self;
        for segment in pointer.split('/').skip(1) {
            let segment = segment.replace("~1", "/").replace("~0", "~");
            let next = match &node.value {
                Value::Table(t) => t.get(&segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node
    }
}

impl Value {
    /// The TOML type's name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a date-time",
            Value::Array(_) => "an array",
            Value::Table(_) => "a table",
        }
    }

    /// As JSON, for plugin configuration.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::String(s) | Value::Datetime(s) => serde_json::Value::String(s.clone()),
            Value::Integer(i) => (*i).into(),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
            }
            Value::Boolean(b) => (*b).into(),
            Value::Array(items) => items.iter().map(|n| n.value.to_json()).collect(),
            Value::Table(t) => t
                .entries
                .iter()
                .map(|(k, v)| (k.name.clone(), v.value.to_json()))
                .collect(),
        }
    }

    /// As a `toml::Value`, to hand a sub-table to serde.
    pub fn to_toml(&self) -> toml::Value {
        match self {
            Value::String(s) => toml::Value::String(s.clone()),
            Value::Datetime(s) => s
                .parse()
                .map(toml::Value::Datetime)
                .unwrap_or(toml::Value::String(s.clone())),
            Value::Integer(i) => toml::Value::Integer(*i),
            Value::Float(f) => toml::Value::Float(*f),
            Value::Boolean(b) => toml::Value::Boolean(*b),
            Value::Array(items) => {
                toml::Value::Array(items.iter().map(|n| n.value.to_toml()).collect())
            }
            Value::Table(t) => toml::Value::Table(
                t.entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.value.to_toml()))
                    .collect(),
            ),
        }
    }
}

/// Parses TOML into a spanned tree; a syntax error comes back with its span.
pub fn parse(source: &str) -> Result<Node, (String, Range<usize>)> {
    let table =
        DeTable::parse(source).map_err(|e| (e.message().to_string(), e.span().unwrap_or(0..0)))?;
    let span = table.span();
    Ok(Node {
        span,
        value: Value::Table(convert_table(table.get_ref())),
    })
}

fn convert_table(table: &DeTable<'_>) -> Table {
    Table {
        entries: table
            .iter()
            .map(|(k, v)| {
                (
                    Key {
                        name: k.get_ref().to_string(),
                        span: k.span(),
                    },
                    Node {
                        span: v.span(),
                        value: convert(v.get_ref()),
                    },
                )
            })
            .collect(),
    }
}

fn convert(value: &DeValue<'_>) -> Value {
    match value {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => Value::Integer(
            i64::from_str_radix(
                i.as_str()
                    .replace('_', "")
                    .trim_start_matches("0x")
                    .trim_start_matches("0o")
                    .trim_start_matches("0b"),
                i.radix(),
            )
            .unwrap_or(0),
        ),
        DeValue::Float(f) => Value::Float(f.as_str().replace('_', "").parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Value::Boolean(*b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(items) => Value::Array(
            items
                .iter()
                .map(|n| Node {
                    span: n.span(),
                    value: convert(n.get_ref()),
                })
                .collect(),
        ),
        DeValue::Table(t) => Value::Table(convert_table(t)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_spans_and_order() {
        let src = "b = 1\na = \"x\"\n[t]\nc = [true, 2.5]\n";
        let Value::Table(t) = parse(src).unwrap().value else {
            panic!()
        };
        assert_eq!(
            t.entries
                .iter()
                .map(|(k, _)| k.name.as_str())
                .collect::<Vec<_>>(),
            ["b", "a", "t"]
        );
        let a = t.get("a").unwrap();
        assert_eq!(&src[a.span.clone()], "\"x\"");
        assert_eq!(t.get("b").unwrap().value, Value::Integer(1));
        let Value::Table(inner) = &t.get("t").unwrap().value else {
            panic!()
        };
        assert_eq!(
            inner.get("c").unwrap().value.to_json(),
            serde_json::json!([true, 2.5])
        );
    }

    #[test]
    fn merging_overrides_scalars_and_merges_tables() {
        let Value::Table(base) = parse("x = 1\n[cfg]\na = 1\nb = 2\n").unwrap().value else {
            panic!()
        };
        let Value::Table(over) = parse("x = 5\n[cfg]\nb = 3\n").unwrap().value else {
            panic!()
        };
        let m = base.merged(&over);
        assert_eq!(m.get("x").unwrap().value, Value::Integer(5));
        assert_eq!(
            m.get("cfg").unwrap().value.to_json(),
            serde_json::json!({"a": 1, "b": 3})
        );
    }

    #[test]
    fn syntax_errors_have_a_span() {
        let (message, span) = parse("a = \n").unwrap_err();
        assert!(!message.is_empty());
        assert!(span.start <= 4);
    }
}
