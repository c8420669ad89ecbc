//! Images: references, registries, the content store, layer snapshots and image records.
//! `ImageManager` is the entry point; the CRI layer converts to and from its types.

pub mod content;
pub mod digest;
pub mod error;
pub mod leases;
pub mod manifest;
mod manifest_fetch;
pub mod metadata;
mod pull;
pub mod reference;
pub mod registry;
pub mod service;
pub mod snapshots;
#[cfg(test)]
mod test_registry;
pub mod unpack;

pub use error::ImageError;
pub use metadata::ImageRecord;
pub use registry::Credentials;
pub use service::{FsUsage, ImageManager};
