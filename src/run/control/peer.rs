//! Who is on the other end of an accepted connection: the peer's effective uid from the kernel.

use std::io;
use std::os::unix::net::UnixStream;

/// The effective uid of this process.
pub fn own_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The effective uid of the process that connected `stream` (`SO_PEERCRED`).
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let cred = rustix::net::sockopt::socket_peercred(stream)?;
    Ok(cred.uid.as_raw())
}

/// The effective uid of the process that connected `stream` (`getpeereid(3)`).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let (uid, _) = nix::unistd::getpeereid(stream).map_err(io::Error::from)?;
    Ok(uid.as_raw())
}
