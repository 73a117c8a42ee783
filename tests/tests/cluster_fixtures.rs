//! The cluster fixtures themselves, without a relay: the NATS cluster survives a SIGKILL and a
//! restart of one server with an R3 stream intact, a paused server is resumed, and the proxy
//! holds bytes while blackholed and delivers them once healed. If these fail, the cluster tests'
//! failures say nothing about the relay.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use relay_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn nats_cluster_keeps_an_r3_stream_across_a_kill_and_restart() {
    let mut nats = NatsCluster::start().await;
    let js = jetstream::new(nats.client().await);
    js.create_stream(stream::Config {
        name: "FIXTURE".into(),
        subjects: vec!["fixture.>".into()],
        num_replicas: 3,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("an R3 stream");
    let ack = js
        .publish("fixture.a", "before".into())
        .await
        .expect("publish")
        .await
        .expect("acknowledged");
    assert_eq!(ack.sequence, 1);

    nats.kill(0).await;
    assert!(!nats.nodes[0].is_running());
    nats.restart(0).await;
    nats.pause(1);
    nats.resume(1);
    nats.wait_ready().await;

    let js = jetstream::new(nats.client().await);
    // The stream may be electing a leader (node 0 may have led it): retry until it answers.
    let message = within_for(
        Duration::from_secs(20),
        "the message from the stream leader",
        async {
            loop {
                if let Ok(stream) = js.get_stream("FIXTURE").await
                    && let Ok(m) = stream.get_last_raw_message_by_subject("fixture.a").await
                {
                    return m;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        },
    )
    .await;
    assert_eq!(&message.payload[..], b"before");
}

#[tokio::test]
async fn nats_cluster_reports_sync_always_on_every_monitor() {
    let nats = NatsCluster::start().await;
    for node in &nats.nodes {
        let (status, varz) = http_get(node.monitor, "/varz").await.expect("/varz");
        assert_eq!(status, 200);
        let varz: serde_json::Value = serde_json::from_str(&varz).expect("JSON");
        assert_eq!(
            varz["jetstream"]["config"]["sync_always"], true,
            "{}",
            node.name
        );
    }
}

#[tokio::test]
async fn proxy_holds_bytes_while_blackholed_and_delivers_them_when_healed() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = echo.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                while let Ok(n) = socket.read(&mut buffer).await {
                    if n == 0 || socket.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let proxy = TcpProxy::start(target).await;
    proxy.record();
    let mut client = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let mut buffer = [0u8; 5];
    client.write_all(b"hello").await.unwrap();
    within("the echo", client.read_exact(&mut buffer))
        .await
        .unwrap();
    assert_eq!(&buffer, b"hello");

    proxy.set_link(Link::Blackholed);
    client.write_all(b"held!").await.unwrap();
    let silent = tokio::time::timeout(Duration::from_millis(300), client.read(&mut buffer)).await;
    assert!(silent.is_err(), "nothing may cross a blackholed link");

    proxy.set_link(Link::Open);
    within("the held bytes", client.read_exact(&mut buffer))
        .await
        .unwrap();
    assert_eq!(&buffer, b"held!");
    assert_eq!(proxy.recorded(), b"helloheld!");
}
