//! Domain rules with no I/O: names, record wire form, entity tags and
//! preconditions, patch application and the three-way field comparison.

pub mod collection;
pub mod diff;
pub mod names;
pub mod patch;
pub mod precondition;
pub mod record;

pub use names::{CollectionName, RecordId};
pub use precondition::{EntityTag, ExpectedVersion, IfMatch, IfNoneMatch};
pub use record::{Operation, RecordMeta};
