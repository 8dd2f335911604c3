//! Password hashing on a fixed set of worker threads.
//!
//! Argon2id needs `m` KiB of memory per hash (19 MiB by default). Hashing on tokio's blocking
//! pool allocated that per call on whichever of its (up to 128) threads ran it, and glibc
//! keeps freed blocks in per-thread arenas: every concurrent sign-up or sign-in left ~19 MiB
//! behind for good. Here `workers` threads (one per core by default) each allocate their
//! argon2 memory once and reuse it for every hash, so hashing holds at most
//! `workers × m` KiB whatever the load. Jobs wait in a bounded queue; when it is full the
//! caller is told to come back later (`429 rate_limited`) instead of queueing without end.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use axum::http::StatusCode;
use parking_lot::Mutex;
use rand::rngs::OsRng;
use rand::RngCore;
use tokio::sync::oneshot;

use super::error::{ApiError, ApiResult};

/// Length of the stored hash output, in bytes.
const OUTPUT_LEN: usize = 32;

/// Hashes whose memory cost is above this many times the configured one are refused at
/// verification (a damaged or foreign accounts file must not make a worker allocate without
/// bound).
const MAX_VERIFY_MEMORY_FACTOR: usize = 4;

enum Job {
    Hash {
        password: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Verify {
        password: String,
        phc: Arc<str>,
        reply: oneshot::Sender<Result<bool, String>>,
    },
}

/// The hashing workers and their queue.
pub struct Hasher {
    tx: Mutex<Option<SyncSender<Job>>>,
    params: Params,
    workers: usize,
    /// The `retry_after_ms` of a full queue.
    retry_after_ms: u64,
}

impl Hasher {
    /// Starts `workers` threads (0 = one per core), each holding the memory of one hash.
    /// `queue` jobs may wait beyond those running.
    pub fn start(
        memory_kib: u32,
        iterations: u32,
        workers: usize,
        queue: usize,
    ) -> Result<Hasher, String> {
        let params = Params::new(memory_kib, iterations, 1, Some(OUTPUT_LEN))
            .map_err(|e| format!("bad argon2 parameters: {e}"))?;
        let workers = if workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            workers
        };
        let (tx, rx) = mpsc::sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = rx.clone();
            let params = params.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || worker(&rx, &params))
                .map_err(|e| format!("starting a hashing thread: {e}"))?;
        }
        Ok(Hasher {
            tx: Mutex::new(Some(tx)),
            retry_after_ms: 1000,
            params,
            workers,
        })
    }

    pub fn worker_count(&self) -> usize {
        self.workers
    }

    /// A well-formed hash of nothing anybody knows, with the current parameters: verifying
    /// against it costs what verifying a real one does (used for unknown usernames).
    pub fn dummy_hash(&self) -> Result<String, String> {
        let mut out = [0u8; OUTPUT_LEN];
        OsRng.fill_bytes(&mut out);
        let salt = SaltString::generate(&mut OsRng);
        phc_string(&self.params, salt.as_salt(), &out)
    }

    fn submit(&self, job: Job) -> ApiResult<()> {
        let tx = self.tx.lock().clone();
        let Some(tx) = tx else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is stopping",
            ));
        };
        match tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many sign-ups and sign-ins at once; try again shortly",
                );
                e.retry_after_ms = Some(self.retry_after_ms);
                Err(e)
            }
            Err(TrySendError::Disconnected(_)) => Err(ApiError::internal("hashing stopped")),
        }
    }

    /// Hashes a new password (PHC string).
    pub async fn hash(&self, password: String) -> ApiResult<String> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Hash { password, reply })?;
        match rx.await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ApiError::internal(format!("hashing failed: {e}"))),
            Err(_) => Err(ApiError::internal("hashing worker failed")),
        }
    }

    /// Checks a password against a stored PHC string.
    pub async fn verify(&self, password: String, phc: Arc<str>) -> ApiResult<bool> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job::Verify {
            password,
            phc,
            reply,
        })?;
        match rx.await {
            Ok(Ok(ok)) => Ok(ok),
            Ok(Err(e)) => {
                eprintln!("chat_server: password check: {e}");
                Err(ApiError::internal("bad stored password hash"))
            }
            Err(_) => Err(ApiError::internal("hashing worker failed")),
        }
    }

    /// Stops taking jobs; the workers finish the queued ones and exit.
    pub fn stop(&self) {
        self.tx.lock().take();
    }
}

impl Drop for Hasher {
    /// The workers exit once the queue is empty; nobody waits for them (the answers of the
    /// last jobs go nowhere).
    fn drop(&mut self) {
        self.stop();
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, params: &Params) {
    // The one allocation of argon2 memory this thread makes (grown only to verify a hash
    // made with a larger memory cost, up to MAX_VERIFY_MEMORY_FACTOR times).
    let mut blocks = vec![Block::new(); params.block_count()];
    loop {
        let job = rx.lock().recv();
        let Ok(job) = job else { return };
        match job {
            Job::Hash { password, reply } => {
                let _ = reply.send(hash_with(params, &password, &mut blocks));
            }
            Job::Verify {
                password,
                phc,
                reply,
            } => {
                let _ = reply.send(verify_with(params, &password, &phc, &mut blocks));
            }
        }
    }
}

fn phc_string(params: &Params, salt: Salt<'_>, out: &[u8]) -> Result<String, String> {
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| e.to_string())?,
        salt: Some(salt),
        hash: Some(Output::new(out).map_err(|e| e.to_string())?),
    };
    Ok(hash.to_string())
}

fn hash_with(params: &Params, password: &str, blocks: &mut [Block]) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_buf)
        .map_err(|e| e.to_string())?;
    let mut out = [0u8; OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, blocks)
        .map_err(|e| e.to_string())?;
    phc_string(params, salt.as_salt(), &out)
}

fn verify_with(
    configured: &Params,
    password: &str,
    phc: &str,
    blocks: &mut Vec<Block>,
) -> Result<bool, String> {
    let hash = PasswordHash::new(phc).map_err(|e| e.to_string())?;
    let algorithm = Algorithm::try_from(hash.algorithm).map_err(|e| e.to_string())?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).map_err(|e| e.to_string())?,
        None => Version::default(),
    };
    let params = Params::try_from(&hash).map_err(|e| e.to_string())?;
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return Err("no salt or no hash".into());
    };
    let need = params.block_count();
    if need > blocks.len() {
        if need
            > configured
                .block_count()
                .saturating_mul(MAX_VERIFY_MEMORY_FACTOR)
        {
            return Err(format!("memory cost {} KiB is too high", params.m_cost()));
        }
        blocks.resize(need, Block::new());
    }
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(|e| e.to_string())?;
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, &mut blocks[..])
        .map_err(|e| e.to_string())?;
    // Output's equality is constant-time.
    Ok(Output::new(&out).map_err(|e| e.to_string())? == expected)
}
