//! The node's shared KV buckets (live nodes, sessions, presence): opened if they exist,
//! created on first start.

use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::StorageType;
use chatstore_cluster::Nats;

/// Opens KV bucket `name`, creating it if it does not exist: one value per key, file storage,
/// `replicas` copies, entries expiring `max_age` after their last write (zero: never).
/// Blocking.
pub fn open(
    nats: &Nats,
    name: &'static str,
    replicas: usize,
    max_age: Duration,
    description: &'static str,
) -> Result<kv::Store, String> {
    let js = nats.jetstream().clone();
    nats.block_on(async move {
        match js.get_key_value(name).await {
            Ok(kv) => Ok(kv),
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: name.into(),
                    history: 1,
                    max_age,
                    storage: StorageType::File,
                    num_replicas: replicas.max(1),
                    description: description.into(),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("bucket {name}: {e}")),
        }
    })
    .map_err(|e| e.to_string())?
}
