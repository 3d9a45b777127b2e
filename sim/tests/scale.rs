//! One bench process serves 64 phones at once.

mod common;

use std::time::Duration;

use common::*;
use plist::Value;
use station_protocol::usbmux::DeviceInfo;
use station_sim::default_world;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_phones_list_and_answer_lockdown_concurrently() {
    let tb = start(default_world(64, 2024)).await;
    let p = mux_call(&tb.socket, &request("ListDevices", Vec::new())).await;
    let list: Vec<DeviceInfo> = p
        .plist()
        .expect("plist")
        .as_dictionary()
        .and_then(|d| d.get("DeviceList"))
        .and_then(Value::as_array)
        .expect("DeviceList")
        .iter()
        .map(|e| DeviceInfo::from_attached_plist(e).expect("entry"))
        .collect();
    assert_eq!(list.len(), 64);

    let socket = tb.socket.clone();
    let mut tasks = tokio::task::JoinSet::new();
    for info in list {
        let socket = socket.clone();
        tasks.spawn(async move {
            let stream = connect(
                &socket,
                info.device_id,
                station_protocol::lockdown::LOCKDOWN_PORT,
            )
            .await
            .expect("lockdown reachable");
            let mut ch = station_protocol::channel::PlistChannel::new(stream);
            let r = call(&mut ch, "QueryType", Vec::new()).await;
            assert_eq!(
                r.get("Type").and_then(Value::as_string),
                Some("com.apple.mobile.lockdown")
            );
            let r = call(&mut ch, "GetValue", vec![("Key", "UniqueDeviceID".into())]).await;
            assert_eq!(
                r.get("Value").and_then(Value::as_string),
                Some(info.udid.as_str())
            );
            let r = call(&mut ch, "GetValue", vec![("Key", "ActivationState".into())]).await;
            assert!(r.get("Value").and_then(Value::as_string).is_some());
            // Hold every connection open until all are up: 64 concurrent sessions.
            ch
        });
    }
    let mut open = Vec::new();
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(done) = tasks.join_next().await {
            open.push(done.expect("task"));
        }
    })
    .await;
    assert!(all.is_ok(), "64 lockdown connections within 60 s");
    assert_eq!(open.len(), 64);
    drop(open);
    tb.shutdown().await;
}
