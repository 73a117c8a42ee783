//! busy-room: one room, 50 clients each editing 5 times a second: every client is a writer and an
//! observer of the others.

use super::Size;
use super::timed::{Shape, seconds};

/// The shape at `size`.
pub(super) fn shape(size: Size) -> Shape {
    let writers = if size == Size::Full { 50 } else { 5 };
    Shape::new(1, writers, 0, 5.0, seconds(size))
}

/// What the preset does, at `size`.
pub(super) fn describe(size: Size) -> String {
    shape(size).describe_rooms()
}
