//! A unix `SOCK_SEQPACKET` socket for talking to a zygote and its children: one JSON message per
//! packet (never torn, never merged), file descriptors passed along, and the sender's process id
//! as the kernel saw it (`SCM_CREDENTIALS`, translated into our PID namespace, so that a process
//! in a sandbox's namespace is known by its pid here).

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixCredentials,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The largest message either side sends.
const MAX_PACKET: usize = 1 << 16;

/// Our end of a packet socket.
#[derive(Debug)]
pub struct Packets {
    fd: AsyncFd<OwnedFd>,
}

/// One received message.
#[derive(Debug)]
pub struct Packet {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The sender's pid in our PID namespace, when it sent credentials.
    pub pid: Option<i32>,
}

impl Packets {
    /// A connected pair: ours (non-blocking, receiving credentials) and theirs (blocking, to be
    /// handed to the other process). Both are close-on-exec.
    pub fn pair() -> io::Result<(Packets, OwnedFd)> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        fcntl(&ours, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        setsockopt(&ours, sockopt::PassCred, &true)?;
        Ok((
            Packets {
                fd: register(ours)?,
            },
            theirs,
        ))
    }

    /// Sends one message with `fds`.
    pub async fn send(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let iov = [IoSlice::new(bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        self.fd
            .async_io(Interest::WRITABLE, |fd| {
                sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            })
            .await
            .map(|_| ())
    }

    /// The next message; `None` once the other side is gone. File descriptors sent along are
    /// closed: nothing we receive needs one.
    pub async fn recv(&self) -> io::Result<Option<Packet>> {
        let mut buf = vec![0u8; MAX_PACKET];
        let (n, pid) = self
            .fd
            .async_io(Interest::READABLE, |fd| {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let mut space = nix::cmsg_space!(UnixCredentials, [RawFd; 4]);
                let msg = recvmsg::<()>(
                    fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut pid = None;
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    match c {
                        ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                        ControlMessageOwned::ScmRights(fds) => {
                            for fd in fds {
                                let _ = nix::unistd::close(fd);
                            }
                        }
                        _ => {}
                    }
                }
                Ok((msg.bytes, pid))
            })
            .await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some(Packet { bytes: buf, pid }))
    }
}

#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the descriptor, which stays open (and the same socket) for as
    // long as it is registered: nothing else closes or replaces it.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_keep_their_bounds_and_name_their_sender() {
        let (ours, theirs) = Packets::pair().unwrap();
        let iov = [IoSlice::new(b"one")];
        let me = UnixCredentials::new();
        let creds = [ControlMessage::ScmCredentials(&me)];
        sendmsg::<()>(theirs.as_raw_fd(), &iov, &creds, MsgFlags::empty(), None).unwrap();
        sendmsg::<()>(
            theirs.as_raw_fd(),
            &[IoSlice::new(b"two")],
            &[],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let first = ours.recv().await.unwrap().unwrap();
        assert_eq!(first.bytes, b"one");
        assert_eq!(first.pid, Some(std::process::id() as i32));
        assert_eq!(ours.recv().await.unwrap().unwrap().bytes, b"two");
        drop(theirs);
        assert!(ours.recv().await.unwrap().is_none());
    }
}
