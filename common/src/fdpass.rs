//! Passing accepted connections from the master to a worker: `SCM_RIGHTS` over a
//! `SOCK_SEQPACKET` socketpair (one message = one fd, never merged or split).

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A connected pair: the master keeps one end, the worker the other.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Sends `fd` with a one-byte payload. The caller closes its copy afterwards.
pub fn send_fd(chan: &OwnedFd, fd: &impl AsRawFd) -> io::Result<()> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(b"F")];
    loop {
        match sendmsg::<()>(
            chan.as_raw_fd(),
            &iov,
            &cmsg,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        ) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one passed fd. `Ok(None)` when the peer closed the channel; `WouldBlock` when
/// nothing is pending on a non-blocking channel. A truncated control message is an error.
pub fn recv_fd(chan: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = loop {
        match recvmsg::<()>(
            chan.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(m) => break m,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut got: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed these descriptors in our table for us; nobody
            // else owns them, so wrapping each in exactly one OwnedFd is sound.
            got.extend(
                fds.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.bytes == 0 && got.is_empty() {
        return Ok(None);
    }
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "fd message truncated (MSG_CTRUNC)",
        ));
    }
    if got.len() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected 1 fd, got {}", got.len()),
        ));
    }
    Ok(got.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_passed_fd_reaches_the_same_file() {
        let (a, b) = pair().unwrap();
        let (mut s1, s2) = std::os::unix::net::UnixStream::pair().unwrap();
        send_fd(&a, &s2).unwrap();
        drop(s2);
        let got = recv_fd(&b).unwrap().unwrap();
        let mut s2 = std::os::unix::net::UnixStream::from(got);
        s1.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        s2.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(a);
        assert!(recv_fd(&b).unwrap().is_none());
    }
}
