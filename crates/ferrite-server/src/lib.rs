//! Ferrite's composition root.
//!
//! Owns startup and shutdown of the whole system from one [`Config`]: opens the store
//! (replaying its WAL), builds the router, subscribes the telemetry consumer to it, starts the
//! MQTT gateway, the alarm store, the rules engine, the HTTP API and the PostgreSQL wire protocol, and on [`Server::shutdown`] stops them in the order that
//! loses nothing (listeners first, then the consumer drains, then the store's last group
//! commit). The binary, the end-to-end tests and the benchmarks all start Ferrite through
//! [`Server::start`].
//!
//! Also owns configuration loading ([`config`]). Holds no domain logic of its own.

mod alarms;
mod auth;
pub mod config;
mod events;
mod ingest;
mod provision;
mod rules;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ferrite_api::ApiState;
use ferrite_core::{Clock, SystemClock, TelemetryTopic, TopicFilter};
use ferrite_fleet::{Actor, Fleet};
use ferrite_mqtt::{MqttServer, Router};
use ferrite_query::QueryEngine;
use ferrite_store::{ReplayReport, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use alarms::ALARM_TOPIC;
pub use config::{Config, ConfigErrors, ConfigSources};
pub use events::PRESENCE_TOPIC;
pub use ferrite_api::Anonymous;
pub use ingest::IngestStats;
pub use provision::CLAIM_USERNAME;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data folder could not be created.
    #[error("cannot create the data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] ferrite_store::StoreError),
    /// The query engine could not be built.
    #[error("starting the query engine: {0}")]
    Query(#[from] ferrite_query::QueryError),
    /// The MQTT listener could not start.
    #[error(transparent)]
    Mqtt(#[from] ferrite_mqtt::MqttError),
    /// The MQTT session store (retained messages, persistent sessions) could not be opened.
    #[error(transparent)]
    MqttStore(#[from] ferrite_mqtt::PersistError),
    /// The device registry could not be opened.
    #[error("opening the device registry: {0}")]
    Fleet(#[from] ferrite_fleet::FleetError),
    /// The alarm store could not be opened.
    #[error("alarm store: {0}")]
    Alarms(String),
    /// The stored rules could not be loaded.
    #[error("rules file {path}: {message}")]
    Rules {
        /// The rules file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The PostgreSQL wire protocol listener could not be bound.
    #[error("cannot listen for PostgreSQL clients on {addr}: {source}")]
    PgBind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP listener could not be bound.
    #[error("cannot listen for HTTP on {addr}: {source}")]
    HttpBind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A running Ferrite.
pub struct Server {
    mqtt: MqttServer,
    /// Kept to close the MQTT session store last.
    router: Router,
    fleet: Fleet,
    /// The admin API token created on the first start of an empty data folder.
    bootstrap_token: Option<String>,
    /// Fleet event watcher and presence flusher; stop with `shutdown`.
    background: TaskTracker,
    http_addr: SocketAddr,
    /// Where the PostgreSQL wire protocol listens; `None` when `pg.enabled` is off.
    pg_addr: Option<SocketAddr>,
    /// Counts the pgwire queries started (each one cancellable from then on).
    pg_started: watch::Receiver<u64>,
    store: Arc<Store>,
    ingest_stats: Arc<IngestStats>,
    replay: ReplayReport,
    data_dir: PathBuf,
    /// Cancelled to stop the listeners.
    shutdown: CancellationToken,
    /// The HTTP server task.
    http: TaskTracker,
    /// The PostgreSQL wire protocol accept loop (which ends its connections at shutdown).
    pg: TaskTracker,
    /// The ingest consumer and its per-write tasks.
    ingest: TaskTracker,
    /// The rules engine; stopped before the ingest consumer drains (its tasks hold the router).
    rules: rules::RulesEngine,
    /// The alarm store; closed after the rules stop, which ends its publisher task.
    alarms: alarms::AlarmService,
}

impl Server {
    /// Start everything described by `config` on the current tokio runtime.
    pub async fn start(config: Config) -> Result<Self, ServerError> {
        let data_dir = config::absolute(&config.data_dir);
        std::fs::create_dir_all(&data_dir).map_err(|source| ServerError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let store_dir = data_dir.join("store");
        let store_config = config.store.clone();
        let (store, replay) =
            tokio::task::spawn_blocking(move || Store::open(&store_dir, &store_config))
                .await
                .map_err(|e| ServerError::DataDir {
                    path: data_dir.clone(),
                    source: std::io::Error::other(e.to_string()),
                })??;
        let store = Arc::new(store);
        tracing::info!(
            records = replay.records,
            torn_bytes = replay.torn_bytes,
            damaged = replay.damaged,
            "WAL replayed"
        );

        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let shutdown = CancellationToken::new();
        // Retained messages and persistent sessions, crash-safe; read back here.
        let router = Router::durable(
            config.mqtt.max_retained,
            &data_dir.join("mqtt").join("sessions.redb"),
        )?;

        let filters: Vec<TopicFilter> = TelemetryTopic::FILTERS
            .iter()
            .filter_map(|f| TopicFilter::new(*f).ok())
            .collect();
        let rx = router.subscribe_internal(&filters, config.ingest.queue, true);
        let ingest_stats = Arc::new(IngestStats::default());
        let ingest = TaskTracker::new();
        ingest.spawn(ingest::run(
            rx,
            Arc::clone(&store),
            Arc::clone(&ingest_stats),
            ingest.clone(),
        ));

        let fleet_dir = data_dir.join("fleet");
        let fleet_config = config.fleet.clone();
        let fleet = tokio::task::spawn_blocking(move || Fleet::open(&fleet_dir, fleet_config))
            .await
            .map_err(|e| ServerError::DataDir {
                path: data_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            })??;
        // The first start of an empty data folder creates an admin token, shown once.
        let bootstrap_token = fleet
            .bootstrap_admin(&Actor::System)?
            .map(|t| t.token.into_string());
        let (events, events_rx) = events::PresenceEvents::new();
        let claims = provision::ClaimSessions::default();
        let auth = auth::FleetAuthenticator::new(
            fleet.clone(),
            config.auth.anonymous,
            Arc::clone(&clock),
            events,
            Arc::clone(&claims),
        );
        let background = TaskTracker::new();
        background.spawn(auth.watch_events(shutdown.clone()));
        background.spawn(flush_presence(fleet.clone(), shutdown.clone()));
        // Ends when the gateway (holding every event sender) is dropped at shutdown.
        ingest.spawn(events::run(events_rx, router.clone()));
        background.spawn(provision::start(
            &router,
            fleet.clone(),
            claims,
            Arc::clone(&clock),
            shutdown.clone(),
        ));
        let mut mqtt_config = config.mqtt.clone();
        let fleet_ca = mqtt_config.tls.client_ca.as_os_str() == FLEET_CA;
        if fleet_ca {
            mqtt_config.tls.client_ca = if fleet.ca_cert_pem().is_some() {
                fleet.ca_cert_path()
            } else {
                tracing::warn!(
                    "mqtt.tls.client_ca = \"fleet\" but the fleet has no CA yet: client \
                     certificates are not accepted until one is created (ferrite cert ca-init)"
                );
                PathBuf::new()
            };
        }
        let mqtt = MqttServer::start(
            mqtt_config.clone(),
            router.clone(),
            Arc::new(auth),
            Arc::clone(&clock),
            shutdown.clone(),
        )
        .await?;
        if fleet_ca && mqtt_config.tls.enabled() {
            background.spawn(reload_tls_on_ca_change(
                fleet.clone(),
                mqtt.handle(),
                mqtt_config.tls.clone(),
                shutdown.clone(),
            ));
        }

        let query = Arc::new(QueryEngine::new(Arc::clone(&store), config.query.clone())?);
        let alarms_path = data_dir.join("rules").join("alarms.redb");
        let alarms_config = config.alarms.clone();
        let alarm_clock = Arc::clone(&clock);
        let (alarms, alarm_events) = tokio::task::spawn_blocking(move || {
            alarms::AlarmService::open(&alarms_path, &alarms_config, alarm_clock)
        })
        .await
        .map_err(|e| ServerError::Alarms(e.to_string()))?
        .map_err(ServerError::Alarms)?;
        // Ends when the alarm store is closed at shutdown (after routing what is queued).
        ingest.spawn(alarms::publish_events(alarm_events, router.clone()));
        if !config.alarms.closed_retention.is_zero() {
            background.spawn(alarms::purge_closed(
                alarms.clone(),
                config.alarms.closed_retention,
                shutdown.clone(),
            ));
        }
        let http = rules::webhook_client(&config.rules).map_err(|message| ServerError::Rules {
            path: data_dir.join("rules"),
            message,
        })?;
        let rules = rules::RulesEngine::start(
            data_dir.join("rules"),
            rules::Deps {
                router: router.clone(),
                store: Arc::clone(&store),
                fleet: fleet.clone(),
                alarms: alarms.clone(),
                http,
                query: Arc::clone(&query),
                checkpoints: rules::Checkpoints::new(
                    data_dir.join("rules").join("state"),
                    config.rules.checkpoint_interval,
                ),
                clock,
            },
            &shutdown,
        )?;

        let state = ApiState {
            query,
            store: Arc::clone(&store),
            max_body_bytes: config.http.max_body_bytes,
            mqtt: Some(mqtt.handle()),
            fleet: Some(fleet.clone()),
            anonymous: config.auth.anonymous,
            router: Some(router.clone()),
            rules: Some(Arc::new(rules.clone())),
            alarms: Some(Arc::new(alarms.clone())),
        };
        let pg = TaskTracker::new();
        let (started, pg_started) = watch::channel(0);
        let pg_addr = if config.pg.enabled {
            let listener = TcpListener::bind(config.pg.listen)
                .await
                .map_err(|source| ServerError::PgBind {
                    addr: config.pg.listen,
                    source,
                })?;
            let addr = listener
                .local_addr()
                .map_err(|source| ServerError::PgBind {
                    addr: config.pg.listen,
                    source,
                })?;
            pg.spawn(ferrite_api::pg::serve(
                listener,
                state.clone(),
                config.pg.max_connections,
                started,
                shutdown.clone(),
            ));
            Some(addr)
        } else {
            None
        };
        let app = ferrite_api::router(state);
        let listener = TcpListener::bind(config.http.listen)
            .await
            .map_err(|source| ServerError::HttpBind {
                addr: config.http.listen,
                source,
            })?;
        let http_addr = listener
            .local_addr()
            .map_err(|source| ServerError::HttpBind {
                addr: config.http.listen,
                source,
            })?;
        let http = TaskTracker::new();
        let token = shutdown.clone();
        http.spawn(async move {
            if let Err(e) = ferrite_api::serve(listener, app, token).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        Ok(Self {
            mqtt,
            router: router.clone(),
            fleet,
            bootstrap_token,
            background,
            http_addr,
            pg_addr,
            pg_started,
            store,
            ingest_stats,
            replay,
            data_dir,
            shutdown,
            http,
            pg,
            ingest,
            rules,
            alarms,
        })
    }

    /// The admin API token created by this start, if the data folder had none: shown once,
    /// only its hash is stored.
    pub fn bootstrap_token(&self) -> Option<&str> {
        self.bootstrap_token.as_deref()
    }

    /// The device registry.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Where MQTT listens.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt.local_addr()
    }

    /// Where MQTT over TLS listens, if configured.
    pub fn mqtt_tls_addr(&self) -> Option<SocketAddr> {
        self.mqtt.tls_addr()
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the PostgreSQL wire protocol listens, unless `pg.enabled` is off.
    pub fn pg_addr(&self) -> Option<SocketAddr> {
        self.pg_addr
    }

    /// The number of PostgreSQL wire queries started so far; it changes as soon as a new
    /// query can be cancelled.
    pub fn pg_queries_started(&self) -> watch::Receiver<u64> {
        self.pg_started.clone()
    }

    /// The absolute data folder.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// What WAL replay found at start.
    pub fn replay_report(&self) -> ReplayReport {
        self.replay
    }

    /// The store (for tests and benchmarks).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Telemetry ingestion counters.
    pub fn ingest_stats(&self) -> &Arc<IngestStats> {
        &self.ingest_stats
    }

    /// MQTT gateway counters.
    pub fn mqtt_stats(&self) -> &Arc<ferrite_mqtt::MqttStats> {
        self.mqtt.stats()
    }

    /// A token that stops the server when cancelled (for signal handlers).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stop accepting, close every connection, let queued telemetry finish its group commit,
    /// and close the store. Everything acknowledged before this returns is on disk.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.mqtt.wait().await;
        self.http.close();
        self.http.wait().await;
        self.pg.close();
        self.pg.wait().await;
        // Rule tasks hold the router; they go before the ingest consumer can see it end.
        self.rules.stop().await;
        // No rule raises any more and HTTP is gone: close the store, ending its publisher.
        self.alarms.close();
        // Connections are gone; the router (held by them and the gateway) is dropped with the
        // MqttServer, which ends the ingest consumer's subscription.
        drop(self.mqtt);
        // Sessions and retained messages are committed; then the last router handle goes.
        self.router.close_store().await;
        drop(self.router);
        self.ingest.close();
        self.ingest.wait().await;
        self.background.close();
        self.background.wait().await;
        let fleet = self.fleet.clone();
        let _ = tokio::task::spawn_blocking(move || fleet.flush_presence()).await;
        let store = Arc::clone(&self.store);
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
        tracing::info!("stopped");
    }
}

/// `mqtt.tls.client_ca` value meaning "the fleet's own CA" (`data_dir/fleet/ca/ca.pem`).
pub const FLEET_CA: &str = "fleet";

/// Trust a CA created or imported while running, without a restart.
async fn reload_tls_on_ca_change(
    fleet: Fleet,
    mqtt: ferrite_mqtt::MqttHandle,
    mut tls: ferrite_mqtt::TlsConfig,
    shutdown: CancellationToken,
) {
    let mut events = fleet.subscribe();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            e = events.recv() => e,
        };
        match event {
            Ok(ferrite_fleet::FleetEvent::CaChanged)
            | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                if fleet.ca_cert_pem().is_none() {
                    continue;
                }
                tls.client_ca = fleet.ca_cert_path();
                match mqtt.reload_tls(&tls) {
                    Ok(()) => tracing::info!("MQTT over TLS now trusts the fleet CA"),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot load the fleet CA for MQTT over TLS")
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            Ok(_) => {}
        }
    }
}

/// Write presence changes to the registry every few seconds (they are kept in memory between).
async fn flush_presence(fleet: Fleet, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let f = fleet.clone();
        match tokio::task::spawn_blocking(move || f.flush_presence()).await {
            Ok(Err(e)) => tracing::error!(error = %e, "writing presence failed"),
            Err(e) => tracing::error!(error = %e, "presence flush task failed"),
            Ok(Ok(_)) => {}
        }
    }
}
