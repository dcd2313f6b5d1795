//! Token discovery's checks against upstream's own vectors and tools.

use std::process::{Command, Stdio};

use super::*;

#[test]
fn the_clusters_kubelet_config_names_the_ca_written_here() {
    let kubeadm = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
                   authentication:\n  x509:\n    clientCAFile: /etc/kubernetes/pki/ca.crt\n\
                   clusterDNS:\n- 10.96.0.10\nmaxPods: 150\n";
    let local =
        localize_kubelet_config(kubeadm, Path::new("/var/lib/n2/pki/ca.crt")).expect("localized");
    let value: serde_json::Value = serde_json::from_str(&local).expect("JSON");
    assert_eq!(
        value["authentication"]["x509"]["clientCAFile"],
        "/var/lib/n2/pki/ca.crt"
    );
    assert_eq!(value["maxPods"], 150);
    assert_eq!(value["clusterDNS"][0], "10.96.0.10");
    assert!(matches!(
        localize_kubelet_config("kind: Pod\n", Path::new("/x")),
        Err(Error::BadKubeletConfig(_))
    ));
}

#[test]
fn bootstrap_tokens_parse_as_kubeadm_makes_them() {
    assert_eq!(
        Token::parse("abcdef.0123456789abcdef").expect("a token"),
        Token {
            id: "abcdef".into(),
            secret: "0123456789abcdef".into()
        }
    );
    for bad in [
        "abcdef0123456789abcdef",
        "ABCDEF.0123456789abcdef",
        "abcde.0123456789abcdef",
        "abcdef.0123",
    ] {
        assert!(matches!(Token::parse(bad), Err(Error::Token(_))), "{bad}");
    }
}

#[test]
fn detached_signatures_verify_as_the_bootstrap_signer_makes_them() {
    // The vectors of k8s.io/cluster-bootstrap/token/jws.
    let content = "Hello from the other side. I must have called a thousand times.";
    let token = Token {
        id: "joshua".into(),
        secret: "my voice is my passcode".into(),
    };
    let good =
        "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8";
    verify_detached(good, content, &token).expect("upstream's signature verifies");
    let empty =
        "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk";
    verify_detached(empty, "", &token).expect("and for empty content");

    let refused = |jws: &str, content: &str, token: &Token| {
        matches!(
            verify_detached(jws, content, token),
            Err(Error::BadSignature)
        )
    };
    assert!(
        refused(good, "Hello from the other side.", &token),
        "other content"
    );
    let wrong_secret = Token {
        secret: "not my passcode".into(),
        ..token.clone()
    };
    assert!(refused(good, content, &wrong_secret), "another secret");
    let wrong_id = Token {
        id: "george".into(),
        ..token.clone()
    };
    assert!(
        refused(good, content, &wrong_id),
        "the header names another token"
    );
    assert!(refused("garbage", content, &token));
}

#[test]
fn ca_pins_are_what_kubeadm_prints() {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let pem = params.self_signed(&key).expect("signed").pem();
    // kubeadm's documented way: the DER public key through sha256sum.
    let mut pubkey = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    use std::io::Write;
    pubkey
        .stdin
        .take()
        .expect("stdin")
        .write_all(pem.as_bytes())
        .expect("writing");
    let pubkey = pubkey.wait_with_output().expect("openssl x509");
    let mut der = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "der"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    der.stdin
        .take()
        .expect("stdin")
        .write_all(&pubkey.stdout)
        .expect("writing");
    let der = der.wait_with_output().expect("openssl pkey");
    let digest = ring::digest::digest(&ring::digest::SHA256, &der.stdout);
    let expected: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        ca_pins(pem.as_bytes()).expect("pins"),
        vec![format!("sha256:{expected}")]
    );
    assert!(matches!(ca_pins(b"no pem here"), Err(Error::Kubeconfig(_))));
}
