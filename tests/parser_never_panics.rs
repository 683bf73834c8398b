//! The parser, the raw stage and validation never panic, whatever the bytes: arbitrary bytes, soups of
//! YAML tokens, and random mutations of a valid desired state (which reach deep into validation).

mod common;
use kube_free::desired::{load, LoadError, MemFiles};
use proptest::prelude::*;

fn load_never_panics(files: MemFiles) {
    match load(&files) {
        Ok(_) | Err(LoadError::Invalid(_)) | Err(LoadError::NoRootFile) => {}
        Err(LoadError::Files(e)) => panic!("in-memory files cannot fail to read: {e}"),
    }
}

fn yaml_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("\n".to_owned()),
        Just("  ".to_owned()),
        Just(": ".to_owned()),
        Just("- ".to_owned()),
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just(", ".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("<<: ".to_owned()),
        Just("!!str ".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("|\n".to_owned()),
        Just("---\n".to_owned()),
        Just("#".to_owned()),
        Just("~".to_owned()),
        prop::sample::select(vec![
            "version",
            "hosts",
            "apps",
            "environments",
            "balancers",
            "ssh",
            "slots",
            "strategy",
            "canary",
            "steps",
            "weight",
            "pause",
            "rolling",
            "batch",
            "runtime",
            "kind",
            "process",
            "docker",
            "command",
            "listen",
            "address",
            "port",
            "web-1",
            "api",
            "edge",
            "blue",
            "green",
            "10s",
            "1",
            "101",
            "-1",
            "1.5",
            "true",
            "null",
            "{port}",
            "{nope}",
            "50%",
            "haproxy",
            "local",
            "transport",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(token, 0..120).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_as_the_root_file(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        load_never_panics(MemFiles::default().with("kube-free.yaml", bytes));
    }

    #[test]
    fn arbitrary_bytes_as_an_environment_file(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        load_never_panics(
            MemFiles::default()
                .with("kube-free.yaml", common::base_without_environments())
                .with("environments/production.yaml", bytes),
        );
    }

    #[test]
    fn soups_of_yaml_tokens(root in yaml_soup(), env in yaml_soup()) {
        load_never_panics(
            MemFiles::default().with("kube-free.yaml", root).with("environments/staging.yaml", env),
        );
    }

    #[test]
    fn mutations_of_a_valid_file(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..8)
    ) {
        let mut bytes = common::BASE.as_bytes().to_vec();
        for (at, op, byte) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => { bytes.remove(i); }
                _ if i < bytes.len() => bytes[i] = byte,
                _ => {}
            }
        }
        load_never_panics(MemFiles::default().with("kube-free.yaml", bytes));
    }
}

#[test]
fn the_unmutated_base_is_valid() {
    // Guards the mutation test: it starts from a valid file.
    load(&MemFiles::default().with("kube-free.yaml", common::BASE)).expect("BASE is valid");
}
