//! Command-line / environment argument groups, meant to be `#[clap(flatten)]`ed
//! into every binary's `Args`.
//!
//! Only the kubetemplater-specific knobs are flags. OTLP export itself is
//! configured through the standard OpenTelemetry environment variables, see
//! [`OtelConfig::from_env`](crate::OtelConfig::from_env).

use std::net::{Ipv4Addr, SocketAddr};

use crate::config::{OtelConfig, TelemetryConfig};
use crate::error::Result;

/// Default for `--log-level` when neither it, `KT_LOG` nor `RUST_LOG` is set.
pub const DEFAULT_LOG_DIRECTIVE: &str = "info";

/// Default for `--admin-addr`.
pub const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

/// How log lines are rendered on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable single-line format (coloured when stderr is a terminal
    /// and `NO_COLOR` is unset).
    #[default]
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logging and tracing arguments shared by all binaries.
///
/// ```text
/// --log-format pretty|json   env KT_LOG_FORMAT   default pretty
/// --log-level DIRECTIVE      env KT_LOG          default $RUST_LOG, else "info"
/// --otlp-endpoint URL        env KT_OTLP_ENDPOINT
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Telemetry")]
pub struct TelemetryArgs {
    /// Log output format.
    #[arg(
        long,
        env = "KT_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Pretty
    )]
    pub log_format: LogFormat,

    /// Log filter directive in `tracing-subscriber` `EnvFilter` syntax, e.g.
    /// `info,kubetemplater=debug,kube=warn`. When unset, `RUST_LOG` is used if
    /// set, otherwise `info`. Can be changed at run time via `PUT /log-level`.
    #[arg(long, env = "KT_LOG", value_name = "DIRECTIVE")]
    pub log_level: Option<String>,

    /// OTLP collector endpoint; turns trace export on. Takes precedence over
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT` and is
    /// interpreted like the latter (for http/protobuf, `/v1/traces` is appended).
    /// The protocol still comes from `OTEL_EXPORTER_OTLP_PROTOCOL` (default grpc).
    #[arg(long, env = "KT_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

impl TelemetryArgs {
    /// Resolves the effective log filter directive: `--log-level`/`KT_LOG`, else
    /// `RUST_LOG` (looked up through `lookup`), else [`DEFAULT_LOG_DIRECTIVE`].
    /// Empty values count as unset.
    pub fn log_directive<F>(&self, lookup: F) -> String
    where
        F: Fn(&str) -> Option<String>,
    {
        non_empty(self.log_level.clone())
            .or_else(|| non_empty(lookup("RUST_LOG")))
            .unwrap_or_else(|| DEFAULT_LOG_DIRECTIVE.to_owned())
    }

    /// Resolves the OpenTelemetry configuration from the standard `OTEL_*`
    /// variables (looked up through `lookup`) plus `--otlp-endpoint`.
    pub fn otel_config<F>(&self, default_service: &str, lookup: F) -> Result<OtelConfig>
    where
        F: Fn(&str) -> Option<String>,
    {
        OtelConfig::from_env(default_service, self.otlp_endpoint.as_deref(), lookup)
    }

    /// Resolves everything [`init_with_config`](crate::init_with_config) needs.
    /// Pure: every environment variable is read through `lookup`.
    pub fn resolve<F>(&self, default_service: &str, lookup: F) -> Result<TelemetryConfig>
    where
        F: Fn(&str) -> Option<String>,
    {
        TelemetryConfig::resolve(self, default_service, lookup)
    }
}

/// Admin endpoint arguments (`/metrics`, `/healthz`, `/readyz`, `/log-level`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[command(next_help_heading = "Admin endpoint")]
pub struct AdminArgs {
    /// Address of the admin HTTP endpoint serving /metrics, /healthz, /readyz
    /// and /log-level. Use `0.0.0.0:9090` in a pod so the kubelet can probe it.
    #[arg(long, env = "KT_ADMIN_ADDR", value_name = "ADDR", default_value_t = DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
}

impl Default for AdminArgs {
    fn default() -> Self {
        Self {
            admin_addr: DEFAULT_ADMIN_ADDR,
        }
    }
}

/// clap value parser for durations shared by every binary: `10s`, `5m`, `90d`, `1h30m` (jiff's
/// friendly format; days are 24 h). Negative durations are refused.
pub fn parse_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let span: jiff::Span = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 10s, 5m or 90d: {e}"))?;
    let signed = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("{text:?}: {e}"))?;
    std::time::Duration::try_from(signed).map_err(|_| format!("{text:?} must not be negative"))
}

/// `None` for `None` and for empty / whitespace-only strings.
pub(crate) fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
        assert!(parse_duration("-5s").is_err());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[clap(flatten)]
        telemetry: TelemetryArgs,
        #[clap(flatten)]
        admin: AdminArgs,
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults() {
        let cli = Cli::try_parse_from(["bin"]).expect("parse");
        assert_eq!(cli.telemetry.log_format, LogFormat::Pretty);
        assert_eq!(cli.telemetry.log_level, None);
        assert_eq!(cli.telemetry.otlp_endpoint, None);
        assert_eq!(cli.admin.admin_addr, DEFAULT_ADMIN_ADDR);
        assert_eq!(cli.admin, AdminArgs::default());
        assert_eq!(cli.telemetry.log_directive(no_env), "info");
    }

    #[test]
    fn flags() {
        let cli = Cli::try_parse_from([
            "bin",
            "--log-format",
            "json",
            "--log-level",
            "debug,kube=warn",
            "--otlp-endpoint",
            "http://collector:4317",
            "--admin-addr",
            "0.0.0.0:8080",
        ])
        .expect("parse");
        assert_eq!(cli.telemetry.log_format, LogFormat::Json);
        assert_eq!(cli.telemetry.log_level.as_deref(), Some("debug,kube=warn"));
        assert_eq!(
            cli.telemetry.otlp_endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(cli.admin.admin_addr.to_string(), "0.0.0.0:8080");
        assert!(Cli::try_parse_from(["bin", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn log_directive_precedence() {
        let rust_log = |k: &str| (k == "RUST_LOG").then(|| "warn".to_owned());
        let empty_rust_log = |k: &str| (k == "RUST_LOG").then(|| "  ".to_owned());
        let explicit = TelemetryArgs {
            log_level: Some("trace".into()),
            ..TelemetryArgs::default()
        };
        let unset = TelemetryArgs::default();
        let blank = TelemetryArgs {
            log_level: Some(String::new()),
            ..TelemetryArgs::default()
        };
        assert_eq!(explicit.log_directive(rust_log), "trace");
        assert_eq!(unset.log_directive(rust_log), "warn");
        assert_eq!(blank.log_directive(rust_log), "warn");
        assert_eq!(unset.log_directive(empty_rust_log), "info");
        assert_eq!(unset.log_directive(no_env), "info");
    }
}
