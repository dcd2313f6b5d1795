//! systemd readiness (`sd_notify`): with `Type=notify`, systemd holds units ordered after
//! nodus until it says `READY=1`, which it does once the Node is registered.

use std::os::unix::net::UnixDatagram;
use std::path::Path;

/// Sends `state` (e.g. `READY=1`) to the socket systemd named in `NOTIFY_SOCKET`; nothing
/// when not started by systemd. Failures are only logged: readiness is a courtesy.
pub fn ready() {
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET")
        && let Err(err) = send(Path::new(&socket), "READY=1")
    {
        tracing::warn!(error = %err, "telling systemd we are ready failed");
    }
}

/// Sends `state` to the notification socket at `socket` (`@name` is an abstract socket).
pub fn send(socket: &Path, state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let out = UnixDatagram::unbound()?;
    let text = socket.to_string_lossy();
    match text.strip_prefix('@') {
        Some(name) => {
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            out.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            out.send_to(state.as_bytes(), socket)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().expect("a directory");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("binding");
        send(&path, "READY=1").expect("sending");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("receiving");
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("nodus-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("an abstract name");
        let abstract_listener = UnixDatagram::bind_addr(&addr).expect("binding");
        send(Path::new(&format!("@{name}")), "READY=1").expect("sending");
        let n = abstract_listener.recv(&mut buf).expect("receiving");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
