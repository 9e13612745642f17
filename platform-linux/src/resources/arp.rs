//! Gratuitous ARP: after a virtual IPv4 address moves to this node, tell the LAN's switches and
//! neighbours its new MAC address at once, instead of waiting for their ARP caches to expire.
//!
//! One packet is an ARP request with sender and target protocol address both the VIP, from the
//! interface's MAC to the broadcast address, sent on an `AF_PACKET` datagram socket (the kernel
//! adds the Ethernet header). Hosts update an entry they have; with `arp_accept` they also learn
//! a new one.

use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

/// How many announcements, and how far apart.
pub(crate) const COUNT: usize = 3;
pub(crate) const SPACING: Duration = Duration::from_millis(200);

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;

/// The 28-byte ARP payload announcing `ip` at `mac`.
pub(crate) fn packet(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    p[2..4].copy_from_slice(&ETH_P_IP.to_be_bytes());
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&ip.octets());
    // Target hardware address: zero (unknown), as arping -U does.
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// A raw packet socket, closed on drop.
struct PacketSocket(i32);

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: closing a descriptor this struct owns, once.
        unsafe { libc::close(self.0) };
    }
}

/// Sends one gratuitous ARP for `ip` out of interface `index` (whose MAC is `mac`).
pub(crate) fn send(index: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let protocol = i32::from(ETH_P_ARP.to_be());
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let socket = PacketSocket(fd);
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = ETH_P_ARP.to_be();
    address.sll_ifindex =
        i32::try_from(index).map_err(|_| io::Error::other("interface index out of range"))?;
    address.sll_halen = 6;
    address.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let payload = packet(mac, ip);
    // SAFETY: the buffer and the address are valid for the lengths given.
    let sent = unsafe {
        libc::sendto(
            socket.0,
            payload.as_ptr().cast(),
            payload.len(),
            0,
            std::ptr::addr_of!(address).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcement_layout() {
        let mac = [2, 0, 0, 0, 0, 1];
        let p = packet(mac, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(&p[0..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&p[8..14], &mac);
        assert_eq!(&p[14..18], &[10, 0, 0, 5]);
        assert_eq!(&p[18..24], &[0; 6]);
        assert_eq!(&p[24..28], &[10, 0, 0, 5]);
    }
}
