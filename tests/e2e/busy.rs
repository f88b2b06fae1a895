//! A busy machine: CPU hogs (`yes`, one per core and at least two) run
//! beside the host for the whole test. A plugin is judged by the CPU time
//! it used, so honest plugins never offend however long they wait for a
//! CPU, and hostile ones are still cut and contained.

use plugbus_e2e::Hogs;

use super::*;
use crate::isolation::{contained, never, orders, reference_plugins_deliver};

/// `plugin` did nothing a misbehaving plugin does: no failed, retried or
/// trapped batch, no quarantine, never held to a tenth of a core. (The
/// swapper keeps a growing list per subject: with thousands of events its
/// batches are honestly heavy and may run in the background, which is no
/// offence.)
fn honest(h: &TestHost, plugin: &str) {
    let metric = |m: &str| {
        h.metric(&format!("plugbus_{m}{{plugin=\"{plugin}\"}}"))
            .unwrap_or(0.0)
    };
    assert_eq!(h.count(plugin, "failed"), 0, "{plugin}: failed");
    assert_eq!(h.count(plugin, "retried"), 0, "{plugin}: retried");
    assert_eq!(metric("plugin_traps_total"), 0.0, "{plugin}: traps");
    assert_eq!(
        metric("plugin_quarantines_total"),
        0.0,
        "{plugin}: quarantines"
    );
    never(h, plugin, "low_priority");
}

#[test]
fn on_a_busy_machine_honest_plugins_never_offend_and_handle_every_event_once_in_order() {
    let _hogs = Hogs::start().expect("CPU hogs");
    let (v0, _) = plugbus_e2e::swapper_version(0);
    let mut files = order_flow();
    files.push(PluginFile::Bytes("swapper", &v0));
    let h = host(&files, &[]);
    crate::order_flow::two_orders_through(&h);
    crate::hot_swap::swap_100_times_under_load(&h);
    const N: usize = 200;
    orders(&h, N);
    reference_plugins_deliver(&h, N as u64 + 2);
    for plugin in ["email", "inventory", "analytics", "swapper"] {
        honest(&h, plugin);
    }
    // Light plugins never even run in the background: waiting for a CPU
    // is not work.
    for plugin in ["email", "inventory", "analytics"] {
        never(&h, plugin, "background");
    }
    let status = h.stop().expect("stops");
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
}

#[test]
fn on_a_busy_machine_hostile_plugins_are_still_cut_and_contained() {
    let _hogs = Hogs::start().expect("CPU hogs");
    let h = contained(&["loop", "alloc", "big"]);
    for plugin in ["email", "inventory", "analytics"] {
        honest(&h, plugin);
        never(&h, plugin, "background");
    }
    let status = h.stop().expect("stops");
    assert!(status.success(), "clean exit on SIGTERM, got {status}");
}
