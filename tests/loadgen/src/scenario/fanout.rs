//! fanout-10, fanout-100, fanout-1000: one room, one writer at 100 updates/s, and 10, 100 or
//! 1,000 observers: what it costs to deliver one update to many clients, and how long it takes.

use super::timed::{Shape, seconds};
use super::{Preset, Size};

/// The shape of `preset` (one of the three fan-outs) at `size`.
pub(super) fn shape(preset: Preset, size: Size) -> Shape {
    // Observers at full size and in a smoke run.
    let (full, smoke) = match preset {
        Preset::Fanout10 => (10, 3),
        Preset::Fanout100 => (100, 5),
        Preset::Fanout1000 => (1000, 10),
        other => unreachable!("{other} is not a fan-out"),
    };
    let observers = if size == Size::Full { full } else { smoke };
    Shape::new(1, 1, observers, 100.0, seconds(size))
}

/// What `preset` does, at `size`.
pub(super) fn describe(preset: Preset, size: Size) -> String {
    let s = shape(preset, size);
    format!(
        "1 room, 1 writer at {} updates/s, {} observers, {} s",
        s.rate, s.observers, s.seconds
    )
}
