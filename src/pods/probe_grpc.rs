//! gRPC probes: one call of the standard health service (`grpc.health.v1.Health/Check`) on
//! the pod's address, as upstream's prober makes it (`pkg/probe/grpc`): plaintext, the
//! probe's `service` name in the request, success only for `SERVING`.
//!
//! The two messages are declared here rather than generated: they are one field each, and
//! the wire format is all that matters.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Endpoint;

const CHECK: &str = "/grpc.health.v1.Health/Check";

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    /// `ServingStatus`: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN.
    #[prost(int32, tag = "1")]
    status: i32,
}

fn status_name(status: i32) -> &'static str {
    match status {
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    }
}

/// One check of `service` at `addr` within `timeout`: `Ok` when serving, else the failure
/// in upstream's words.
pub async fn check(addr: SocketAddr, service: &str, timeout: Duration) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|err| format!("invalid address {addr}: {err}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(super::probes::USER_AGENT)
        .map_err(|err| err.to_string())?;
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(_)) | Err(_) => {
            return Err(format!(
                "timeout: failed to connect service \"{addr}\" within {}s",
                timeout.as_secs()
            ));
        }
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    let call = async {
        grpc.ready()
            .await
            .map_err(|err| tonic::Status::unavailable(err.to_string()))?;
        grpc.unary(
            tonic::Request::new(HealthCheckRequest {
                service: service.to_owned(),
            }),
            PathAndQuery::from_static(CHECK),
            tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default(),
        )
        .await
    };
    let reply = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(reply)) => reply.into_inner(),
        Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
            return Err(format!(
                "timeout: health rpc did not complete within {}s",
                timeout.as_secs()
            ));
        }
        Ok(Err(status)) => {
            return Err(format!(
                "error: health rpc probe failed: rpc error: code = {:?} desc = {}",
                status.code(),
                status.message()
            ));
        }
        Err(_) => {
            return Err(format!(
                "timeout: health rpc did not complete within {}s",
                timeout.as_secs()
            ));
        }
    };
    if reply.status == 1 {
        Ok(())
    } else {
        Err(format!(
            "service unhealthy (responded with \"{}\")",
            status_name(reply.status)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_listening_is_a_connect_failure_in_upstreams_words() {
        // A port nothing listens on: bind one, note it, close it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = check(addr, "", Duration::from_secs(1))
            .await
            .expect_err("nothing serves");
        assert_eq!(
            err,
            format!("timeout: failed to connect service \"{addr}\" within 1s")
        );
    }

    #[test]
    fn messages_encode_as_the_health_protocol_does() {
        use prost::Message;
        let request = HealthCheckRequest {
            service: "db".into(),
        };
        // Field 1, length-delimited, "db".
        assert_eq!(request.encode_to_vec(), vec![0x0a, 2, b'd', b'b']);
        let response = HealthCheckResponse::decode(&[0x08, 2][..]).expect("decodes");
        assert_eq!(status_name(response.status), "NOT_SERVING");
    }
}
