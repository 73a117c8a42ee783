//! Yjs documents for the relay, without any networking.
//!
//! The modules in the order an edit passes through them:
//!
//! 1. [`protocol`]: the y-protocols message codec. A frame is split into messages with every
//!    length checked before use; the tag constants live here and nowhere else.
//! 2. [`validate`]: bounded structural checks of updates and state vectors, so that no forged
//!    count or nesting depth reaches a `yrs` decoder, and no update shape that makes `yrs` use
//!    freed memory (with [`doc`], for the shapes that depend on the document).
//! 3. [`awareness`]: a room's awareness states, with the y-protocols rules and the owner of each
//!    client id.
//! 4. [`doc`]: a room's document, a `yrs::Doc` fed only validated updates.
//! 5. [`store`]: durable storage: each batch of writes (the relay's store writer gathers them:
//!    its group commits) appended to a journal file with one `fdatasync`, and moved by
//!    checkpoints into redb (snapshot plus update log per room, compaction); its docs describe
//!    the on-disk format and its version, the journal module's the journal's records.
//! 6. [`error`]: one error enum per operation family.
//!
//! # Example
//!
//! ```
//! use crdt::doc::{Applied, RoomDoc};
//! use crdt::protocol::{Message, MessageReader, encode_update};
//! use yrs::{Doc, ReadTxn, StateVector, Text, Transact};
//!
//! // A client edits and sends its update in a sync message.
//! let client = Doc::new();
//! client.get_or_insert_text("t").insert(&mut client.transact_mut(), 0, "hi");
//! let update = client.transact().encode_state_as_update_v1(&StateVector::default());
//! let frame = encode_update(&update);
//!
//! // The relay reads the frame and applies the update to the room's document.
//! let mut room = RoomDoc::new();
//! for message in MessageReader::new(&frame) {
//!     let (message, _range) = message.expect("well formed");
//!     if let Message::Update(update) = message {
//!         assert_eq!(room.apply_update_v1(update).expect("valid"), Applied::Changed);
//!     }
//! }
//! ```

pub mod awareness;
pub mod doc;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod journal;
pub mod protocol;
pub mod store;
pub mod validate;
