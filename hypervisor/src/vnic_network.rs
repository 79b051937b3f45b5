//! `hypervisor::machine::Network` over today's network back end
//! (`vnic::Net` and its uplink): a thin adapter, nothing decided here.
//! It goes away once the back end lives in the library (`hypervisor::net`)
//! and implements the trait itself.

use crate::vnic::{Capture, CaptureTarget, Net, Port};
use alloc::string::String;
use core::sync::atomic::Ordering;
use hypervisor::machine::network::{self, Attach, Captured, Network, PortStats};
use hypervisor::net::switch::Switch;

impl Network for Net {
    fn attach(&self, a: Attach<'_>) -> Result<(), String> {
        let port = self.switch.lock().add_port(a.tenant, a.mac, a.ipv4).map_err(|e| alloc::format!("switch: {e:?}"))?;
        match self.guest_of_slot.get(port.slot()) {
            Some(slot) => slot.store(a.guest, Ordering::Release),
            None => {
                self.switch.lock().remove_port(port);
                return Err("no room for another vNIC".into());
            }
        }
        let p = Port::new(port, a.tenant, a.ring_slots, a.limits, a.tx_frames, a.rx_frames, a.event_page);
        self.ports[a.guest].call_once(|| p);
        Ok(())
    }

    fn drain(&self, guest: usize, now_ns: u64, wake: &mut dyn FnMut(usize)) -> Result<(), String> {
        Net::drain(self, guest, now_ns, &mut |g, _| wake(g))
    }

    fn poll_uplink(&self, now_ns: u64, wake: &mut dyn FnMut(usize)) {
        Net::poll_uplink(self, now_ns, &mut |g| wake(g))
    }

    fn uplink_rx_ns(&self) -> Option<u64> {
        self.uplink.as_ref().map(|_| self.uplink_rx_ns.load(Ordering::Relaxed))
    }

    fn disconnect(&self, guest: usize) {
        Net::disconnect(self, guest)
    }

    fn port_stats(&self, guest: usize) -> Option<PortStats> {
        let p = self.port(guest)?;
        let st = self.switch.lock().stats(p.switch_port).unwrap_or_default();
        Some(PortStats {
            // The switch counts what it received from the port (the guest
            // sent) and what it transmitted to it.
            sent_frames: st.rx_frames,
            received_frames: st.tx_frames,
            ring_bytes: p.ring_bytes(),
            record_bytes: p.record_bytes() + Switch::BYTES_PER_PORT as u64,
            limited: p.limited(),
            ring_errors: p.ring_errors.load(Ordering::Relaxed),
            uplink_dropped: p.uplink_dropped(),
            spoofed: p.spoofed.load(Ordering::Relaxed),
        })
    }

    fn bytes_per_guest(&self) -> u64 {
        core::mem::size_of::<Option<Port>>() as u64
    }

    fn start_capture(&self, target: network::CaptureTarget, max: u32, until_ns: u64) {
        let target = match target {
            network::CaptureTarget::Guest(g) => CaptureTarget::Guest(g),
            network::CaptureTarget::Tenant(t) => CaptureTarget::Tenant(t),
        };
        *self.capture.lock() = Capture { target: Some(target), max, until_ns, ..Default::default() };
        self.capturing.store(true, Ordering::Release);
    }

    fn capturing(&self) -> bool {
        self.capturing.load(Ordering::Acquire)
    }

    fn next_captured(&self, now_ns: u64) -> Option<Captured> {
        let mut c = self.capture.lock();
        match c.frames.pop_front() {
            Some((ns, frame)) => Some(Captured::Frame(ns, frame)),
            None if c.taken >= c.max || now_ns >= c.until_ns => {
                self.capturing.store(false, Ordering::Release);
                let end = Captured::End { taken: c.taken, dropped: c.dropped };
                *c = Default::default();
                Some(end)
            }
            None => None,
        }
    }
}
