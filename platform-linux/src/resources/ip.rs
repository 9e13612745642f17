//! Virtual IPs: the address a service's clients use, added to the node that runs the group and
//! removed from the one that stops it, over netlink (`rtnetlink`).
//!
//! The interface is the spec's, or else the one interface that already has an address in the
//! VIP's subnet (none or several is an error naming them). After adding an IPv4 address, three
//! gratuitous ARPs announce it (a failure there is a warning: the address works, neighbours
//! just learn it later). IPv6 addresses are added with `nodad` (usable at once; the cluster's
//! leases, not DAD, keep two nodes from holding it) and no unsolicited neighbour advertisement
//! is sent yet. Monitor: the address is on the interface and the interface is up. Stop:
//! delete it; an address that is not there is already stopped.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType};
use rtnetlink::Handle;
use tandem_core::group::parse_cidr;

use super::{arp, Outcome, Place, ResourceError};

/// One address of one interface, as `getifaddrs` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IfAddr {
    pub name: String,
    pub address: IpAddr,
}

/// Whether `a` and `b` share the first `prefix` bits (same family only).
pub(crate) fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    let bits = |address: IpAddr| -> (u128, u32) {
        match address {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    };
    let ((a, width_a), (b, width_b)) = (bits(a), bits(b));
    if width_a != width_b || u32::from(prefix) > width_a {
        return false;
    }
    let shift = width_a - u32::from(prefix);
    shift >= 128 || (a >> shift) == (b >> shift)
}

/// Picks the interface for `vip/prefix` among `addrs`: the one with another address in the
/// subnet (else the one already holding the VIP). Errors name what was found.
pub(crate) fn pick_interface(addrs: &[IfAddr], vip: IpAddr, prefix: u8) -> Result<String, String> {
    let mut names: Vec<&str> = addrs
        .iter()
        .filter(|a| a.address != vip && same_subnet(a.address, vip, prefix))
        .map(|a| a.name.as_str())
        .collect();
    if names.is_empty() {
        names = addrs
            .iter()
            .filter(|a| a.address == vip)
            .map(|a| a.name.as_str())
            .collect();
    }
    names.sort_unstable();
    names.dedup();
    match names.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => Err(format!(
            "no interface has an address in the subnet of {vip}/{prefix}; set `interface` or \
             give one interface an address in that subnet"
        )),
        many => Err(format!(
            "several interfaces have an address in the subnet of {vip}/{prefix} ({}); set \
             `interface`",
            many.join(", ")
        )),
    }
}

/// Every IPv4 and IPv6 address of this network namespace, by interface name.
fn local_addresses() -> Result<Vec<IfAddr>, String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, which is freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(format!(
            "cannot list interfaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut found = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned; each entry is valid until freed.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        // SAFETY: a non-null address of the family read from it.
        if let Some(address) = unsafe { sockaddr_ip(entry.ifa_addr) } {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
            found.push(IfAddr {
                name: name.to_string_lossy().into_owned(),
                address,
            });
        }
    }
    // SAFETY: frees the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// The IP in a `sockaddr`, if it is IPv4 or IPv6.
///
/// # Safety
/// `addr` is null or points to a valid sockaddr of the family it names.
unsafe fn sockaddr_ip(addr: *const libc::sockaddr) -> Option<IpAddr> {
    if addr.is_null() {
        return None;
    }
    match i32::from((*addr).sa_family) {
        libc::AF_INET => {
            let v4 = &*addr.cast::<libc::sockaddr_in>();
            Some(IpAddr::from(u32::from_be(v4.sin_addr.s_addr).to_be_bytes()))
        }
        libc::AF_INET6 => {
            let v6 = &*addr.cast::<libc::sockaddr_in6>();
            Some(IpAddr::from(v6.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

/// The index of interface `name`, if it exists in this network namespace.
fn interface_index(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Resolves the interface (name, index) for the VIP.
fn resolve(vip: IpAddr, prefix: u8, interface: Option<&str>) -> Result<(String, u32), String> {
    let name = match interface {
        Some(name) => name.to_string(),
        None => pick_interface(&local_addresses()?, vip, prefix)?,
    };
    let index = interface_index(&name)
        .ok_or_else(|| format!("interface {name} does not exist on this node"))?;
    Ok((name, index))
}

/// The local checks: the CIDR parses and an interface for it exists. Returns (name, index).
pub(crate) fn check_local(
    cidr: &str,
    interface: Option<&str>,
    place: &Place,
) -> Result<(String, u32), ResourceError> {
    let (vip, prefix) = parse_cidr(cidr).map_err(|reason| place.unusable(reason))?;
    resolve(vip, prefix, interface).map_err(|reason| place.unusable(reason))
}

pub(crate) struct Ip {
    vip: IpAddr,
    prefix: u8,
    interface: Option<String>,
}

/// A netlink connection whose background task ends with it.
struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Netlink {
    fn open() -> Result<Netlink, String> {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|error| format!("cannot open a netlink socket: {error}"))?;
        Ok(Netlink {
            handle,
            task: tokio::spawn(connection),
        })
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The errno of a netlink error reply.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(message.raw_code().abs()),
        _ => None,
    }
}

/// The interface's MAC (when it is Ethernet) and whether it is up.
struct LinkFacts {
    mac: Option<[u8; 6]>,
    up: bool,
}

impl Ip {
    pub fn new(cidr: &str, interface: Option<&str>, place: &Place) -> Result<Ip, ResourceError> {
        let (vip, prefix) = parse_cidr(cidr).map_err(|reason| place.unusable(reason))?;
        Ok(Ip {
            vip,
            prefix,
            interface: interface.map(str::to_string),
        })
    }

    fn cidr(&self) -> String {
        format!("{}/{}", self.vip, self.prefix)
    }

    /// The VIP's address messages on interface `index` (or on any interface for `None`).
    async fn find(&self, nl: &Netlink, index: Option<u32>) -> Result<Vec<AddressMessage>, String> {
        let mut request = nl.handle.address().get().set_address_filter(self.vip);
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        let found: Vec<AddressMessage> = request
            .execute()
            .try_collect()
            .await
            .map_err(|error| format!("cannot list addresses: {error}"))?;
        Ok(found
            .into_iter()
            .filter(|m| m.header.prefix_len == self.prefix && self.holds_vip(m))
            .collect())
    }

    /// Whether the message is exactly the VIP (the filter also matches IPv6 multicast).
    fn holds_vip(&self, message: &AddressMessage) -> bool {
        message.attributes.iter().any(|attribute| {
            matches!(attribute, AddressAttribute::Address(a) | AddressAttribute::Local(a) if *a == self.vip)
        })
    }

    async fn link(&self, nl: &Netlink, index: u32) -> Result<LinkFacts, String> {
        let mut links = nl.handle.link().get().match_index(index).execute();
        let link = links
            .try_next()
            .await
            .map_err(|error| format!("cannot read interface {index}: {error}"))?
            .ok_or_else(|| format!("interface {index} disappeared"))?;
        let ether = link.header.link_layer_type == LinkLayerType::Ether;
        let mac = link
            .attributes
            .iter()
            .find_map(|attribute| match attribute {
                LinkAttribute::Address(bytes) if ether => {
                    <[u8; 6]>::try_from(bytes.as_slice()).ok()
                }
                _ => None,
            });
        Ok(LinkFacts {
            mac,
            up: link.header.flags.contains(LinkFlags::Up),
        })
    }

    pub async fn start(&mut self) -> Outcome {
        match self.try_start().await {
            Ok(()) => Outcome::Running,
            Err(reason) => Outcome::Failed(format!("ip {}: {reason}", self.cidr())),
        }
    }

    async fn try_start(&mut self) -> Result<(), String> {
        let (name, index) = resolve(self.vip, self.prefix, self.interface.as_deref())?;
        let nl = Netlink::open()?;
        if self.find(&nl, Some(index)).await?.is_empty() {
            let mut request = nl.handle.address().add(index, self.vip, self.prefix);
            if self.vip.is_ipv6() {
                request.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            }
            match request.execute().await {
                Ok(()) => {}
                // Added in between (another start): fine.
                Err(error) if errno(&error) == Some(libc::EEXIST) => {}
                Err(error) => return Err(format!("cannot add it to {name}: {error}")),
            }
            tracing::info!("added {} to {name}", self.cidr());
        }
        if let IpAddr::V4(v4) = self.vip {
            self.announce(&nl, &name, index, v4).await;
        }
        Ok(())
    }

    /// Gratuitous ARPs; failures are warnings.
    async fn announce(&self, nl: &Netlink, name: &str, index: u32, v4: std::net::Ipv4Addr) {
        let mac = match self.link(nl, index).await {
            Ok(LinkFacts { mac: Some(mac), .. }) => mac,
            Ok(_) => {
                tracing::debug!("{name} has no Ethernet address: no gratuitous ARP");
                return;
            }
            Err(reason) => {
                tracing::warn!("gratuitous ARP for {v4} on {name} skipped: {reason}");
                return;
            }
        };
        for round in 0..arp::COUNT {
            if round > 0 {
                tokio::time::sleep(arp::SPACING).await;
            }
            if let Err(error) = arp::send(index, mac, v4) {
                tracing::warn!("gratuitous ARP for {v4} on {name} failed: {error}");
                return;
            }
        }
    }

    pub async fn monitor(&mut self) -> Outcome {
        let result = async {
            let (name, index) = resolve(self.vip, self.prefix, self.interface.as_deref())?;
            let nl = Netlink::open()?;
            if self.find(&nl, Some(index)).await?.is_empty() {
                return Ok(Outcome::NotRunning);
            }
            if !self.link(&nl, index).await?.up {
                return Ok(Outcome::Failed(format!("interface {name} is down")));
            }
            Ok(Outcome::Running)
        };
        result.await.unwrap_or_else(|reason: String| {
            Outcome::Failed(format!("ip {}: {reason}", self.cidr()))
        })
    }

    pub async fn stop(&mut self) -> Outcome {
        match self.try_stop().await {
            Ok(()) => Outcome::NotRunning,
            Err(reason) => Outcome::Failed(format!("ip {}: {reason}", self.cidr())),
        }
    }

    /// Deletes the VIP from its interface (from any interface when none is named, since the
    /// subnet address that chose it may be gone by now).
    async fn try_stop(&mut self) -> Result<(), String> {
        let nl = Netlink::open()?;
        let index = match &self.interface {
            Some(name) => match interface_index(name) {
                Some(index) => Some(index),
                None => return Ok(()),
            },
            None => None,
        };
        for message in self.find(&nl, index).await? {
            let on = message.header.index;
            if let Err(error) = nl.handle.address().del(message).execute().await {
                // Gone in between is stopped too.
                if errno(&error) != Some(libc::EADDRNOTAVAIL) {
                    return Err(format!("cannot delete it from interface {on}: {error}"));
                }
            }
            tracing::info!("removed {} from interface {on}", self.cidr());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(name: &str, address: &str) -> IfAddr {
        IfAddr {
            name: name.into(),
            address: address.parse().expect("ip"),
        }
    }

    #[test]
    fn subnets() {
        let a: IpAddr = "10.1.2.3".parse().expect("ip");
        assert!(same_subnet(a, "10.1.2.200".parse().expect("ip"), 24));
        assert!(!same_subnet(a, "10.1.3.1".parse().expect("ip"), 24));
        assert!(same_subnet(a, "192.168.0.1".parse().expect("ip"), 0));
        assert!(!same_subnet(a, "fd00::1".parse().expect("ip"), 0));
        let b: IpAddr = "fd00:1::5".parse().expect("ip");
        assert!(same_subnet(b, "fd00:1::1".parse().expect("ip"), 64));
        assert!(!same_subnet(b, "fd00:2::1".parse().expect("ip"), 64));
    }

    #[test]
    fn interface_choice() {
        let vip: IpAddr = "10.9.0.5".parse().expect("ip");
        let addrs = [
            addr("lo", "127.0.0.1"),
            addr("eth0", "10.9.0.1"),
            addr("eth1", "10.8.0.1"),
        ];
        assert_eq!(pick_interface(&addrs, vip, 24).as_deref(), Ok("eth0"));
        let none = pick_interface(&addrs[..1], vip, 24).unwrap_err();
        assert!(none.contains("no interface"), "{none}");
        let both = [addr("a", "10.9.0.1"), addr("b", "10.9.0.2")];
        let many = pick_interface(&both, vip, 24).unwrap_err();
        assert!(many.contains("a, b"), "{many}");
        // Only the VIP itself left (a restart after the subnet address went away).
        let only_vip = [addr("eth0", "10.9.0.5")];
        assert_eq!(pick_interface(&only_vip, vip, 24).as_deref(), Ok("eth0"));
    }
}
