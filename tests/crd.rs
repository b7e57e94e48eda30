//! The checked-in CRD is exactly what the Rust types generate.

use std::process::Command;

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let out = Command::new(env!("CARGO_BIN_EXE_drainscaler"))
        .arg("crd")
        .output()
        .expect("run drainscaler crd");
    assert!(
        out.status.success(),
        "drainscaler crd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("utf-8 CRD");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/scalingpolicy.yaml");
    let checked_in = std::fs::read_to_string(path).expect("read crds/scalingpolicy.yaml");
    assert!(
        generated == checked_in,
        "crds/scalingpolicy.yaml is stale: regenerate it with `cargo run -- crd > crds/scalingpolicy.yaml`"
    );
    // kustomize loads files from inside its directory only, so the base carries a copy.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/base/crd.yaml");
    let in_manifests = std::fs::read_to_string(path).expect("read manifests/base/crd.yaml");
    assert!(
        generated == in_manifests,
        "manifests/base/crd.yaml is stale: regenerate it with `cargo run -- crd > manifests/base/crd.yaml`"
    );
}
