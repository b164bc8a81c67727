//! criterion micro-benchmarks of the per-request work of the gateway: the route lookup with
//! 10 000 functions registered, the path rewrite, the endpoint selection, and the fast path's
//! parsing: a request head parsed and rewritten for the function, a response head parsed.

use std::hint::black_box;
use std::net::SocketAddr;

use control::function::FunctionSpec;
use control::registry::Registry;
use criterion::{criterion_group, criterion_main, Criterion};
use proxy::{fastpath, routes};

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

fn fast_path_parsing(c: &mut Criterion) {
    // What wrk and a browser-like client send, and what a small JSON function answers.
    let request = b"GET /gateway/service-05000/echo/items?page=2&size=10 HTTP/1.1\r\n\
        Host: faas.example:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\
        Accept-Encoding: gzip, deflate\r\nX-Request-Id: 4f1c2b8e\r\n\r\n";
    let response = b"HTTP/1.1 200 OK\r\ndate: Fri, 27 Nov 2026 13:00:00 GMT\r\n\
        server: uvicorn\r\ncontent-length: 27\r\ncontent-type: application/json\r\n\r\n\
        {\"message\":\"hello, world\"}";
    let mut out = Vec::with_capacity(512);
    c.bench_function("fast path: parse and rewrite a request head", |b| {
        b.iter(|| {
            let parsed = fastpath::http1::parse_request(
                black_box(request),
                "/gateway",
                "127.0.0.1",
                65536,
                &mut out,
            );
            matches!(parsed, fastpath::http1::Parsed::Forward(_))
        })
    });
    let mut head = Vec::new();
    c.bench_function("fast path: parse and normalise a response head", |b| {
        b.iter(|| fastpath::http1::parse_response(black_box(response), false, &mut head).is_ok())
    });
}

criterion_group!(
    hotpath,
    route_lookup,
    path_rewrite,
    endpoint_selection,
    fast_path_parsing
);
criterion_main!(hotpath);
