//! Pure resolution of the effective telemetry configuration.
//!
//! Nothing in here touches the process environment: every variable is read
//! through a `lookup` closure, so the rules are unit-testable. [`init`](crate::init)
//! passes `|name| std::env::var(name).ok()`; that is the only place the crate
//! reads the environment itself (the OpenTelemetry SDK still honours its own
//! tuning variables such as `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT` and `OTEL_BSP_*`).

use std::fmt;

use crate::args::{LogFormat, TelemetryArgs, non_empty};
use crate::error::{Error, Result};

/// `OTEL_SDK_DISABLED`: `true` turns trace export off.
pub(crate) const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";
/// `OTEL_SERVICE_NAME`: the `service.name` resource attribute.
pub(crate) const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `OTEL_RESOURCE_ATTRIBUTES`: `key=value,...` (values percent-encoded).
pub(crate) const OTEL_RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
/// `OTEL_EXPORTER_OTLP_ENDPOINT`: base endpoint for all signals.
pub(crate) const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: full endpoint for traces, used as is.
pub(crate) const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or `http/protobuf`.
pub(crate) const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`: traces-only override of the protocol.
pub(crate) const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// `OTEL_TRACES_SAMPLER`: sampler name.
pub(crate) const OTEL_TRACES_SAMPLER: &str = "OTEL_TRACES_SAMPLER";
/// `OTEL_TRACES_SAMPLER_ARG`: sampler argument (the ratio for `*traceidratio`).
pub(crate) const OTEL_TRACES_SAMPLER_ARG: &str = "OTEL_TRACES_SAMPLER_ARG";

/// Name of the `--otlp-endpoint` flag, used in error messages.
const OTLP_ENDPOINT_FLAG: &str = "--otlp-endpoint/KT_OTLP_ENDPOINT";

/// Everything [`init_with_config`](crate::init_with_config) needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// Log line format.
    pub log_format: LogFormat,
    /// Effective `EnvFilter` directive.
    pub log_directive: String,
    /// Whether the pretty format may use ANSI colours (stderr is a terminal
    /// and `NO_COLOR` is unset). Ignored for JSON.
    pub ansi: bool,
    /// OpenTelemetry settings.
    pub otel: OtelConfig,
}

impl TelemetryConfig {
    /// Resolves the configuration from parsed args and an environment lookup.
    pub fn resolve<F>(args: &TelemetryArgs, default_service: &str, lookup: F) -> Result<Self>
    where
        F: Fn(&str) -> Option<String>,
    {
        let log_directive = args.log_directive(&lookup);
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
            && non_empty(lookup("NO_COLOR")).is_none();
        let otel = OtelConfig::from_env(default_service, args.otlp_endpoint.as_deref(), &lookup)?;
        Ok(Self {
            log_format: args.log_format,
            log_directive,
            ansi,
            otel,
        })
    }
}

/// OTLP transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/gRPC via tonic (default; usually port 4317).
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (usually port 4318, path `/v1/traces`).
    HttpProtobuf,
}

impl OtlpProtocol {
    fn parse(name: &str, value: &str) -> Result<Self> {
        match value {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(Error::InvalidConfig {
                name: name.to_owned(),
                value: other.to_owned(),
                reason: "supported protocols are \"grpc\" and \"http/protobuf\"".to_owned(),
            }),
        }
    }
}

impl fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        })
    }
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpExport {
    /// Transport protocol.
    pub protocol: OtlpProtocol,
    /// Fully resolved endpoint URL (for http/protobuf including `/v1/traces`).
    pub endpoint: String,
}

/// Trace sampler, as named by `OTEL_TRACES_SAMPLER`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SamplerConfig {
    /// `always_on`
    AlwaysOn,
    /// `always_off`
    AlwaysOff,
    /// `traceidratio` with the given ratio.
    TraceIdRatio(f64),
    /// `parentbased_always_on` (the default).
    #[default]
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with the given ratio for root spans.
    ParentBasedTraceIdRatio(f64),
}

impl SamplerConfig {
    fn parse(sampler: Option<String>, arg: Option<String>) -> Result<Self> {
        let ratio = || -> Result<f64> {
            let Some(arg) = arg.as_deref() else {
                return Ok(1.0);
            };
            match arg.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(Error::InvalidConfig {
                    name: OTEL_TRACES_SAMPLER_ARG.to_owned(),
                    value: arg.to_owned(),
                    reason: "expected a number between 0 and 1".to_owned(),
                }),
            }
        };
        let Some(sampler) = sampler else {
            return Ok(Self::default());
        };
        match sampler.to_ascii_lowercase().as_str() {
            "always_on" => Ok(Self::AlwaysOn),
            "always_off" => Ok(Self::AlwaysOff),
            "traceidratio" => Ok(Self::TraceIdRatio(ratio()?)),
            "parentbased_always_on" => Ok(Self::ParentBasedAlwaysOn),
            "parentbased_always_off" => Ok(Self::ParentBasedAlwaysOff),
            "parentbased_traceidratio" => Ok(Self::ParentBasedTraceIdRatio(ratio()?)),
            _ => Err(Error::InvalidConfig {
                name: OTEL_TRACES_SAMPLER.to_owned(),
                value: sampler,
                reason: "supported samplers are always_on, always_off, traceidratio, \
                         parentbased_always_on, parentbased_always_off and \
                         parentbased_traceidratio"
                    .to_owned(),
            }),
        }
    }

    /// The SDK sampler for this configuration.
    pub fn to_sdk(self) -> opentelemetry_sdk::trace::Sampler {
        use opentelemetry_sdk::trace::Sampler;
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            Self::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            Self::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            Self::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// OpenTelemetry configuration resolved from the standard `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    /// `service.name`: `OTEL_SERVICE_NAME`, else `service.name` from
    /// `OTEL_RESOURCE_ATTRIBUTES`, else the binary's default.
    pub service_name: String,
    /// Extra resource attributes from `OTEL_RESOURCE_ATTRIBUTES`, decoded, in order.
    pub resource_attributes: Vec<(String, String)>,
    /// Sampler from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
    pub sampler: SamplerConfig,
    /// `Some` when spans are exported: an endpoint is configured and
    /// `OTEL_SDK_DISABLED` is not `true`.
    pub export: Option<OtlpExport>,
}

impl OtelConfig {
    /// Resolves the configuration. Pure: the environment is read through `lookup`;
    /// empty values count as unset (as the OpenTelemetry spec requires).
    ///
    /// * export is **on** when `endpoint_flag` (`--otlp-endpoint`),
    ///   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set
    ///   (first one wins), and **off** otherwise or when `OTEL_SDK_DISABLED=true`;
    /// * protocol: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
    ///   `OTEL_EXPORTER_OTLP_PROTOCOL`, else `grpc`;
    /// * the traces endpoint is used as is; the flag and the generic endpoint get
    ///   `/v1/traces` appended for `http/protobuf` (as the spec says for the
    ///   generic variable);
    /// * sampler default: `parentbased_always_on`, ratio default `1.0`.
    ///
    /// Unsupported or malformed values are an [`Error::InvalidConfig`] rather than
    /// silently ignored, so a misconfigured deployment fails at start-up.
    pub fn from_env<F>(
        default_service: &str,
        endpoint_flag: Option<&str>,
        lookup: F,
    ) -> Result<Self>
    where
        F: Fn(&str) -> Option<String>,
    {
        let get = |name: &str| non_empty(lookup(name));

        let resource_attributes = match get(OTEL_RESOURCE_ATTRIBUTES) {
            Some(raw) => parse_resource_attributes(&raw)?,
            None => Vec::new(),
        };
        let service_name = get(OTEL_SERVICE_NAME)
            .or_else(|| {
                resource_attributes
                    .iter()
                    .rev()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .unwrap_or_else(|| default_service.to_owned());
        let sampler = SamplerConfig::parse(get(OTEL_TRACES_SAMPLER), get(OTEL_TRACES_SAMPLER_ARG))?;

        let disabled = get(OTEL_SDK_DISABLED).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let export = if disabled {
            None
        } else {
            let protocol = match get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL) {
                Some(p) => OtlpProtocol::parse(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, &p)?,
                None => match get(OTEL_EXPORTER_OTLP_PROTOCOL) {
                    Some(p) => OtlpProtocol::parse(OTEL_EXPORTER_OTLP_PROTOCOL, &p)?,
                    None => OtlpProtocol::default(),
                },
            };
            let base = |name: &str, url: String| -> Result<String> {
                validate_url(name, &url)?;
                Ok(match protocol {
                    OtlpProtocol::Grpc => url,
                    OtlpProtocol::HttpProtobuf => {
                        format!("{}/v1/traces", url.trim_end_matches('/'))
                    }
                })
            };
            let endpoint = if let Some(flag) = non_empty(endpoint_flag.map(str::to_owned)) {
                Some(base(OTLP_ENDPOINT_FLAG, flag)?)
            } else if let Some(url) = get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) {
                validate_url(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, &url)?;
                Some(url)
            } else if let Some(url) = get(OTEL_EXPORTER_OTLP_ENDPOINT) {
                Some(base(OTEL_EXPORTER_OTLP_ENDPOINT, url)?)
            } else {
                None
            };
            endpoint.map(|endpoint| OtlpExport { protocol, endpoint })
        };

        Ok(Self {
            service_name,
            resource_attributes,
            sampler,
            export,
        })
    }

    /// The SDK resource: telemetry SDK attributes, `OTEL_RESOURCE_ATTRIBUTES`,
    /// then `service.name`.
    pub fn resource(&self) -> opentelemetry_sdk::Resource {
        opentelemetry_sdk::Resource::builder_empty()
            .with_detector(Box::new(
                opentelemetry_sdk::resource::TelemetryResourceDetector,
            ))
            .with_attributes(
                self.resource_attributes
                    .iter()
                    .map(|(k, v)| opentelemetry::KeyValue::new(k.clone(), v.clone())),
            )
            .with_service_name(self.service_name.clone())
            .build()
    }
}

/// Requires an absolute `http://` or `https://` URL with a host.
fn validate_url(name: &str, url: &str) -> Result<()> {
    let invalid = |reason: String| Error::InvalidConfig {
        name: name.to_owned(),
        value: url.to_owned(),
        reason,
    };
    let uri: http::Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(invalid("expected an http:// or https:// URL".to_owned())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host".to_owned()));
    }
    Ok(())
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES`: comma-separated `key=value` pairs with
/// percent-encoded values. Any malformed entry rejects the whole value.
fn parse_resource_attributes(raw: &str) -> Result<Vec<(String, String)>> {
    let invalid = |reason: &str| Error::InvalidConfig {
        name: OTEL_RESOURCE_ATTRIBUTES.to_owned(),
        value: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let mut out = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| invalid("every entry must be key=value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(invalid("empty attribute key"));
        }
        let value = percent_decode(value.trim())
            .ok_or_else(|| invalid("malformed percent-encoding in a value"))?;
        out.push((key.to_owned(), value));
    }
    Ok(out)
}

/// Decodes `%XX` escapes; `None` on a truncated/invalid escape or non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn resolve(pairs: &[(&str, &str)]) -> Result<OtelConfig> {
        OtelConfig::from_env("worker", None, env(pairs))
    }

    #[test]
    fn export_off_without_endpoint() {
        let cfg = resolve(&[]).expect("config");
        assert_eq!(cfg.export, None);
        assert_eq!(cfg.service_name, "worker");
        assert_eq!(cfg.sampler, SamplerConfig::ParentBasedAlwaysOn);
        assert!(cfg.resource_attributes.is_empty());
        // Protocol alone does not turn export on; empty endpoint counts as unset.
        let cfg = resolve(&[
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
            (OTEL_EXPORTER_OTLP_ENDPOINT, ""),
        ])
        .expect("config");
        assert_eq!(cfg.export, None);
    }

    #[test]
    fn grpc_is_default_and_endpoint_used_as_is() {
        let cfg = resolve(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://otel:4317")]).expect("config");
        assert_eq!(
            cfg.export,
            Some(OtlpExport {
                protocol: OtlpProtocol::Grpc,
                endpoint: "http://otel:4317".into()
            })
        );
    }

    #[test]
    fn http_appends_signal_path_to_generic_endpoint_only() {
        let cfg = resolve(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://otel:4318/"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
        ])
        .expect("config");
        let export = cfg.export.expect("export on");
        assert_eq!(export.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(export.endpoint, "http://otel:4318/v1/traces");

        let cfg = resolve(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://ignored:4318"),
            (
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                "https://otel/custom/path",
            ),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/protobuf"),
        ])
        .expect("config");
        let export = cfg.export.expect("export on");
        assert_eq!(export.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(export.endpoint, "https://otel/custom/path");
    }

    #[test]
    fn flag_wins_and_sdk_disabled_turns_export_off() {
        let lookup = env(&[
            (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://env:4317"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/protobuf"),
        ]);
        let cfg = OtelConfig::from_env("w", Some("http://flag:4318"), &lookup).expect("config");
        assert_eq!(
            cfg.export.expect("export on").endpoint,
            "http://flag:4318/v1/traces"
        );

        let cfg = OtelConfig::from_env(
            "w",
            Some("http://flag:4317"),
            env(&[(OTEL_SDK_DISABLED, "TRUE")]),
        )
        .expect("config");
        assert_eq!(cfg.export, None);
        let cfg = OtelConfig::from_env(
            "w",
            Some("http://flag:4317"),
            env(&[(OTEL_SDK_DISABLED, "false")]),
        )
        .expect("config");
        assert!(cfg.export.is_some());
    }

    #[test]
    fn service_name_precedence() {
        let cfg = resolve(&[(OTEL_RESOURCE_ATTRIBUTES, "service.name=from-attrs")]).expect("cfg");
        assert_eq!(cfg.service_name, "from-attrs");
        let cfg = resolve(&[
            (OTEL_RESOURCE_ATTRIBUTES, "service.name=from-attrs"),
            (OTEL_SERVICE_NAME, "from-env"),
        ])
        .expect("cfg");
        assert_eq!(cfg.service_name, "from-env");
        let resource = cfg.resource();
        assert_eq!(
            resource
                .get(&opentelemetry::Key::new("service.name"))
                .map(|v| v.to_string()),
            Some("from-env".to_owned())
        );
    }

    #[test]
    fn resource_attributes_are_decoded() {
        let cfg = resolve(&[(
            OTEL_RESOURCE_ATTRIBUTES,
            " k8s.namespace.name=kt-system , deployment.environment=dev%2Cblue,,empty=",
        )])
        .expect("cfg");
        assert_eq!(
            cfg.resource_attributes,
            vec![
                ("k8s.namespace.name".to_owned(), "kt-system".to_owned()),
                ("deployment.environment".to_owned(), "dev,blue".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
        );
        let resource = cfg.resource();
        assert_eq!(
            resource
                .get(&opentelemetry::Key::new("deployment.environment"))
                .map(|v| v.to_string()),
            Some("dev,blue".to_owned())
        );
        assert!(
            resource
                .get(&opentelemetry::Key::new("telemetry.sdk.name"))
                .is_some()
        );
        for bad in ["novalue", "=x", "k=%zz", "k=%4"] {
            let err = resolve(&[(OTEL_RESOURCE_ATTRIBUTES, bad)]).expect_err(bad);
            assert!(
                matches!(err, Error::InvalidConfig { ref name, .. } if name == OTEL_RESOURCE_ATTRIBUTES)
            );
        }
    }

    #[test]
    fn samplers() {
        let s = |name: &str, arg: Option<&str>| {
            let mut pairs = vec![(OTEL_TRACES_SAMPLER, name)];
            if let Some(arg) = arg {
                pairs.push((OTEL_TRACES_SAMPLER_ARG, arg));
            }
            resolve(&pairs).map(|c| c.sampler)
        };
        assert_eq!(s("always_on", None).ok(), Some(SamplerConfig::AlwaysOn));
        assert_eq!(s("always_off", None).ok(), Some(SamplerConfig::AlwaysOff));
        assert_eq!(
            s("traceidratio", None).ok(),
            Some(SamplerConfig::TraceIdRatio(1.0))
        );
        assert_eq!(
            s("parentbased_traceidratio", Some("0.25")).ok(),
            Some(SamplerConfig::ParentBasedTraceIdRatio(0.25))
        );
        assert_eq!(
            s("parentbased_always_off", None).ok(),
            Some(SamplerConfig::ParentBasedAlwaysOff)
        );
        // The arg is only validated when a ratio sampler uses it.
        assert_eq!(
            s("always_on", Some("bogus")).ok(),
            Some(SamplerConfig::AlwaysOn)
        );
        assert!(s("traceidratio", Some("1.5")).is_err());
        assert!(s("traceidratio", Some("half")).is_err());
        assert!(s("jaeger_remote", None).is_err());
    }

    #[test]
    fn invalid_protocol_and_endpoint_are_errors() {
        let err = resolve(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://otel:4318"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "http/json"),
        ])
        .expect_err("http/json unsupported");
        assert!(
            matches!(err, Error::InvalidConfig { ref name, .. } if name == OTEL_EXPORTER_OTLP_PROTOCOL)
        );
        for bad in ["otel:4317", "not a url", "ftp://otel:21", "http://"] {
            assert!(
                resolve(&[(OTEL_EXPORTER_OTLP_ENDPOINT, bad)]).is_err(),
                "{bad} should be rejected"
            );
        }
        // Invalid protocol is irrelevant when the SDK is disabled.
        assert!(
            resolve(&[
                (OTEL_SDK_DISABLED, "true"),
                (OTEL_EXPORTER_OTLP_PROTOCOL, "carrier-pigeon")
            ])
            .is_ok()
        );
    }

    #[test]
    fn telemetry_config_resolves_args() {
        let args = TelemetryArgs {
            log_format: LogFormat::Json,
            log_level: None,
            otlp_endpoint: Some("http://otel:4317".into()),
        };
        let cfg = args
            .resolve(
                "coordinator",
                env(&[("RUST_LOG", "debug"), ("NO_COLOR", "1")]),
            )
            .expect("cfg");
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.log_directive, "debug");
        assert!(!cfg.ansi);
        assert_eq!(cfg.otel.service_name, "coordinator");
        assert!(cfg.otel.export.is_some());
    }
}
