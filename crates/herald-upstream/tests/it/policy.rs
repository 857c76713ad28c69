//! The connect policy sees every resolved address and the client dials only what it returns.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use herald_upstream::{ConnectPolicy, Refusal, Target, UpstreamClient, UpstreamError};

use crate::support::{config, post, Behaviour, Server};

/// Refuses loopback addresses, as an SSRF guard does.
#[derive(Debug)]
struct NoLoopback;

impl ConnectPolicy for NoLoopback {
    fn allow(
        &self,
        target: &Target<'_>,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        let allowed: Vec<_> = addrs.into_iter().filter(|a| !a.ip().is_loopback()).collect();
        if allowed.is_empty() {
            return Err(Refusal::new(format!("{} resolves to loopback only", target.host)));
        }
        Ok(allowed)
    }
}

/// Records what it was shown and sends every connection to `to`.
#[derive(Debug)]
struct Redirect {
    to: SocketAddr,
    shown: Mutex<Vec<(String, u16, Vec<SocketAddr>)>>,
}

impl ConnectPolicy for Redirect {
    fn allow(
        &self,
        target: &Target<'_>,
        addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refusal> {
        self.shown.lock().expect("shown").push((target.host.to_owned(), target.port, addrs));
        Ok(vec![self.to])
    }
}

#[tokio::test]
async fn a_refusal_makes_no_connection() {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let client = UpstreamClient::builder(&config())
        .connect_policy(Arc::new(NoLoopback))
        .build()
        .expect("client");

    for host in [addr.to_string(), format!("localhost:{}", addr.port())] {
        let error = post(&client, format!("https://{host}/secret/path").parse().expect("url"))
            .await
            .expect_err("refused");
        let UpstreamError::Refused { reason, .. } = &error else { panic!("{error:#}") };
        assert!(reason.contains("loopback only"), "{reason}");
        assert!(!error.is_retryable(), "a refusal is final");
    }
    // The kernel completes a TCP handshake before `connect` returns; none is queued.
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a connection was made: {accepted:?}"
    );
}

#[tokio::test]
async fn the_policy_sees_the_resolved_addresses_and_chooses_what_is_dialled() {
    // `localhost` resolves to a loopback address where nothing listens on this port ...
    let decoy = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let decoy_port = decoy.local_addr().expect("addr").port();
    drop(decoy);
    // ... and the policy sends the connection to this server instead.
    let server = Server::plain(Behaviour::default()).await;
    let policy = Arc::new(Redirect { to: server.addr, shown: Mutex::default() });
    let client = UpstreamClient::builder(&config())
        .connect_policy(Arc::clone(&policy) as Arc<dyn ConnectPolicy>)
        .build()
        .expect("client");

    let uri = format!("http://LocalHost:{decoy_port}/x").parse().expect("url");
    let response = post(&client, uri).await.expect("dialled the policy's address");
    assert_eq!(response.status, 200);
    assert_eq!(server.seen().len(), 1);
    let shown = policy.shown.lock().expect("shown").clone();
    assert_eq!(shown.len(), 1);
    let (host, port, addrs) = &shown[0];
    assert_eq!((host.as_str(), *port), ("localhost", decoy_port), "lowercase host, URL port");
    assert!(
        addrs.iter().any(|a| a.ip().is_loopback() && a.port() == decoy_port),
        "the resolver's answer: {addrs:?}"
    );

    // An address literal is shown as itself, without resolution.
    let uri = format!("http://[::1]:{decoy_port}/x").parse().expect("url");
    post(&client, uri).await.expect("dialled the policy's address");
    let shown = policy.shown.lock().expect("shown").clone();
    assert_eq!(shown[1].0, "::1", "IPv6 literals without brackets");
    assert_eq!(shown[1].2, vec![SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], decoy_port))]);
}
