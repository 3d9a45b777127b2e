use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<StationConfig, ConfigError> {
    StationConfig::parse(text, Path::new("station.toml"))
}

fn error(text: &str) -> String {
    parse(text).expect_err("should be refused").to_string()
}

#[test]
fn empty_file_gives_defaults() {
    let config = parse("").expect("defaults");
    assert_eq!(config.station.id, "station-1");
    assert_eq!(config.station.concurrency, 10);
    assert_eq!(config.station.timeout_secs, 10);
    assert_eq!(config.station.transport, TransportKind::Usbmuxd);
    assert_eq!(config.activation.url, "https://albert.apple.com");
    assert_eq!(config.activation.command_timeout_secs, 60);
    assert_eq!(config.activation.session_max_age_secs, 120);
    assert!(config.activation.stop_on_find_my);
    assert_eq!(config.activation.user_agent, None);
    assert_eq!(config.retry.attempts, 4);
    assert!(config.codes.sources.is_empty());
}

#[test]
fn the_example_passes_and_says_what_it_does() {
    let config = parse(EXAMPLE).expect("example must pass the check");
    assert_eq!(config.station.id, "bench-1");
    // Nothing that needs a file or a secret on this machine is switched on.
    assert!(config.codes.sources.is_empty());
    assert_eq!(config.warnings, vec![]);
    assert_eq!(config.slot_label(Some("1-1.4.2"), 0x0001_0002), Some("A2"));
    // The commented sources are valid too once uncommented.
    let start = EXAMPLE
        .find("# [[codes.sources]]")
        .expect("commented sources");
    let (head, tail) = EXAMPLE.split_at(start);
    let tail: Vec<&str> = tail
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|r| !r.starts_with('#'))
                .unwrap_or(l)
        })
        .collect();
    let uncommented = format!("{head}{}", tail.join("\n"));
    let all = parse(&uncommented).expect("all sources");
    let kinds: Vec<&str> = all.codes.sources.iter().map(SourceConfig::kind).collect();
    assert_eq!(kinds, vec!["csv", "intune", "kandji", "command"]);
}

#[test]
fn unknown_keys_name_the_nearest_valid_key_and_the_line() {
    let text = error("[station]\nid = \"a\"\nconcurency = 3\n");
    assert!(text.starts_with("station.toml:3:1:"), "{text}");
    assert!(text.contains("did you mean `concurrency`?"), "{text}");
    let text = error("[stations]\nid = \"a\"\n");
    assert!(text.contains("did you mean `station`?"), "{text}");
}

#[test]
fn wrong_types_and_values_point_at_the_value() {
    let text = error("[station]\nconcurrency = \"ten\"\n");
    assert!(text.starts_with("station.toml:2:15:"), "{text}");
    let text = error("[station]\n\nconcurrency = 0\n");
    assert!(text.starts_with("station.toml:3:15:"), "{text}");
    assert!(text.contains("out of range 1..=256"), "{text}");
    let text = error("[activation]\nencoding = \"xml\"\n");
    assert!(text.contains("station.toml:2:"), "{text}");
    let text = error("[activation]\ncommand_timeout_secs = 0\n");
    assert!(text.starts_with("station.toml:2:"), "{text}");
    assert!(text.contains("out of range 1..=600"), "{text}");
    let text = error("[activation]\nsession_max_age_secs = 0\n");
    assert!(text.contains("out of range 1..=3600"), "{text}");
    let text = error("[activation]\nuser_agent = \"\"\n");
    assert!(text.contains("printable ASCII"), "{text}");
    let text = error("[activation]\nuser_agent = \"a\\nb\"\n");
    assert!(text.contains("printable ASCII"), "{text}");
    let config = parse("[activation]\ncommand_timeout_secs = 90\nsession_max_age_secs = 60\nuser_agent = \"iOS Device Activator (MobileActivation-20 built on Jan 15 2012 at 19:07:28)\"\n")
        .expect("valid activation keys");
    assert_eq!(config.activation.command_timeout_secs, 90);
    assert_eq!(config.activation.session_max_age_secs, 60);
    assert_eq!(
        config.activation.user_agent.as_deref(),
        Some("iOS Device Activator (MobileActivation-20 built on Jan 15 2012 at 19:07:28)")
    );
    let text = error("[retry]\ninitial_backoff_ms = 9000\nmax_backoff_ms = 10\n");
    assert!(text.starts_with("station.toml:2:1:"), "{text}");
}

#[test]
fn sources_are_checked() {
    let text = error("[[codes.sources]]\ntype = \"intune\"\ntenant = \"t\"\nclient_id = \"c\"\n");
    assert!(
        text.contains("needs `client_secret` or `certificate`"),
        "{text}"
    );
    assert!(text.starts_with("station.toml:4:1:"), "{text}");
    let text = error("[[codes.sources]]\ntype = \"intune\"\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret = \"s3cr3t-value\"\n");
    assert!(text.contains("never written inline"), "{text}");
    assert!(!text.contains("s3cr3t-value"), "{text}");
    let text = error("[[codes.sources]]\ntype = \"jamf\"\n");
    assert!(text.contains("jamf"), "{text}");
    let text = error("[[codes.sources]]\ntype = \"csv\"\npath = \"/a\"\n[[codes.sources]]\ntype = \"csv\"\npath = \"/b\"\n");
    assert!(text.contains("two code sources are named `csv`"), "{text}");
    let text = error("[[codes.sources]]\ntype = \"kandji\"\napi_url = \"https://a\"\ntoken = { file = \"/t\" }\ntokn = 1\n");
    assert!(text.contains("tokn"), "{text}");
}

#[test]
fn the_assertion_algorithm_defaults_to_ps256() {
    const CERT: &str = "[[codes.sources]]\ntype = \"intune\"\ntenant = \"t\"\nclient_id = \"c\"\ncertificate = { cert_file = \"/c.pem\", key_file = \"/k.pem\" }\n";
    let alg = |extra: &str| {
        let config = parse(&format!("{CERT}{extra}")).expect("parse");
        let SourceConfig::Intune(intune) = &config.codes.sources[0] else {
            panic!("intune");
        };
        intune.assertion_alg()
    };
    assert_eq!(alg(""), AssertionAlg::Ps256);
    assert_eq!(alg("assertion_alg = \"ps256\"\n"), AssertionAlg::Ps256);
    assert_eq!(alg("assertion_alg = \"rs256\"\n"), AssertionAlg::Rs256);
    let text = error(&format!("{CERT}assertion_alg = \"hs256\"\n"));
    assert!(text.contains("hs256"), "{text}");
    let text = error("[[codes.sources]]\ntype = \"intune\"\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret = { env = \"S\" }\nassertion_alg = \"rs256\"\n");
    assert!(
        text.contains("`assertion_alg` applies to a `certificate` credential only"),
        "{text}"
    );
}

#[test]
fn intune_urls_follow_the_cloud() {
    let config = parse(
        "[[codes.sources]]\ntype = \"intune\"\ntenant = \"contoso.onmicrosoft.us\"\nclient_id = \"c\"\nclient_secret = { env = \"S\" }\ncloud = \"dod\"\n",
    )
    .expect("parse");
    let SourceConfig::Intune(intune) = &config.codes.sources[0] else {
        panic!("intune");
    };
    assert_eq!(
        intune.token_url(),
        "https://login.microsoftonline.us/contoso.onmicrosoft.us/oauth2/v2.0/token"
    );
    assert_eq!(intune.graph_root(), "https://dod-graph.microsoft.us");
    assert_eq!(intune.scope(), "https://dod-graph.microsoft.us/.default");
    assert_eq!(intune.max_requests_per_second, 80.0);
    // Each cloud's scope is its Graph root's `.default`.
    for cloud in [Cloud::Global, Cloud::Usgov, Cloud::Dod, Cloud::China] {
        assert_eq!(
            cloud.graph_scope(),
            format!("{}/.default", cloud.graph_root())
        );
    }
}

#[test]
fn slot_keys() {
    assert_eq!(
        SlotKey::parse("0x00010002"),
        Some(SlotKey::Location(0x0001_0002))
    );
    assert_eq!(SlotKey::parse("65538"), Some(SlotKey::Location(65538)));
    assert_eq!(
        SlotKey::parse("1-1.4.2"),
        Some(SlotKey::PortPath("1-1.4.2".into()))
    );
    assert_eq!(SlotKey::parse("A3"), None);
    assert!(error("[slots]\n\"usb3\" = \"A1\"\n").contains("slot `usb3`"));
}

#[test]
fn slot_labels_prefer_the_port_path_and_location_ids_warn_at_their_line() {
    let config = parse("[station]\nid = \"b\"\n\n[slots]\n\"1-1.4.2\" = \"A1\"\n\"0x00010002\" = \"A2\"\n65539 = \"A3\"\n")
        .expect("valid");
    assert_eq!(config.slot_label(Some("1-1.4.2"), 0x0001_0002), Some("A1"));
    // No port path known (virtual bench, remote usbmuxd): the LocationID key still works.
    assert_eq!(config.slot_label(None, 0x0001_0002), Some("A2"));
    assert_eq!(config.slot_label(Some("1-1.9"), 0x0001_0003), Some("A3"));
    assert_eq!(config.slot_label(Some("1-1.9"), 0x0001_0009), None);
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("station.toml:6:1: slot `0x00010002` (A2)"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("station.toml:7:1: slot `65539` (A3)"),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("not stable"), "{warnings:?}");
    assert!(parse("[slots]\n\"1-2\" = \"A\"\n")
        .expect("valid")
        .warnings
        .is_empty());
}

#[test]
fn errors_inside_a_code_source_point_at_the_key_not_the_header() {
    let inline = "[station]\nid = \"a\"\n\n[[codes.sources]]\ntype = \"intune\"\ntenant = \"t\"\nclient_secret = \"s3cr3t-value\"\nclient_id = \"c\"\n";
    let text = error(inline);
    assert!(text.starts_with("station.toml:7:17: "), "{text}");
    assert!(text.contains("never written inline"), "{text}");
    assert!(!text.contains("s3cr3t-value"), "{text}");
    let text = error("[[codes.sources]]\ntype = \"kandji\"\napi_url = \"https://a\"\ntoken = { file = \"/t\" }\ntokn = 1\n[ui]\n");
    assert!(
        text.starts_with("station.toml:5:1: unknown key `tokn`: did you mean `token`?"),
        "{text}"
    );
}

#[test]
fn the_help_names_a_line_only_when_there_is_one() {
    let with_line = parse("[station]\nconcurrency = 0\n").expect_err("range");
    assert!(with_line.help().contains("fix the line named above"));
    // validate() finds no line for a key that is not written (the defaults clash).
    let without = parse("[retry]\nmax_backoff_ms = 10\n").expect_err("clash");
    assert!(
        without
            .to_string()
            .starts_with("station.toml (retry.initial_backoff_ms): "),
        "{without}"
    );
    assert!(!without.help().contains("line"), "{}", without.help());
    let missing = StationConfig::load(Path::new("/nonexistent/station.toml")).expect_err("read");
    assert!(!missing.help().contains("line"), "{}", missing.help());
}

#[test]
fn the_bench_example_is_valid_and_keyed_by_port_path() {
    let text = include_str!("../../hardware/station.toml.example");
    let config = parse(text).expect("hardware/station.toml.example must pass");
    assert_eq!(config.warnings, vec![]);
    assert_eq!(config.slot_label(Some("3-1.2"), 0x0003_0009), Some("B2"));
}

#[test]
fn find_my_policy_can_be_turned_off() {
    let config = parse("[activation]\nstop_on_find_my = false\n").expect("parses");
    assert!(!config.activation.stop_on_find_my);
}

#[test]
fn plain_http_is_refused_for_every_url_key_except_to_this_machine() {
    const INTUNE: &str = "[[codes.sources]]\ntype = \"intune\"\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret = { env = \"S\" }\n";
    const KANDJI: &str = "[[codes.sources]]\ntype = \"kandji\"\ntoken = { env = \"K\" }\n";
    let cases = [
        (
            "[activation]\nurl = \"http://albert.example\"\n".to_string(),
            "station.toml:2:1: activation.url is plain http:// to albert.example",
            "in [activation]",
        ),
        (
            format!("{INTUNE}token_url = \"http://login.example/t\"\n"),
            "station.toml:6:1: codes.sources[0].token_url is plain http:// to login.example",
            "in this [[codes.sources]] entry",
        ),
        (
            format!("{INTUNE}graph_url = \"http://10.1.2.3:8080\"\n"),
            "station.toml:6:1: codes.sources[0].graph_url is plain http:// to 10.1.2.3",
            "in this [[codes.sources]] entry",
        ),
        (
            format!("{KANDJI}api_url = \"http://acme.api.kandji.io\"\n"),
            "station.toml:4:1: codes.sources[0].api_url is plain http:// to acme.api.kandji.io",
            "in this [[codes.sources]] entry",
        ),
    ];
    for (text, start, section) in &cases {
        let err = error(text);
        assert!(err.starts_with(start), "{err}");
        assert!(
            err.contains(&format!("allow_insecure_http = true {section}")),
            "{err}"
        );
        // The section's allow_insecure_http lets it through, with a warning at its line.
        let allowed = if text.starts_with("[activation]") {
            text.replace(
                "[activation]\n",
                "[activation]\nallow_insecure_http = true\n",
            )
        } else {
            format!("{text}allow_insecure_http = true\n")
        };
        let config = parse(&allowed).expect("allowed");
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        let warning = config.warnings[0].to_string();
        assert!(
            warning.contains("allowed by allow_insecure_http"),
            "{warning}"
        );
        assert!(warning.contains("is plain http:// to "), "{warning}");
    }
    // One section's permission is not another's.
    let text = format!(
        "[activation]\nallow_insecure_http = true\n\n{KANDJI}api_url = \"http://acme.api.kandji.io\"\n"
    );
    assert!(error(&text).contains("codes.sources[0].api_url is plain http://"));
    // Loopback (the virtual bench) needs no permission and gives no warning.
    let text = format!(
        "[activation]\nurl = \"http://127.0.0.1:4000\"\n\n{INTUNE}token_url = \"http://localhost:1/t\"\ngraph_url = \"http://[::1]:2\"\n\n{KANDJI}api_url = \"http://127.0.0.1:3\"\n"
    );
    let config = parse(&text).expect("loopback");
    assert_eq!(config.warnings, vec![]);
}

#[test]
fn pass_env_names_and_secret_variables() {
    let text = "[[codes.sources]]\ntype = \"intune\"\ntenant = \"t\"\nclient_id = \"c\"\nclient_secret = { env = \"STATION_INTUNE_SECRET\" }\n\n[[codes.sources]]\ntype = \"kandji\"\napi_url = \"https://a\"\ntoken = { file = \"/etc/station/kandji.token\" }\n\n[[codes.sources]]\ntype = \"command\"\nprogram = \"/usr/local/bin/jamf-codes\"\npass_env = [\"JAMF_URL\", \"STATION_INTUNE_SECRET\"]\n";
    let config = parse(text).expect("valid");
    let SourceConfig::Command(command) = &config.codes.sources[2] else {
        panic!("command");
    };
    assert_eq!(command.pass_env, vec!["JAMF_URL", "STATION_INTUNE_SECRET"]);
    assert_eq!(
        config.secret_env_names().into_iter().collect::<Vec<_>>(),
        vec![(
            "STATION_INTUNE_SECRET".to_string(),
            "client_secret of code source `intune`".to_string()
        )]
    );
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        vec!["station.toml:15:1: codes.sources[2].pass_env lists STATION_INTUNE_SECRET, which holds the client_secret of code source `intune`: it is never passed to the hook"]
    );
    let text = error(
        "[[codes.sources]]\ntype = \"command\"\nprogram = \"/bin/true\"\npass_env = [\"A=B\"]\n",
    );
    assert!(
        text.starts_with("station.toml:4:1: pass_env: `A=B` is not an environment variable name"),
        "{text}"
    );
}

#[test]
fn the_live_view_listens_on_loopback_unless_remote_is_allowed() {
    let config = parse("[ui]\nhttp = \"127.0.0.1:8080\"\n").expect("loopback");
    assert_eq!(config.ui.http.as_deref(), Some("127.0.0.1:8080"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    parse("[ui]\nhttp = \"[::1]:0\"\n").expect("IPv6 loopback");
    for remote in ["0.0.0.0:8080", "192.168.1.20:8080", "[::]:8080"] {
        let text = error(&format!("[ui]\nhttp = \"{remote}\"\n"));
        assert!(text.contains("allow_remote = true"), "{text}");
        let allowed =
            parse(&format!("[ui]\nhttp = \"{remote}\"\nallow_remote = true\n")).expect("allowed");
        assert!(
            allowed
                .warnings
                .iter()
                .any(|w| w.to_string().contains("without a log-in")),
            "{:?}",
            allowed.warnings
        );
    }
    assert!(error("[ui]\nhttp = \"localhost:8080\"\n").contains("IP address and port"));
    assert!(check_http_listen("--http", "10.0.0.1:80", false).is_err());
    let (addr, warning) = check_http_listen("--http", "127.0.0.1:0", false).expect("ok");
    assert_eq!((addr.port(), warning), (0, None));
}

#[test]
fn transport_is_usbmuxd_or_usb() {
    let usb = parse("[station]\ntransport = \"usb\"\n").expect("usb");
    assert_eq!(usb.station.transport, TransportKind::Usb);
    assert!(parse("[station]\ntransport = \"wifi\"\n").is_err());
    assert_eq!("usb".parse::<TransportKind>(), Ok(TransportKind::Usb));
    assert!("USB3".parse::<TransportKind>().is_err());
}

#[test]
fn fleet_database_url_is_a_secret_by_reference() {
    let config = parse("[fleet]\ndatabase_url = { env = \"STATION_FLEET_URL\" }\n").expect("env");
    let fleet = config.fleet.expect("[fleet]");
    assert_eq!(fleet.database_url, Secret::Env("STATION_FLEET_URL".into()));
    assert_eq!(fleet.station_id, None);
    let config = parse(
        "[fleet]\ndatabase_url = { file = \"/etc/station/fleet.url\" }\nstation_id = \"bench-7\"\n",
    )
    .expect("file");
    assert_eq!(
        config.fleet.expect("[fleet]").station_id.as_deref(),
        Some("bench-7")
    );
    let inline = error("[fleet]\ndatabase_url = \"postgresql://station:hunter2@db/fleet\"\n");
    assert!(inline.contains("never written inline"), "{inline}");
    assert!(
        !inline.contains("hunter2"),
        "the secret is not repeated: {inline}"
    );
    assert!(
        error("[fleet]\ndatabase_url = { env = \"U\" }\nstation_id = \"\"\n")
            .contains("fleet.station_id")
    );
    assert!(error("[fleet]\nstation_id = \"x\"\n").contains("database_url"));
    assert!(parse("").expect("empty").fleet.is_none());
    let owners = parse("[fleet]\ndatabase_url = { env = \"STATION_FLEET_URL\" }\n")
        .expect("env")
        .secret_env_names();
    assert_eq!(
        owners.get("STATION_FLEET_URL").map(String::as_str),
        Some("database_url of [fleet]")
    );
}

/// Request budgets default below each service's documented limit (docs/code-sources.md,
/// "Request budgets") and cannot be set above it; the chain's policy defaults to asking
/// every source.
#[test]
fn request_budgets_and_the_chain_policy() {
    const KANDJI: &str =
        "[[codes.sources]]\ntype = \"kandji\"\napi_url = \"https://a\"\ntoken = { env = \"K\" }\n";
    let config = parse(KANDJI).expect("parse");
    let SourceConfig::Kandji(kandji) = &config.codes.sources[0] else {
        panic!("kandji");
    };
    assert_eq!(kandji.max_requests_per_second, KANDJI_REQUESTS_PER_SECOND);
    assert_eq!(kandji.max_requests_per_hour, 9_000);
    assert_eq!(config.codes.later_sources, LaterSources::Always);
    let config = parse(&format!(
        "[codes]\nlater_sources = \"when_no_code\"\n\n{KANDJI}max_requests_per_second = 2.5\nmax_requests_per_hour = 10000\n"
    ))
    .expect("parse");
    let SourceConfig::Kandji(kandji) = &config.codes.sources[0] else {
        panic!("kandji");
    };
    assert_eq!(kandji.max_requests_per_second, 2.5);
    assert_eq!(kandji.max_requests_per_hour, 10_000);
    assert_eq!(config.codes.later_sources, LaterSources::WhenNoCode);
    let text = error(&format!("{KANDJI}max_requests_per_hour = 10001\n"));
    assert!(text.contains("out of range 1..=10000"), "{text}");
    let text = error(&format!("{KANDJI}max_requests_per_second = 101\n"));
    assert!(text.contains("out of range 0.1..=100"), "{text}");
    let text = error("[codes]\nlater_sources = \"sometimes\"\n");
    assert!(text.contains("sometimes"), "{text}");
}

/// Profiling the `station_toml` fuzz target found the parse quadratic in the number of LocationID slots (each
/// slot's warning rescanned the whole file for its line). Many slots still get one warning
/// each, pointing at its own line.
#[test]
fn many_location_id_slots_each_warn_at_their_own_line() {
    const SLOTS: usize = 20_000;
    let mut text = String::from("[slots]\n");
    for n in 0..SLOTS {
        text.push_str(&format!("\"0x{n:08x}\" = \"S{n}\"\n"));
    }
    let config = parse(&text).expect("valid");
    assert_eq!(config.warnings.len(), SLOTS);
    for (n, warning) in config.warnings.iter().enumerate() {
        let line = n + 2;
        assert!(
            warning
                .to_string()
                .starts_with(&format!("station.toml:{line}:1: slot `0x{n:08x}` (S{n})")),
            "{warning}"
        );
    }
}

#[test]
fn keys_of_array_tables_are_located_in_their_instance() {
    let text = "[station]\nid = \"s\"\n\n[[codes.sources]]\ntype = \"csv\"\n\n[[codes.sources]]\n  type = \"csv\"\n";
    let lines = KeyLines::new(text, Path::new("station.toml"));
    assert_eq!(
        lines.locate("station.id"),
        ("station.toml:2:1".into(), true)
    );
    assert_eq!(
        lines.locate("codes.sources[0].type"),
        ("station.toml:5:1".into(), true)
    );
    assert_eq!(
        lines.locate("codes.sources[1].type"),
        ("station.toml:8:3".into(), true)
    );
    assert_eq!(
        lines.locate("codes.sources[2].type"),
        ("station.toml (codes.sources[2].type)".into(), false)
    );
    assert_eq!(
        lines.locate("codes.sources.type"),
        ("station.toml:5:1".into(), true)
    );
    assert_eq!(
        lines.locate("station.concurrency"),
        ("station.toml (station.concurrency)".into(), false)
    );
}
