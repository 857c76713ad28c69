//! Notify request bodies shaped like what Synapse sends.

use serde_json::{json, Value};

/// A full-format message notification for one device.
pub fn message(event_id: &str, app_id: &str, pushkey: &str) -> Value {
    message_to(event_id, &[(app_id, pushkey)])
}

/// A full-format message notification for several devices.
pub fn message_to(event_id: &str, devices: &[(&str, &str)]) -> Value {
    let devices = devices
        .iter()
        .map(|(app_id, pushkey)| {
            json!({
                "app_id": app_id,
                "pushkey": pushkey,
                "pushkey_ts": 12345678,
                "data": {},
                "tweaks": {"sound": "bing"}
            })
        })
        .collect();
    message_with_devices(event_id, devices)
}

/// The spec's example notification, sent to the given device objects.
pub fn message_with_devices(event_id: &str, devices: Vec<Value>) -> Value {
    let devices = Value::Array(devices);
    json!({
        "notification": {
            "event_id": event_id,
            "room_id": "!slw48wfj34rtnrf:example.com",
            "type": "m.room.message",
            "sender": "@exampleuser:matrix.org",
            "sender_display_name": "Major Tom",
            "room_name": "Mission Control",
            "room_alias": "#exampleroom:matrix.org",
            "prio": "high",
            "content": {"msgtype": "m.text", "body": "I'm floating in a most peculiar way."},
            "counts": {"unread": 2, "missed_calls": 1},
            "devices": devices
        }
    })
}

/// A badge-only update (no event), with the empty strings and nulls Synapse sends.
pub fn badge(app_id: &str, pushkey: &str, unread: u64) -> Value {
    json!({
        "notification": {
            "event_id": "",
            "room_id": "",
            "sender": null,
            "prio": "high",
            "counts": {"unread": unread},
            "devices": [{"app_id": app_id, "pushkey": pushkey, "pushkey_ts": 12345678, "data": {}}]
        }
    })
}
