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

# load benchmark against nginx and haproxy (installs them and wrk), then the micro-benchmarks
bench:
    ./dev bench-setup
    cargo bench -p poorman-proxy --bench load
    cargo bench -p poorman-proxy --bench hotpath

# cold start from zero vs `uv run`, and a 1000-request burst at zero (release build)
bench-coldstart:
    ./dev setup
    cargo bench -p poorman-proxy --bench coldstart

# helm lint --strict on the chart
chart-lint:
    ./dev setup
    helm lint --strict charts/poorman-faas

# render the chart (pass helm flags, e.g. --set adminToken=...) and validate the objects
chart-render *ARGS:
    ./dev setup
    helm template faas charts/poorman-faas --namespace faas {{ARGS}} | tee target/chart.yaml
    kubernetes-validate --strict -k 1.33.0 target/chart.yaml

# build the gateway image (needs podman, buildah or docker with an engine)
image TAG="ghcr.io/poorman-faas/gateway:0.1.0":
    $(command -v podman || command -v docker) build -f Containerfile -t {{TAG}} .

# install or upgrade the chart into the current kubectl context
deploy *ARGS:
    ./dev setup
    helm upgrade --install faas charts/poorman-faas --namespace faas --create-namespace {{ARGS}}
