#![no_main]
//! The sim's world file.
use libfuzzer_sys::fuzz_target;
use station_sim::world::World;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = World::from_toml(text, "world.toml");
    }
});
