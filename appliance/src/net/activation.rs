//! Listening sockets handed over by systemd (socket activation, `sd_listen_fds(3)`): with
//! `ferry-appliance.socket` enabled, the sockets outlive the process, so a stop and start (an
//! upgrade of the package, `systemctl restart`) refuses no connection. Agents that met a refusal
//! wait 30-60 s before their next check-in, which is what made a stop and start cost a minute
//! at 10 000 agents; connections made while no process runs wait in the kernel's backlog
//! instead and are served by the next one.
//!
//! Sockets are matched to the configuration by their bound address, not by their order or
//! name, so the unit file and `appliance.toml` cannot silently disagree: a socket whose address
//! the configuration does not name is an error, and so is any socket that is not a listening
//! TCP socket.

use std::net::SocketAddr;

use anyhow::Context as _;

/// The sockets systemd passed (none when not socket-activated), by bound address, and whether
/// any were.
pub(crate) struct Inherited(Vec<(SocketAddr, std::net::TcpListener)>, bool);

impl Inherited {
    /// Reads `LISTEN_FDS` (and `LISTEN_PID`, which must name this process when set).
    pub(crate) fn from_env() -> anyhow::Result<Inherited> {
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::with_capacity(fds.len());
        for index in 0..fds.len() {
            // Descriptors start at 3 (SD_LISTEN_FDS_START).
            let fd = index + 3;
            let listener = fds
                .take_tcp_listener(index)
                .with_context(|| {
                    format!("socket activation: descriptor {fd} is not a listening TCP socket")
                })?
                .with_context(|| format!("socket activation: descriptor {fd} is missing"))?;
            let addr = listener
                .local_addr()
                .with_context(|| format!("socket activation: descriptor {fd} has no address"))?;
            sockets.push((addr, listener));
        }
        let activated = !sockets.is_empty();
        Ok(Inherited(sockets, activated))
    }

    /// Whether systemd passed any socket.
    pub(crate) fn activated(&self) -> bool {
        self.1
    }

    /// The inherited socket bound to `addr`, ready for tokio.
    pub(crate) fn take(
        &mut self,
        addr: SocketAddr,
    ) -> anyhow::Result<Option<tokio::net::TcpListener>> {
        let Some(at) = self.0.iter().position(|(a, _)| *a == addr) else { return Ok(None) };
        let (_, listener) = self.0.swap_remove(at);
        listener.set_nonblocking(true)?;
        Ok(Some(tokio::net::TcpListener::from_std(listener)?))
    }

    /// Refuses sockets left over: the unit file names an address the configuration does not.
    pub(crate) fn finish(self) -> anyhow::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let addresses: Vec<String> = self.0.iter().map(|(a, _)| a.to_string()).collect();
        anyhow::bail!(
            "socket activation passed sockets on {} that the configuration does not name: \
             ListenStream= in ferry-appliance.socket must be server.listen, and \
             server.mirror_listen and server.metrics_listen when they are set, exactly",
            addresses.join(", ")
        )
    }
}
