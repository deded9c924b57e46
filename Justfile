# Mirrors `cargo xtask`: `just up`, `just down`, `just test` … (install just with `cargo install just`).

# Build what is missing, start devcluster + Jaeger, install CRDs, apply samples.
up:
    cargo xtask up

# Stop everything `up` started.
down:
    cargo xtask down

# Run every test, starting devcluster when needed.
test *ARGS:
    cargo xtask test {{ARGS}}

# Regenerate deploy/crds from the API types.
gen:
    cargo xtask gen

# Formatting.
fmt:
    cargo fmt --all

# Lints as CI runs them.
lint:
    cargo fmt --all -- --check
    cargo xtask gen --check
    cargo clippy --workspace --all-targets -- -D warnings

# Everything CI runs.
ci:
    bash .ci/run
