#![no_main]
//! The lock-form builder: any title, description, field ids and hidden values must render to a
//! page that parses back with the same hidden values.
use libfuzzer_sys::fuzz_target;
use station_protocol::activation::{BuddyPage, InputField};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parts: Vec<&str> = text.split('\u{1}').collect();
    let part = |i: usize| parts.get(i).copied().unwrap_or("");
    let fields = vec![InputField::text(part(2)), InputField::secure(part(3))];
    let hidden = vec![(part(4).to_string(), part(5).to_string())];
    let page = BuddyPage::lock_form(part(0), part(1), fields, hidden).with_submit_url(part(6));
    let rendered = page.render();
    let _ = BuddyPage::parse(rendered.as_bytes());
});
