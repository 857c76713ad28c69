//! VAPID: the JWT a push service sees, and its reuse per origin.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::{delivered, device, fake, message, Setup};

#[tokio::test]
async fn the_jwt_is_valid_and_reused_across_many_sends() {
    let fake = fake().await;
    let sub = fake.subscribe("/push/a");
    let setup = Setup::new();
    let d = device(&sub, json!({}));
    for _ in 0..25 {
        assert_eq!(setup.deliver(&message("x"), &d).await.expect("delivered"), delivered());
    }
    let got = fake.received("/push/a");
    assert_eq!(got.len(), 25);
    let first = got[0].header("authorization").expect("header").to_owned();
    assert!(
        got.iter().all(|r| r.header("authorization") == Some(first.as_str())),
        "one JWT reused"
    );

    let vapid = got[0].vapid.clone().expect("VAPID checked by the fake");
    assert_eq!(vapid.aud, fake.base_url());
    assert_eq!(vapid.sub, "mailto:ops@example.org");
    assert_eq!(vapid.key, setup.public_key());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    assert!(
        vapid.exp > now + 11 * 3600 && vapid.exp <= now + 12 * 3600,
        "exp {} now {now}",
        vapid.exp
    );
    assert_eq!(vapid.claims["aud"], vapid.aud);
}

#[tokio::test]
async fn each_origin_gets_its_own_audience() {
    let a = fake().await;
    let b = fake().await;
    let setup = Setup::new();
    let sub_a = a.subscribe("/p");
    let sub_b = b.subscribe("/p");
    for _ in 0..2 {
        setup.deliver(&message("x"), &device(&sub_a, json!({}))).await.expect("a");
        setup.deliver(&message("x"), &device(&sub_b, json!({}))).await.expect("b");
    }
    let jwt_a: Vec<_> = a.received("/p").into_iter().map(|r| r.vapid.expect("vapid")).collect();
    let jwt_b: Vec<_> = b.received("/p").into_iter().map(|r| r.vapid.expect("vapid")).collect();
    assert_eq!(jwt_a[0].aud, a.base_url());
    assert_eq!(jwt_b[0].aud, b.base_url());
    assert_eq!(jwt_a[0].jwt, jwt_a[1].jwt);
    assert_eq!(jwt_b[0].jwt, jwt_b[1].jwt);
    assert_ne!(jwt_a[0].jwt, jwt_b[0].jwt);
}
