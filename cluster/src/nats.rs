//! The connection to NATS and the bridge from the synchronous store to it.
//!
//! [`chatstore::CommitLog::append`] is synchronous and runs on the caller's thread (the
//! store's commit leader is whichever writer thread leads the group). The NATS client is
//! async. [`Nats`] owns a small tokio runtime of its own; every blocking call spawns its work
//! there and waits on a channel, so it works from any thread: a plain thread, a
//! `spawn_blocking` thread, even a worker of another runtime (where it blocks that worker for
//! the call, as any blocking store call does). The one place it refuses (with
//! [`Error::Usage`], instead of deadlocking) is a task of the bridge's own runtime.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::runtime::{Handle, Runtime};

use crate::error::{nats_err, Error, Result};

/// How to reach the NATS cluster.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Client URLs of the cluster's servers (`nats://127.0.0.1:4222`, ...). The client also
    /// learns the others from the server it reaches.
    pub urls: Vec<String>,
    /// The connection's name, as servers report it (monitoring, logs).
    pub name: String,
    /// How long a JetStream request or publish acknowledgement may take before it fails.
    pub request_timeout: Duration,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// Worker threads of the bridge's runtime.
    pub worker_threads: usize,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            urls: vec!["nats://127.0.0.1:4222".to_string()],
            name: "chatstore".to_string(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            worker_threads: 2,
        }
    }
}

/// A connection to a NATS cluster with JetStream, and the runtime it runs on. Cheap to clone.
#[derive(Clone)]
pub struct Nats {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Option<Runtime>,
    handle: Handle,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    options: NatsOptions,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Never block here: the last clone may be dropped inside some async context.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("urls", &self.inner.options.urls)
            .field("name", &self.inner.options.name)
            .finish()
    }
}

impl Nats {
    /// Connects to the cluster (any of `options.urls`). Blocking.
    pub fn connect(options: NatsOptions) -> Result<Nats> {
        if options.urls.is_empty() {
            return Err(Error::Usage("NatsOptions::urls is empty".into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(options.worker_threads.max(1))
            .thread_name("chatstore-nats")
            .enable_all()
            .build()
            .map_err(|e| Error::Usage(format!("cannot start the NATS runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let opts = options.clone();
        let client = run_on(&handle, async move {
            async_nats::ConnectOptions::new()
                .name(&opts.name)
                .connection_timeout(opts.connect_timeout)
                .request_timeout(Some(opts.request_timeout))
                // Reconnect fast: a commit waits on it while a server restarts.
                .reconnect_delay_callback(|attempts| {
                    Duration::from_millis((50 * attempts as u64).min(1000))
                })
                .connect(opts.urls.as_slice())
                .await
                .map_err(nats_err("connect"))
        })??;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(options.request_timeout);
        Ok(Nats {
            inner: Arc::new(Inner {
                runtime: Some(runtime),
                handle,
                client,
                jetstream,
                options,
            }),
        })
    }

    /// The core NATS client (usable from any runtime).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The JetStream context (usable from any runtime).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.jetstream
    }

    /// The options it connected with.
    pub fn options(&self) -> &NatsOptions {
        &self.inner.options
    }

    /// The bridge's runtime handle (to spawn background work on it).
    pub fn handle(&self) -> &Handle {
        &self.inner.handle
    }

    /// Runs `fut` on the bridge's runtime and waits for it. Blocking; see the module
    /// documentation for where it may be called.
    pub fn block_on<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        run_on(&self.inner.handle, fut)
    }

    /// The version the connected server reports.
    pub fn server_version(&self) -> String {
        self.inner.client.server_info().version
    }
}

/// Runs `f`, which blocks, without starving the tokio runtime whose worker thread calls it
/// (if any): on a worker of a multi-threaded runtime the worker's other tasks move to another
/// thread first (`block_in_place`). A node that blocked all its workers on calls answered by
/// other nodes (whose own workers wait on it in turn) would stop answering anyone.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn run_on<F>(handle: &Handle, fut: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if let Ok(current) = Handle::try_current() {
        if current.id() == handle.id() {
            return Err(Error::Usage(
                "a blocking cluster call was made from a task of the NATS runtime itself".into(),
            ));
        }
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let out = fut.await;
        let _ = tx.send(out);
    });
    blocking(|| rx.recv())
        .map_err(|_| Error::Usage("the NATS runtime shut down during a call".into()))
}
