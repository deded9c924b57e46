//! `fieldPath` lookup: the original's `unstructured.NestedField*` semantics, plus list indexes and
//! `*` (a deliberate extension, see the module docs).

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::gojson::{GoNumber, go_number, go_type, go_v, go_v_map};

/// The object being evaluated: the item's object, with `metadata` replaced when the namespace
/// was defaulted (so the original object need not be copied).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Root<'v> {
    pub(crate) object: &'v Map<String, Value>,
    /// `metadata` as it is after namespace defaulting, if it differs from the object's.
    pub(crate) metadata: Option<&'v Value>,
}

impl<'v> Root<'v> {
    /// The object as is.
    pub(crate) fn plain(object: &'v Map<String, Value>) -> Self {
        Root {
            object,
            metadata: None,
        }
    }

    pub(crate) fn get(self, key: &str) -> Option<&'v Value> {
        match self.metadata {
            Some(metadata) if key == "metadata" => Some(metadata),
            _ => self.object.get(key),
        }
    }

    /// Entries, `metadata` replaced (or added).
    pub(crate) fn entries(self) -> impl Iterator<Item = (&'v str, &'v Value)> {
        let replaced = self.metadata.map(|m| ("metadata", m)).into_iter();
        self.object
            .iter()
            .filter(move |(k, _)| self.metadata.is_none() || k.as_str() != "metadata")
            .map(|(k, v)| (k.as_str(), v))
            .chain(replaced)
    }

    pub(crate) fn len(self) -> usize {
        let added = self.metadata.is_some() && !self.object.contains_key("metadata");
        self.object.len() + usize::from(added)
    }
}

/// A borrowed JSON node: the object itself or a value inside it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum JRef<'v> {
    /// The top-level object.
    Root(Root<'v>),
    /// Any value.
    Val(&'v Value),
}

impl<'v> JRef<'v> {
    /// Whether the node is a map (the root or a JSON object).
    pub(crate) fn is_map(self) -> bool {
        matches!(self, JRef::Root(_) | JRef::Val(Value::Object(_)))
    }

    /// The value under `key` of a map node.
    pub(crate) fn get(self, key: &str) -> Option<&'v Value> {
        match self {
            JRef::Root(root) => root.get(key),
            JRef::Val(Value::Object(m)) => m.get(key),
            JRef::Val(_) => None,
        }
    }

    /// Entries of a map node (none for other nodes).
    pub(crate) fn entries(self) -> Box<dyn Iterator<Item = (&'v str, &'v Value)> + 'v> {
        match self {
            JRef::Root(root) => Box::new(root.entries()),
            JRef::Val(Value::Object(m)) => Box::new(m.iter().map(|(k, v)| (k.as_str(), v))),
            JRef::Val(_) => Box::new(std::iter::empty()),
        }
    }

    pub(crate) fn as_value(self) -> Option<&'v Value> {
        match self {
            JRef::Val(v) => Some(v),
            JRef::Root(_) => None,
        }
    }

    fn is_null(self) -> bool {
        matches!(self, JRef::Val(Value::Null))
    }

    fn go_v(self) -> String {
        match self {
            JRef::Root(root) => go_v_map(root.object),
            JRef::Val(v) => go_v(v),
        }
    }

    fn go_type(self) -> &'static str {
        match self {
            JRef::Root(_) => "map[string]interface {}",
            JRef::Val(v) => go_type(v),
        }
    }
}

/// A parsed `fieldPath`: `.`-separated keys; on lists, a decimal segment is an index and `*`
/// every element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldPath {
    segments: Vec<String>,
    wildcard: bool,
}

impl FieldPath {
    pub(crate) fn parse(path: &str) -> Self {
        let segments: Vec<String> = path.split('.').map(str::to_string).collect();
        let wildcard = segments.iter().any(|s| s == "*");
        FieldPath { segments, wildcard }
    }

    /// Whether the path fans out over list elements.
    pub(crate) fn has_wildcard(&self) -> bool {
        self.wildcard
    }
}

/// One place a path leads to.
#[derive(Debug)]
pub(crate) struct Hit<'v> {
    /// The concrete path (`*` replaced by the index), as written otherwise.
    pub(crate) path: String,
    /// `Ok(Some(v))` found (possibly null), `Ok(None)` not found, `Err` the accessor error text.
    pub(crate) result: Result<Option<&'v Value>, String>,
}

/// Upper bound on the hits one wildcard path may produce (a list of a 1 MiB object has fewer).
const MAX_HITS: usize = 1 << 20;

/// Walks the path through the object (`NestedFieldNoCopy`): a null or missing key on the way is
/// "not found"; stepping into a list with a non-index segment, or into a scalar, is an error.
pub(crate) fn lookup<'v>(root: Root<'v>, path: &FieldPath) -> Vec<Hit<'v>> {
    let mut hits = Vec::new();
    let mut concrete: Vec<Cow<'_, str>> = Vec::with_capacity(path.segments.len());
    walk(JRef::Root(root), &path.segments, &mut concrete, &mut hits);
    hits
}

fn walk<'v, 'p>(
    mut cur: JRef<'v>,
    segments: &'p [String],
    concrete: &mut Vec<Cow<'p, str>>,
    hits: &mut Vec<Hit<'v>>,
) {
    let depth = concrete.len();
    for (i, field) in segments.iter().enumerate() {
        if cur.is_null() {
            push_hit(hits, concrete, &segments[i..], Ok(None));
            concrete.truncate(depth);
            return;
        }
        if cur.is_map() {
            concrete.push(Cow::Borrowed(field));
            match cur.get(field) {
                Some(next) => cur = JRef::Val(next),
                None => {
                    push_hit(hits, concrete, &segments[i + 1..], Ok(None));
                    concrete.truncate(depth);
                    return;
                }
            }
            continue;
        }
        if let Some(Value::Array(items)) = cur.as_value() {
            if field == "*" {
                for (index, item) in items.iter().enumerate() {
                    if hits.len() >= MAX_HITS {
                        break;
                    }
                    concrete.push(Cow::Owned(index.to_string()));
                    walk(JRef::Val(item), &segments[i + 1..], concrete, hits);
                    concrete.pop();
                }
                concrete.truncate(depth);
                return;
            }
            if is_index(field) {
                concrete.push(Cow::Borrowed(field));
                match field.parse::<usize>().ok().and_then(|n| items.get(n)) {
                    Some(next) => cur = JRef::Val(next),
                    None => {
                        push_hit(hits, concrete, &segments[i + 1..], Ok(None));
                        concrete.truncate(depth);
                        return;
                    }
                }
                continue;
            }
        }
        concrete.push(Cow::Borrowed(field));
        let message = format!(
            ".{} accessor error: {} is of the type {}, expected map[string]interface{{}}",
            concrete.join("."),
            cur.go_v(),
            cur.go_type()
        );
        push_hit(hits, concrete, &segments[i + 1..], Err(message));
        concrete.truncate(depth);
        return;
    }
    hits.push(Hit {
        path: concrete.join("."),
        result: Ok(cur.as_value()),
    });
    concrete.truncate(depth);
}

/// Records a hit that stopped early; its path is the concrete prefix plus the untaken segments,
/// so messages name the path as written.
fn push_hit<'v>(
    hits: &mut Vec<Hit<'v>>,
    concrete: &[Cow<'_, str>],
    untaken: &[String],
    result: Result<Option<&'v Value>, String>,
) {
    let mut parts: Vec<&str> = concrete.iter().map(|c| c.as_ref()).collect();
    parts.extend(untaken.iter().map(String::as_str));
    hits.push(Hit {
        path: parts.join("."),
        result,
    });
}

fn is_index(segment: &str) -> bool {
    !segment.is_empty() && segment.len() <= 19 && segment.bytes().all(|b| b.is_ascii_digit())
}

/// `NestedString` on top of a hit: a found value must be a string.
pub(crate) fn as_string<'v>(hit: &Hit<'v>) -> Result<Option<&'v str>, String> {
    match &hit.result {
        Err(e) => Err(e.clone()),
        Ok(None) => Ok(None),
        Ok(Some(Value::String(s))) => Ok(Some(s.as_str())),
        Ok(Some(other)) => Err(format!(
            ".{} accessor error: {} is of the type {}, expected string",
            hit.path,
            go_v(other),
            go_type(other)
        )),
    }
}

/// `NestedInt64` on top of a hit: a found value must be an integer (as Go decodes it).
pub(crate) fn as_int(hit: &Hit<'_>) -> Result<Option<i64>, String> {
    let value = match &hit.result {
        Err(e) => return Err(e.clone()),
        Ok(None) => return Ok(None),
        Ok(Some(value)) => *value,
    };
    if let Value::Number(n) = value
        && let GoNumber::Int(i) = go_number(n)
    {
        return Ok(Some(i));
    }
    Err(format!(
        ".{} accessor error: {} is of the type {}, expected int64",
        hit.path,
        go_v(value),
        go_type(value)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object() -> Map<String, Value> {
        match json!({
            "metadata": {"name": "web", "labels": {"team": "a"}, "annotations": null},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "a", "image": "nginx", "securityContext": {"privileged": false}},
                {"name": "b"}
            ]}}}
        }) {
            Value::Object(m) => m,
            _ => panic!("object"),
        }
    }

    fn one(path: &str) -> Result<Option<Value>, String> {
        let obj = object();
        let hits = lookup(Root::plain(&obj), &FieldPath::parse(path));
        assert_eq!(hits.len(), 1, "{path}");
        hits[0].result.clone().map(|v| v.cloned())
    }

    #[test]
    fn map_paths() {
        assert_eq!(one("metadata.name"), Ok(Some(json!("web"))));
        assert_eq!(one("metadata.missing"), Ok(None));
        assert_eq!(one("metadata.missing.deeper"), Ok(None));
        // A null at the end is found; a null on the way is not found.
        assert_eq!(one("metadata.annotations"), Ok(Some(Value::Null)));
        assert_eq!(one("metadata.annotations.x"), Ok(None));
    }

    #[test]
    fn stepping_into_scalars_and_lists_is_the_originals_error() {
        assert_eq!(
            one("metadata.name.first"),
            Err(".metadata.name.first accessor error: web is of the type string, expected map[string]interface{}".into())
        );
        assert_eq!(
            one("spec.template.spec.containers.name"),
            Err(".spec.template.spec.containers.name accessor error: [map[image:nginx name:a securityContext:map[privileged:false]] map[name:b]] is of the type []interface {}, expected map[string]interface{}".into())
        );
    }

    #[test]
    fn list_indexes_and_wildcards() {
        assert_eq!(
            one("spec.template.spec.containers.0.image"),
            Ok(Some(json!("nginx")))
        );
        assert_eq!(one("spec.template.spec.containers.1.image"), Ok(None));
        assert_eq!(one("spec.template.spec.containers.7.image"), Ok(None));
        let obj = object();
        let hits = lookup(
            Root::plain(&obj),
            &FieldPath::parse("spec.template.spec.containers.*.image"),
        );
        let paths: Vec<_> = hits.iter().map(|h| h.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.template.spec.containers.0.image",
                "spec.template.spec.containers.1.image"
            ]
        );
        assert_eq!(hits[0].result, Ok(Some(&json!("nginx"))));
        assert_eq!(hits[1].result, Ok(None));
        let hits = lookup(
            Root::plain(&obj),
            &FieldPath::parse("spec.template.spec.containers.*.name.x"),
        );
        assert_eq!(hits.len(), 2);
        assert_eq!(
            hits[1].result,
            Err(".spec.template.spec.containers.1.name.x accessor error: b is of the type string, expected map[string]interface{}".into())
        );
    }

    #[test]
    fn typed_accessors() {
        let obj = object();
        let hit = |p: &str| lookup(Root::plain(&obj), &FieldPath::parse(p)).remove(0);
        assert_eq!(as_string(&hit("metadata.name")), Ok(Some("web")));
        assert_eq!(
            as_string(&hit("spec.replicas")),
            Err(".spec.replicas accessor error: 3 is of the type int64, expected string".into())
        );
        assert_eq!(as_int(&hit("spec.replicas")), Ok(Some(3)));
        assert_eq!(
            as_int(&hit("metadata.name")),
            Err(".metadata.name accessor error: web is of the type string, expected int64".into())
        );
        assert_eq!(
            as_string(&hit("metadata.annotations")),
            Err(
                ".metadata.annotations accessor error: <nil> is of the type <nil>, expected string"
                    .into()
            )
        );
    }
}
