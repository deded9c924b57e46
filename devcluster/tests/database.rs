//! Throwaway MariaDB and PostgreSQL servers: start (once, from several threads at once), a
//! database per test, SQL as admin and as the test's user (password checked), and an outage
//! (stop, then start on the same port with the same data).
//!
//! Each test runs its own servers in a private temporary layout and stops them at the end, also
//! when it fails. The first run on a machine without MariaDB installs it with apt-get (as root).

use std::time::Instant;

use devcluster::Layout;
use devcluster::database::{Connection, DatabaseServer, Engine, unique_name};

/// A private layout whose database servers are stopped on drop, before the directory goes.
struct PrivateServers {
    layout: Layout,
    _dir: tempfile::TempDir,
}

impl PrivateServers {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kt-db-")
            .tempdir()
            .expect("temporary layout root");
        Self {
            layout: Layout::new(dir.path()),
            _dir: dir,
        }
    }
}

impl Drop for PrivateServers {
    fn drop(&mut self) {
        if let Err(err) = devcluster::database::stop_all(&self.layout) {
            eprintln!("stopping the test's database servers: {err}");
        }
    }
}

fn start_concurrently(layout: &Layout, engine: Engine, threads: usize) -> Vec<DatabaseServer> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| DatabaseServer::start(layout, engine)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .expect("start thread")
                    .unwrap_or_else(|e| panic!("{engine} starts: {e}"))
            })
            .collect()
    })
}

fn lines(output: &str) -> Vec<&str> {
    output.lines().collect()
}

fn exercise(engine: Engine) {
    let servers = PrivateServers::new();
    let layout = &servers.layout;

    // Three threads start the server at once: one server, one port, one process.
    let t0 = Instant::now();
    let started = start_concurrently(layout, engine, 3);
    let first_start = t0.elapsed();
    let server = started[0].clone();
    let port = server.port();
    assert!(started.iter().all(|s| s.port() == port), "one port");
    let process = server.process();
    if server.is_external() {
        eprintln!(
            "{engine}: using the external server of {}",
            engine.url_env()
        );
    } else {
        let process = process.expect("a recorded server process");
        assert!(
            started
                .iter()
                .all(|s| s.process().map(|p| p.pid) == Some(process.pid)),
            "one server process"
        );
        assert!(server.is_running());
    }

    // A fresh database with its own user; the admin creates a table and rows in it.
    let name = unique_name(&format!("orders_{engine}"));
    let conn: Connection = server
        .create_database(&name)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (conn.database.as_str(), conn.username.as_str()),
        (name.as_str(), name.as_str())
    );
    assert_eq!(conn.port, port);
    assert!(
        conn.url()
            .starts_with(&format!("{}://{name}:", engine.url_scheme())),
        "{}",
        conn.url()
    );
    assert!(
        conn.url().ends_with(&format!(":{port}/{name}")),
        "{}",
        conn.url()
    );
    server
        .execute(
            &name,
            "CREATE TABLE tenants (id INT PRIMARY KEY, name VARCHAR(50), active BOOLEAN NOT NULL);\n\
             INSERT INTO tenants VALUES (1, 'alpha', TRUE), (2, 'beta', FALSE);\n\
             INSERT INTO tenants VALUES (3, 'gamma', TRUE);",
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let rows = server
        .execute(&name, "SELECT id, name FROM tenants ORDER BY id")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lines(&rows), ["1\talpha", "2\tbeta", "3\tgamma"]);

    // The test's user logs in over TCP with its password, reads the admin's table and writes.
    let as_user = server
        .execute_as(
            &conn,
            "INSERT INTO tenants VALUES (4, 'delta', TRUE);\n\
             SELECT name FROM tenants WHERE active ORDER BY id;",
        )
        .unwrap_or_else(|e| panic!("per-test user: {e}"));
    assert_eq!(lines(&as_user), ["alpha", "gamma", "delta"]);
    server
        .execute_as(
            &conn,
            "CREATE TABLE own (k VARCHAR(10)); INSERT INTO own VALUES ('x');",
        )
        .unwrap_or_else(|e| panic!("per-test user creates a table: {e}"));

    // A wrong password is refused, with the server's message.
    let wrong = Connection {
        password: format!("{}-wrong", conn.password),
        ..conn.clone()
    };
    let err = server
        .execute_as(&wrong, "SELECT 1")
        .expect_err("a wrong password is refused")
        .to_string();
    let expected = match engine {
        Engine::MariaDb => "Access denied",
        Engine::PostgreSql => "password authentication failed",
    };
    assert!(err.contains(expected), "{err}");
    // The user cannot reach another test's database.
    let other = server
        .create_database(&unique_name("other"))
        .unwrap_or_else(|e| panic!("{e}"));
    let err = server
        .execute_as(&conn.with_database(&other.database), "SELECT 1")
        .expect_err("another test's database is closed")
        .to_string();
    assert!(
        err.contains("denied") || err.contains("permission denied"),
        "{err}"
    );
    // Failed SQL is an error naming the engine and the database.
    let err = server
        .execute(&name, "SELECT * FROM no_such_table")
        .expect_err("bad SQL fails")
        .to_string();
    assert!(err.contains(engine.name()) && err.contains(&name), "{err}");

    if server.is_external() {
        eprintln!("{engine}: external server, outage part skipped");
        return;
    }

    // Outage: stop, the database is unreachable; start again: same port, same data.
    let t1 = Instant::now();
    server.stop().unwrap_or_else(|e| panic!("{e}"));
    let stop_time = t1.elapsed();
    assert!(!server.is_running());
    assert!(started.iter().all(|s| !s.is_running()));
    let err = server
        .execute_as(&conn, "SELECT 1")
        .expect_err("a stopped server does not answer")
        .to_string();
    assert!(err.contains(&name), "{err}");
    server.stop().expect("stopping a stopped server is a no-op");
    let log = std::fs::read_to_string(server.log().expect("a local server has a log"))
        .expect("server log");
    let clean = match engine {
        Engine::MariaDb => "Shutdown complete",
        Engine::PostgreSql => "database system is shut down",
    };
    assert!(log.contains(clean), "a clean shutdown, not a kill:\n{log}");

    let t2 = Instant::now();
    let again = DatabaseServer::start(layout, engine).unwrap_or_else(|e| panic!("{e}"));
    let restart = t2.elapsed();
    assert_eq!(again.port(), port, "a restart keeps the port");
    assert!(again.is_running() && server.is_running());
    let rows = again
        .execute_as(&conn, "SELECT id, name FROM tenants ORDER BY id")
        .unwrap_or_else(|e| panic!("after restart: {e}"));
    assert_eq!(
        lines(&rows),
        ["1\talpha", "2\tbeta", "3\tgamma", "4\tdelta"]
    );

    // Creating the database again gives an empty one.
    let fresh = again
        .create_database(&name)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(fresh.password, conn.password);
    let tables = match engine {
        Engine::MariaDb => again.execute(&name, "SHOW TABLES"),
        Engine::PostgreSql => again.execute(
            &name,
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
        ),
    }
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tables, "");
    assert!(
        again.execute_as(&conn, "SELECT 1").is_err(),
        "the old password is gone"
    );

    eprintln!(
        "{engine}: first start (incl. install/init) {:.1?}, stop {:.1?}, restart {:.1?}, total {:.1?}",
        first_start,
        stop_time,
        restart,
        t0.elapsed()
    );
    let record = again.process().expect("a recorded server process");
    drop(servers);
    assert!(
        !record.is_alive(),
        "the guard stops the server when the test ends"
    );
}

#[test]
fn mariadb_serves_a_database_per_test_and_survives_an_outage() {
    exercise(Engine::MariaDb);
}

#[test]
fn postgresql_serves_a_database_per_test_and_survives_an_outage() {
    exercise(Engine::PostgreSql);
}

/// Set in the child processes of [`processes_starting_at_once_share_one_server`].
const CHILD_LAYOUT_ENV: &str = "KT_DATABASE_TEST_CHILD_LAYOUT";

#[test]
fn processes_starting_at_once_share_one_server() {
    if std::env::var_os(CHILD_LAYOUT_ENV).is_some() {
        return; // a child running the whole binary by mistake: nothing to do
    }
    let servers = PrivateServers::new();
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--exact", "child_starts_the_server", "--nocapture"])
                .env(CHILD_LAYOUT_ENV, servers.layout.root())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("child test process")
        })
        .collect();
    let mut seen = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("child output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("SERVER "))
            .unwrap_or_else(|| panic!("no SERVER line in:\n{stdout}"))
            .to_owned();
        seen.push(line);
    }
    assert!(
        seen.iter().all(|s| *s == seen[0]),
        "one port and pid: {seen:?}"
    );
    let server = DatabaseServer::start(&servers.layout, Engine::PostgreSql).expect("reuse");
    let pid = server.process().map(|p| p.pid);
    assert_eq!(
        format!("{} {pid:?}", server.port()),
        seen[0],
        "this process reuses it too"
    );
}

/// Runs only as a child of [`processes_starting_at_once_share_one_server`].
#[test]
fn child_starts_the_server() {
    let Some(root) = std::env::var_os(CHILD_LAYOUT_ENV) else {
        return;
    };
    let server = DatabaseServer::start(&Layout::new(root), Engine::PostgreSql)
        .unwrap_or_else(|e| panic!("{e}"));
    server
        .execute("postgres", "SELECT 1")
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "SERVER {} {:?}",
        server.port(),
        server.process().map(|p| p.pid)
    );
}
