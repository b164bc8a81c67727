//! criterion micro-benchmarks of the per-request work of the gateway: the route lookup with
//! 10 000 functions registered, the path rewrite, and the endpoint selection.

use std::hint::black_box;
use std::net::SocketAddr;

use control::function::FunctionSpec;
use control::registry::Registry;
use criterion::{criterion_group, criterion_main, Criterion};
use proxy::routes;

fn spec(name: String) -> FunctionSpec {
    FunctionSpec {
        replicas: 1,
        ..FunctionSpec::named(&name)
    }
}

fn route_lookup(c: &mut Criterion) {
    let (registry, _rx) = Registry::new();
    registry.insert_all(
        (0..10_000)
            .map(|i| spec(format!("service-{i:05}")))
            .collect(),
    );
    c.bench_function("route lookup, 10 000 functions", |b| {
        b.iter(|| registry.get(black_box("service-05000")))
    });
}

fn path_rewrite(c: &mut Criterion) {
    c.bench_function("path split and rewrite", |b| {
        b.iter(|| {
            let route =
                routes::split("/gateway", black_box("/gateway/service-05000/echo/items")).unwrap();
            routes::upstream_path(route.rest, Some(black_box("page=2&size=10")))
        })
    });
}

fn endpoint_selection(c: &mut Criterion) {
    let (registry, _rx) = Registry::new();
    let entry = registry.insert(spec("f".into()));
    let addrs: Vec<SocketAddr> = (0..4)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
        .collect();
    entry.set_endpoints(&addrs);
    c.bench_function(
        "endpoint selection (least in flight of 4) and release",
        |b| {
            b.iter(|| {
                let ep = entry.acquire().unwrap();
                entry.release(black_box(&ep));
            })
        },
    );
}

criterion_group!(hotpath, route_lookup, path_rewrite, endpoint_selection);
criterion_main!(hotpath);
