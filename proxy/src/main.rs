//! `faas`: the Poorman FaaS gateway, admin API and runtime in one process.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use control::admin::Admin;
use control::config::{Config, RuntimeKind};
use control::controller::Controller;
use control::registry::Registry;
use control::runtime::kube::KubeRuntime;
use control::runtime::local::LocalRuntime;
use control::runtime::Runtime;
use control::token::TokenSource;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use proxy::fastpath::FastPath;
use proxy::gateway::Gateway;
use proxy::lifecycle::Lifecycle;
use proxy::metrics::Metrics;
use proxy::signals::Signals;

mod cli;

fn main() {
    let cli::Cli { global, command } = cli::Cli::parse();
    match command {
        cli::Command::Serve { conf } => {
            if let Err(e) = serve(conf) {
                eprintln!("faas: {e:#}");
                std::process::exit(2);
            }
        }
        command => std::process::exit(cli::run(global, command)),
    }
}

fn serve(conf: Option<PathBuf>) -> anyhow::Result<()> {
    let yaml = match &conf {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    let mut cfg = Config::load(yaml.as_deref())?;
    raise_fd_limit();
    // Before any gateway thread is pinned: function processes get all of these CPUs.
    control::runtime::local::affinity::remember_process_cpus();
    env_logger::Builder::new()
        .parse_filters(&format!(
            "warn,faas={0},proxy={0},control={0}",
            cfg.log_level
        ))
        .format_timestamp_millis()
        .init();
    match control::token::ensure(&mut cfg)? {
        TokenSource::Configured => {}
        TokenSource::File(path) => log::info!(
            "the admin API needs the token in {0}: export FAAS_ADMIN_TOKEN=$(cat {0})",
            path.display()
        ),
        TokenSource::Open => log::warn!(
            "FAAS_ADMIN_OPEN=true: the admin API, which runs any Python it is sent, is open to \
             anyone who can reach {}:{}",
            cfg.listen,
            cfg.port
        ),
    }
    let cfg = Arc::new(cfg);

    // Pingora retries a taken port for 30 s without saying why; tell the user at once.
    let addr = format!("{}:{}", cfg.listen, cfg.port);
    if let Err(e) = std::net::TcpListener::bind(&addr) {
        bail!("cannot listen on {addr} (PORT / FAAS_LISTEN): {e}");
    }

    let mut server_conf = match &yaml {
        Some(text) => ServerConf::from_yaml(text).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => ServerConf::default(),
    };
    // Our own shutdown exits as soon as replicas are stopped; Pingora's grace is the backstop.
    server_conf.grace_period_seconds = Some(cfg.shutdown_grace.as_secs() + 2);
    server_conf.graceful_shutdown_timeout_seconds = Some(1);
    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();

    let (registry, scale_rx) = Registry::new();
    registry.set_default_cap(cfg.replica_max_inflight);
    let cluster =
        (cfg.runtime == RuntimeKind::Kubernetes).then(|| KubeRuntime::new(&cfg, registry.clone()));
    let runtime: Arc<dyn Runtime> = match &cluster {
        None => Arc::new(LocalRuntime::new(&cfg, registry.clone())?),
        Some(kube) => Arc::new(kube.clone()),
    };
    let metrics = Arc::new(Metrics::new()?);
    let controller = Arc::new(Controller::new(
        cfg.clone(),
        registry.clone(),
        scale_rx,
        runtime.clone(),
        metrics.control(),
        cluster,
    ));
    // The admin API's runtime calls run on the controller's runtime, off the pinned threads.
    let admin = Admin::new(cfg.clone(), registry.clone(), runtime.clone())
        .with_activity(controller.activity())
        .with_offload(controller.offload());
    let gateway = Gateway::new(cfg.clone(), registry.clone(), admin, metrics.clone());

    let fallback = pingora_proxy::http_proxy(&server.configuration, gateway);
    let fast = FastPath::new(
        &cfg,
        registry.clone(),
        metrics.clone(),
        fallback,
        &server.configuration,
    );
    let mut proxy = Service::new("gateway".to_string(), fast);
    // Pingora's default 64 KiB read buffer per connection is most of an idle connection's memory.
    proxy.add_listener(ListenerConfig::tcp(&addr).l4_buffer(L4BufferSettings::new(0, 1460)));
    server.add_service(proxy);
    if cfg.runtime == RuntimeKind::Local {
        // Kubernetes has the kubelet's readiness probes; here the gateway probes itself.
        let checks = proxy::health::HealthChecks::new(
            registry.clone(),
            &cfg.kube.health_path,
            cfg.health_check_interval,
        );
        server.add_service(background_service("health", checks));
    }
    server.add_service(background_service("controller", Lifecycle::new(controller)));
    log::info!(
        "faas listening on http://{addr} (runtime {:?}, state {})",
        cfg.runtime,
        cfg.state_dir.display()
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    Ok(())
}

/// Every held or proxied request holds two sockets: allow as many as the hard limit permits.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
