//! Reading manifests from files: several YAML (or JSON) documents per file, each decoded by kind.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a file could not be used. Every variant names the file (and the document in it).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML/JSON.
    #[error("{path}: document {index}: not valid YAML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based document number.
        index: usize,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A document has the right kind but does not match its schema.
    #[error("{path}: document {index} ({kind} {name}): {message}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// 1-based document number.
        index: usize,
        /// Its kind.
        kind: String,
        /// Its name, if it has one.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A document is of a kind this command does not take.
    #[error("{path}: document {index}: expected {expected}, found {found}")]
    WrongKind {
        /// The file.
        path: PathBuf,
        /// 1-based document number.
        index: usize,
        /// The kinds the command takes.
        expected: &'static str,
        /// What the document is.
        found: String,
    },
    /// A file holds no document of the expected kinds.
    #[error("{path}: no {expected} in this file")]
    Empty {
        /// The file.
        path: PathBuf,
        /// The kinds the command takes.
        expected: &'static str,
    },
}

/// One document read from a file.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file it came from.
    pub path: PathBuf,
    /// 1-based position in the file.
    pub index: usize,
    /// The document.
    pub value: serde_json::Value,
}

impl Document {
    /// `kind` of the document ("" when absent).
    pub fn kind(&self) -> &str {
        self.value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
    }

    /// `metadata.name` ("" when absent).
    pub fn name(&self) -> &str {
        self.value
            .pointer("/metadata/name")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
    }

    /// Decodes the document as `T`, or says which field is wrong.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, InputError> {
        serde_json::from_value(self.value.clone()).map_err(|e| InputError::Schema {
            path: self.path.clone(),
            index: self.index,
            kind: self.kind().to_string(),
            name: self.name().to_string(),
            message: e.to_string(),
        })
    }
}

/// Reads every non-empty document of `path`.
pub fn read_documents(path: &Path) -> Result<Vec<Document>, InputError> {
    let text = std::fs::read_to_string(path).map_err(|source| InputError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_documents(path, &text)
}

/// Parses every non-empty document of `text` (which came from `path`).
pub fn parse_documents(path: &Path, text: &str) -> Result<Vec<Document>, InputError> {
    let mut docs = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(doc).map_err(|e| InputError::Syntax {
            path: path.to_path_buf(),
            index: i + 1,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        docs.push(Document {
            path: path.to_path_buf(),
            index: i + 1,
            value,
        });
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_documents_with_empty_ones_skipped() {
        let docs = parse_documents(
            Path::new("x.yaml"),
            "---\nkind: A\n---\n---\nkind: B\nmetadata: {name: b}\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            (docs[1].kind(), docs[1].name(), docs[1].index),
            ("B", "b", 3)
        );
    }

    #[test]
    fn syntax_error_names_file_and_document() {
        let err = parse_documents(Path::new("bad.yaml"), "kind: A\n---\nkey: [unclosed\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bad.yaml: document 2: not valid YAML"),
            "{err}"
        );
    }

    #[test]
    fn schema_error_names_kind_name_and_field() {
        let docs = parse_documents(
            Path::new("t.yaml"),
            "apiVersion: kubetemplater.io/v1alpha1\nkind: KubeTemplate\nmetadata: {name: web}\nspec: {templates: [{replace: true}]}\n",
        )
        .unwrap();
        let err = docs[0]
            .decode::<api::KubeTemplate>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.yaml: document 1 (KubeTemplate web)") && err.contains("object"),
            "{err}"
        );
    }
}
