#![no_main]
//! A mobileactivationd reply as the station reads it, for every command: the reply checked
//! (`reply_value`), then read as the activation state or as a dictionary.
use libfuzzer_sys::fuzz_target;
use station_protocol::frame::decode_plist;
use station_protocol::mobileactivation::{activation_state, dictionary, reply_value, Command};

fuzz_target!(|data: &[u8]| {
    let Ok(reply) = decode_plist(data) else {
        return;
    };
    let commands = [
        Command::GetActivationState,
        Command::CreateTunnel1SessionInfo,
        Command::Deactivate,
    ];
    for command in &commands {
        if let Ok(value) = reply_value(command, reply.clone()) {
            if let Ok(state) = activation_state(value.clone()) {
                let _ = station_protocol::mobileactivation::is_activated(&state);
            }
            let _ = dictionary(command, value);
        }
    }
});
