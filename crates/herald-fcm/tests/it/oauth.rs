//! The OAuth access token: the assertion Google checks, caching, one fetch at a time, refresh
//! before expiry, and recovery from tokens revoked early.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use herald_core::Outcome;
use herald_fcm::FCM_SCOPE;
use herald_testkit::fcm::{TokenAnswer, GRANT_TYPE};

use crate::{android, message, Env};

#[tokio::test]
async fn the_assertion_is_what_google_checks() {
    let env = Env::new().await;
    env.deliver(&message(), &android()).await.expect("delivered");
    let requests = env.oauth.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    // The fake verified the RS256 signature with the account's public key (OpenSSL) and granted.
    assert_eq!((request.status, request.rejection.as_deref()), (Some(200), None));
    let header = request.header.as_ref().expect("header");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], env.account.private_key_id.as_str());
    let claims = request.claims.as_ref().expect("claims");
    assert_eq!(claims["iss"], env.account.client_email.as_str());
    assert_eq!(claims["aud"], env.oauth.token_uri());
    assert_eq!(claims["scope"], FCM_SCOPE);
    let (iat, exp) = (claims["iat"].as_u64().expect("iat"), claims["exp"].as_u64().expect("exp"));
    assert_eq!(exp - iat, 3600);
    assert!(GRANT_TYPE.ends_with("jwt-bearer"));
}

#[tokio::test]
async fn a_key_the_endpoint_does_not_know_is_refused_there() {
    let env = Env::new().await;
    let wrong = env.oauth.service_account_with_wrong_key(herald_testkit::fcm::TEST_PROJECT);
    let backend = crate::build(&env.fcm, &wrong, env.dir.path(), |_| {}).expect("builds");
    let e = backend
        .deliver(&crate::call(Duration::from_secs(10)), &message(), &android())
        .await
        .expect_err("refused");
    assert_eq!(e.class(), herald_core::ErrorClass::CredentialsRefused);
    let requests = env.oauth.requests();
    assert_eq!(
        requests.last().and_then(|r| r.rejection.as_deref()),
        Some("invalid_grant: Invalid JWT Signature.")
    );
}

#[tokio::test]
async fn the_token_is_cached_across_messages() {
    let env = Env::new().await;
    for _ in 0..5 {
        env.deliver(&message(), &android()).await.expect("delivered");
    }
    assert_eq!(env.oauth.grants(), 1);
    let bearers: Vec<_> = env.fcm.received().into_iter().map(|r| r.bearer).collect();
    assert!(bearers.windows(2).all(|w| w[0] == w[1]), "one token: {bearers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_sends_fetch_one_token() {
    let env = Arc::new(Env::new().await);
    // Slow enough that every send arrives while the one fetch is in flight.
    env.oauth.set_latency(Duration::from_millis(300));
    let sends = (0..100).map(|_| {
        let env = Arc::clone(&env);
        tokio::spawn(async move { env.deliver(&message(), &android()).await })
    });
    for result in join_all(sends).await {
        assert!(matches!(result.expect("task"), Ok(Outcome::Delivered(_))));
    }
    assert_eq!(env.oauth.grants(), 1, "one fetch for a hundred sends");
    assert_eq!(env.oauth.requests().len(), 1);
    assert_eq!(env.fcm.received().len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_revoked_early_are_replaced_once_for_everyone() {
    let env = Arc::new(Env::new().await);
    env.deliver(&message(), &android()).await.expect("first token");
    env.oauth.expire_tokens();
    env.oauth.set_latency(Duration::from_millis(200));
    let sends = (0..100).map(|_| {
        let env = Arc::clone(&env);
        tokio::spawn(async move { env.deliver(&message(), &android()).await })
    });
    for result in join_all(sends).await {
        assert!(matches!(result.expect("task"), Ok(Outcome::Delivered(_))));
    }
    assert_eq!(env.oauth.grants(), 2, "a hundred 401s, one new token");
    let received = env.fcm.received();
    let refused = received.iter().filter(|r| r.status == Some(401)).count();
    assert_eq!((refused, received.len()), (100, 201));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_refreshed_before_it_expires_without_stalling_sends() {
    let env = Arc::new(Env::new().await);
    // Tokens live 2 s: refreshed after 1.5 s (a quarter before expiry).
    env.oauth.set_lifetime(Duration::from_secs(2));
    env.deliver(&message(), &android()).await.expect("first token");
    let first = env.fcm.received()[0].bearer.clone();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    // Due for refresh but valid: one send refreshes (slowly), the others use the old token.
    env.oauth.set_latency(Duration::from_millis(400));
    let sends = (0..10).map(|_| {
        let env = Arc::clone(&env);
        tokio::spawn(async move { env.deliver(&message(), &android()).await })
    });
    for result in join_all(sends).await {
        assert!(matches!(result.expect("task"), Ok(Outcome::Delivered(_))));
    }
    assert_eq!(env.oauth.grants(), 2, "one refresh");
    let mut by_token: HashMap<Option<String>, usize> = HashMap::new();
    for r in env.fcm.received().into_iter().skip(1) {
        *by_token.entry(r.bearer).or_default() += 1;
    }
    assert_eq!(by_token.get(&first), Some(&9), "nine did not wait for the refresh: {by_token:?}");
    assert_eq!(by_token.len(), 2, "the refresher sent with the new token: {by_token:?}");
    assert!(env.fcm.received().iter().all(|r| r.status == Some(200)), "no send failed");
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_valid_token_in_use() {
    let env = Env::new().await;
    env.oauth.set_lifetime(Duration::from_secs(2));
    env.deliver(&message(), &android()).await.expect("first token");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    env.oauth.script([TokenAnswer::unavailable()]);
    env.deliver(&message(), &android()).await.expect("the old token still works");
    let received = env.fcm.received();
    assert_eq!(received[0].bearer, received[1].bearer);
    assert_eq!((env.oauth.requests().len(), env.oauth.grants()), (2, 1));
}

#[tokio::test]
async fn warm_up_fetches_the_token() {
    let env = Env::new().await;
    env.backend.warm_up().await.expect("warm");
    assert_eq!(env.oauth.grants(), 1);
    env.deliver(&message(), &android()).await.expect("delivered");
    assert_eq!(env.oauth.grants(), 1, "the first message used the warmed token");
    env.oauth.expire_tokens();
    env.oauth.script([TokenAnswer::unavailable()]);
    let fresh = crate::build(&env.fcm, &env.account, env.dir.path(), |_| {}).expect("builds");
    let e = fresh.warm_up().await.expect_err("the endpoint is down");
    assert_eq!(e.class(), herald_core::ErrorClass::Transient);
}
