//! Every template function: happy paths and edge cases.

use engine::render::{Vars, render_str, to_host};

fn vars() -> Vars {
    Vars::tenant("acme", "https://acme.example.com:8443/app", "true")
        .with("empty", "")
        .with("replicas", "3")
        .with(
            "json",
            r#"{"port": 8080, "tags": ["a", "b"], "nested": {"k": "v"}}"#,
        )
        .with("spaced", "  hello world \n")
}

fn r(template: &str) -> String {
    render_str(template, &vars()).unwrap_or_else(|e| panic!("{template}: {e}"))
}

fn fails(template: &str) -> String {
    match render_str(template, &vars()) {
        Ok(out) => panic!("{template} rendered {out:?}, expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn default() {
    assert_eq!(r(r#"{{ .empty | default "basic" }}"#), "basic");
    assert_eq!(r(r#"{{ .uid | default "basic" }}"#), "acme");
    assert_eq!(r(r#"{{ default "d" 0 }}"#), "d");
    assert_eq!(r(r#"{{ default "d" false }}"#), "d");
    assert_eq!(r(r#"{{ default "d" (list) }}"#), "d");
    assert_eq!(r(r#"{{ default "d" 5 }}"#), "5");
    // a missing variable is an error even with default, as in Go with missingkey=error
    assert!(fails(r#"{{ .plan | default "basic" }}"#).contains("undefined variable .plan"));
}

#[test]
fn trunc_and_trunc63() {
    assert_eq!(r("{{ .uid | trunc 2 }}"), "ac");
    assert_eq!(r("{{ .uid | trunc 10 }}"), "acme");
    assert_eq!(r("{{ .uid | trunc 0 }}"), "");
    assert_eq!(r("{{ .uid | trunc -2 }}"), "me");
    assert_eq!(r("{{ .uid | trunc -10 }}"), "acme");
    let long = "x".repeat(70);
    let out = render_str("{{ .v | trunc63 }}", &Vars::new().with("v", long.as_str())).expect("ok");
    assert_eq!(out.len(), 63);
    assert_eq!(r("{{ .uid | trunc63 }}"), "acme");
    // never splits a character
    let accented = format!("{}é", "x".repeat(62));
    let out = render_str(
        "{{ .v | trunc63 }}",
        &Vars::new().with("v", accented.as_str()),
    )
    .expect("ok");
    assert_eq!(out, "x".repeat(62));
}

#[test]
fn case_and_trimming() {
    assert_eq!(r("{{ .uid | upper }}"), "ACME");
    assert_eq!(r(r#"{{ "ÀB" | lower }}"#), "àb");
    assert_eq!(r("{{ .spaced | trim }}"), "hello world");
    assert_eq!(r(r#"{{ .host | trimPrefix "acme." }}"#), "example.com");
    assert_eq!(r(r#"{{ .host | trimPrefix "nope" }}"#), "acme.example.com");
    assert_eq!(r(r#"{{ .host | trimSuffix ".com" }}"#), "acme.example");
    assert_eq!(r(r#"{{ .host | replace "." "-" }}"#), "acme-example-com");
    assert_eq!(r(r#"{{ "ab" | replace "" "-" }}"#), "-a-b-");
    assert_eq!(r(r#"{{ .uid | replace "x" "y" }}"#), "acme");
}

#[test]
fn quoting() {
    assert_eq!(r("{{ .uid | quote }}"), r#""acme""#);
    assert_eq!(r(r#"{{ quote "a\"b" "c" }}"#), r#""a\"b" "c""#);
    assert_eq!(r("{{ .spaced | quote }}"), r#""  hello world \n""#);
    assert_eq!(r("{{ 5 | quote }}"), r#""5""#);
    assert_eq!(r("{{ .uid | squote }}"), "'acme'");
    assert_eq!(r(r#"{{ squote "a" "b" }}"#), "'a' 'b'");
}

#[test]
fn base64() {
    assert_eq!(r("{{ .uid | b64enc }}"), "YWNtZQ==");
    assert_eq!(r(r#"{{ "YWNtZQ==" | b64dec }}"#), "acme");
    assert_eq!(r(r#"{{ "" | b64enc }}"#), "");
    assert_eq!(r("{{ .host | b64enc | b64dec }}"), "acme.example.com");
    assert!(fails(r#"{{ "!!notbase64" | b64dec }}"#).contains("b64dec: illegal base64 data"));
    // valid base64 of bytes that are not UTF-8 text
    assert!(fails(r#"{{ "/w==" | b64dec }}"#).contains("not UTF-8"));
}

#[test]
fn digests() {
    assert_eq!(
        r(r#"{{ "test" | sha1sum }}"#),
        "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"
    );
    assert_eq!(
        r(r#"{{ "" | sha256sum }}"#),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        r(r#"{{ "abc" | sha256sum }}"#),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(r(r#"{{ .uid | sha1sum | trunc 8 }}"#).len(), 8);
}

#[test]
fn urlquery() {
    assert_eq!(r(r#"{{ "a b&c=d/é" | urlquery }}"#), "a+b%26c%3Dd%2F%C3%A9");
    assert_eq!(r(r#"{{ "safe-_.~" | urlquery }}"#), "safe-_.~");
    assert_eq!(r(r#"{{ urlquery "a" 1 }}"#), "a1");
}

#[test]
fn to_host_cases() {
    for (input, want) in [
        ("https://acme.example.com:8443/app", "acme.example.com"),
        ("http://acme.example.com", "acme.example.com"),
        ("https://user:pw@acme.example.com/x?y#z", "acme.example.com"),
        ("https://[::1]:8443/", "::1"),
        ("//acme.example.com/path", "acme.example.com"),
        ("acme.example.com", "acme.example.com"),
        ("acme.example.com:8080", "acme.example.com"),
        ("10.0.0.1:80", "10.0.0.1"),
        ("mailto:someone", "mailto"),
        ("", ""),
        ("https://", "https"),
    ] {
        assert_eq!(to_host(input), want, "{input}");
    }
    assert_eq!(r("{{ .hostOrUrl | toHost }}"), "acme.example.com");
    assert_eq!(r("{{ .host }}"), "acme.example.com");
}

#[test]
fn json() {
    assert_eq!(r("{{ (fromJson .json).port }}"), "8080");
    assert_eq!(r("{{ (fromJson .json).nested.k }}"), "v");
    assert_eq!(r("{{ index (fromJson .json).tags 1 }}"), "b");
    assert_eq!(r(r#"{{ len (fromJson "not json") }}"#), "0");
    assert_eq!(r(r#"{{ (fromJson "[1,2]") | len }}"#), "2");
    assert!(
        fails("{{ (fromJson .json).missing }}").contains(r#"map has no entry for key "missing""#)
    );
    assert_eq!(
        r("{{ fromJson .json | toJson }}"),
        r#"{"nested":{"k":"v"},"port":8080,"tags":["a","b"]}"#
    );
    assert_eq!(r(r#"{{ toJson "a<b" }}"#), r#""a\u003cb""#);
    assert_eq!(r(r#"{{ list 1 "x" true | toJson }}"#), r#"[1,"x",true]"#);
    assert_eq!(r(r#"{{ "x" | toJson | fromJson }}"#), "x");
}

#[test]
fn ternary() {
    assert_eq!(r(r#"{{ ternary "yes" "no" true }}"#), "yes");
    assert_eq!(
        r(r#"{{ ternary "yes" "no" (eq .activate "false") }}"#),
        "no"
    );
    assert_eq!(r(r#"{{ eq .uid "acme" | ternary "prod" "dev" }}"#), "prod");
    assert!(fails(r#"{{ ternary "a" "b" "true" }}"#).contains("must be a bool"));
}

#[test]
fn lists_and_join() {
    assert_eq!(r(r#"{{ list "a" "b" .uid | join "," }}"#), "a,b,acme");
    assert_eq!(r(r#"{{ join "-" (list) }}"#), "");
    assert_eq!(r(r#"{{ join "-" (list 1 2 3) }}"#), "1-2-3");
    assert_eq!(r(r#"{{ join "-" "single" }}"#), "single");
    assert_eq!(r(r#"{{ len (list 1 2 3) }}"#), "3");
    assert_eq!(r(r#"{{ range list "x" "y" }}[{{ . }}]{{ end }}"#), "[x][y]");
}

#[test]
fn arithmetic() {
    assert_eq!(r("{{ add 1 2 3 }}"), "6");
    assert_eq!(r("{{ add }}"), "0");
    assert_eq!(r("{{ add .replicas 1 }}"), "4");
    assert_eq!(r("{{ sub 10 3 }}"), "7");
    assert_eq!(r("{{ sub 3 10 }}"), "-7");
    assert_eq!(r("{{ mul 2 3 4 }}"), "24");
    assert_eq!(r("{{ div 7 2 }}"), "3");
    assert_eq!(r("{{ div -7 2 }}"), "-3");
    assert_eq!(r("{{ mod 7 3 }}"), "1");
    assert_eq!(r("{{ max 1 9 3 }}"), "9");
    assert_eq!(r("{{ min 4 2 8 }}"), "2");
    assert_eq!(r("{{ max 5 }}"), "5");
    assert_eq!(r("{{ add 1.9 1 }}"), "2");
    assert_eq!(r(r#"{{ add "0x10" "abc" true }}"#), "17");
    assert!(fails("{{ div 1 0 }}").contains("div: integer divide by zero"));
    assert!(fails("{{ mod 1 0 }}").contains("mod: integer divide by zero"));
    assert!(fails("{{ sub 1 }}").contains("sub: wants 2 arguments, got 1"));
}

#[test]
fn string_predicates() {
    assert_eq!(r(r#"{{ .host | contains "example" }}"#), "true");
    assert_eq!(r(r#"{{ contains "zzz" .host }}"#), "false");
    assert_eq!(r(r#"{{ .hostOrUrl | hasPrefix "https://" }}"#), "true");
    assert_eq!(r(r#"{{ .hostOrUrl | hasPrefix "http://" }}"#), "false");
    assert_eq!(r(r#"{{ .host | hasSuffix ".com" }}"#), "true");
    assert_eq!(
        r(r#"{{ if hasPrefix "https" .hostOrUrl }}tls{{ else }}plain{{ end }}"#),
        "tls"
    );
}

#[test]
fn printf() {
    assert_eq!(r(r#"{{ printf "%s-%d" .uid 7 }}"#), "acme-7");
    assert_eq!(r(r#"{{ printf "%v" true }}"#), "true");
    assert_eq!(r(r#"{{ .uid | printf "name=%s" }}"#), "name=acme");
    assert!(fails(r#"{{ printf "%999999999d" 1 }}"#).contains("width or precision"));
}

#[test]
fn comparisons_and_logic() {
    assert_eq!(r(r#"{{ eq .uid "acme" }}"#), "true");
    assert_eq!(r(r#"{{ eq .uid "x" "y" "acme" }}"#), "true"); // Go: any of
    assert_eq!(r(r#"{{ ne .uid "acme" }}"#), "false");
    assert_eq!(r("{{ eq 1 (add 0 1) }}"), "true");
    assert_eq!(r("{{ eq 2 2.0 }}"), "true");
    assert_eq!(r("{{ lt 1 2 }}"), "true");
    assert_eq!(r("{{ le 2 2 }}"), "true");
    assert_eq!(r("{{ gt 1 2.5 }}"), "false");
    assert_eq!(r("{{ ge (sub 0 5) -5 }}"), "true");
    assert_eq!(r(r#"{{ lt "a" "b" }}"#), "true");
    assert!(fails(r#"{{ eq .replicas 3 }}"#).contains("incompatible types"));
    assert!(fails(r#"{{ lt "a" 1 }}"#).contains("incompatible types"));
    assert_eq!(r(r#"{{ and .uid .empty }}"#), "");
    assert_eq!(r(r#"{{ and .uid .host }}"#), "acme.example.com");
    assert_eq!(r(r#"{{ or .empty "fallback" }}"#), "fallback");
    assert_eq!(r("{{ not .empty }}"), "true");
    assert_eq!(r("{{ len .uid }}"), "4");
    assert_eq!(r(r#"{{ index . "uid" }}"#), "acme");
    assert_eq!(r(r#"{{ index (list "a" "b") 1 }}"#), "b");
    assert!(fails(r#"{{ index . "plan-id" }}"#).contains(r#"map has no entry for key "plan-id""#));
    assert!(fails(r#"{{ index (list "a") 3 }}"#).contains("index out of range"));
    assert!(fails("{{ len 3 }}").contains("cannot take the length"));
}

#[test]
fn typed_conversions_as_text() {
    assert_eq!(r("{{ .replicas | int }}"), "3");
    assert_eq!(r(r#"{{ "2.9" | int }}"#), "2");
    assert_eq!(r(r#"{{ "abc" | int }}"#), "0");
    assert_eq!(r("{{ true | int }}"), "1");
    assert_eq!(r(r#"{{ "1.5" | float }}"#), "1.5");
    assert_eq!(r(r#"{{ "-2.5" | float }}"#), "-2.5");
    assert_eq!(r("{{ 3 | float }}"), "3");
    assert_eq!(r(r#"{{ "x" | float }}"#), "0");
    for yes in ["true", "TRUE", "1", "yes", "on", "t", "Y"] {
        assert_eq!(r(&format!("{{{{ {yes:?} | bool }}}}")), "true", "{yes}");
    }
    for no in ["false", "0", "no", "", "maybe"] {
        assert_eq!(r(&format!("{{{{ {no:?} | bool }}}}")), "false", "{no}");
    }
    assert_eq!(r("{{ 2 | bool }}"), "true");
    assert_eq!(r("{{ 0 | bool }}"), "false");
    assert_eq!(r("{{ add (int .replicas) 1 }}"), "4");
}
