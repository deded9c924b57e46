//! ktctl: offline checks with exactly the decisions the webhook and the workers make.
//!
//! - `ktctl validate --policy <file>... <template-file>...`: evaluates KubeTemplates against
//!   KubeTemplatePolicies as the admission webhook will. Exit 0 and `admitted` when every
//!   template is allowed; exit 1 and every violation when one is denied; exit 2 for unreadable
//!   or malformed input (including an invalid policy).
//! - `ktctl render --registry-row <json> <tenanttemplate-file>`: renders a TenantTemplate for one
//!   database row and prints the objects in dependency order.
//! - `ktctl workers | buckets [--wide] | locate <namespace> | handoffs | drain <worker>`: the
//!   coordinator's admin API (`--coordinator URL`, `--format json`).
//! - `ktctl tenants <registry> [-n NS] [--kubeconfig PATH]`: a TenantRegistry's Tenants with their
//!   bucket, owning worker and readiness (the cluster through the kubeconfig, owners from the
//!   coordinator).

pub mod admin;
pub mod input;
pub mod render;
pub mod tenants;
pub mod validate;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code: everything admitted / rendered.
pub const EXIT_OK: u8 = 0;
/// Exit code: a template was denied, or rendering failed.
pub const EXIT_DENIED: u8 = 1;
/// Exit code: unreadable or malformed input.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(name = "ktctl", version, about = "kubetemplater command line")]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Coordinator connection and output format (admin commands).
    #[command(flatten)]
    pub connection: admin::Connection,
}

/// ktctl's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Evaluate KubeTemplates against KubeTemplatePolicies offline, exactly as the webhook will.
    Validate(validate::ValidateArgs),
    /// Render a TenantTemplate for one registry row and print the objects in apply order.
    Render(render::RenderArgs),
    /// A TenantRegistry's Tenants: row uid, Tenant, template, bucket, owning worker, readiness.
    Tenants(tenants::TenantsArgs),
    /// The coordinator's admin API.
    #[command(flatten)]
    Admin(admin::AdminCommand),
}

/// Runs a command, writing results to `out` and diagnostics to `err`; returns the exit code.
pub fn run(args: Args, out: &mut dyn Write, err: &mut dyn Write) -> ExitCode {
    let code = match args.command {
        Command::Validate(a) => validate::run(&a, out, err),
        Command::Render(a) => render::run(&a, out, err),
        Command::Tenants(a) => tenants::run(&args.connection, &a, out, err),
        Command::Admin(c) => admin::run(&args.connection, &c, out, err),
    };
    ExitCode::from(code)
}
