//! Property tests over the parsers that read what clients, peers and files send:
//! kubo query strings and pin paths, pin options, CIDs, multiaddrs, Go
//! durations, service.json, state import streams and the cluster and Raft RPC
//! payloads. Each must not panic on arbitrary input, and where a printer
//! exists, what it prints must parse back to the same value.
//!
//! The normal suite runs 256 cases per property (proptest's default). For a
//! long run (the README's fuzzing section):
//! `PROPTEST_CASES=1000000 cargo test --release --test fuzz_props`.
//! Failing inputs are kept in `tests/fuzz_props.proptest-regressions` and
//! replayed first on every run.

use std::time::Duration;

use ipfs_cluster::cluster::parse_pin_arg;
use ipfs_cluster::cluster::rpc::{ClusterRpc, ClusterRpcReply};
use ipfs_cluster::config::{Config, format_duration, parse_duration};
use ipfs_cluster::multiaddr::TcpMultiaddr;
use ipfs_cluster::raft::{RaftRpc, decode_payload, encode_payload};
use ipfs_cluster::types::{Cid, Pin, PinMode, PinOptions};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Any JSON value, nested a few levels, with keys drawn partly from service.json's.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        Just("cluster".to_string()),
        Just("consensus".to_string()),
        Just("raft".to_string()),
        Just("api".to_string()),
        Just("restapi".to_string()),
        Just("ipfsproxy".to_string()),
        Just("ipfs_connector".to_string()),
        Just("ipfshttp".to_string()),
        Just("secret".to_string()),
        Just("replication_factor_min".to_string()),
        Just("replication_factor_max".to_string()),
        Just("listen_multiaddress".to_string()),
        Just("node_multiaddress".to_string()),
        Just("pin_recover_interval".to_string()),
        Just("basic_auth_credentials".to_string()),
        Just("heartbeat_timeout".to_string()),
        Just("datastore".to_string()),
        "[a-z_]{1,12}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "\\PC{0,24}".prop_map(serde_json::Value::from),
        "[0-9]{1,6}(ns|ms|s|m|h)".prop_map(serde_json::Value::from),
        "/ip4/127\\.0\\.0\\.1/tcp/[0-9]{1,5}".prop_map(serde_json::Value::from),
        "[0-9a-f]{64}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid CID: v0 (sha2-256) or v1 with one of several codecs and an identity or
/// sha2-256 multihash.
fn valid_cid() -> impl Strategy<Value = cid::Cid> {
    prop_oneof![
        prop::array::uniform32(any::<u8>()).prop_map(|d| {
            let mh = cid::multihash::Multihash::<64>::wrap(0x12, &d).expect("sha2-256 digest");
            cid::Cid::new_v0(mh).expect("v0")
        }),
        (
            prop::sample::select(vec![0x55u64, 0x70, 0x71, 0x0129, 0x0200]),
            prop::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(codec, data)| {
                let mh = cid::multihash::Multihash::<64>::wrap(0x00, &data).expect("identity");
                cid::Cid::new_v1(codec, mh)
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn query_strings_never_panic_and_encoded_pairs_come_back(
        raw in "\\PC{0,80}",
        pairs in prop::collection::vec(("\\PC{0,12}", "\\PC{0,24}"), 0..6),
    ) {
        if let Ok(uri) = format!("/api/v0/pin/add?{raw}").parse::<http::Uri>() {
            let _ = ipfs_cluster::http::query_pairs(&uri);
        }
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            ser.append_pair(k, v);
        }
        let uri: http::Uri = format!("/api/v0/pin/add?{}", ser.finish()).parse().expect("an encoded query is a valid URI");
        let back = ipfs_cluster::http::query_pairs(&uri);
        prop_assert_eq!(back, pairs);
    }

    #[test]
    fn pin_paths_never_panic(arg in "\\PC{0,120}", tail in "(/[a-zA-Z0-9._-]{0,10}){0,4}") {
        let _ = parse_pin_arg(&arg);
        for ns in ["/ipfs/", "/ipld/", "/ipns/", "/", ""] {
            let _ = parse_pin_arg(&format!("{ns}{arg}{tail}"));
        }
    }

    #[test]
    fn a_cid_or_its_ipfs_path_parses_to_itself(c in valid_cid(), tail in "(/[a-z0-9]{1,8}){0,3}") {
        let s = c.to_string();
        let want = ipfs_cluster::cluster::PinArg::Cid(Cid(c));
        prop_assert_eq!(parse_pin_arg(&s).ok(), Some(want.clone()));
        prop_assert_eq!(parse_pin_arg(&format!("/ipfs/{s}")).ok(), Some(want));
        if !tail.is_empty() {
            let is_path = matches!(
                parse_pin_arg(&format!("/ipfs/{s}{tail}")),
                Ok(ipfs_cluster::cluster::PinArg::Path(_))
            );
            prop_assert!(is_path);
        }
    }

    #[test]
    fn cids_never_panic_and_print_back(s in "\\PC{0,100}", c in valid_cid()) {
        let _ = s.parse::<Cid>();
        let parsed: Cid = c.to_string().parse().expect("a printed CID parses");
        prop_assert_eq!(parsed.0, c);
        // The JSON form ({"/": "..."}) too.
        let j = serde_json::to_string(&Cid(c)).expect("json");
        let back: Cid = serde_json::from_str(&j).expect("json back");
        prop_assert_eq!(back.0, c);
    }

    #[test]
    fn pin_options_never_panic(
        pairs in prop::collection::vec((
            prop_oneof![
                Just("name".to_string()), Just("mode".to_string()),
                Just("replication".to_string()), Just("replication-min".to_string()),
                Just("replication-max".to_string()), Just("shard-size".to_string()),
                Just("user-allocations".to_string()), Just("expire-at".to_string()),
                Just("expire-in".to_string()), Just("origins".to_string()),
                Just("pin-update".to_string()), "meta-\\PC{0,8}", "\\PC{0,8}",
            ],
            "\\PC{0,40}",
        ), 0..8),
    ) {
        let _ = PinOptions::from_query(&pairs);
    }

    #[test]
    fn pin_options_come_back_from_their_query(
        name in "\\PC{0,20}",
        direct in any::<bool>(),
        rmin in -1i32..10,
        rmax in -1i32..10,
        allocs in prop::collection::vec("[a-zA-Z0-9]{1,12}", 0..3),
        meta in prop::collection::btree_map("\\PC{1,8}", "\\PC{0,12}", 0..3),
        expire in prop::option::of(0i64..4_000_000_000_000_000_000),
        update in prop::option::of(valid_cid()),
    ) {
        let o = PinOptions {
            name,
            mode: if direct { PinMode::Direct } else { PinMode::Recursive },
            replication_factor_min: rmin,
            replication_factor_max: rmax,
            user_allocations: allocs,
            metadata: meta,
            expire_at: expire.map(chrono::DateTime::from_timestamp_nanos),
            pin_update: update.map(Cid),
            ..PinOptions::default()
        };
        let back = PinOptions::from_query(&o.to_query());
        prop_assert_eq!(back, Ok(o));
    }

    #[test]
    fn multiaddrs_never_panic_and_print_back(
        s in "\\PC{0,60}",
        parts in prop::collection::vec(prop_oneof![
            Just("ip4".to_string()), Just("ip6".to_string()), Just("dns".to_string()),
            Just("tcp".to_string()), Just("p2p".to_string()), "[0-9.:a-f]{0,16}",
        ], 0..7),
        addr in any::<std::net::SocketAddr>(),
    ) {
        let _ = TcpMultiaddr::parse(&s);
        let _ = TcpMultiaddr::parse(&format!("/{}", parts.join("/")));
        let m = TcpMultiaddr::from_socket_addr(addr);
        let back = TcpMultiaddr::parse(&m.to_string()).expect("a printed multiaddr parses");
        prop_assert_eq!(back.socket_addr().ok(), m.socket_addr().ok());
        prop_assert_eq!(back.port, addr.port());
    }

    #[test]
    fn go_durations_never_panic_and_print_back(
        s in "\\PC{0,30}",
        units in "([0-9]{0,20}(\\.[0-9]{0,12})?(ns|us|µs|ms|s|m|h|x)?){1,4}",
        nanos in 0..=i64::MAX as u64,
    ) {
        let _ = parse_duration(&s);
        let _ = parse_duration(&units);
        let d = Duration::from_nanos(nanos);
        prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
    }

    #[test]
    fn service_json_never_panics(v in json_value(), bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        for input in [serde_json::to_vec(&v).expect("json"), bytes] {
            if let Ok(mut c) = serde_json::from_slice::<Config>(&input) {
                let _ = c.apply_env(|_| None);
                let _ = c.validate("service.json");
                // What loads must save and load again.
                let text = serde_json::to_vec(&c).expect("a loaded config serialises");
                prop_assert!(serde_json::from_slice::<Config>(&text).is_ok());
            }
        }
    }

    #[test]
    fn state_import_streams_never_panic(
        v in prop::collection::vec(json_value(), 0..4),
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let text: Vec<u8> = v.iter().flat_map(|x| serde_json::to_vec(x).expect("json")).collect();
        for input in [text, bytes] {
            for pin in serde_json::Deserializer::from_slice(&input).into_iter::<Pin>() {
                match pin {
                    Ok(p) => {
                        let again = serde_json::to_vec(&p).expect("a pin serialises");
                        let back: Pin = serde_json::from_slice(&again).expect("and reads back");
                        prop_assert_eq!(back.cid, p.cid);
                    }
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn rpc_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = decode_payload::<ClusterRpc>(&bytes);
        let _ = decode_payload::<ClusterRpcReply>(&bytes);
        let _ = decode_payload::<RaftRpc>(&bytes);
    }

    #[test]
    fn rpc_payloads_with_a_valid_prefix_never_panic(
        cids in prop::collection::vec(valid_cid(), 0..4),
        cut in any::<prop::sample::Index>(),
        flip in any::<(prop::sample::Index, u8)>(),
    ) {
        let req = ClusterRpc::StatusMany(cids.into_iter().map(Cid).collect());
        let mut bytes = encode_payload(&req);
        let back = decode_payload::<ClusterRpc>(&bytes);
        prop_assert!(back.is_ok());
        if !bytes.is_empty() {
            let i = flip.0.index(bytes.len());
            bytes[i] ^= flip.1;
            let _ = decode_payload::<ClusterRpc>(&bytes);
            bytes.truncate(cut.index(bytes.len()));
            let _ = decode_payload::<ClusterRpc>(&bytes);
        }
    }
}
