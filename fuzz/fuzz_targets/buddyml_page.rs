#![no_main]
//! buddyml pages: parse, and what the parser accepts renders and parses again.
use libfuzzer_sys::fuzz_target;
use station_protocol::activation::BuddyPage;

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = BuddyPage::parse(data) {
        let _ = page.title();
        let _ = page.is_auth_required();
        let rendered = page.render();
        let _ = BuddyPage::parse(rendered.as_bytes());
    }
});
