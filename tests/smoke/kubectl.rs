//! What a user does with kubectl: version, explain, printer columns, server-side apply
//! conflicts, watching.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kubetemplater_e2e::Env;

#[tokio::test]
async fn kubectl_version_reports_a_real_server() -> Result<()> {
    let env = Env::get().await?;
    let out = env.kubectl_ok(&["version", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let server = v["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(server.starts_with("v1."), "server version {server:?}");
    if env.target.is_devcluster() {
        assert_eq!(server, devcluster::toolchain::KUBERNETES_VERSION);
        assert_eq!(
            v["clientVersion"]["gitVersion"],
            devcluster::toolchain::KUBERNETES_VERSION
        );
    }
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_describes_our_fields() -> Result<()> {
    let env = Env::get().await?;
    let out = env.kubectl_ok(&["explain", "kubetemplate.spec"])?;
    assert!(out.contains("templates"), "{out}");
    let out = env.kubectl_ok(&["explain", "kubetemplate.spec.templates"])?;
    for field in ["object", "replace", "referenced"] {
        assert!(out.contains(field), "explain lacks {field}: {out}");
    }
    let out = env.kubectl_ok(&["explain", "tenanttemplate.spec"])?;
    assert!(out.contains("registryId"), "{out}");
    Ok(())
}

#[tokio::test]
async fn printer_columns_show_phase_and_counts() -> Result<()> {
    let env = Env::get().await?;
    let ns = env.namespace_without_admission("columns").await?;
    let manifest = format!(
        "apiVersion: kubetemplater.io/v1alpha1\nkind: KubeTemplate\nmetadata:\n  name: cols\n  namespace: {ns}\nspec:\n  templates: []\n"
    );
    apply_stdin(&env, &manifest)?;
    let out = env.kubectl_ok(&["get", "kt", "-n", &ns])?;
    let header = out.lines().next().unwrap_or_default().to_string();
    for col in ["NAME", "PHASE", "SYNCED", "TOTAL", "AGE"] {
        assert!(
            header.contains(col),
            "column {col} missing from `kubectl get kt`: {header}"
        );
    }
    let wide = env.kubectl_ok(&["get", "kubetemplates", "-n", &ns, "-o", "wide"])?;
    let wide_header = wide.lines().next().unwrap_or_default();
    assert!(
        wide_header.len() > header.len(),
        "-o wide adds columns: {wide_header}"
    );
    env.target.delete_namespace(&ns).await?;
    Ok(())
}

fn apply_stdin(env: &Env, manifest: &str) -> Result<String> {
    apply_stdin_with(env, manifest, &[])
}

fn apply_stdin_with(env: &Env, manifest: &str, extra: &[&str]) -> Result<String> {
    use std::io::Write;
    let mut child = env
        .target
        .kubectl()
        .args(["apply", "-f", "-"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(manifest.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn server_side_apply_conflict_between_managers_and_force() -> Result<()> {
    let env = Env::get().await?;
    let ns = env.namespace_without_admission("ssa").await?;
    let cm = |value: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n  namespace: {ns}\ndata:\n  owner: {value}\n"
        )
    };
    apply_stdin_with(
        &env,
        &cm("alice"),
        &["--server-side", "--field-manager=alice"],
    )?;
    let err = apply_stdin_with(&env, &cm("bob"), &["--server-side", "--field-manager=bob"])
        .expect_err("a second manager changing an owned field must conflict");
    let msg = err.to_string();
    assert!(
        msg.contains("conflict") && msg.contains("alice"),
        "conflict names the other manager: {msg}"
    );
    apply_stdin_with(
        &env,
        &cm("bob"),
        &["--server-side", "--field-manager=bob", "--force-conflicts"],
    )?;
    let value = env.kubectl_ok(&[
        "get",
        "configmap",
        "shared",
        "-n",
        &ns,
        "-o",
        "jsonpath={.data.owner}",
    ])?;
    assert_eq!(value, "bob");
    let managers = env.kubectl_ok(&[
        "get",
        "configmap",
        "shared",
        "-n",
        &ns,
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ])?;
    assert!(
        managers.contains("bob"),
        "bob now owns the field: {managers}"
    );
    env.target.delete_namespace(&ns).await?;
    Ok(())
}

#[tokio::test]
async fn kubectl_get_watch_streams_a_change() -> Result<()> {
    let env = Env::get().await?;
    let ns = env.namespace_without_admission("watch").await?;
    apply_stdin(
        &env,
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: w\n  namespace: {ns}\ndata:\n  v: one\n"
        ),
    )?;
    let mut child = env
        .target
        .kubectl()
        .args([
            "get",
            "configmap",
            "w",
            "-n",
            &ns,
            "-w",
            "-o",
            "jsonpath={.data.v}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("watch stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .context("watch printed nothing")?;
    assert_eq!(first.trim(), "one");
    apply_stdin(
        &env,
        &format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: w\n  namespace: {ns}\ndata:\n  v: two\n"
        ),
    )?;
    let second = rx
        .recv_timeout(Duration::from_secs(20))
        .context("watch did not stream the change")?;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(second.trim(), "two");
    env.target.delete_namespace(&ns).await?;
    Ok(())
}
