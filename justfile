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
