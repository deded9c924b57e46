//! `ignoreFields`: JSONPath expressions (`$.spec.replicas`, `$.data.*`,
//! `$.spec.template.spec.containers[*].image`, `$['data']['key']`) naming fields of an existing
//! object that the Tenant must not change. As Lynq later fixed it, the live values are copied into
//! the object to apply (dropping them instead would make server-side apply delete fields only the
//! operator owned); a field the live object lacks is left out. Paths that match nothing are
//! harmless.

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A member.
    Key(String),
    /// An array element.
    Index(usize),
    /// Every member or element.
    Wildcard,
}

/// Parses the subset of JSONPath the original's users write: `$`, `.name`, `['name']`,
/// `["name"]`, `[n]`, `[*]`, `.*`.
pub fn parse(path: &str) -> Result<Vec<Segment>, String> {
    let rest = path
        .trim()
        .strip_prefix('$')
        .ok_or_else(|| format!("{path:?} does not start with $"))?;
    let mut segments = Vec::new();
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '.' => {
                let start = i + 1;
                let mut end = rest.len();
                while let Some(&(j, c)) = chars.peek() {
                    if c == '.' || c == '[' {
                        end = j;
                        break;
                    }
                    chars.next();
                }
                let name = &rest[start..end];
                match name {
                    "" => return Err(format!("{path:?}: empty name after '.'")),
                    "*" => segments.push(Segment::Wildcard),
                    _ => segments.push(Segment::Key(name.to_owned())),
                }
            }
            '[' => {
                let close = rest[i..]
                    .find(']')
                    .map(|k| i + k)
                    .ok_or_else(|| format!("{path:?}: '[' without ']'"))?;
                let inner = rest[i + 1..close].trim();
                let segment = if inner == "*" {
                    Segment::Wildcard
                } else if let Some(quoted) = inner
                    .strip_prefix('\'')
                    .and_then(|s| s.strip_suffix('\''))
                    .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                {
                    Segment::Key(quoted.to_owned())
                } else {
                    Segment::Index(
                        inner
                            .parse()
                            .map_err(|_| format!("{path:?}: [{inner}] is not an index"))?,
                    )
                };
                segments.push(segment);
                while let Some(&(j, _)) = chars.peek() {
                    if j > close {
                        break;
                    }
                    chars.next();
                }
            }
            _ => return Err(format!("{path:?}: unexpected {c:?}")),
        }
    }
    if segments.is_empty() {
        return Err(format!("{path:?} names the whole object"));
    }
    Ok(segments)
}

/// Copies the values `segments` names from `live` into `desired` (or removes them from
/// `desired` where `live` has none).
pub fn keep_live(desired: &mut Value, live: &Value, segments: &[Segment]) {
    walk(desired, Some(live), segments);
}

fn children(value: &Value, segment: &Segment) -> Vec<Segment> {
    match (segment, value) {
        (Segment::Wildcard, Value::Object(map)) => {
            map.keys().map(|k| Segment::Key(k.clone())).collect()
        }
        (Segment::Wildcard, Value::Array(items)) => (0..items.len()).map(Segment::Index).collect(),
        (Segment::Wildcard, _) => Vec::new(),
        (s, _) => vec![s.clone()],
    }
}

fn get<'a>(value: Option<&'a Value>, segment: &Segment) -> Option<&'a Value> {
    match segment {
        Segment::Key(k) => value?.get(k),
        Segment::Index(i) => value?.get(i),
        Segment::Wildcard => None,
    }
}

fn walk(desired: &mut Value, live: Option<&Value>, segments: &[Segment]) {
    let Some((segment, rest)) = segments.split_first() else {
        return;
    };
    // A wildcard expands over what either side has.
    let mut steps = children(desired, segment);
    if let Some(live) = live {
        for step in children(live, segment) {
            if !steps.contains(&step) {
                steps.push(step);
            }
        }
    }
    for step in steps {
        let live_child = get(live, &step);
        if rest.is_empty() {
            match (&step, &mut *desired) {
                (Segment::Key(k), Value::Object(map)) => match live_child {
                    Some(v) => {
                        map.insert(k.clone(), v.clone());
                    }
                    None => {
                        map.remove(k);
                    }
                },
                (Segment::Index(i), Value::Array(items)) => {
                    if let (Some(slot), Some(v)) = (items.get_mut(*i), live_child) {
                        *slot = v.clone();
                    }
                }
                _ => {}
            }
            continue;
        }
        let child = match (&step, &mut *desired) {
            (Segment::Key(k), Value::Object(map)) => match (map.contains_key(k), live_child) {
                (true, _) => map.get_mut(k),
                // Desired lacks the parent but live has the field: create the parent.
                (false, Some(_)) => Some(map.entry(k.clone()).or_insert(Value::Null)),
                (false, None) => None,
            },
            (Segment::Index(i), Value::Array(items)) => items.get_mut(*i),
            _ => None,
        };
        if let Some(child) = child {
            if child.is_null() {
                *child = Value::Object(serde_json::Map::new());
            }
            walk(child, live_child, rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keep(desired: Value, live: &Value, path: &str) -> Value {
        let mut desired = desired;
        keep_live(&mut desired, live, &parse(path).expect("path"));
        desired
    }

    #[test]
    fn paths_parse() {
        assert_eq!(
            parse("$.spec.template.spec.containers[*].image").expect("path"),
            [
                Segment::Key("spec".into()),
                Segment::Key("template".into()),
                Segment::Key("spec".into()),
                Segment::Key("containers".into()),
                Segment::Wildcard,
                Segment::Key("image".into()),
            ]
        );
        assert_eq!(
            parse("$['data']['a.b'][2]").expect("path"),
            [
                Segment::Key("data".into()),
                Segment::Key("a.b".into()),
                Segment::Index(2)
            ]
        );
        assert_eq!(parse("$.data.*").expect("path")[1], Segment::Wildcard);
        for bad in ["spec", "$", "$.", "$[x", "$[abc]", "$..a"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn live_values_are_kept_and_missing_ones_left_out() {
        let live = json!({"spec": {"replicas": 5}, "data": {"a": "edited"}});
        assert_eq!(
            keep(
                json!({"spec": {"replicas": 2, "x": 1}}),
                &live,
                "$.spec.replicas"
            ),
            json!({"spec": {"replicas": 5, "x": 1}})
        );
        assert_eq!(
            keep(
                json!({"data": {"a": "mine", "b": "new"}}),
                &live,
                "$.data.*"
            ),
            json!({"data": {"a": "edited"}}),
            "b is not live yet: left out"
        );
        assert_eq!(
            keep(
                json!({"spec": {"replicas": 2}}),
                &json!({}),
                "$.spec.replicas"
            ),
            json!({"spec": {}})
        );
        assert_eq!(
            keep(json!({"kind": "X"}), &live, "$.status.nothing"),
            json!({"kind": "X"}),
            "no match: harmless"
        );
    }

    #[test]
    fn wildcards_over_lists() {
        let live = json!({"spec": {"containers": [{"name": "a", "image": "live:1"}, {"name": "b", "image": "live:2"}]}});
        let desired = json!({"spec": {"containers": [{"name": "a", "image": "new:1"}, {"name": "b", "image": "new:2"}]}});
        assert_eq!(
            keep(desired, &live, "$.spec.containers[*].image"),
            json!({"spec": {"containers": [{"name": "a", "image": "live:1"}, {"name": "b", "image": "live:2"}]}})
        );
    }
}
