//! The install manifests (manifests/base and its components) agree with each other and with the
//! code: the admission policy names the ServiceAccount the kustomization creates and allows
//! every key the controller writes on pods, the PodDisruptionBudget and anti-affinity select
//! the controller's own pods, the NetworkPolicy opens ports the container has, and the
//! kustomization lists every file. That the admission policy refuses other writes on a live API
//! server is shown by tests/e2e_manifests.rs.

use std::collections::BTreeSet;
use std::path::PathBuf;

use drainscaler::act::{cancel_patch, drain_patch, hold_patch, release_patch, removable_patch};
use drainscaler::engine::{CancelledDrain, Time};
use drainscaler::names::{DELETION_COST_ANNOTATION, HELD_BACK_ANNOTATION, LEADER_LABEL};
use serde_json::Value;

const BASE: &str = "manifests/base";

fn path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn documents(relative: &str) -> Vec<Value> {
    let full = path(relative);
    let text = std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("reading {}: {e}", full.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("parsing {}: {e}", full.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The one document of `kind` (and `name`, if given) in a file.
fn find(docs: &[Value], kind: &str, name: Option<&str>) -> Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .collect();
    assert_eq!(found.len(), 1, "want one {kind} {name:?}, found {found:?}");
    found[0].clone()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn deployment() -> Value {
    find(
        &documents(&format!("{BASE}/deployment.yaml")),
        "Deployment",
        Some("drainscaler"),
    )
}

#[test]
fn the_kustomization_lists_every_manifest_in_base() {
    let kustomization = &documents(&format!("{BASE}/kustomization.yaml"))[0];
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| str_of(r, "a resource").to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(path(BASE))
        .expect("manifests/base")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .into_string()
                .expect("utf-8")
        })
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "manifests/base/kustomization.yaml");
}

#[test]
fn the_admission_policy_names_the_service_account_the_manifests_create() {
    let namespace = str_of(
        &documents(&format!("{BASE}/kustomization.yaml"))[0]["namespace"],
        "the kustomization's namespace",
    )
    .to_owned();
    let rbac = documents(&format!("{BASE}/rbac.yaml"));
    let account = find(&rbac, "ServiceAccount", None);
    let account = str_of(&account["metadata"]["name"], "the ServiceAccount's name");
    assert_eq!(
        str_of(
            &deployment()["spec"]["template"]["spec"]["serviceAccountName"],
            "serviceAccountName"
        ),
        account
    );

    let admission = documents(&format!("{BASE}/admission.yaml"));
    let policy = find(&admission, "ValidatingAdmissionPolicy", None);
    let conditions = policy["spec"]["matchConditions"]
        .as_array()
        .expect("matchConditions");
    let want =
        format!("request.userInfo.username == 'system:serviceaccount:{namespace}:{account}'");
    assert!(
        conditions
            .iter()
            .any(|c| str_of(&c["expression"], "an expression") == want),
        "the admission policy must match {want}: {conditions:?}"
    );
    let binding = find(&admission, "ValidatingAdmissionPolicyBinding", None);
    assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
    assert_eq!(
        binding["spec"]["validationActions"],
        serde_json::json!(["Deny"])
    );
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
}

/// The keys the admission policy lets drainscaler change, as its expressions spell them.
fn allowed(expression: &str, key: &str) -> bool {
    let prefixes = expression
        .split("k.startsWith('")
        .skip(1)
        .filter_map(|rest| rest.split('\'').next());
    let exact = expression
        .split("k == '")
        .skip(1)
        .filter_map(|rest| rest.split('\'').next());
    prefixes.clone().any(|p| key.starts_with(p)) || exact.clone().any(|e| key == e)
}

#[test]
fn the_admission_policy_allows_every_key_the_controller_writes_on_pods() {
    let admission = documents(&format!("{BASE}/admission.yaml"));
    let policy = find(&admission, "ValidatingAdmissionPolicy", None);
    let rule = |message_starts: &str| -> String {
        policy["spec"]["validations"]
            .as_array()
            .expect("validations")
            .iter()
            .find(|v| str_of(&v["message"], "a message").starts_with(message_starts))
            .map(|v| str_of(&v["expression"], "an expression").to_owned())
            .unwrap_or_else(|| panic!("no validation about {message_starts}"))
    };
    let labels_rule = rule("drainscaler may change only drainscaler.io/ labels");
    let annotations_rule = rule("drainscaler may change only drainscaler.io/ annotations");

    let now = Time::from_secs(1_700_000_000);
    let patches = [
        drain_patch(now),
        cancel_patch(true, CancelledDrain { from: now, at: now }),
        removable_patch(),
        hold_patch(),
        release_patch(),
    ];
    let mut labels = BTreeSet::from([LEADER_LABEL.to_owned()]);
    let mut annotations = BTreeSet::new();
    for patch in &patches {
        let meta = &patch["metadata"];
        for (field, keys) in [("labels", &mut labels), ("annotations", &mut annotations)] {
            if let Some(map) = meta[field].as_object() {
                keys.extend(map.keys().cloned());
            }
        }
        let fields: BTreeSet<&str> = patch
            .as_object()
            .expect("a patch")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(fields, BTreeSet::from(["metadata"]), "{patch}");
    }
    assert!(annotations.contains(DELETION_COST_ANNOTATION));
    assert!(annotations.contains(HELD_BACK_ANNOTATION));
    for key in &labels {
        assert!(
            allowed(&labels_rule, key),
            "the admission policy refuses label {key}"
        );
    }
    for key in &annotations {
        assert!(
            allowed(&annotations_rule, key),
            "the admission policy refuses annotation {key}"
        );
    }
    // And it is a limit: a user's own keys stay out of reach.
    for key in ["app", "app.kubernetes.io/name", "pod-template-hash"] {
        assert!(!allowed(&labels_rule, key), "label {key} is allowed");
    }
    for key in ["kubectl.kubernetes.io/restartedAt", "prometheus.io/port"] {
        assert!(
            !allowed(&annotations_rule, key),
            "annotation {key} is allowed"
        );
    }
}

fn container_ports() -> BTreeSet<String> {
    deployment()["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| str_of(&p["name"], "a port name").to_owned())
        .collect()
}

#[test]
fn the_disruption_budget_and_anti_affinity_select_the_controller_pods() {
    let deployment = deployment();
    let template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .expect("template labels")
        .clone();
    let selects = |selector: &Value, what: &str| {
        let wanted = selector["matchLabels"].as_object().expect("matchLabels");
        assert!(!wanted.is_empty(), "{what} selects every pod");
        for (k, v) in wanted {
            assert_eq!(template_labels.get(k), Some(v), "{what} wants {k}={v}");
        }
    };
    let pdb = find(
        &documents(&format!("{BASE}/pdb.yaml")),
        "PodDisruptionBudget",
        None,
    );
    selects(&pdb["spec"]["selector"], "the PodDisruptionBudget");
    let replicas = deployment["spec"]["replicas"].as_i64().expect("replicas");
    let min = pdb["spec"]["minAvailable"].as_i64().expect("minAvailable");
    assert!(
        (1..replicas).contains(&min),
        "minAvailable {min} with {replicas} replicas either protects nothing or blocks every drain"
    );
    let preferred = &deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(preferred["topologyKey"], "kubernetes.io/hostname");
    selects(&preferred["labelSelector"], "the anti-affinity");
}

#[test]
fn the_network_policy_opens_ports_the_controller_has() {
    let dir = "manifests/components/network-policy";
    let policy = find(
        &documents(&format!("{dir}/networkpolicy.yaml")),
        "NetworkPolicy",
        None,
    );
    let kustomization = &documents(&format!("{dir}/kustomization.yaml"))[0];
    assert_eq!(
        kustomization["resources"],
        serde_json::json!(["networkpolicy.yaml"])
    );
    let opened: BTreeSet<String> = policy["spec"]["ingress"]
        .as_array()
        .expect("ingress")
        .iter()
        .flat_map(|rule| rule["ports"].as_array().expect("ports").clone())
        .map(|p| str_of(&p["port"], "a named port").to_owned())
        .collect();
    assert_eq!(
        opened,
        container_ports(),
        "every port opened, and only those"
    );
    let selector = &policy["spec"]["podSelector"]["matchLabels"];
    assert_eq!(
        selector["app.kubernetes.io/name"],
        deployment()["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
    );
    // The metrics port is not open to everyone, unlike heartbeats.
    for rule in policy["spec"]["ingress"].as_array().expect("ingress") {
        if rule["ports"][0]["port"] == "metrics" {
            let from = &rule["from"][0]["namespaceSelector"]["matchLabels"];
            assert!(
                from.as_object().is_some_and(|m| !m.is_empty()),
                "the metrics port is open to every namespace: {rule}"
            );
        }
    }
}
