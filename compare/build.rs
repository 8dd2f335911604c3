//! Records the chatstore commit the harness is built from, so the results name the engine
//! they measured even if the checkout moves on while a long run is going.

use std::process::Command;

fn git(args: &[&str]) -> String {
    Command::new("git")
        .arg("-C")
        .arg("..")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main() {
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--", "src", "Cargo.toml"]).is_empty();
    let commit = match (head.is_empty(), dirty) {
        (true, _) => "unknown".to_string(),
        (false, true) => format!("{head} + uncommitted changes in src/"),
        (false, false) => head,
    };
    println!("cargo:rustc-env=CHATSTORE_COMMIT={commit}");
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    println!("cargo:rerun-if-changed=../src");
    println!("cargo:rerun-if-changed=../Cargo.toml");
}
