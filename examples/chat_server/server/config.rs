//! Server settings: flags override environment variables, which override the defaults.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Everything the server can be told at start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where to listen (always a loopback address in this example).
    pub addr: SocketAddr,
    /// The data folder: `store/` (chatstore), `accounts.jsonl`, `assets/`.
    pub data_dir: PathBuf,
    /// How often the server pings each WebSocket (and sweeps presence).
    pub heartbeat: Duration,
    /// A user (and a connection) silent for this long is offline.
    pub offline_after: Duration,
    /// Sends per second a user may make (all devices together), refilled continuously.
    pub send_rate: f64,
    /// Sends a user may make in a burst.
    pub send_burst: f64,
    /// Frames waiting for one connection before it is dropped as too slow.
    pub queue_frames: usize,
    /// Largest upload, in bytes.
    pub max_upload_bytes: usize,
    /// Largest text frame the server answers with an error instead of closing the socket.
    pub max_frame_bytes: usize,
    /// Largest WebSocket message at all; beyond it the connection is closed (1009).
    pub hard_frame_bytes: usize,
    /// Unread messages sent per conversation in the first frame of a connection.
    pub unread_per_conversation: usize,
    /// Argon2id memory cost in KiB (OWASP: 19456).
    pub argon2_memory_kib: u32,
    /// Argon2id iterations (OWASP: 2).
    pub argon2_iterations: u32,
    /// Threads that hash passwords, each holding one hash's memory (0 = one per core).
    pub hash_workers: usize,
    /// Sign-ups and sign-ins that may wait for a hashing thread; more get `429`.
    pub hash_queue: usize,
    /// Sign-ups and sign-ins per second from one client address, refilled continuously.
    pub auth_rate: f64,
    /// Sign-ups and sign-ins one client address may make in a burst.
    pub auth_burst: f64,
    /// Conversation changes (new direct chat or group, member added or removed) per second
    /// per user, and their burst.
    pub conv_rate: f64,
    pub conv_burst: f64,
    /// Typing frames forwarded per second per user, and their burst.
    pub typing_rate: f64,
    pub typing_burst: f64,
    /// `delivered`/`read` frames per second per user, and their burst.
    pub receipt_rate: f64,
    pub receipt_burst: f64,
    /// Uploads per second per user, and their burst.
    pub upload_rate: f64,
    pub upload_burst: f64,
    /// Bytes of uploads one user may have stored.
    pub upload_quota_bytes: u64,
    /// Bytes of all uploads together.
    pub uploads_max_bytes: u64,
    /// Free space the data disk keeps: uploads that would leave less are refused.
    pub min_free_bytes: u64,
    /// Uploads not attached to a message within this long are deleted.
    pub unattached_upload_ttl: Duration,
    /// A request whose headers take longer than this to arrive is dropped (and so is a
    /// keep-alive connection idle for longer).
    pub header_timeout: Duration,
    /// Rejected requests and frames logged per second, and their burst (the rest are
    /// counted and summarized).
    pub reject_log_rate: f64,
    pub reject_log_burst: f64,
    /// Failed sign-ins to one account before each next attempt must wait (1 s, doubling).
    pub signin_free_failures: u32,
    /// Failed sign-ins from one client address before each next attempt must wait.
    pub signin_free_failures_per_addr: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            data_dir: PathBuf::from("./chat-data"),
            heartbeat: Duration::from_secs(3),
            offline_after: Duration::from_secs(10),
            send_rate: 10.0,
            send_burst: 30.0,
            queue_frames: 512,
            max_upload_bytes: 5 << 20,
            max_frame_bytes: 80 << 10,
            hard_frame_bytes: 1 << 20,
            unread_per_conversation: 50,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            hash_workers: 0,
            hash_queue: 64,
            auth_rate: 1.0,
            auth_burst: 20.0,
            conv_rate: 1.0,
            conv_burst: 10.0,
            typing_rate: 2.0,
            typing_burst: 10.0,
            receipt_rate: 20.0,
            receipt_burst: 60.0,
            upload_rate: 0.5,
            upload_burst: 10.0,
            upload_quota_bytes: 100 << 20,
            uploads_max_bytes: 10 << 30,
            min_free_bytes: 1 << 30,
            unattached_upload_ttl: Duration::from_secs(3600),
            header_timeout: Duration::from_secs(10),
            reject_log_rate: 5.0,
            reject_log_burst: 50.0,
            signin_free_failures: 5,
            signin_free_failures_per_addr: 50,
        }
    }
}

pub const USAGE: &str = "\
chat_server: a WebSocket chat server on chatstore

USAGE: cargo run --release --example chat_server -- [FLAGS]

FLAGS (environment variable in brackets):
  --port N                  port on 127.0.0.1, 0 = any free one [CHAT_PORT] (8080)
  --data PATH               data folder [CHAT_DATA] (./chat-data)
  --heartbeat-ms N          ping interval [CHAT_HEARTBEAT_MS] (3000)
  --offline-after-ms N      offline after this long without an answer [CHAT_OFFLINE_AFTER_MS] (10000)
  --send-rate N             sends per second per user [CHAT_SEND_RATE] (10)
  --send-burst N            burst of sends per user [CHAT_SEND_BURST] (30)
  --queue N                 outgoing frames queued per connection [CHAT_QUEUE] (512)
  --max-upload-bytes N      largest image upload [CHAT_MAX_UPLOAD_BYTES] (5242880)
  --argon2-memory-kib N     argon2id memory cost [CHAT_ARGON2_MEMORY_KIB] (19456)
  --argon2-iterations N     argon2id iterations [CHAT_ARGON2_ITERATIONS] (2)
  --hash-workers N          password hashing threads, 0 = one per core [CHAT_HASH_WORKERS] (0)
  --hash-queue N            sign-ups/sign-ins waiting for a hashing thread [CHAT_HASH_QUEUE] (64)
  --auth-rate N             sign-ups/sign-ins per second per client address [CHAT_AUTH_RATE] (1)
  --auth-burst N            burst of sign-ups/sign-ins per client address [CHAT_AUTH_BURST] (20)
  --conv-rate N             new chats and member changes per second per user [CHAT_CONV_RATE] (1)
  --conv-burst N            burst of them [CHAT_CONV_BURST] (10)
  --typing-rate N           typing frames per second per user [CHAT_TYPING_RATE] (2)
  --typing-burst N          burst of them [CHAT_TYPING_BURST] (10)
  --receipt-rate N          delivered/read frames per second per user [CHAT_RECEIPT_RATE] (20)
  --receipt-burst N         burst of them [CHAT_RECEIPT_BURST] (60)
  --upload-rate N           uploads per second per user [CHAT_UPLOAD_RATE] (0.5)
  --upload-burst N          burst of them [CHAT_UPLOAD_BURST] (10)
  --upload-quota-bytes N    upload bytes stored per user [CHAT_UPLOAD_QUOTA_BYTES] (104857600)
  --uploads-max-bytes N     upload bytes stored in all [CHAT_UPLOADS_MAX_BYTES] (10737418240)
  --min-free-bytes N        free disk space uploads must leave [CHAT_MIN_FREE_BYTES] (1073741824)
  --unattached-upload-ttl-s N  delete uploads not sent within this long [CHAT_UNATTACHED_UPLOAD_TTL_S] (3600)
  --header-timeout-ms N     time allowed for a request's headers [CHAT_HEADER_TIMEOUT_MS] (10000)
  -h, --help                this text
";

const KEYS: &[(&str, &str)] = &[
    ("--port", "CHAT_PORT"),
    ("--data", "CHAT_DATA"),
    ("--heartbeat-ms", "CHAT_HEARTBEAT_MS"),
    ("--offline-after-ms", "CHAT_OFFLINE_AFTER_MS"),
    ("--send-rate", "CHAT_SEND_RATE"),
    ("--send-burst", "CHAT_SEND_BURST"),
    ("--queue", "CHAT_QUEUE"),
    ("--max-upload-bytes", "CHAT_MAX_UPLOAD_BYTES"),
    ("--argon2-memory-kib", "CHAT_ARGON2_MEMORY_KIB"),
    ("--argon2-iterations", "CHAT_ARGON2_ITERATIONS"),
    ("--hash-workers", "CHAT_HASH_WORKERS"),
    ("--hash-queue", "CHAT_HASH_QUEUE"),
    ("--auth-rate", "CHAT_AUTH_RATE"),
    ("--auth-burst", "CHAT_AUTH_BURST"),
    ("--conv-rate", "CHAT_CONV_RATE"),
    ("--conv-burst", "CHAT_CONV_BURST"),
    ("--typing-rate", "CHAT_TYPING_RATE"),
    ("--typing-burst", "CHAT_TYPING_BURST"),
    ("--receipt-rate", "CHAT_RECEIPT_RATE"),
    ("--receipt-burst", "CHAT_RECEIPT_BURST"),
    ("--upload-rate", "CHAT_UPLOAD_RATE"),
    ("--upload-burst", "CHAT_UPLOAD_BURST"),
    ("--upload-quota-bytes", "CHAT_UPLOAD_QUOTA_BYTES"),
    ("--uploads-max-bytes", "CHAT_UPLOADS_MAX_BYTES"),
    ("--min-free-bytes", "CHAT_MIN_FREE_BYTES"),
    ("--unattached-upload-ttl-s", "CHAT_UNATTACHED_UPLOAD_TTL_S"),
    ("--header-timeout-ms", "CHAT_HEADER_TIMEOUT_MS"),
];

/// What the command line asked for.
pub enum Parsed {
    Run(Box<Config>),
    Help,
}

impl Config {
    /// Reads the environment and then `args` (without the program name).
    pub fn from_env_and_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
        let mut values: Vec<(&'static str, String)> = Vec::new();
        for (flag, env) in KEYS {
            if let Ok(v) = std::env::var(env) {
                values.push((flag, v));
            }
        }
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(Parsed::Help);
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            let Some((flag, _)) = KEYS.iter().find(|(f, _)| *f == name) else {
                return Err(format!("unknown argument {arg:?}\n\n{USAGE}"));
            };
            let value = match inline {
                Some(v) => v,
                None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
            };
            values.push((flag, value));
        }
        let mut cfg = Config::default();
        for (flag, v) in values {
            cfg.set(flag, &v)?;
        }
        cfg.check()?;
        Ok(Parsed::Run(Box::new(cfg)))
    }

    fn set(&mut self, flag: &str, v: &str) -> Result<(), String> {
        fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
            v.trim()
                .parse()
                .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
        }
        match flag {
            "--port" => self.addr.set_port(num(flag, v)?),
            "--data" => self.data_dir = PathBuf::from(v),
            "--heartbeat-ms" => self.heartbeat = Duration::from_millis(num(flag, v)?),
            "--offline-after-ms" => self.offline_after = Duration::from_millis(num(flag, v)?),
            "--send-rate" => self.send_rate = num(flag, v)?,
            "--send-burst" => self.send_burst = num(flag, v)?,
            "--queue" => self.queue_frames = num(flag, v)?,
            "--max-upload-bytes" => self.max_upload_bytes = num(flag, v)?,
            "--argon2-memory-kib" => self.argon2_memory_kib = num(flag, v)?,
            "--argon2-iterations" => self.argon2_iterations = num(flag, v)?,
            "--hash-workers" => self.hash_workers = num(flag, v)?,
            "--hash-queue" => self.hash_queue = num(flag, v)?,
            "--auth-rate" => self.auth_rate = num(flag, v)?,
            "--auth-burst" => self.auth_burst = num(flag, v)?,
            "--conv-rate" => self.conv_rate = num(flag, v)?,
            "--conv-burst" => self.conv_burst = num(flag, v)?,
            "--typing-rate" => self.typing_rate = num(flag, v)?,
            "--typing-burst" => self.typing_burst = num(flag, v)?,
            "--receipt-rate" => self.receipt_rate = num(flag, v)?,
            "--receipt-burst" => self.receipt_burst = num(flag, v)?,
            "--upload-rate" => self.upload_rate = num(flag, v)?,
            "--upload-burst" => self.upload_burst = num(flag, v)?,
            "--upload-quota-bytes" => self.upload_quota_bytes = num(flag, v)?,
            "--uploads-max-bytes" => self.uploads_max_bytes = num(flag, v)?,
            "--min-free-bytes" => self.min_free_bytes = num(flag, v)?,
            "--header-timeout-ms" => self.header_timeout = Duration::from_millis(num(flag, v)?),
            "--unattached-upload-ttl-s" => {
                self.unattached_upload_ttl = Duration::from_secs(num(flag, v)?)
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
        Ok(())
    }

    /// Rejects settings that cannot work.
    pub fn check(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() || self.offline_after <= self.heartbeat {
            return Err("heartbeat must be > 0 and offline-after longer than it".into());
        }
        if !(self.send_rate > 0.0 && self.send_burst >= 1.0) {
            return Err("send rate must be > 0 and burst >= 1".into());
        }
        for (what, rate, burst) in [
            ("auth", self.auth_rate, self.auth_burst),
            ("conv", self.conv_rate, self.conv_burst),
            ("typing", self.typing_rate, self.typing_burst),
            ("receipt", self.receipt_rate, self.receipt_burst),
            ("upload", self.upload_rate, self.upload_burst),
        ] {
            if !(rate > 0.0 && burst >= 1.0) {
                return Err(format!("{what} rate must be > 0 and its burst >= 1"));
            }
        }
        if self.header_timeout.is_zero() {
            return Err("header timeout must be > 0".into());
        }
        if !(self.reject_log_rate > 0.0 && self.reject_log_burst >= 1.0) {
            return Err("reject log rate must be > 0 and its burst >= 1".into());
        }
        if self.hash_workers > 1024 {
            return Err("at most 1024 hashing threads".into());
        }
        if self.queue_frames < 4 {
            return Err("queue must hold at least 4 frames".into());
        }
        if self.max_upload_bytes == 0 || self.max_frame_bytes >= self.hard_frame_bytes {
            return Err("bad size limits".into());
        }
        argon2::Params::new(self.argon2_memory_kib, self.argon2_iterations, 1, None)
            .map_err(|e| format!("bad argon2 parameters: {e}"))?;
        Ok(())
    }
}
