//! HTTP under abuse: slow-loris connections that send half a request and
//! then nothing, bodies that never finish, and more connections than the
//! host will hold. None of them keeps a fresh client from being served.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::*;

/// The host's address, as `host:port`.
fn addr(h: &TestHost) -> String {
    h.url.trim_start_matches("http://").to_string()
}

/// Whether `stream` was closed by the server: a read ends (EOF or reset)
/// before [`WAIT`]; what it read first is returned too.
fn closed_by_server(stream: &mut TcpStream) -> (bool, String) {
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).to_string()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (false, String::from_utf8_lossy(&got).to_string())
            }
            Err(_) => return (true, String::from_utf8_lossy(&got).to_string()),
        }
    }
}

#[test]
fn half_open_connections_do_not_tie_the_server_up_and_are_closed_after_the_timeout() {
    let h = host(
        &order_flow(),
        &["--header-timeout-ms", "3000", "--body-timeout-ms", "3000"],
    );
    // 300 connections that send half a request line and then nothing.
    let mut lorises: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(addr(&h)).expect("connect");
            s.write_all(b"POST /v1/events/order.pla")
                .expect("half a line");
            s
        })
        .collect();
    // One that sends its headers and a tenth of its body.
    let mut slow_body = TcpStream::connect(addr(&h)).expect("connect");
    slow_body
        .write_all(
            b"POST /v1/events/order.placed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"order_id\"",
        )
        .expect("partial body");
    // While they are held, a fresh client publishes and checks health.
    h.publish("order.placed", &order("o-1", "widget", 1, 100))
        .expect("a fresh client is served");
    assert_eq!(h.get("/healthz").map(|_| ()), Ok(()));
    h.wait_until("the order handled", WAIT, |h| {
        h.count("analytics", "handled") == 1
    })
    .expect("handled");
    // After the timeout every half-open connection is closed by the server.
    for (i, s) in lorises.iter_mut().enumerate() {
        let (closed, _) = closed_by_server(s);
        assert!(closed, "half-open connection {i} still open after {WAIT:?}");
    }
    // The slow body is answered 408 and closed.
    let (closed, answer) = closed_by_server(&mut slow_body);
    assert!(closed, "a body that never finishes is not waited for");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("--body-timeout-ms"), "{answer}");
    let refused = |reason: &str| {
        h.metric(&format!(
            "plugbus_http_refused_total{{reason=\"{reason}\"}}"
        ))
        .unwrap_or(0.0)
    };
    // A connection is closed as its task ends, just before the task counts
    // the timeout: wait for the count rather than read it at once.
    h.wait_until("the 300 header timeouts counted", WAIT, |_| {
        refused("headers") >= 300.0
    })
    .unwrap_or_else(|e| panic!("{e}: {}", refused("headers")));
    assert_eq!(refused("body"), 1.0);
    // Nothing of the slow body was published.
    assert_eq!(h.count("analytics", "handled"), 1);
}

#[test]
fn connections_past_the_cap_are_closed_at_once_and_counted() {
    // Idle connections are kept for ten minutes: only the cap closes any.
    let h = host(
        &order_flow(),
        &["--connections-max", "20", "--header-timeout-ms", "600000"],
    );
    // The harness has made no request yet: these 20 fill the cap. The
    // host accepts connections in the order they arrive, so the ten after
    // them are the ones closed.
    let held: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(addr(&h)).expect("connect"))
        .collect();
    let mut extra: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(addr(&h)).expect("connect"))
        .collect();
    for (i, s) in extra.iter_mut().enumerate() {
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
        let (closed, answer) = closed_by_server(s);
        assert!(
            closed && answer.is_empty(),
            "extra connection {i}: {answer}"
        );
    }
    drop(held);
    h.wait_until("the refusals counted", WAIT, |h| {
        h.metric("plugbus_http_connections_refused_total")
            .is_some_and(|n| n >= 10.0)
    })
    .expect("counted");
    h.publish("order.placed", &order("o-1", "widget", 1, 100))
        .expect("served again once connections close");
}
