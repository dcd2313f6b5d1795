//! The approver's and signer's decisions, and their writes against a stand-in API server.

use std::collections::BTreeMap;

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequestSpec, CertificateSigningRequestStatus,
};
use kube::api::ObjectMeta;
use rcgen::{DnType, KeyPair, SanType};
use serde_json::{Value, json};

use super::authority::tests::signer;
use super::request::tests::csr_pem;
use super::*;
use crate::controllers::replicaset::api_double::Double;

const CSRS: &str = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
const REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

fn node_pem(cn: &str, sans: Vec<SanType>) -> String {
    let key = KeyPair::generate().expect("key");
    csr_pem(
        &[
            (DnType::OrganizationName, "system:nodes"),
            (DnType::CommonName, cn),
        ],
        sans,
        &key,
    )
}

fn csr(signer_name: &str, pem: &str, username: &str, usages: &[&str]) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some("csr-1".into()),
            uid: Some("uid-1".into()),
            resource_version: Some("7".into()),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            signer_name: signer_name.into(),
            request: ByteString(pem.as_bytes().to_vec()),
            username: Some(username.into()),
            groups: Some(vec![
                "system:bootstrappers".into(),
                "system:authenticated".into(),
            ]),
            usages: Some(usages.iter().map(|u| (*u).to_owned()).collect()),
            extra: Some(BTreeMap::from([("k".to_owned(), vec!["v".to_owned()])])),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    }
}

fn with(mut csr: CertificateSigningRequest, kind: &str) -> CertificateSigningRequest {
    push_condition(
        &mut csr,
        CertificateSigningRequestCondition {
            type_: kind.into(),
            status: "True".into(),
            ..CertificateSigningRequestCondition::default()
        },
    );
    csr
}

const CLIENT: &[&str] = &["digital signature", "client auth"];
const SERVING: &[&str] = &["digital signature", "server auth"];

fn kind(step: &Step) -> String {
    match step {
        Step::Nothing => "nothing".into(),
        Step::Malformed(_) => "malformed".into(),
        Step::Approve(kinds) => format!("approve {:?}", kinds),
        Step::Fail { message, .. } => format!("fail: {message}"),
        Step::Sign(_) => "sign".into(),
    }
}

#[test]
fn what_each_csr_needs() {
    let client = node_pem("system:node:n1", vec![]);
    let serving = node_pem(
        "system:node:n1",
        vec![SanType::DnsName("n1".try_into().expect("ia5"))],
    );
    let kubelet = policy::KUBE_APISERVER_CLIENT_KUBELET;
    let bootstrap = "system:bootstrap:abcdef";
    let mut issued = with(csr(kubelet, &client, bootstrap, CLIENT), "Approved");
    issued.status.get_or_insert_default().certificate = Some(ByteString(b"x".to_vec()));
    let cases: Vec<(&str, CertificateSigningRequest, &str)> = vec![
        (
            "bootstrap",
            csr(kubelet, &client, bootstrap, CLIENT),
            "approve [NodeClient]",
        ),
        (
            "renewal",
            csr(kubelet, &client, "system:node:n1", CLIENT),
            "approve [SelfNodeClient, NodeClient]",
        ),
        (
            "serving usages",
            csr(kubelet, &client, bootstrap, SERVING),
            "nothing",
        ),
        (
            "serving, pending",
            csr(policy::KUBELET_SERVING, &serving, "system:node:n1", SERVING),
            "nothing",
        ),
        (
            "denied",
            with(csr(kubelet, &client, bootstrap, CLIENT), "Denied"),
            "nothing",
        ),
        (
            "approved",
            with(csr(kubelet, &client, bootstrap, CLIENT), "Approved"),
            "sign",
        ),
        ("issued", issued, "nothing"),
        (
            "failed",
            with(
                with(csr(kubelet, &client, bootstrap, CLIENT), "Approved"),
                "Failed",
            ),
            "nothing",
        ),
        (
            "serving, approved",
            with(
                csr(policy::KUBELET_SERVING, &serving, "system:node:n1", SERVING),
                "Approved",
            ),
            "sign",
        ),
        (
            "serving from another node",
            with(
                csr(policy::KUBELET_SERVING, &serving, "system:node:n2", SERVING),
                "Approved",
            ),
            "fail: the request names system:node:n1 but was made by system:node:n2",
        ),
        (
            "not ours",
            with(
                csr("example.com/signer", &client, bootstrap, CLIENT),
                "Approved",
            ),
            "nothing",
        ),
        (
            "garbage",
            csr(kubelet, "garbage", bootstrap, CLIENT),
            "malformed",
        ),
        (
            "garbage, approved",
            with(
                csr(policy::KUBE_APISERVER_CLIENT, "garbage", "admin", CLIENT),
                "Approved",
            ),
            "malformed",
        ),
    ];
    for (name, csr, want) in cases {
        assert_eq!(kind(&decide(&csr)), want, "{name}");
    }
}

fn answer(allowed: bool) -> impl Fn(&str, &str, &Value, usize) -> (u16, Value) {
    move |method, path, body, _| match (method, path) {
        ("POST", REVIEWS) => {
            let mut reply = body.clone();
            reply["status"] = json!({"allowed": allowed});
            (201, reply)
        }
        _ => (200, body.clone()),
    }
}

fn context(double: &Double, signer: Signer) -> Ctx {
    Ctx {
        client: Client::new(double.clone(), "default"),
        signer,
    }
}

#[tokio::test]
async fn a_bootstrap_request_is_approved_after_a_review_of_the_requester() {
    let double = Double::new(answer(true));
    let ctx = context(&double, signer().0);
    let pem = node_pem("system:node:n1", vec![]);
    let request = csr(
        policy::KUBE_APISERVER_CLIENT_KUBELET,
        &pem,
        "system:bootstrap:abcdef",
        CLIENT,
    );
    let step = decide(&request);
    sync(&ctx, &request, step).await.expect("approved");

    let reviews = double.sent("POST", REVIEWS);
    assert_eq!(reviews.len(), 1);
    let spec = &reviews[0].2["spec"];
    assert_eq!(spec["user"], "system:bootstrap:abcdef");
    assert_eq!(spec["groups"][0], "system:bootstrappers");
    assert_eq!(spec["extra"]["k"][0], "v");
    assert_eq!(
        spec["resourceAttributes"],
        json!({"group": "certificates.k8s.io", "resource": "certificatesigningrequests",
               "verb": "create", "subresource": "nodeclient"})
    );
    let approvals = double.sent("PUT", &format!("{CSRS}/csr-1/approval"));
    assert_eq!(approvals.len(), 1);
    let body = &approvals[0].2;
    assert_eq!(body["metadata"]["resourceVersion"], "7", "conditional");
    assert_eq!(
        body["status"]["conditions"][0],
        json!({"type": "Approved", "status": "True", "reason": "AutoApproved",
               "message": "Auto approving kubelet client certificate after SubjectAccessReview."})
    );
}

#[tokio::test]
async fn a_renewal_the_reviews_refuse_is_retried_not_approved() {
    let double = Double::new(answer(false));
    let ctx = context(&double, signer().0);
    let pem = node_pem("system:node:n1", vec![]);
    let request = csr(
        policy::KUBE_APISERVER_CLIENT_KUBELET,
        &pem,
        "system:node:n1",
        CLIENT,
    );
    let err = sync(&ctx, &request, decide(&request))
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, SyncError::NotAllowed { tried, .. } if *tried == vec!["selfnodeclient", "nodeclient"]),
        "{err:?}"
    );
    assert_eq!(double.sent("POST", REVIEWS).len(), 2);
    assert!(double.sent("PUT", CSRS).is_empty());
}

#[tokio::test]
async fn an_approved_request_gets_its_certificate_in_the_status() {
    let double = Double::new(answer(true));
    let ctx = context(&double, signer().0);
    let pem = node_pem("system:node:n1", vec![]);
    let request = with(
        csr(
            policy::KUBE_APISERVER_CLIENT_KUBELET,
            &pem,
            "system:bootstrap:abcdef",
            CLIENT,
        ),
        "Approved",
    );
    sync(&ctx, &request, decide(&request))
        .await
        .expect("signed");
    let writes = double.sent("PUT", &format!("{CSRS}/csr-1/status"));
    assert_eq!(writes.len(), 1);
    let body = &writes[0].2;
    assert_eq!(body["metadata"]["resourceVersion"], "7");
    let written: CertificateSigningRequestStatus =
        serde_json::from_value(body["status"].clone()).expect("status");
    let cert = String::from_utf8(written.certificate.expect("certificate").0).expect("pem");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    assert_eq!(
        written.conditions.map(|c| c.len()),
        Some(1),
        "the Approved condition kept"
    );
}

#[tokio::test]
async fn a_serving_request_from_another_node_fails_with_the_reason() {
    let double = Double::new(answer(true));
    let ctx = context(&double, signer().0);
    let pem = node_pem(
        "system:node:n1",
        vec![SanType::IpAddress("10.0.0.1".parse().expect("ip"))],
    );
    let request = with(
        csr(policy::KUBELET_SERVING, &pem, "system:node:n2", SERVING),
        "Approved",
    );
    sync(&ctx, &request, decide(&request))
        .await
        .expect("failed it");
    let writes = double.sent("PUT", &format!("{CSRS}/csr-1/status"));
    assert_eq!(writes.len(), 1);
    let condition = &writes[0].2["status"]["conditions"][1];
    assert_eq!(condition["type"], "Failed");
    assert_eq!(condition["reason"], REASON_VALIDATION);
    assert_eq!(
        condition["message"],
        "the request names system:node:n1 but was made by system:node:n2"
    );
    assert!(writes[0].2["status"].get("certificate").is_none());
    let events = double.sent("POST", "/apis/events.k8s.io/v1/namespaces/default/events");
    assert_eq!(
        events.len(),
        1,
        "cluster-scoped objects' events go to default"
    );
}

#[tokio::test]
async fn a_conflicting_write_is_stale_not_an_error() {
    let double = Double::new(|method, path, body, _| match method {
        "PUT" => crate::controllers::replicaset::api_double::failure(409, "Conflict", "changed"),
        _ => answer(true)(method, path, body, 0),
    });
    let ctx = context(&double, signer().0);
    let pem = node_pem("system:node:n1", vec![]);
    let request = csr(
        policy::KUBE_APISERVER_CLIENT_KUBELET,
        &pem,
        "system:bootstrap:abcdef",
        CLIENT,
    );
    let err = sync(&ctx, &request, decide(&request))
        .await
        .expect_err("stale");
    assert!(matches!(err, SyncError::Stale { .. }), "{err:?}");
}
