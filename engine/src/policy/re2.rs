//! Go `regexp` (RE2) patterns on the `regex` crate.
//!
//! Both are RE2-style engines (linear time, no backreferences), but a few pieces of syntax mean
//! different things. Before compiling, the pattern is rewritten so it matches what Go matches:
//! - `\d \w \s \b` (and negations) are ASCII-only in Go, Unicode-aware in Rust: spelled out as
//!   ASCII classes;
//! - `\Q...\E` quotes literal text in Go, unknown in Rust: escaped;
//! - inside a class, Go treats `[` (except `[:name:]`), `&&`, `--` and `~~` as literal text,
//!   Rust as nested classes and set operations: escaped;
//! - octal escapes (`\101`) are enabled as in Go.
//!
//! Error texts are the `regex` crate's, not Go's.

use regex::{Regex, RegexBuilder};

/// Upper bound on the compiled program size (the crate's default is 10 MiB; Go allows less).
const SIZE_LIMIT: usize = 4 << 20;

/// Compiles a Go `regexp` pattern. Matching is unanchored, as Go's `MatchString`.
pub(crate) fn compile(pattern: &str) -> Result<Regex, String> {
    let translated = translate(pattern);
    RegexBuilder::new(&translated)
        .octal(true)
        .size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

const DIGIT: &str = "0-9";
const WORD: &str = "0-9A-Za-z_";
const SPACE: &str = r"\t\n\x0C\r ";

fn translate(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut in_class = false;
    // Position just after the opening `[` (and a `^`), where `]` is a literal.
    let mut class_start = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            let Some(&next) = chars.get(i + 1) else {
                out.push('\\');
                break;
            };
            if next == 'Q' {
                // \Q...\E (or to the end): literal text.
                let start = i + 2;
                let mut end = start;
                while end < chars.len() && !(chars[end] == '\\' && chars.get(end + 1) == Some(&'E'))
                {
                    end += 1;
                }
                let literal: String = chars[start..end].iter().collect();
                if in_class {
                    for ch in literal.chars() {
                        push_class_literal(&mut out, ch);
                    }
                } else {
                    out.push_str(&regex::escape(&literal));
                }
                i = if end < chars.len() { end + 2 } else { end };
                class_start = false;
                continue;
            }
            let replacement = match (in_class, next) {
                (false, 'd') => Some(format!("[{DIGIT}]")),
                (false, 'D') => Some(format!("[^{DIGIT}]")),
                (false, 'w') => Some(format!("[{WORD}]")),
                (false, 'W') => Some(format!("[^{WORD}]")),
                (false, 's') => Some(format!("[{SPACE}]")),
                (false, 'S') => Some(format!("[^{SPACE}]")),
                (false, 'b') => Some(r"(?-u:\b)".to_string()),
                (false, 'B') => Some(r"(?-u:\B)".to_string()),
                (true, 'd') => Some(DIGIT.to_string()),
                (true, 'D') => Some(format!("[^{DIGIT}]")),
                (true, 'w') => Some(WORD.to_string()),
                (true, 'W') => Some(format!("[^{WORD}]")),
                (true, 's') => Some(SPACE.to_string()),
                (true, 'S') => Some(format!("[^{SPACE}]")),
                _ => None,
            };
            match replacement {
                Some(text) => out.push_str(&text),
                None => {
                    out.push('\\');
                    out.push(next);
                }
            }
            i += 2;
            class_start = false;
            continue;
        }
        if in_class {
            match c {
                ']' if !class_start => {
                    in_class = false;
                    out.push(']');
                }
                '[' if chars.get(i + 1) == Some(&':') => {
                    // POSIX class [:name:] — copy through the closing ":]".
                    let mut end = i + 2;
                    while end + 1 < chars.len() && !(chars[end] == ':' && chars[end + 1] == ']') {
                        end += 1;
                    }
                    if end + 1 < chars.len() {
                        out.extend(&chars[i..end + 2]);
                        i = end + 2;
                        class_start = false;
                        continue;
                    }
                    out.push_str(r"\[");
                }
                '[' | '&' | '~' => push_class_literal(&mut out, c),
                '-' if chars.get(i + 1) == Some(&'-') => push_class_literal(&mut out, c),
                _ => out.push(c),
            }
            class_start = false;
            i += 1;
            continue;
        }
        out.push(c);
        if c == '[' {
            in_class = true;
            class_start = true;
            if chars.get(i + 1) == Some(&'^') {
                out.push('^');
                i += 1;
            }
        }
        i += 1;
    }
    out
}

fn push_class_literal(out: &mut String, c: char) {
    if c.is_ascii_punctuation() {
        out.push('\\');
    }
    out.push(c);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_match(pattern: &str, text: &str) -> bool {
        compile(pattern).expect(pattern).is_match(text)
    }

    #[test]
    fn unanchored_like_match_string() {
        assert!(is_match("prod-", "my-prod-app"));
        assert!(!is_match("^prod-", "my-prod-app"));
        assert!(is_match("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "web-1"));
        assert!(!is_match("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "Web_1"));
    }

    #[test]
    fn perl_classes_are_ascii_as_in_go() {
        assert!(!is_match(r"^\d+$", "١٢٣")); // Arabic-Indic digits
        assert!(is_match(r"^\d+$", "123"));
        assert!(!is_match(r"^\w+$", "héllo"));
        assert!(is_match(r"^[\w-]+$", "a-b_c"));
        assert!(!is_match(r"^[\w-]+$", "é"));
        assert!(is_match(r"^\S+\s\S+$", "a b"));
        assert!(is_match(r"^[^\D]+$", "42"));
        assert!(is_match(r"\bx\b", "a x b"));
    }

    #[test]
    fn go_only_syntax() {
        assert!(is_match(r"^\Qa.b*\E$", "a.b*"));
        assert!(!is_match(r"^\Qa.b*\E$", "axbb"));
        assert!(is_match(r"^[[]+$", "[["));
        assert!(is_match(r"^[a&&b]+$", "a&&b"));
        assert!(is_match(r"^[[:alpha:]]+$", "abc"));
        assert!(is_match(r"^[]a]+$", "]a"));
        assert!(is_match(r"^\101$", "A"));
    }

    #[test]
    fn invalid_patterns_are_errors() {
        assert!(compile("(").is_err());
        assert!(compile("[a-").is_err());
        assert!(compile("x{2,1}").is_err());
        assert!(compile("\\").is_err());
    }
}
