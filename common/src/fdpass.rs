//! Descriptors between processes and the socket calls around them: accepted connections
//! from the master to a worker as `SCM_RIGHTS` over a `SOCK_SEQPACKET` socketpair (a message
//! carries up to [`MAX_FDS`] of them and is never merged with another or split), the
//! listening sockets handed from a running master to its successor (zero-downtime upgrade),
//! `accept4` of a non-blocking connection, and how much of an answer a client has not yet
//! acknowledged (`SIOCOUTQ`).

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// A connected pair: the master keeps one end, the worker the other.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Accepts one connection as a non-blocking, close-on-exec socket (`accept4`), so the worker
/// it is passed to needs no `fcntl` (the flag belongs to the open file, which the fd shares).
/// Socket options set on the listener, such as `TCP_NODELAY`, are inherited by Linux.
pub fn accept_nonblocking(listener: &std::net::TcpListener) -> io::Result<std::net::TcpStream> {
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    loop {
        match nix::sys::socket::accept4(listener.as_raw_fd(), flags) {
            Ok(fd) => {
                // SAFETY: accept4 just returned this descriptor; nothing else owns it, so
                // exactly one owner takes it here.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                return Ok(std::net::TcpStream::from(fd));
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Most descriptors one message carries.
pub const MAX_FDS: usize = 32;

/// Sends `fd` with a one-byte payload. The caller closes its copy afterwards.
pub fn send_fd(chan: &OwnedFd, fd: &impl AsRawFd) -> io::Result<()> {
    send_fds(chan, &[fd.as_raw_fd()])
}

/// Sends up to [`MAX_FDS`] descriptors in one message (one system call for a burst of
/// accepted connections). The caller closes its copies afterwards.
pub fn send_fds(chan: &OwnedFd, fds: &[std::os::fd::RawFd]) -> io::Result<()> {
    assert!((1..=MAX_FDS).contains(&fds.len()));
    let cmsg = [ControlMessage::ScmRights(fds)];
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

/// Receives one passed fd (see [`recv_fds`]); more than one in the message is an error.
pub fn recv_fd(chan: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    match recv_fds(chan)? {
        None => Ok(None),
        Some(mut fds) if fds.len() == 1 => Ok(fds.pop()),
        Some(fds) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("expected 1 fd, got {}", fds.len()),
        )),
    }
}

/// Receives the descriptors of one message. `Ok(None)` when the peer closed the channel;
/// `WouldBlock` when nothing is pending (the channel is read without blocking). A truncated
/// control message (`MSG_CTRUNC`) or a message without descriptors is an error; descriptors
/// that did arrive are closed then, never leaked.
pub fn recv_fds(chan: &OwnedFd) -> io::Result<Option<Vec<OwnedFd>>> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; MAX_FDS]);
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
    if got.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "message without descriptors",
        ));
    }
    Ok(Some(got))
}

/// The abstract-namespace address of an instance's upgrade socket (no file to clean up;
/// it disappears with the master that bound it).
fn upgrade_addr(instance: &str) -> io::Result<nix::sys::socket::UnixAddr> {
    Ok(nix::sys::socket::UnixAddr::new_abstract(
        format!("shmproxy.{instance}.upgrade").as_bytes(),
    )?)
}

/// Master: listens for a new master asking to take the listening socket over.
/// `AddrInUse` while the previous master of the instance still drains.
pub fn upgrade_listener(instance: &str) -> io::Result<OwnedFd> {
    use nix::sys::socket::{bind, listen, socket, Backlog};
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    bind(fd.as_raw_fd(), &upgrade_addr(instance)?)?;
    listen(&fd, Backlog::new(4).map_err(io::Error::from)?)?;
    Ok(fd)
}

/// Master: accepts one pending upgrade request from a process of the same user.
pub fn accept_upgrade(listener: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    use nix::sys::socket::{accept4, getsockopt, sockopt::PeerCredentials};
    let fd = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
        Ok(fd) => fd,
        Err(nix::Error::EAGAIN) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    // SAFETY: accept4 just returned this descriptor to us; nothing else owns it.
    let conn = unsafe { OwnedFd::from_raw_fd(fd) };
    let cred = getsockopt(&conn, PeerCredentials)?;
    if cred.uid() != nix::unistd::getuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("upgrade request from uid {}", cred.uid()),
        ));
    }
    Ok(Some(conn))
}

/// New master: asks the running master of `instance` for its listening sockets (one message
/// holds them all, in the order it listed them).
pub fn request_takeover(instance: &str, timeout: std::time::Duration) -> io::Result<Vec<OwnedFd>> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{connect, socket};
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &upgrade_addr(instance)?)?;
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    if poll(
        &mut fds,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    )? == 0
    {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the running master did not hand over its socket",
        ));
    }
    recv_fds(&fd)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the running master refused the upgrade",
        )
    })
}

/// Bytes written to a TCP socket that its peer has not acknowledged yet (`SIOCOUTQ`), or
/// `None` if the kernel cannot tell. What a client has really taken of an answer is what
/// was written minus this: the send buffer's contents say nothing about a client's rate.
pub fn unsent_bytes(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (= TIOCOUTQ) writes one c_int through the pointer, which points to a
    // live local; the descriptor is borrowed, so it is open for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    (rc == 0 && n >= 0).then_some(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_listener_is_handed_over_through_the_upgrade_socket() {
        let instance = format!("fdtest{}", std::process::id());
        let up = upgrade_listener(&instance).unwrap();
        assert!(
            upgrade_listener(&instance).is_err(),
            "one master per instance"
        );
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let tcp2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr2 = tcp2.local_addr().unwrap();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let conn = loop {
                    if let Some(c) = accept_upgrade(&up).unwrap() {
                        break c;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                };
                send_fds(&conn, &[tcp.as_raw_fd(), tcp2.as_raw_fd()]).unwrap();
            });
            let got = request_takeover(&instance, std::time::Duration::from_secs(5)).unwrap();
            let got: Vec<_> = got
                .into_iter()
                .map(|fd| std::net::TcpListener::from(fd).local_addr().unwrap())
                .collect();
            assert_eq!(got, [addr, addr2]);
        });
    }

    #[test]
    fn a_batch_of_fds_travels_in_one_message() {
        let (a, b) = pair().unwrap();
        let pairs: Vec<_> = (0..5)
            .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
            .collect();
        let raw: Vec<_> = pairs.iter().map(|(_, far)| far.as_raw_fd()).collect();
        send_fds(&a, &raw).unwrap();
        let got = recv_fds(&b).unwrap().unwrap();
        assert_eq!(got.len(), 5);
        for ((mut near, _), fd) in pairs.into_iter().zip(got) {
            let mut far = std::os::unix::net::UnixStream::from(fd);
            near.write_all(b"x").unwrap();
            let mut buf = [0u8; 1];
            far.read_exact(&mut buf).unwrap();
        }
        assert!(matches!(recv_fds(&b), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
    }

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
