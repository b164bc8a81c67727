# Poorman FaaS tasks. `./dev setup` installs just itself (into .venv/bin).
set shell := ["bash", "-euo", "pipefail", "-c"]
export PATH := justfile_directory() + "/.venv/bin:" + env_var('PATH')

# list the tasks
default:
    @just --list

# start the platform (local runtime) on :8080
run *ARGS:
    ./dev run {{ARGS}}

# run every test, unit and end-to-end
test *ARGS:
    ./dev test {{ARGS}}

# fmt --check and clippy -D warnings
lint:
    ./dev lint

# what CI runs
ci:
    .ci/run

# cold start from zero vs `uv run`, and a 1000-request burst at zero (release build)
bench-coldstart:
    ./dev setup
    cargo bench -p poorman-proxy --bench coldstart
