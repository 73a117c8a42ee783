//! many-rooms: 1,000 rooms of 4 clients each, every client editing once a second: the cost of
//! many small rooms at once.

use super::Size;
use super::timed::{Shape, seconds};

/// The shape at `size`.
pub(super) fn shape(size: Size) -> Shape {
    let rooms = if size == Size::Full { 1000 } else { 10 };
    Shape::new(rooms, 4, 0, 1.0, seconds(size))
}

/// What the preset does, at `size`.
pub(super) fn describe(size: Size) -> String {
    shape(size).describe_rooms()
}
