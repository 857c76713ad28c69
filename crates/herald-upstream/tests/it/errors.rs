//! Error texts name the origin and never the path or query (they carry push tokens).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_testkit::proxy::ConnectProxy;
use herald_testkit::tls::{TestCa, ALPN_HTTP1};
use herald_upstream::{ConnectPolicy, Refusal, Target, UpstreamClient, UpstreamError};
use http::HeaderMap;

use crate::support::{client, closed_port, config, Behaviour, RawServer, Server};

const SECRET_PATH: &str = "/wpush/v2/SECRET-TOKEN?auth=SECRET-QUERY";

#[derive(Debug)]
struct RefuseAll;

impl ConnectPolicy for RefuseAll {
    fn allow(
        &self,
        target: &Target<'_>,
        _: Vec<std::net::SocketAddr>,
    ) -> Result<Vec<std::net::SocketAddr>, Refusal> {
        Err(Refusal::new(format!("{} is not allowed", target.host)))
    }
}

async fn fail(client: &UpstreamClient, base: String) -> UpstreamError {
    let uri = format!("{base}{SECRET_PATH}").parse().expect("url");
    client
        .post(uri, HeaderMap::new(), Bytes::new(), Duration::from_millis(500))
        .await
        .expect_err("fails")
}

#[tokio::test]
async fn no_error_shows_the_path_or_query() {
    let ca = TestCa::new();
    let tls_server = Server::https(ca.server_config(&[ALPN_HTTP1]), Behaviour::default()).await;
    let silent = RawServer::start(None, false).await;
    let reset =
        RawServer::start(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nx"), true).await;
    let garbage = RawServer::start(Some(b"garbage\r\n\r\n"), false).await;
    let proxy = ConnectProxy::start_with_basic_auth("u", "p").await;
    let plain = client(&config());
    let refusing = UpstreamClient::builder(&config())
        .connect_policy(Arc::new(RefuseAll))
        .build()
        .expect("client");
    let h2_only = UpstreamClient::builder(
        &config().with_ca_file(ca.write_pem(tempfile::tempdir().expect("dir").path())),
    )
    .http2_only()
    .build()
    .expect("client");

    let errors = vec![
        fail(&plain, format!("http://{}", closed_port())).await,
        fail(&plain, format!("http://{}", silent.addr)).await,
        fail(&plain, format!("http://{}", reset.addr)).await,
        fail(&plain, format!("http://{}", garbage.addr)).await,
        fail(&plain, format!("https://{}", tls_server.addr)).await,
        fail(&h2_only, format!("https://{}", tls_server.addr)).await,
        fail(&refusing, format!("https://{}", tls_server.addr)).await,
        fail(&client(&config().with_proxy(proxy.url())), format!("http://{}", silent.addr)).await,
        fail(&plain, "https://no-such-host.invalid".to_owned()).await,
        fail(&plain, "ftp://example.org".to_owned()).await,
    ];
    let mut kinds = std::collections::BTreeSet::new();
    for error in &errors {
        for text in [error.to_string(), format!("{error:#}"), format!("{error:?}")] {
            assert!(!text.contains("SECRET"), "the path leaked: {text}");
        }
        assert!(error.to_string().starts_with(error.origin()), "{error}");
        kinds.insert(
            format!("{error:?}").split([' ', '{', '(']).next().unwrap_or_default().to_owned(),
        );
    }
    // Every kind of error was produced.
    for kind in ["Connect", "Timeout", "Protocol", "Tls", "Refused", "Proxy", "InvalidRequest"] {
        assert!(kinds.contains(kind), "no {kind} among {kinds:?}");
    }
}
