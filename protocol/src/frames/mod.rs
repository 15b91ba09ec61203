//! Frame bodies, one module per stream kind, and the wire encoding of the
//! [`model`](crate::model) values they carry.

use bytes::BytesMut;

use crate::codec::Reader;
use crate::error::{DecodeError, EncodeError};

pub mod admin;
pub(crate) mod cluster;
pub mod control;
pub(crate) mod fields;
pub mod produce;
pub mod subscribe;

/// A frame body that encodes itself and decodes from a [`Reader`].
pub(crate) trait Body: Sized {
    fn encode_body(&self, dst: &mut BytesMut) -> Result<(), EncodeError>;
    fn decode_body(r: &mut Reader) -> Result<Self, DecodeError>;
}
