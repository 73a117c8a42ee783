//! The y-protocols message codec: tag constants, a bounded frame reader and message encoders.
//!
//! A WebSocket frame holds one or more messages back to back. [`MessageReader`] walks a frame and
//! yields each message together with its byte range in the frame, so the relay can forward a
//! message without re-encoding it. Every length prefix is checked against the bytes that are
//! actually left before anything is allocated: a truncated message is a [`ProtocolError`], never
//! "end of input", and a length that claims gigabytes costs nothing.
//!
//! Payloads (updates, state vectors, awareness updates) are returned as borrowed slices and are
//! *not* validated here; see [`crate::validate`] for that.

use std::ops::Range;

use crate::error::ProtocolError;

/// Message type: document sync (step 1, step 2, update).
pub const MSG_SYNC: u64 = 0;
/// Message type: awareness update.
pub const MSG_AWARENESS: u64 = 1;
/// Message type: authentication (permission denied).
pub const MSG_AUTH: u64 = 2;
/// Message type: a request for every known awareness state.
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// Message type of the relay's "saved" extension (see `PROTOCOL.md`).
pub const MSG_SAVE: u64 = 100;

/// Sync sub-type: the sender's state vector.
pub const SYNC_STEP_1: u64 = 0;
/// Sync sub-type: what the receiver of a step 1 lacks.
pub const SYNC_STEP_2: u64 = 1;
/// Sync sub-type: an incremental update.
pub const SYNC_UPDATE: u64 = 2;

/// Auth sub-type: permission denied, followed by a reason.
pub const AUTH_PERMISSION_DENIED: u64 = 0;

/// Save sub-type (client → relay): answer once everything sent before this is committed.
pub const SAVE_REQUEST: u64 = 0;
/// Save sub-type (relay → client): the request with this id is durable.
pub const SAVE_SAVED: u64 = 1;
/// Save sub-type (relay → client): a commit failed; the relay keeps the edits and retries.
pub const SAVE_ERROR: u64 = 2;

/// One decoded message. Payloads borrow from the frame they were read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// Sync step 1 with an encoded state vector (v1).
    SyncStep1(&'a [u8]),
    /// Sync step 2 with an update (v1).
    SyncStep2(&'a [u8]),
    /// An incremental update (v1).
    Update(&'a [u8]),
    /// An awareness update payload.
    Awareness(&'a [u8]),
    /// Permission denied, with the reason.
    AuthDenied(&'a str),
    /// A request for all awareness states.
    QueryAwareness,
    /// Extension: a save request with the client's request id.
    SaveRequest(u64),
    /// Extension: the save request with this id is durable.
    Saved(u64),
    /// Extension: a commit failed for the save request with this id.
    SaveError(u64, &'a str),
    /// A message type this codec does not know (another provider's extension). Its length is
    /// unknown, so the rest of the frame belongs to it.
    Unknown(u64),
}

/// A cursor over a byte slice that reads lib0 variable-length encodings and refuses to read past
/// the end.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The read position.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Reads one byte.
    ///
    /// # Errors
    /// [`ProtocolError::Truncated`] at the end of the buffer.
    pub fn read_u8(&mut self) -> Result<u8, ProtocolError> {
        let b = *self.buf.get(self.pos).ok_or(ProtocolError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// Reads `n` bytes.
    ///
    /// # Errors
    /// [`ProtocolError::Truncated`] when fewer than `n` bytes are left; nothing is consumed then.
    pub fn read_exact(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if n > self.remaining() {
            return Err(ProtocolError::Truncated);
        }
        let slice = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    /// Reads an unsigned varint of at most 64 bits.
    ///
    /// # Errors
    /// [`ProtocolError::Truncated`] at the end of the buffer, [`ProtocolError::VarIntOverflow`]
    /// when the value does not fit in 64 bits.
    pub fn read_var_u64(&mut self) -> Result<u64, ProtocolError> {
        let mut value: u64 = 0;
        let mut shift = 0u32;
        loop {
            let byte = self.read_u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 || shift > 63 {
                return Err(ProtocolError::VarIntOverflow);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
        }
    }

    /// Reads an unsigned varint that must fit in 32 bits.
    ///
    /// # Errors
    /// As [`Cursor::read_var_u64`], and [`ProtocolError::VarIntOverflow`] above `u32::MAX`.
    pub fn read_var_u32(&mut self) -> Result<u32, ProtocolError> {
        u32::try_from(self.read_var_u64()?).map_err(|_| ProtocolError::VarIntOverflow)
    }

    /// Reads a lib0 signed varint (sign in bit 6 of the first byte) and discards it.
    ///
    /// # Errors
    /// [`ProtocolError::Truncated`], or [`ProtocolError::VarIntOverflow`] past 10 bytes.
    pub fn skip_var_i64(&mut self) -> Result<(), ProtocolError> {
        for _ in 0..10 {
            if self.read_u8()? & 0x80 == 0 {
                return Ok(());
            }
        }
        Err(ProtocolError::VarIntOverflow)
    }

    /// Reads a `varUint8Array`: a length, then that many bytes. The length is checked against the
    /// bytes that are left before anything else happens.
    ///
    /// # Errors
    /// [`ProtocolError::Truncated`] when the length claims more than is left.
    pub fn read_var_bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = self.read_var_u64()?;
        let len = usize::try_from(len).map_err(|_| ProtocolError::Truncated)?;
        self.read_exact(len)
    }

    /// Reads a `varString`.
    ///
    /// # Errors
    /// As [`Cursor::read_var_bytes`], and [`ProtocolError::InvalidUtf8`].
    pub fn read_var_str(&mut self) -> Result<&'a str, ProtocolError> {
        std::str::from_utf8(self.read_var_bytes()?).map_err(|_| ProtocolError::InvalidUtf8)
    }

    /// Reads a count of items that each take at least `min_item_bytes`, and refuses a count that
    /// the remaining bytes cannot hold. This is what keeps a forged count from turning into a huge
    /// allocation further down.
    ///
    /// # Errors
    /// [`ProtocolError::CountTooLarge`] when `count * min_item_bytes` exceeds what is left.
    pub fn read_count(&mut self, min_item_bytes: usize) -> Result<usize, ProtocolError> {
        let count = self.read_var_u64()?;
        let fits = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(min_item_bytes.max(1)))
            .is_some_and(|need| need <= self.remaining());
        if fits {
            Ok(count as usize)
        } else {
            Err(ProtocolError::CountTooLarge { count })
        }
    }
}

/// Iterates over the messages of one frame.
///
/// Yields each message with its byte range in the frame. After an error, or after a message of an
/// unknown type (which swallows the rest of the frame), the iterator ends.
#[derive(Debug, Clone)]
pub struct MessageReader<'a> {
    cursor: Cursor<'a>,
    done: bool,
}

impl<'a> MessageReader<'a> {
    /// Reads the messages of `frame`.
    pub fn new(frame: &'a [u8]) -> Self {
        MessageReader {
            cursor: Cursor::new(frame),
            done: false,
        }
    }

    fn read_one(&mut self) -> Result<Message<'a>, ProtocolError> {
        let c = &mut self.cursor;
        let message = match c.read_var_u64()? {
            MSG_SYNC => match c.read_var_u64()? {
                SYNC_STEP_1 => Message::SyncStep1(c.read_var_bytes()?),
                SYNC_STEP_2 => Message::SyncStep2(c.read_var_bytes()?),
                SYNC_UPDATE => Message::Update(c.read_var_bytes()?),
                other => return Err(ProtocolError::UnknownSyncType(other)),
            },
            MSG_AWARENESS => Message::Awareness(c.read_var_bytes()?),
            MSG_AUTH => match c.read_var_u64()? {
                AUTH_PERMISSION_DENIED => Message::AuthDenied(c.read_var_str()?),
                other => return Err(ProtocolError::UnknownAuthType(other)),
            },
            MSG_QUERY_AWARENESS => Message::QueryAwareness,
            MSG_SAVE => match c.read_var_u64()? {
                SAVE_REQUEST => Message::SaveRequest(c.read_var_u64()?),
                SAVE_SAVED => Message::Saved(c.read_var_u64()?),
                SAVE_ERROR => Message::SaveError(c.read_var_u64()?, c.read_var_str()?),
                other => return Err(ProtocolError::UnknownSaveType(other)),
            },
            other => {
                // Unknown extension: its layout is unknown, so it owns the rest of the frame.
                let rest = c.remaining();
                c.read_exact(rest)?;
                Message::Unknown(other)
            }
        };
        Ok(message)
    }
}

impl<'a> Iterator for MessageReader<'a> {
    type Item = Result<(Message<'a>, Range<usize>), ProtocolError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.cursor.is_empty() {
            return None;
        }
        let start = self.cursor.position();
        let result = self.read_one();
        match result {
            Ok(message) => {
                if matches!(message, Message::Unknown(_)) {
                    self.done = true;
                }
                Some(Ok((message, start..self.cursor.position())))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Appends a lib0 unsigned varint to `out`.
pub fn write_var_u64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Appends a `varUint8Array` to `out`.
pub fn write_var_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_var_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn sync_message(sub_type: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 12);
    write_var_u64(&mut out, MSG_SYNC);
    write_var_u64(&mut out, sub_type);
    write_var_bytes(&mut out, payload);
    out
}

/// Encodes sync step 1 carrying an encoded state vector.
pub fn encode_sync_step1(state_vector_v1: &[u8]) -> Vec<u8> {
    sync_message(SYNC_STEP_1, state_vector_v1)
}

/// Encodes sync step 2 carrying an update.
pub fn encode_sync_step2(update_v1: &[u8]) -> Vec<u8> {
    sync_message(SYNC_STEP_2, update_v1)
}

/// Encodes a sync update message.
pub fn encode_update(update_v1: &[u8]) -> Vec<u8> {
    sync_message(SYNC_UPDATE, update_v1)
}

/// Encodes an awareness message around an encoded awareness update.
pub fn encode_awareness(awareness_update: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(awareness_update.len() + 6);
    write_var_u64(&mut out, MSG_AWARENESS);
    write_var_bytes(&mut out, awareness_update);
    out
}

/// Encodes a permission-denied auth message.
pub fn encode_permission_denied(reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(reason.len() + 4);
    write_var_u64(&mut out, MSG_AUTH);
    write_var_u64(&mut out, AUTH_PERMISSION_DENIED);
    write_var_bytes(&mut out, reason.as_bytes());
    out
}

/// Encodes a save request (client → relay).
pub fn encode_save_request(request_id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    write_var_u64(&mut out, MSG_SAVE);
    write_var_u64(&mut out, SAVE_REQUEST);
    write_var_u64(&mut out, request_id);
    out
}

/// Encodes a "saved" acknowledgement (relay → client).
pub fn encode_saved(request_id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    write_var_u64(&mut out, MSG_SAVE);
    write_var_u64(&mut out, SAVE_SAVED);
    write_var_u64(&mut out, request_id);
    out
}

/// Encodes a "save error" notice (relay → client).
pub fn encode_save_error(request_id: u64, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(reason.len() + 14);
    write_var_u64(&mut out, MSG_SAVE);
    write_var_u64(&mut out, SAVE_ERROR);
    write_var_u64(&mut out, request_id);
    write_var_bytes(&mut out, reason.as_bytes());
    out
}

/// The encoded query-awareness message.
pub fn encode_query_awareness() -> Vec<u8> {
    vec![MSG_QUERY_AWARENESS as u8]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_all(frame: &[u8]) -> Vec<Result<Message<'_>, ProtocolError>> {
        MessageReader::new(frame)
            .map(|r| r.map(|(m, _)| m))
            .collect()
    }

    #[test]
    fn reads_every_message_of_a_frame() {
        let mut frame = encode_sync_step1(&[0]);
        frame.extend(encode_update(&[0, 0]));
        frame.extend(encode_awareness(&[0]));
        frame.extend(encode_query_awareness());
        frame.extend(encode_save_request(7));
        let messages = read_all(&frame);
        assert_eq!(
            messages,
            vec![
                Ok(Message::SyncStep1(&[0])),
                Ok(Message::Update(&[0, 0])),
                Ok(Message::Awareness(&[0])),
                Ok(Message::QueryAwareness),
                Ok(Message::SaveRequest(7)),
            ]
        );
    }

    #[test]
    fn ranges_cover_each_message_exactly() {
        let first = encode_update(&[1, 2, 3]);
        let second = encode_saved(300);
        let mut frame = first.clone();
        frame.extend(&second);
        let ranges: Vec<_> = MessageReader::new(&frame)
            .map(|r| r.expect("valid").1)
            .collect();
        assert_eq!(ranges, vec![0..first.len(), first.len()..frame.len()]);
    }

    #[test]
    fn truncated_message_is_an_error_not_end_of_input() {
        let frame = encode_update(&[1, 2, 3, 4]);
        for cut in 1..frame.len() {
            let messages = read_all(&frame[..cut]);
            assert_eq!(
                messages.last(),
                Some(&Err(ProtocolError::Truncated)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn length_prefix_claiming_gigabytes_is_refused_without_allocating() {
        // [sync, update, len = 4 GiB]
        let mut frame = vec![0, 2];
        write_var_u64(&mut frame, 4 << 30);
        frame.extend([1, 2, 3]);
        assert_eq!(read_all(&frame), vec![Err(ProtocolError::Truncated)]);
    }

    #[test]
    fn varint_overflow_is_refused() {
        let frame = [0xff; 11];
        assert_eq!(read_all(&frame), vec![Err(ProtocolError::VarIntOverflow)]);
    }

    #[test]
    fn unknown_type_swallows_the_rest_of_the_frame() {
        let mut frame = vec![42, 1, 2, 3];
        frame.extend(encode_update(&[0, 0]));
        assert_eq!(read_all(&frame), vec![Ok(Message::Unknown(42))]);
    }

    #[test]
    fn unknown_sync_subtype_is_an_error() {
        assert_eq!(
            read_all(&[0, 9, 0]),
            vec![Err(ProtocolError::UnknownSyncType(9))]
        );
    }

    #[test]
    fn save_error_round_trips() {
        let frame = encode_save_error(5, "disk full");
        assert_eq!(
            read_all(&frame),
            vec![Ok(Message::SaveError(5, "disk full"))]
        );
        let frame = encode_permission_denied("read-only");
        assert_eq!(read_all(&frame), vec![Ok(Message::AuthDenied("read-only"))]);
    }

    #[test]
    fn read_count_checks_against_remaining_bytes() {
        let mut buf = Vec::new();
        write_var_u64(&mut buf, 3);
        buf.extend([0; 6]);
        assert_eq!(Cursor::new(&buf).read_count(2), Ok(3));
        assert_eq!(
            Cursor::new(&buf).read_count(3),
            Err(ProtocolError::CountTooLarge { count: 3 })
        );
    }

    proptest! {
        #[test]
        fn varint_round_trips(value: u64) {
            let mut buf = Vec::new();
            write_var_u64(&mut buf, value);
            prop_assert_eq!(Cursor::new(&buf).read_var_u64(), Ok(value));
        }

        #[test]
        fn sync_messages_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let frame = encode_update(&payload);
            let messages = read_all(&frame);
            prop_assert_eq!(messages, vec![Ok(Message::Update(&payload))]);
        }

        #[test]
        fn random_bytes_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
            for (_, range) in MessageReader::new(&frame).flatten() {
                prop_assert!(range.end <= frame.len());
            }
        }
    }
}
