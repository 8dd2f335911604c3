//! The example chat server: `cargo run --release --example chat_server -- --help`.
//!
//! A thin WebSocket + HTTP server on [`chatstore`]: sign-up/sign-in, 1:1 and group chats,
//! fanout to every device, delivered/read receipts, unread on reconnect, presence with
//! heartbeats, typing indicators, image uploads, and a small web page. The protocol is in
//! `docs/protocol.md`.

mod server;

use std::process::ExitCode;

fn main() -> ExitCode {
    // Store calls block (a send waits for its fsync, shared by group commit); they run on
    // tokio's blocking pool, capped well below its default of 512 threads.
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(128)
        .build()
    {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("chat_server: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cfg = match server::Config::from_env_and_args(std::env::args().skip(1)) {
        Ok(server::config::Parsed::Run(cfg)) => *cfg,
        Ok(server::config::Parsed::Help) => {
            print!("{}", server::config::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("chat_server: {e}");
            return ExitCode::from(2);
        }
    };
    let data = cfg.data_dir.clone();
    let running = match server::start(cfg).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chat_server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "chat server listening on {} (data in {})",
        running.url(),
        data.display()
    );
    wait_for_signal().await;
    println!("chat server: shutting down");
    match running.shutdown().await {
        Ok(()) => {
            println!("chat server: stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat_server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
