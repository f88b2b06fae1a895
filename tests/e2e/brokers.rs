//! The brokers the broker backends run on, as the tests start them: the
//! pinned nats-server has JetStream with KV buckets and atomic batches
//! (2.12+), and redis-server fsyncs every write and runs the streams,
//! consumer-group and Lua commands the Redis backend builds on.

use plugbus_e2e::brokers::{Nats, Redis};

#[test]
fn the_pinned_nats_server_has_jetstream_kv_and_atomic_batches() {
    let nats = Nats::start().unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio");
    rt.block_on(async {
        let client = async_nats::connect(&nats.url).await.expect("connects");
        let version = client.server_info().version;
        let minor: u32 = version
            .strip_prefix("2.")
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("a 2.x server, got {version}"));
        assert!(minor >= 12, "atomic batches need 2.12+, got {version}");
        let js = async_nats::jetstream::new(client);
        let kv = js
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: "state_probe".into(),
                history: 1,
                ..Default::default()
            })
            .await
            .expect("a KV bucket (fails on 2.9)");
        let revision = kv.put("k", "v1".into()).await.expect("put");
        kv.update("k", "v2".into(), revision).await.expect("CAS");
        let stale = kv.update("k", "v3".into(), revision).await;
        assert!(stale.is_err(), "a stale revision is refused");
        let mut stream = js
            .get_stream("KV_state_probe")
            .await
            .expect("bucket stream");
        let mut config = stream.info().await.expect("info").config.clone();
        config.allow_atomic_publish = true;
        let updated = js.update_stream(config).await.expect("update");
        assert!(updated.config.allow_atomic_publish, "atomic batches on");
    });
}

#[test]
fn redis_fsyncs_every_write_and_runs_streams_groups_and_scripts() {
    let redis = Redis::start().unwrap_or_else(|e| panic!("{e}"));
    let client = redis::Client::open(redis.url.as_str()).expect("url");
    let mut con = client.get_connection().expect("connects");
    let fsync: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendfsync")
        .query(&mut con)
        .expect("config");
    assert_eq!(fsync, ["appendfsync", "always"]);
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "topic:order.placed", "email", "0", "MKSTREAM"][..])
        .query(&mut con)
        .expect("group");
    let _: String = redis::cmd("XADD")
        .arg(&["topic:order.placed", "*", "id", "e1"][..])
        .query(&mut con)
        .expect("xadd");
    let read: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "email", "host-a", "COUNT", "10", "STREAMS"][..])
        .arg(&["topic:order.placed", ">"][..])
        .query(&mut con)
        .expect("xreadgroup");
    assert!(format!("{read:?}").contains("e1"), "{read:?}");
    // A commit fenced by ownership, as the backend's settle script does it:
    // only the consumer that holds the entry may ack it.
    let fenced = r#"
        local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1)
        if p[1] == nil or p[1][2] ~= ARGV[2] then return 'NOT_OWNER' end
        redis.call('XACK', KEYS[1], ARGV[1], p[1][1])
        return 'COMMITTED'"#;
    let zombie: String = redis::cmd("EVAL")
        .arg(fenced)
        .arg(1)
        .arg(&["topic:order.placed", "email", "host-b"][..])
        .query(&mut con)
        .expect("eval");
    assert_eq!(zombie, "NOT_OWNER");
    let owner: String = redis::cmd("EVAL")
        .arg(fenced)
        .arg(1)
        .arg(&["topic:order.placed", "email", "host-a"][..])
        .query(&mut con)
        .expect("eval");
    assert_eq!(owner, "COMMITTED");
}
