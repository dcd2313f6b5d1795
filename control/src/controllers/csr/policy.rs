//! What the kubernetes.io signers accept and what the approver recognizes: pure checks of a
//! parsed request against the CSR's signer name, usages and requester.
//!
//! Invariants: usages compare as sets (order and repeats do not matter); a request the
//! approver recognizes is one the kubelet-client signer accepts; messages are upstream's,
//! since they land in the `Failed` condition users read. Upstream:
//! `pkg/apis/certificates/helpers.go` (`ValidateKubeletClientCSR`,
//! `ValidateKubeletServingCSR`), `pkg/controller/certificates/signer/signer.go`
//! (`validAPIServerClientUsages`) and `pkg/controller/certificates/approver/sarapprove.go`.

use std::collections::BTreeSet;

use super::request::Request;

pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// The signer names this controller signs for.
pub const SIGNERS: &[&str] = &[
    KUBE_APISERVER_CLIENT,
    KUBE_APISERVER_CLIENT_KUBELET,
    KUBELET_SERVING,
];

const NODE_USER_PREFIX: &str = "system:node:";
const NODES_GROUP: &str = "system:nodes";

/// Why a signer refuses a request: the `Failed` condition's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("subject organization is not system:nodes")]
    OrganizationNotSystemNodes,
    #[error("subject common name does not begin with system:node:")]
    CommonNameNotSystemNode,
    #[error("DNS subjectAltNames are not allowed")]
    DnsSanNotAllowed,
    #[error("Email subjectAltNames are not allowed")]
    EmailSanNotAllowed,
    #[error("IP subjectAltNames are not allowed")]
    IpSanNotAllowed,
    #[error("URI subjectAltNames are not allowed")]
    UriSanNotAllowed,
    #[error("DNS or IP subjectAltName is required")]
    DnsOrIpSanRequired,
    /// Go prints the sorted set as `[a b c]`.
    #[error("usages did not match [{}]", .0.join(" "))]
    Usages(Vec<&'static str>),
    #[error("invalid usage for client certificate: {0}")]
    ClientUsage(String),
    #[error("missing required usage for client certificate: client auth")]
    MissingClientAuth,
    /// nodus only: upstream's signer trusts whoever approved a serving request; this one
    /// also wants the request to come from the node it names.
    #[error("the request names {common_name} but was made by {username}")]
    NotRequestedByNode {
        common_name: String,
        username: String,
    },
}

fn usage_set(usages: &[String]) -> BTreeSet<&str> {
    usages.iter().map(String::as_str).collect()
}

fn set(usages: &[&'static str]) -> BTreeSet<&'static str> {
    usages.iter().copied().collect()
}

/// `ValidateKubeletClientCSR`: a node's client certificate, `O=system:nodes`,
/// `CN=system:node:<name>`, no SANs, digital signature + client auth (key encipherment
/// allowed, for RSA keys).
pub fn kubelet_client(request: &Request, usages: &[String]) -> Result<(), Refusal> {
    if request.subject.organization != [NODES_GROUP] {
        return Err(Refusal::OrganizationNotSystemNodes);
    }
    if !request.dns_names.is_empty() {
        return Err(Refusal::DnsSanNotAllowed);
    }
    if !request.email_addresses.is_empty() {
        return Err(Refusal::EmailSanNotAllowed);
    }
    if !request.ip_addresses.is_empty() {
        return Err(Refusal::IpSanNotAllowed);
    }
    if !request.uris.is_empty() {
        return Err(Refusal::UriSanNotAllowed);
    }
    if !request.subject.common_name.starts_with(NODE_USER_PREFIX) {
        return Err(Refusal::CommonNameNotSystemNode);
    }
    let full = ["client auth", "digital signature", "key encipherment"];
    let given = usage_set(usages);
    if given != set(&full) && given != set(&["client auth", "digital signature"]) {
        return Err(Refusal::Usages(full.to_vec()));
    }
    Ok(())
}

/// `ValidateKubeletServingCSR`, plus nodus's check that `username` (the CSR's requester) is
/// the node named.
pub fn kubelet_serving(
    request: &Request,
    usages: &[String],
    username: &str,
) -> Result<(), Refusal> {
    if request.subject.organization != [NODES_GROUP] {
        return Err(Refusal::OrganizationNotSystemNodes);
    }
    if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
        return Err(Refusal::DnsOrIpSanRequired);
    }
    if !request.email_addresses.is_empty() {
        return Err(Refusal::EmailSanNotAllowed);
    }
    if !request.uris.is_empty() {
        return Err(Refusal::UriSanNotAllowed);
    }
    let full = ["digital signature", "key encipherment", "server auth"];
    let given = usage_set(usages);
    if given != set(&full) && given != set(&["digital signature", "server auth"]) {
        return Err(Refusal::Usages(full.to_vec()));
    }
    if !request.subject.common_name.starts_with(NODE_USER_PREFIX) {
        return Err(Refusal::CommonNameNotSystemNode);
    }
    if username != request.subject.common_name {
        return Err(Refusal::NotRequestedByNode {
            common_name: request.subject.common_name.clone(),
            username: username.to_owned(),
        });
    }
    Ok(())
}

/// `validAPIServerClientUsages`: client auth, optionally digital signature and key
/// encipherment, nothing else.
pub fn apiserver_client(usages: &[String]) -> Result<(), Refusal> {
    let mut client_auth = false;
    for usage in usages {
        match usage.as_str() {
            "digital signature" | "key encipherment" => {}
            "client auth" => client_auth = true,
            other => return Err(Refusal::ClientUsage(other.to_owned())),
        }
    }
    if client_auth {
        Ok(())
    } else {
        Err(Refusal::MissingClientAuth)
    }
}

/// The signer's verdict on an approved request of one of [`SIGNERS`]: None for a signer
/// name this controller does not sign for.
pub fn signer_check(
    signer_name: &str,
    request: &Request,
    usages: &[String],
    username: &str,
) -> Option<Result<(), Refusal>> {
    match signer_name {
        KUBE_APISERVER_CLIENT_KUBELET => Some(kubelet_client(request, usages)),
        KUBELET_SERVING => Some(kubelet_serving(request, usages, username)),
        KUBE_APISERVER_CLIENT => Some(apiserver_client(usages)),
        _ => None,
    }
}

/// A kind of request the approver approves when a SubjectAccessReview allows the requester
/// to create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recognized {
    /// A node renewing its own client certificate.
    SelfNodeClient,
    /// A node client certificate requested by someone allowed to (a bootstrap token).
    NodeClient,
}

impl Recognized {
    /// The `certificatesigningrequests` subresource the SubjectAccessReview asks about.
    pub fn subresource(self) -> &'static str {
        match self {
            Recognized::SelfNodeClient => "selfnodeclient",
            Recognized::NodeClient => "nodeclient",
        }
    }

    /// The Approved condition's message, upstream's.
    pub fn message(self) -> &'static str {
        match self {
            Recognized::SelfNodeClient => {
                "Auto approving self kubelet client certificate after SubjectAccessReview."
            }
            Recognized::NodeClient => {
                "Auto approving kubelet client certificate after SubjectAccessReview."
            }
        }
    }
}

/// The approver's recognizers that match, in the order they are tried: a node's own renewal
/// first, then any node client request. Upstream's `recognizers()`.
pub fn recognize(
    signer_name: &str,
    request: &Request,
    usages: &[String],
    username: &str,
) -> Vec<Recognized> {
    if signer_name != KUBE_APISERVER_CLIENT_KUBELET || kubelet_client(request, usages).is_err() {
        return Vec::new();
    }
    if username == request.subject.common_name {
        vec![Recognized::SelfNodeClient, Recognized::NodeClient]
    } else {
        vec![Recognized::NodeClient]
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::Subject;
    use super::*;

    fn request(o: &[&str], cn: &str, dns: &[&str], ips: &[&str]) -> Request {
        Request {
            subject: Subject {
                organization: o.iter().map(|s| (*s).to_owned()).collect(),
                common_name: cn.to_owned(),
                ..Subject::default()
            },
            dns_names: dns.iter().map(|s| (*s).to_owned()).collect(),
            email_addresses: Vec::new(),
            ip_addresses: ips.iter().map(|s| s.parse().expect("ip")).collect(),
            uris: Vec::new(),
            public_key_info: Vec::new(),
        }
    }

    fn usages(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    const CLIENT: &[&str] = &["digital signature", "client auth"];
    const CLIENT_RSA: &[&str] = &["key encipherment", "digital signature", "client auth"];
    const SERVING: &[&str] = &["digital signature", "server auth"];

    #[test]
    fn kubelet_client_requests() {
        let node = request(&["system:nodes"], "system:node:n1", &[], &[]);
        type Case = (
            &'static str,
            Request,
            &'static [&'static str],
            Result<(), Refusal>,
        );
        let cases: Vec<Case> = vec![
            ("ecdsa usages", node.clone(), CLIENT, Ok(())),
            ("rsa usages", node.clone(), CLIENT_RSA, Ok(())),
            (
                "repeated usage",
                node.clone(),
                &["client auth", "client auth", "digital signature"],
                Ok(()),
            ),
            (
                "server auth",
                node.clone(),
                &["digital signature", "client auth", "server auth"],
                Err(Refusal::Usages(vec![
                    "client auth",
                    "digital signature",
                    "key encipherment",
                ])),
            ),
            (
                "two groups",
                request(&["system:nodes", "x"], "system:node:n1", &[], &[]),
                CLIENT,
                Err(Refusal::OrganizationNotSystemNodes),
            ),
            (
                "masters",
                request(&["system:masters"], "system:node:n1", &[], &[]),
                CLIENT,
                Err(Refusal::OrganizationNotSystemNodes),
            ),
            (
                "not a node",
                request(&["system:nodes"], "admin", &[], &[]),
                CLIENT,
                Err(Refusal::CommonNameNotSystemNode),
            ),
            (
                "a DNS name",
                request(&["system:nodes"], "system:node:n1", &["n1"], &[]),
                CLIENT,
                Err(Refusal::DnsSanNotAllowed),
            ),
            (
                "an IP",
                request(&["system:nodes"], "system:node:n1", &[], &["10.0.0.1"]),
                CLIENT,
                Err(Refusal::IpSanNotAllowed),
            ),
        ];
        for (name, req, list, want) in cases {
            assert_eq!(kubelet_client(&req, &usages(list)), want, "{name}");
        }
        assert_eq!(
            Refusal::Usages(vec!["client auth", "digital signature", "key encipherment"])
                .to_string(),
            "usages did not match [client auth digital signature key encipherment]"
        );
    }

    #[test]
    fn kubelet_serving_requests() {
        let node = request(&["system:nodes"], "system:node:n1", &["n1"], &["10.0.0.1"]);
        type Case = (
            &'static str,
            Request,
            &'static [&'static str],
            &'static str,
            Result<(), Refusal>,
        );
        let cases: Vec<Case> = vec![
            (
                "by the node",
                node.clone(),
                SERVING,
                "system:node:n1",
                Ok(()),
            ),
            (
                "rsa usages",
                node.clone(),
                &["key encipherment", "digital signature", "server auth"],
                "system:node:n1",
                Ok(()),
            ),
            (
                "by another node",
                node.clone(),
                SERVING,
                "system:node:n2",
                Err(Refusal::NotRequestedByNode {
                    common_name: "system:node:n1".into(),
                    username: "system:node:n2".into(),
                }),
            ),
            (
                "no names",
                request(&["system:nodes"], "system:node:n1", &[], &[]),
                SERVING,
                "system:node:n1",
                Err(Refusal::DnsOrIpSanRequired),
            ),
            (
                "client auth too",
                node.clone(),
                &["digital signature", "server auth", "client auth"],
                "system:node:n1",
                Err(Refusal::Usages(vec![
                    "digital signature",
                    "key encipherment",
                    "server auth",
                ])),
            ),
            (
                "not a node",
                request(&["system:nodes"], "web", &["web"], &[]),
                SERVING,
                "web",
                Err(Refusal::CommonNameNotSystemNode),
            ),
        ];
        for (name, req, list, user, want) in cases {
            assert_eq!(kubelet_serving(&req, &usages(list), user), want, "{name}");
        }
        let mut with_email = node.clone();
        with_email.email_addresses.push("a@b".into());
        assert_eq!(
            kubelet_serving(&with_email, &usages(SERVING), "system:node:n1"),
            Err(Refusal::EmailSanNotAllowed)
        );
        let mut with_uri = node;
        with_uri.uris.push("spiffe://x".into());
        assert_eq!(
            kubelet_serving(&with_uri, &usages(SERVING), "system:node:n1"),
            Err(Refusal::UriSanNotAllowed)
        );
    }

    #[test]
    fn apiserver_client_usages() {
        assert_eq!(apiserver_client(&usages(&["client auth"])), Ok(()));
        assert_eq!(apiserver_client(&usages(CLIENT_RSA)), Ok(()));
        assert_eq!(
            apiserver_client(&usages(&["digital signature"])),
            Err(Refusal::MissingClientAuth)
        );
        assert_eq!(
            apiserver_client(&usages(&["client auth", "server auth"])),
            Err(Refusal::ClientUsage("server auth".into()))
        );
    }

    #[test]
    fn the_approver_recognizes_node_client_requests_only() {
        let node = request(&["system:nodes"], "system:node:n1", &[], &[]);
        let client = usages(CLIENT);
        assert_eq!(
            recognize(
                KUBE_APISERVER_CLIENT_KUBELET,
                &node,
                &client,
                "system:node:n1"
            ),
            vec![Recognized::SelfNodeClient, Recognized::NodeClient],
            "a renewal tries selfnodeclient first"
        );
        assert_eq!(
            recognize(
                KUBE_APISERVER_CLIENT_KUBELET,
                &node,
                &client,
                "system:bootstrap:abcdef"
            ),
            vec![Recognized::NodeClient]
        );
        assert!(recognize(KUBELET_SERVING, &node, &client, "system:node:n1").is_empty());
        assert!(recognize(KUBE_APISERVER_CLIENT, &node, &client, "system:node:n1").is_empty());
        let serving = request(&["system:nodes"], "system:node:n1", &["n1"], &[]);
        assert!(
            recognize(
                KUBE_APISERVER_CLIENT_KUBELET,
                &serving,
                &client,
                "system:node:n1"
            )
            .is_empty()
        );
        assert_eq!(Recognized::NodeClient.subresource(), "nodeclient");
        assert_eq!(
            Recognized::NodeClient.message(),
            "Auto approving kubelet client certificate after SubjectAccessReview."
        );
    }

    #[test]
    fn only_the_three_signers_are_checked() {
        let node = request(&["system:nodes"], "system:node:n1", &[], &[]);
        assert_eq!(
            signer_check(KUBE_APISERVER_CLIENT_KUBELET, &node, &usages(CLIENT), "x"),
            Some(Ok(()))
        );
        assert_eq!(
            signer_check("example.com/mine", &node, &usages(CLIENT), "x"),
            None
        );
        assert_eq!(
            signer_check(KUBELET_SERVING, &node, &usages(SERVING), "system:node:n1"),
            Some(Err(Refusal::DnsOrIpSanRequired))
        );
    }
}
