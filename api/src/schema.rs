//! Schema pieces that `schemars` cannot derive in the shape Kubernetes needs.

use schemars::{Schema, SchemaGenerator, json_schema};

/// Schema of an arbitrary JSON object kept as written: `type: object` with
/// `x-kubernetes-preserve-unknown-fields: true`, so the API server neither prunes nor validates
/// its content (structural, unlike the `additionalProperties: true` that `serde_json::Map`
/// would give).
pub fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preserve_unknown_object_is_structural() {
        let schema = preserve_unknown_object(&mut SchemaGenerator::default());
        let value = schema.to_value();
        assert_eq!(value["type"], "object");
        assert_eq!(value["x-kubernetes-preserve-unknown-fields"], true);
        assert!(value.get("additionalProperties").is_none());
    }
}
